// WorkerPool: bounded queue, every queued task runs before shutdown returns, nothing after.
#include "server/worker_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <set>
#include <thread>

namespace hvlm {
namespace {

TEST(WorkerPool, RefusesWorkBeyondTheQueueBound) {
  WorkerPool pool({.threads = 1, .max_queued = 2, .thread_init = {}});
  std::promise<void> release;
  std::shared_future<void> gate = release.get_future().share();
  std::promise<void> running;
  ASSERT_TRUE(pool.try_submit([&running, gate] {
    running.set_value();
    gate.wait();
  }));
  running.get_future().wait();  // the worker is busy; the queue is empty
  std::atomic<int> ran{0};
  EXPECT_TRUE(pool.try_submit([&] { ++ran; }));
  EXPECT_TRUE(pool.try_submit([&] { ++ran; }));
  EXPECT_FALSE(pool.try_submit([&] { ++ran; }));
  EXPECT_EQ(pool.queued(), 2u);
  release.set_value();
  pool.shutdown();
  EXPECT_EQ(ran.load(), 2);
}

TEST(WorkerPool, ShutdownRunsWhatIsQueuedThenRefusesMore) {
  std::atomic<int> ran{0};
  WorkerPool pool({.threads = 2, .max_queued = 100, .thread_init = {}});
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(pool.try_submit([&] { ++ran; }));
  pool.shutdown();
  EXPECT_EQ(ran.load(), 50);
  EXPECT_FALSE(pool.try_submit([&] { ++ran; }));
  pool.shutdown();  // idempotent
}

TEST(WorkerPool, ThreadInitRunsOnEveryWorker) {
  std::mutex mu;
  std::set<std::thread::id> initialised;
  {
    WorkerPool pool({.threads = 3, .max_queued = 1, .thread_init = [&] {
                       std::lock_guard<std::mutex> lock(mu);
                       initialised.insert(std::this_thread::get_id());
                     }});
  }
  EXPECT_EQ(initialised.size(), 3u);
}

}  // namespace
}  // namespace hvlm
