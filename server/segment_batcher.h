// SegmentBatcher: cross-session dynamic batching. Stream segments of different sessions that
// fit one forward pass (the same stack, batch, length and memory-bank lengths: batch_key) are
// run together: one thread takes the oldest waiting segment, waits up to max_queue_delay for
// up to max_batch_size - 1 more of its key (not at all when that many are already waiting),
// and runs them through run_segment_batch; segments of other keys wait for the next round.
// A second thread, the finisher, waits for each batch's device work and commits its sessions
// (finish_segment_batch) while the batcher thread issues the next batch, at most kMaxInFlight
// batches issued and unfinished. Each segment's completion runs on the WorkerPool (encoding its
// response), or on the finishing thread when the pool refuses it.
//
// Both threads run at a raised priority (nice -10) where the process may (root or
// CAP_SYS_NICE), so request threads or a co-located load client do not stretch every pass.
//
// Why one issuing thread: one device executes one forward at a time anyway; while it runs, new
// segments queue up, so batches grow with the load without any extra waiting. Why a finisher:
// on a GPU the wait for a batch's output and the commits are host time during which the device
// would otherwise sit idle.
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
#include <memory>
#include <mutex>
#include <string>
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
  /// update; queue_micros = time from submit() to the batch's start, plus the time from the
  /// batch's end until a completion worker runs this).
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
  // A batch issued to the device, waiting for the finisher.
  struct Launched {
    std::shared_ptr<LaunchedBatch> batch;
    std::vector<Job> jobs;  // their segments are in `batch`
    Clock::time_point start;
    std::string stack;
  };
  static constexpr int kMaxInFlight = 2;

  void loop();
  void run(std::vector<Job>& batch);
  void finish_loop();
  // Hands each job its outcome and the batch's timings, on the pool.
  void complete(std::vector<Job>& jobs, std::vector<SegmentOutcome>& outcomes, const StageTimings& shared,
                Clock::time_point start);

  const Options options_;
  SessionStore& sessions_;
  WorkerPool& completions_;
  ServiceMetrics& metrics_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;  // guarded by mu_
  bool stopping_ = false;  // guarded by mu_
  std::mutex finish_mu_;
  std::condition_variable finish_cv_;
  std::deque<Launched> launched_;  // guarded by finish_mu_
  int in_flight_ = 0;              // issued, not yet finished; guarded by finish_mu_
  bool launching_done_ = false;    // the batcher thread ended; guarded by finish_mu_
  std::thread finisher_;
  std::thread thread_;
};

}  // namespace hvlm
