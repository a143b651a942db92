// StridedAttention: query i attends to key j iff (i - j) mod stride == 0 (docs/attention.md),
// checked against a dense masked-attention oracle, plus the input policy.
#include "attention/strided_attention.h"

#include "tests/cpp/test_util.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <limits>

namespace hvlm {
namespace {

using testing::kTolerance;
using testing::masked_attention_oracle;
using testing::max_relative_error;
using testing::strided_mask;
using testing::ThrowsWith;

constexpr int64_t kGroups = 3, kHeadDim = 8;

double core_error(int64_t n, int64_t stride) {
  auto q = testing::randn({kGroups, n, kHeadDim});
  auto k = testing::randn({kGroups, n, kHeadDim});
  auto v = testing::randn({kGroups, n, kHeadDim});
  auto got = strided_attention_core(q, k, v, stride);
  return max_relative_error(got, masked_attention_oracle(q, k, v, strided_mask(n, stride)));
}

TEST(StridedAttention, CoreMatchesMaskedOracleWhenLengthIsNotAMultipleOfStride) {
  c10::InferenceMode guard;
  at::manual_seed(1);
  for (auto [n, stride] : {std::pair<int64_t, int64_t>{13, 4}, {10, 3}, {29, 5}, {7, 2}}) {
    SCOPED_TRACE("n=" + std::to_string(n) + " stride=" + std::to_string(stride));
    EXPECT_LE(core_error(n, stride), kTolerance);
  }
}

TEST(StridedAttention, CoreMatchesMaskedOracleWhenLengthIsAMultipleOfStride) {
  c10::InferenceMode guard;
  at::manual_seed(2);
  EXPECT_LE(core_error(12, 4), kTolerance);
  EXPECT_LE(core_error(12, 6), kTolerance);
}

// The mask-free form (used with fused kernels on CUDA) computes the same function.
TEST(StridedAttention, UnmaskedCoreMatchesMaskedOracle) {
  c10::InferenceMode guard;
  at::manual_seed(3);
  for (auto [n, stride] : {std::pair<int64_t, int64_t>{1, 4}, {3, 4}, {13, 4}, {12, 4}, {29, 5}, {9, 8}, {17, 16}}) {
    SCOPED_TRACE("n=" + std::to_string(n) + " stride=" + std::to_string(stride));
    auto q = testing::randn({kGroups, n, kHeadDim});
    auto k = testing::randn({kGroups, n, kHeadDim});
    auto v = testing::randn({kGroups, n, kHeadDim});
    EXPECT_LE(max_relative_error(strided_attention_unmasked(q, k, v, stride),
                                 masked_attention_oracle(q, k, v, strided_mask(n, stride))),
              kTolerance);
  }
}

TEST(StridedAttention, StrideOneIsDenseAttention) {
  c10::InferenceMode guard;
  at::manual_seed(3);
  auto q = testing::randn({kGroups, 9, kHeadDim});
  auto k = testing::randn({kGroups, 9, kHeadDim});
  auto v = testing::randn({kGroups, 9, kHeadDim});
  EXPECT_LE(max_relative_error(strided_attention_core(q, k, v, 1),
                               masked_attention_oracle(q, k, v)),
            kTolerance);
}

TEST(StridedAttention, StrideAtLeastLengthAttendsOnlyToSelf) {
  c10::InferenceMode guard;
  at::manual_seed(4);
  for (int64_t stride : {7, 8, 100}) {
    SCOPED_TRACE("stride=" + std::to_string(stride));
    auto q = testing::randn({kGroups, 7, kHeadDim});
    auto k = testing::randn({kGroups, 7, kHeadDim});
    auto v = testing::randn({kGroups, 7, kHeadDim});
    EXPECT_LE(max_relative_error(strided_attention_core(q, k, v, stride), v), kTolerance);
    EXPECT_LE(core_error(7, stride), kTolerance);
  }
}

TEST(StridedAttention, SingleTokenReturnsItsValue) {
  c10::InferenceMode guard;
  at::manual_seed(5);
  for (int64_t stride : {1, 3}) {
    auto q = testing::randn({kGroups, 1, kHeadDim});
    auto k = testing::randn({kGroups, 1, kHeadDim});
    auto v = testing::randn({kGroups, 1, kHeadDim});
    EXPECT_LE(max_relative_error(strided_attention_core(q, k, v, stride), v), kTolerance);
  }
}

TEST(StridedAttention, ResidueClassesNeverMix) {
  c10::InferenceMode guard;
  at::manual_seed(6);
  const int64_t n = 14, stride = 4;
  auto q = testing::randn({kGroups, n, kHeadDim});
  auto k = testing::randn({kGroups, n, kHeadDim});
  auto v = testing::randn({kGroups, n, kHeadDim});
  auto base = strided_attention_core(q, k, v, stride);
  // Change the keys and values of residue class 1 only.
  auto k2 = k.clone(), v2 = v.clone();
  for (int64_t i = 1; i < n; i += stride) {
    k2.select(1, i).add_(3.0);
    v2.select(1, i).mul_(-2.0);
  }
  auto changed = strided_attention_core(q, k2, v2, stride);
  for (int64_t i = 0; i < n; ++i) {
    SCOPED_TRACE("query " + std::to_string(i));
    if (i % stride == 1) {
      EXPECT_FALSE(at::allclose(base.select(1, i), changed.select(1, i)));
    } else {
      EXPECT_TRUE(at::equal(base.select(1, i), changed.select(1, i)));
    }
  }
}

TEST(StridedAttention, ForwardMatchesOracleFromOwnProjections) {
  at::manual_seed(7);
  const int64_t dim = 16, heads = 4, stride = 3, t = 11;
  StridedAttention m(StridedAttentionOptions(dim, heads, stride));
  c10::InferenceMode guard;
  m->eval();
  auto x = testing::randn({2, t, dim});
  auto want = testing::projected_attention_oracle(m->proj, x, x, heads, strided_mask(t, stride));
  EXPECT_LE(max_relative_error(m->forward(x), want), kTolerance);
}

TEST(StridedAttention, AttentionCoreOverHeadGroupsEqualsOneCoreCall) {
  // 2 * s * len^2 floats per head exceed the head-chunk budget here, so run_head_chunks
  // splits the (batch, head) pairs into several groups; the result must not change.
  at::manual_seed(8);
  const int64_t heads = 3, n = 4096, stride = 2, hd = 2;
  StridedAttention m(StridedAttentionOptions(heads * hd, heads, stride));
  c10::InferenceMode guard;
  const int64_t bytes_per_head = 2 * stride * (n / stride) * (n / stride) * 4;
  ASSERT_LT(kHeadChunkBudgetBytes / bytes_per_head, heads);
  auto q = testing::randn({1, heads, n, hd});
  auto k = testing::randn({1, heads, n, hd});
  auto v = testing::randn({1, heads, n, hd});
  auto got = m->attention_core(q, k, v);
  auto want = strided_attention_core(q.view({heads, n, hd}), k.view({heads, n, hd}),
                                     v.view({heads, n, hd}), stride);
  EXPECT_LE(max_relative_error(got, want.view({1, heads, n, hd})), 1e-6);
}

TEST(StridedAttention, RejectsWrongFeatureDim) {
  StridedAttention m(StridedAttentionOptions(16, 4, 2));
  c10::InferenceMode guard;
  EXPECT_TRUE(ThrowsWith([&] { m->forward(testing::randn({2, 5, 8})); },
                         {"x must be [B, T, 16]", "got [2, 5, 8]"}));
}

TEST(StridedAttention, RejectsRankTwoInput) {
  StridedAttention m(StridedAttentionOptions(16, 4, 2));
  c10::InferenceMode guard;
  EXPECT_TRUE(ThrowsWith([&] { m->forward(testing::randn({5, 16})); },
                         {"x must be [B, T, 16]", "got [5, 16]"}));
}

TEST(StridedAttention, RejectsEmptySequenceAndWrongDtype) {
  StridedAttention m(StridedAttentionOptions(16, 4, 2));
  c10::InferenceMode guard;
  EXPECT_TRUE(ThrowsWith([&] { m->forward(testing::randn({2, 0, 16})); },
                         {"x must have at least 1 token"}));
  EXPECT_TRUE(ThrowsWith([&] { m->forward(testing::randn({2, 3, 16}).to(at::kDouble)); },
                         {"x must have dtype", "Double"}));
}

TEST(StridedAttention, RejectsHeadsNotDividingDim) {
  EXPECT_TRUE(ThrowsWith([] { StridedAttention(StridedAttentionOptions(16, 3, 2)); },
                         {"StridedAttention", "num_heads (3) must divide dim (16)"}));
}

TEST(StridedAttention, RejectsStrideZero) {
  EXPECT_TRUE(ThrowsWith([] { StridedAttention(StridedAttentionOptions(16, 4, 0)); },
                         {"stride must be >= 1, got 0"}));
}

TEST(StridedAttention, RejectsNonFiniteInput) {
  StridedAttention m(StridedAttentionOptions(16, 4, 2));
  c10::InferenceMode guard;
  for (double bad : {std::numeric_limits<double>::quiet_NaN(),
                     std::numeric_limits<double>::infinity(),
                     -std::numeric_limits<double>::infinity()}) {
    auto x = testing::randn({2, 5, 16});
    x[1][3][7] = bad;
    EXPECT_TRUE(ThrowsWith([&] { m->forward(x); }, {"x contains non-finite values"}));
  }
}

}  // namespace
}  // namespace hvlm
