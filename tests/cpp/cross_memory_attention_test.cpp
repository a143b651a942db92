// CrossMemoryAttention: queries from the local tokens, keys and values from a memory whose
// length may change between calls; the residual and fused forms; the empty-memory semantics
// (docs/attention.md) and the inputs it rejects.
#include "attention/cross_memory_attention.h"

#include "tests/cpp/test_util.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <limits>

namespace hvlm {
namespace {

using testing::kTolerance;
using testing::max_relative_error;
using testing::ThrowsWith;

constexpr int64_t kDim = 16, kHeads = 4;

// A module with seeded random weights; built outside InferenceMode (its parameters are
// ordinary tensors), then called under the test's InferenceMode guard.
CrossMemoryAttention make_module() {
  at::manual_seed(21);
  CrossMemoryAttention m(CrossMemoryAttentionOptions(kDim, kHeads));
  m->eval();
  return m;
}

// The attention term alone, from the module's weights, in float64.
at::Tensor attn_oracle(const CrossMemoryAttention& m, const at::Tensor& local,
                       const at::Tensor& memory) {
  return testing::projected_attention_oracle(m->proj, local, memory, kHeads);
}

TEST(CrossMemoryAttention, ResidualForwardAddsAttentionToLocal) {
  auto module = make_module();
  c10::InferenceMode guard;
  auto local = testing::randn({2, 5, kDim}), memory = testing::randn({2, 7, kDim});
  auto want = local.to(at::kDouble) + attn_oracle(module, local, memory);
  EXPECT_LE(max_relative_error(module->forward(local, memory, /*residual=*/true), want),
            kTolerance);
  EXPECT_LE(max_relative_error(module->forward(local, memory), want), kTolerance);
}

TEST(CrossMemoryAttention, NonResidualForwardReturnsAttentionOnly) {
  auto module = make_module();
  c10::InferenceMode guard;
  auto local = testing::randn({2, 5, kDim}), memory = testing::randn({2, 7, kDim});
  EXPECT_LE(max_relative_error(module->forward(local, memory, /*residual=*/false),
                               attn_oracle(module, local, memory)),
            kTolerance);
}

TEST(CrossMemoryAttention, FusionRatioZeroReturnsLocal) {
  auto module = make_module();
  c10::InferenceMode guard;
  auto local = testing::randn({2, 5, kDim}), memory = testing::randn({2, 3, kDim});
  EXPECT_LE(max_relative_error(module->fuse_with_memory(local, memory, 0.0), local), 1e-7);
}

TEST(CrossMemoryAttention, FusionRatioOneReturnsAttention) {
  auto module = make_module();
  c10::InferenceMode guard;
  auto local = testing::randn({2, 5, kDim}), memory = testing::randn({2, 3, kDim});
  EXPECT_LE(max_relative_error(module->fuse_with_memory(local, memory, 1.0),
                               attn_oracle(module, local, memory)),
            kTolerance);
}

TEST(CrossMemoryAttention, FusionInterpolatesBetweenLocalAndAttention) {
  auto module = make_module();
  c10::InferenceMode guard;
  auto local = testing::randn({2, 5, kDim}), memory = testing::randn({1, 4, kDim});
  const double r = 0.3;
  auto want = (1 - r) * local.to(at::kDouble) + r * attn_oracle(module, local, memory);
  EXPECT_LE(max_relative_error(module->fuse_with_memory(local, memory, r), want), kTolerance);
}

TEST(CrossMemoryAttention, EmptyMemoryAddsNothing) {
  auto module = make_module();
  c10::InferenceMode guard;
  auto local = testing::randn({2, 5, kDim});
  for (int64_t mb : {2, 1}) {
    SCOPED_TRACE("memory batch " + std::to_string(mb));
    auto empty = testing::randn({mb, 0, kDim});
    EXPECT_TRUE(at::equal(module->forward(local, empty, /*residual=*/true), local));
    auto attn = module->forward(local, empty, /*residual=*/false);
    EXPECT_EQ(attn.sizes(), local.sizes());
    EXPECT_TRUE(at::equal(attn, at::zeros_like(local)));
    EXPECT_TRUE(at::equal(module->fuse_with_memory(local, empty, 0.7), local));
    EXPECT_TRUE(at::equal(module->fuse_with_memory(local, empty, 1.0), local));
  }
}

TEST(CrossMemoryAttention, MemoryBatchOfOneBroadcastsOverLocalBatch) {
  auto module = make_module();
  c10::InferenceMode guard;
  auto local = testing::randn({3, 5, kDim}), memory = testing::randn({1, 6, kDim});
  auto broadcast = module->forward(local, memory, /*residual=*/false);
  auto explicit_batch = module->forward(local, memory.expand({3, 6, kDim}), /*residual=*/false);
  EXPECT_LE(max_relative_error(broadcast, explicit_batch), 1e-6);
  EXPECT_LE(max_relative_error(broadcast, attn_oracle(module, local, memory)), kTolerance);
  EXPECT_LE(max_relative_error(module->fuse_with_memory(local, memory, 0.5),
                               module->fuse_with_memory(local, memory.expand({3, 6, kDim}), 0.5)),
            1e-6);
}

TEST(CrossMemoryAttention, MemoryLengthMayChangeBetweenCalls) {
  auto module = make_module();
  c10::InferenceMode guard;
  auto local = testing::randn({2, 4, kDim});
  for (int64_t m : {3, 9, 1, 0, 5}) {
    SCOPED_TRACE("memory length " + std::to_string(m));
    auto memory = testing::randn({2, m, kDim});
    auto want = m == 0 ? at::zeros({2, 4, kDim}, at::kDouble) : attn_oracle(module, local, memory);
    EXPECT_LE(max_relative_error(module->forward(local, memory, /*residual=*/false), want),
              kTolerance);
  }
}

TEST(CrossMemoryAttention, RejectsMemoryWithWrongFeatureDim) {
  auto module = make_module();
  c10::InferenceMode guard;
  auto local = testing::randn({2, 4, kDim});
  EXPECT_TRUE(ThrowsWith([&] { module->forward(local, testing::randn({2, 3, 8})); },
                         {"memory must be [B, T, 16]", "got [2, 3, 8]"}));
  EXPECT_TRUE(ThrowsWith([&] { module->forward(local, testing::randn({3, kDim})); },
                         {"memory must be [B, T, 16]", "got [3, 16]"}));
}

TEST(CrossMemoryAttention, RejectsMemoryBatchMismatch) {
  auto module = make_module();
  c10::InferenceMode guard;
  auto local = testing::randn({3, 4, kDim});
  EXPECT_TRUE(ThrowsWith([&] { module->forward(local, testing::randn({2, 5, kDim})); },
                         {"memory batch must be 1 or match local's batch (3)", "[2, 5, 16]"}));
  EXPECT_TRUE(
      ThrowsWith([&] { module->fuse_with_memory(local, testing::randn({2, 5, kDim}), 0.5); },
                 {"memory batch must be 1 or match local's batch (3)"}));
  // Only the memory broadcasts, never the local tokens.
  EXPECT_TRUE(ThrowsWith(
      [&] { module->forward(testing::randn({1, 4, kDim}), testing::randn({3, 5, kDim})); },
      {"memory batch must be 1 or match local's batch (1)", "[3, 5, 16]"}));
}

TEST(CrossMemoryAttention, RejectsFusionRatioOutsideUnitInterval) {
  auto module = make_module();
  c10::InferenceMode guard;
  auto local = testing::randn({2, 4, kDim}), memory = testing::randn({2, 3, kDim});
  for (double r : {-0.1, 1.5, std::numeric_limits<double>::quiet_NaN(),
                   std::numeric_limits<double>::infinity()}) {
    EXPECT_TRUE(ThrowsWith([&] { module->fuse_with_memory(local, memory, r); },
                           {"fusion_ratio must be in [0, 1]"}))
        << "r=" << r;
  }
}

TEST(CrossMemoryAttention, RejectsNonFiniteMemoryAndLocal) {
  auto module = make_module();
  c10::InferenceMode guard;
  auto local = testing::randn({2, 4, kDim}), memory = testing::randn({2, 3, kDim});
  auto bad_memory = memory.clone();
  bad_memory[1][2][0] = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(ThrowsWith([&] { module->forward(local, bad_memory); },
                         {"memory contains non-finite values"}));
  EXPECT_TRUE(ThrowsWith([&] { module->fuse_with_memory(local, bad_memory, 0.5); },
                         {"memory contains non-finite values"}));
  auto bad_local = local.clone();
  bad_local[0][0][3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(ThrowsWith([&] { module->forward(bad_local, memory, /*residual=*/false); },
                         {"local contains non-finite values"}));
}

TEST(CrossMemoryAttention, RejectsHeadsNotDividingDim) {
  EXPECT_TRUE(ThrowsWith([] { CrossMemoryAttention(CrossMemoryAttentionOptions(16, 6)); },
                         {"CrossMemoryAttention", "num_heads (6) must divide dim (16)"}));
}

}  // namespace
}  // namespace hvlm
