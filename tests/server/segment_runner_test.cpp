// The segment runner's two halves without gRPC, as the batcher's pipeline uses them: batches
// launched before earlier ones finish (and finished in any order) give every session what its
// segments give run one after another through the library, and a launch that fails leaves its
// segments, leases held, and their sessions as they were, so each can still run alone.
#include "server/segment_runner.h"
#include "server/session_store.h"
#include "server/stack_registry.h"
#include "tests/server/server_test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>
#if HVLM_WITH_CUDA
#include "tests/cuda_sync_debug.h"
#endif

#include <optional>
#include <string>
#include <vector>

namespace hvlm::testing {
namespace {

class SegmentRunnerTest : public ::testing::Test {
 protected:
  SegmentRunnerTest() : config_(test_config({{"all", all_blocks_spec()}})) {
    config_.log_level = "error";
    stacks_ = StackRegistry::create(config_);
    stack_ = stacks_->find("all");
  }

  // Prepared segments of sessions `ids[first, first + count)` with features `x`.
  std::vector<PreparedSegment> prepare(SessionStore& store, const std::vector<std::string>& ids,
                                       const std::vector<at::Tensor>& x, size_t first, size_t count) {
    std::vector<PreparedSegment> segments;
    for (size_t i = first; i < first + count; ++i) {
      segments.push_back(prepare_segment(store, ids[i], std::nullopt, x[i], nullptr));
    }
    return segments;
  }

  ServerConfig config_;
  std::unique_ptr<StackRegistry> stacks_;
  const HostedStack* stack_ = nullptr;
};

TEST_F(SegmentRunnerTest, BatchesInFlightTogetherGiveEverySessionItsOwnSequence) {
  SessionStore store({});
  const StackConfig& sc = config_.stacks.front();
  std::vector<std::string> ids;
  std::vector<ReferenceSession> refs;
  for (int i = 0; i < 4; ++i) {
    ids.push_back(store.open(*stack_, "").session_id);
    refs.emplace_back(reference_stack(sc), sc.memory);
  }
  for (int round = 0; round < 3; ++round) {
    std::vector<at::Tensor> x;
    for (int i = 0; i < 4; ++i) x.push_back(at::randn({1, 8, 32}));
    // Sessions 0, 1 in one batch, 2, 3 in the next, launched before the first finishes and
    // finished first.
    std::vector<PreparedSegment> front = prepare(store, ids, x, 0, 2);
    const auto first = launch_segment_batch(front);
    EXPECT_TRUE(front.empty()) << "launch takes the segments";
    std::vector<PreparedSegment> back = prepare(store, ids, x, 2, 2);
    const auto second = launch_segment_batch(back);
    std::vector<SegmentOutcome> outcomes = finish_segment_batch(store, *second, nullptr);
    for (SegmentOutcome& o : finish_segment_batch(store, *first, nullptr)) outcomes.push_back(std::move(o));
    const int order[] = {2, 3, 0, 1};
    for (int j = 0; j < 4; ++j) {
      const int i = order[j];
      ASSERT_FALSE(outcomes[j].error) << "session " << i;
      EXPECT_EQ(outcomes[j].result.sequence, static_cast<uint64_t>(round));
      EXPECT_LE(rel_error(outcomes[j].result.output, refs[i].step(x[i])), 1e-5)
          << "round " << round << ", session " << i;
    }
  }
  for (const auto& id : ids) EXPECT_EQ(store.info(id).segments_seen, 3u);
}

TEST_F(SegmentRunnerTest, AFailedLaunchKeepsItsSegmentsSoEachCanRunAlone) {
  SessionStore store({});
  const StackConfig& sc = config_.stacks.front();
  const std::vector<std::string> ids{store.open(*stack_, "").session_id, store.open(*stack_, "").session_id};
  // Different lengths do not concatenate: the pass cannot even start.
  const std::vector<at::Tensor> x{at::randn({1, 8, 32}), at::randn({1, 9, 32})};
  std::vector<PreparedSegment> segments = prepare(store, ids, x, 0, 2);
  EXPECT_ANY_THROW(launch_segment_batch(segments));
  ASSERT_EQ(segments.size(), 2u);
  for (const auto& id : ids) EXPECT_EQ(store.info(id).segments_seen, 0u);
  // The leases are still held: each runs alone, from its session's unchanged state.
  for (size_t i = 0; i < 2; ++i) {
    std::vector<PreparedSegment> alone;
    alone.push_back(std::move(segments[i]));
    std::vector<SegmentOutcome> outcomes = run_segment_batch(store, alone, nullptr);
    ASSERT_EQ(outcomes.size(), 1u);
    ASSERT_FALSE(outcomes.front().error);
    ReferenceSession ref(reference_stack(sc), sc.memory);
    EXPECT_LE(rel_error(outcomes.front().result.output, ref.step(x[i])), 1e-5) << "session " << i;
    EXPECT_EQ(store.info(ids[i]).segments_seen, 1u);
  }
}

// On a GPU (bfloat16), batched segments give each session what its segments give on the CPU
// (float32, within the GPU issue's 2e-2 relative), and once warm the batcher's half of a pass
// (launch) queues everything without one wait for the device: inputs read from pinned host
// memory, banks and states gathered, the forward, the bank updates and the copies out.
// Skipped where LibTorch sees no CUDA device.
TEST_F(SegmentRunnerTest, OnAGpuABatchMatchesTheCpuAndItsLaunchNeverWaitsForTheDevice) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device visible";
#if HVLM_WITH_CUDA
  ServerConfig config = config_;
  config.device = "cuda";
  config.dtype = "bfloat16";
  const auto stacks = StackRegistry::create(config);
  const HostedStack& stack = *stacks->find("all");
  ASSERT_TRUE(stack.device.is_cuda());
  SessionStore store({});
  const StackConfig& sc = config.stacks.front();
  std::vector<std::string> ids;
  std::vector<ReferenceSession> refs;
  for (int i = 0; i < 3; ++i) {
    ids.push_back(store.open(stack, "").session_id);
    refs.emplace_back(reference_stack(sc), sc.memory);
  }
  for (int round = 0; round < 4; ++round) {
    std::vector<at::Tensor> x;
    for (int i = 0; i < 3; ++i) x.push_back(at::randn({1, 8, 32}));
    std::vector<PreparedSegment> segments = prepare(store, ids, x, 0, 3);
    std::shared_ptr<LaunchedBatch> launched;
    if (round == 0) {
      launched = launch_segment_batch(segments);  // one-time setup (handles, attributes) may wait
    } else {
      const SyncDebugModeScope no_waits(c10::cuda::SyncDebugMode::L_ERROR);
      EXPECT_NO_THROW(launched = launch_segment_batch(segments)) << "round " << round;
    }
    ASSERT_TRUE(launched);
    const std::vector<SegmentOutcome> outcomes = finish_segment_batch(store, *launched, nullptr);
    for (int i = 0; i < 3; ++i) {
      ASSERT_FALSE(outcomes[i].error) << "session " << i;
      const at::Tensor got = outcomes[i].result.output.to(at::kFloat);
      const at::Tensor want = refs[i].step(x[i]);
      EXPECT_LE((got - want).norm().item<double>() / want.norm().item<double>(), 2e-2)
          << "round " << round << ", session " << i;
    }
  }
#else
  GTEST_SKIP() << "built without hvlm's CUDA code (HVLM_CUDA=off)";
#endif
}

}  // namespace
}  // namespace hvlm::testing
