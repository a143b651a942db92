// StageTimings: where one request's time went, filled in as it passes the stages (queue: the
// waits for a worker to take the request and, batched, for its batch to start and for a worker
// to answer; decoding the request; the forward pass; the memory-bank update; encoding the
// response). Their sum is the server's time from the request's arrival to handing gRPC the
// response, less some bookkeeping (metrics, logs). Reported back to clients and to the
// metrics. Plain value type.
#pragma once

#include <chrono>
#include <cstdint>

namespace hvlm {

// The stages' clock, and the spans they record in whole microseconds.
using StageClock = std::chrono::steady_clock;
inline int64_t micros_between(StageClock::time_point a, StageClock::time_point b) {
  return std::chrono::duration_cast<std::chrono::microseconds>(b - a).count();
}
inline int64_t micros_since(StageClock::time_point start) { return micros_between(start, StageClock::now()); }

struct StageTimings {
  int64_t queue_micros = 0;
  int64_t decode_micros = 0;
  int64_t compute_micros = 0;
  int64_t memory_update_micros = 0;
  int64_t encode_micros = 0;
};

}  // namespace hvlm
