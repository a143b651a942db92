// The `load` command: N concurrent sessions, one thread and one StreamSegments call each,
// streaming synthetic segments lock-step. Every session first sends its warmup segments; a
// gate then starts the measured phase for all sessions at once, which lasts --duration
// seconds or --segments-per-session segments. Failures are counted, not fatal: a session that
// fails stops, and the summary reports the error count and the first error.
// Bounded by construction: at most kMaxSessions threads, each RPC under a deadline, and the
// synthetic segments shared read-only by all sessions.
// Reentrant: concurrent runs share nothing.
#pragma once

#include "client/command_line.h"
#include "client/run_summary.h"

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <ostream>

namespace hvlm::client {

// A one-shot barrier: opens when `parties` arrivals have happened, and remembers when.
// Thread-safe.
class StartGate {
 public:
  explicit StartGate(int64_t parties);

  // Counts one arrival without waiting (a party that will not take part).
  void arrive();
  // Counts one arrival and waits until the gate opens; returns when it opened.
  std::chrono::steady_clock::time_point arrive_and_wait();
  // When the gate opened; only once it has.
  std::chrono::steady_clock::time_point open_time();

 private:
  // Counts one arrival; opens the gate on the last. Requires mu_ held.
  void count_arrival_locked();

  std::mutex mu_;
  std::condition_variable opened_;
  int64_t missing_;                                // guarded by mu_
  std::chrono::steady_clock::time_point open_at_;  // guarded by mu_; valid once missing_ == 0
};

// Runs `load`; prints the summary to `out` and writes --json. Features go in options.dtype, or
// without it in the stack's own dtype. Throws UsageError when the segments would be too large,
// RpcError when ListStacks (for the dim or dtype) fails, std::runtime_error when the stack's
// dim or dtype cannot be used; session failures are in the summary's errors instead.
RunSummary run_load(const LoadOptions& options, std::ostream& out);

}  // namespace hvlm::client
