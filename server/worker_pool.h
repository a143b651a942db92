// WorkerPool: the server's own threads for tensor work, so gRPC reactions never block. A
// bounded FIFO queue: try_submit() refuses work beyond max_queued (the caller answers
// RESOURCE_EXHAUSTED) and after shutdown() began. shutdown() runs what is queued, then joins.
// Thread-safe; the destructor calls shutdown().
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace hvlm {

class WorkerPool {
 public:
  struct Options {
    /// Worker threads (concurrent tasks).
    int64_t threads = 1;
    /// Most tasks waiting for a worker.
    int64_t max_queued = 1024;
    /// The threads' name (15 bytes are kept).
    std::string name = "hvlm-worker";
    /// Runs first on every worker thread (e.g. to set LibTorch's intra-op thread count).
    std::function<void()> thread_init;
  };

  explicit WorkerPool(Options options);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /// Queues `task`; false when the queue is full or the pool is shutting down. Tasks must not
  /// throw (an escaping exception terminates the process).
  bool try_submit(std::function<void()> task);
  /// Stops accepting, runs the queued tasks, joins the threads. Idempotent.
  void shutdown();
  /// Tasks waiting now.
  size_t queued();

 private:
  void run();

  const Options options_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::vector<std::thread> threads_;
};

}  // namespace hvlm
