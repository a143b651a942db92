// SegmentBatcher: cross-session dynamic batching. Stream segments of different sessions that
// fit one forward pass (the same stack, batch, length and memory-bank lengths: batch_key) are
// run together: one thread takes the oldest waiting segment, waits up to max_queue_delay for
// up to max_batch_size - 1 more of its key (not at all when that many are already waiting),
// and runs them through run_segment_batch; segments of other keys wait for the next round.
// Each segment's completion runs on the WorkerPool (encoding its response), or on the batcher
// thread when the pool refuses it.
//
// Why one thread: one device executes one forward at a time anyway; while it runs, new
// segments queue up, so batches grow with the load without any extra waiting.
// Thread-safety: submit() from any thread; shutdown() runs what is queued, then joins.
#pragma once

#include "server/segment_runner.h"
#include "server/service_metrics.h"
#include "server/session_store.h"
#include "server/worker_pool.h"

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace hvlm {

class SegmentBatcher {
 public:
  struct Options {
    /// Most segments in one forward pass.
    int64_t max_batch_size = 32;
    /// Longest a segment waits for others to join its batch, seconds.
    double max_queue_delay_seconds = 0.002;
    /// Most segments waiting; submit() refuses beyond it.
    int64_t max_queued = 1024;
    /// Runs first on the batcher's thread (e.g. to set LibTorch's intra-op thread count).
    std::function<void()> thread_init;
  };
  using Clock = std::chrono::steady_clock;
  /// Called once per segment with its outcome and the batch's timings (compute and memory
  /// update; queue_micros = time from submit() to the batch's start).
  using Done = std::function<void(SegmentOutcome, StageTimings)>;
  /// Throws (the error the segment then completes with) when its caller no longer wants it;
  /// called just before its batch runs.
  using StillWanted = std::function<void()>;

  SegmentBatcher(Options options, SessionStore& sessions, WorkerPool& completions, ServiceMetrics& metrics);
  ~SegmentBatcher();
  SegmentBatcher(const SegmentBatcher&) = delete;
  SegmentBatcher& operator=(const SegmentBatcher&) = delete;

  /// Queues a prepared segment; false (and nothing queued; the lease is released) when the
  /// queue is full or shutdown began. A segment whose `still_wanted` throws when its batch is
  /// formed does not run: it completes with that error and its session is unchanged.
  bool submit(PreparedSegment segment, Done done, StillWanted still_wanted = {});
  /// Segments waiting now.
  size_t queued();
  /// Stops accepting, runs what is queued, joins. Idempotent.
  void shutdown();

 private:
  struct Job {
    PreparedSegment segment;
    std::vector<int64_t> key;
    Done done;
    StillWanted still_wanted;
    Clock::time_point submitted;
  };
  void loop();
  void run(std::vector<Job>& batch);

  const Options options_;
  SessionStore& sessions_;
  WorkerPool& completions_;
  ServiceMetrics& metrics_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;  // guarded by mu_
  bool stopping_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace hvlm
