// SegmentBatcher without gRPC: every wait a batched segment goes through is counted as
// queueing, the wait for a worker to answer after its pass included (the completions share the
// request workers, so under load a finished segment can wait there); a full batch starts
// without waiting out the queue delay; the batcher's issue time is exported.
#include "server/metrics.h"
#include "server/segment_batcher.h"
#include "server/service_metrics.h"
#include "server/session_store.h"
#include "server/stack_registry.h"
#include "server/worker_pool.h"
#include "tests/server/observability_test_util.h"
#include "tests/server/server_test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <optional>
#include <string>
#include <thread>

namespace hvlm::testing {
namespace {

// Opens once: by open(), or on destruction.
class WorkerGate {
 public:
  WorkerGate() : opened_(promise_.get_future().share()) {}
  ~WorkerGate() { open(); }
  std::shared_future<void> opened() const { return opened_; }
  void open() {
    if (!open_) {
      open_ = true;
      promise_.set_value();
    }
  }

 private:
  std::promise<void> promise_;
  std::shared_future<void> opened_;
  bool open_ = false;
};

// What a batcher works with: the test config's "all" stack, a session store, and the
// service's metrics with that stack's series.
struct BatcherInputs {
  BatcherInputs() { metrics.add_stack("all"); }
  static ServerConfig make_config() {
    ServerConfig c = test_config({{"all", all_blocks_spec()}});
    c.log_level = "error";
    return c;
  }
  const ServerConfig config = make_config();
  const std::unique_ptr<StackRegistry> stacks = StackRegistry::create(config);
  const HostedStack* const stack = stacks->find("all");
  SessionStore store{SessionStore::Options{}};
  metrics::Registry registry;
  ServiceMetrics metrics{registry, BuildInfo{"test", "test", "cpu"}};
};

WorkerPool::Options one_worker() {
  WorkerPool::Options options;
  options.threads = 1;
  return options;
}

TEST(SegmentBatcher, TheWaitForAWorkerToAnswerCountsAsQueueing) {
  BatcherInputs in;
  // Declared before the pool and the batcher, which may still call into them as they stop.
  std::promise<void> blocking;
  std::promise<std::pair<SegmentOutcome, StageTimings>> answered;
  WorkerPool completions(one_worker());
  SegmentBatcher::Options options;
  options.max_batch_size = 1;  // no wait for company
  SegmentBatcher batcher(options, in.store, completions, in.metrics);

  // The only completion worker is busy until the gate opens (at the latest when the test ends,
  // so that a failed assertion cannot leave the pool's destructor waiting for it).
  WorkerGate gate;
  std::shared_future<void> released = gate.opened();
  ASSERT_TRUE(completions.try_submit([released, &blocking] {
    blocking.set_value();
    released.wait();
  }));
  blocking.get_future().wait();

  const std::string id = in.store.open(*in.stack, "").session_id;
  const auto submitted = std::chrono::steady_clock::now();
  ASSERT_TRUE(batcher.submit(prepare_segment(in.store, id, std::nullopt, at::randn({1, 8, 32}), nullptr),
                             [&answered](SegmentOutcome outcome, StageTimings t) {
                               answered.set_value({std::move(outcome), t});
                             }));
  // The pass runs, the session is committed and the answer is handed to the pool, where it
  // waits behind the blocked worker.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (completions.queued() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(completions.queued(), 1u);
  EXPECT_EQ(in.store.info(id).segments_seen, 1u);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  gate.open();

  std::future<std::pair<SegmentOutcome, StageTimings>> answer = answered.get_future();
  ASSERT_EQ(answer.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  auto [outcome, timings] = answer.get();
  const auto total_micros =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - submitted).count();
  EXPECT_FALSE(outcome.error);
  EXPECT_GE(timings.queue_micros, 200000) << "the 200 ms the answer waited for the worker";
  EXPECT_GT(timings.compute_micros, 0);
  // The stages cover the segment's time once each: their sum is at most the time it took.
  EXPECT_LE(timings.queue_micros + timings.compute_micros + timings.memory_update_micros, total_micros);
  batcher.shutdown();
}

// The batcher is woken only by a first segment and by a full batch (not by every segment): the
// segment that fills a batch must still start it at once, long before the queue delay.
TEST(SegmentBatcher, AFullBatchStartsWithoutWaitingOutTheDelay) {
  BatcherInputs in;
  constexpr int kSegments = 3;
  std::promise<void> all_answered;
  std::atomic<int> answered{0}, failed{0};
  WorkerPool completions(one_worker());
  SegmentBatcher::Options options;
  options.max_batch_size = kSegments;
  options.max_queue_delay_seconds = 600;  // only a full batch can start in time
  SegmentBatcher batcher(options, in.store, completions, in.metrics);

  const auto submitted = std::chrono::steady_clock::now();
  for (int i = 0; i < kSegments; ++i) {
    const std::string id = in.store.open(*in.stack, "").session_id;
    ASSERT_TRUE(batcher.submit(prepare_segment(in.store, id, std::nullopt, at::randn({1, 8, 32}), nullptr),
                               [&](SegmentOutcome outcome, StageTimings) {
                                 if (outcome.error) ++failed;
                                 if (++answered == kSegments) all_answered.set_value();
                               }));
  }
  ASSERT_EQ(all_answered.get_future().wait_for(std::chrono::seconds(60)), std::future_status::ready)
      << "the full batch waited for its queue delay";
  EXPECT_LT(std::chrono::steady_clock::now() - submitted, std::chrono::seconds(60));
  EXPECT_EQ(failed.load(), 0);
  const std::string text = in.registry.render();
  EXPECT_EQ(sample_value(text, "hvlm_batch_size_count{stack=\"all\"}"), 1.0) << "one pass for all three";
  EXPECT_EQ(sample_value(text, "hvlm_batch_size_sum{stack=\"all\"}"), 3.0);
  const std::optional<double> issued = sample_value(text, "hvlm_batch_issue_seconds_total{stack=\"all\"}");
  ASSERT_TRUE(issued.has_value()) << text;
  EXPECT_GT(*issued, 0.0);
  batcher.shutdown();
}

}  // namespace
}  // namespace hvlm::testing
