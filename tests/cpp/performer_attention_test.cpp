// PerformerAttention (FAVOR+): the feature maps of docs/attention.md, the linear-time core
// against the explicit quadratic form A = phi(q) phi(k)^T, out = A v / A 1, the projection
// buffer, and the stabiliser that keeps softmax features finite.
#include "attention/performer_attention.h"

#include "tests/cpp/test_util.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

namespace hvlm {
namespace {

using testing::kTolerance;
using testing::max_relative_error;
using testing::ThrowsWith;

const std::vector<std::pair<std::string, PerformerKernel>> kKernels = {
    {"softmax", PerformerKernel::kSoftmax},
    {"relu", PerformerKernel::kRelu},
    {"elu", PerformerKernel::kElu}};

// phi(x) for x [G, n, hd] and W [m, hd], in float64, written from docs/attention.md.
at::Tensor features_ref(const at::Tensor& x, const at::Tensor& w, PerformerKernel kernel,
                        bool is_query) {
  const int64_t hd = x.size(-1), m = w.size(0);
  auto xs = x.to(at::kDouble) * std::pow(static_cast<double>(hd), -0.25);
  auto u = at::matmul(xs, w.to(at::kDouble).t());
  if (kernel == PerformerKernel::kRelu) return at::relu(u) + 1e-3;
  if (kernel == PerformerKernel::kElu) return at::elu(u) + 1.0;
  auto half_norm = xs.pow(2).sum(-1, /*keepdim=*/true) / 2;
  auto s = is_query ? u.amax({-1}, /*keepdim=*/true) : u.amax({-2, -1}, /*keepdim=*/true);
  return (at::exp(u - half_norm - s) + 1e-4) / std::sqrt(static_cast<double>(m));
}

// out = A v / A 1 with A = phi_q phi_k^T, the quadratic form of the same attention.
at::Tensor quadratic_form(const at::Tensor& phi_q, const at::Tensor& phi_k, const at::Tensor& v) {
  auto a = at::matmul(phi_q.to(at::kDouble), phi_k.to(at::kDouble).transpose(-1, -2));
  return at::matmul(a, v.to(at::kDouble)) / a.sum(-1, /*keepdim=*/true);
}

TEST(PerformerAttention, FeaturesFollowTheDocumentedFormulas) {
  c10::InferenceMode guard;
  at::manual_seed(31);
  auto w = orthogonal_random_features(12, 8);
  auto x = testing::randn({3, 10, 8});
  for (const auto& [name, kernel] : kKernels) {
    for (bool is_query : {true, false}) {
      SCOPED_TRACE(name + (is_query ? " query" : " key"));
      EXPECT_LE(max_relative_error(performer_features(x, w, kernel, is_query),
                                   features_ref(x, w, kernel, is_query)),
                kTolerance);
    }
  }
}

TEST(PerformerAttention, CoreMatchesExplicitQuadraticFormula) {
  c10::InferenceMode guard;
  at::manual_seed(32);
  const int64_t groups = 3, n = 11, hd = 8, m = 20;
  auto w = orthogonal_random_features(m, hd);
  auto q = testing::randn({groups, n, hd}), k = testing::randn({groups, n, hd});
  auto v = testing::randn({groups, n, hd});
  for (const auto& [name, kernel] : kKernels) {
    SCOPED_TRACE(name);
    auto got = performer_attention_core(q, k, v, w, kernel);
    auto want = quadratic_form(features_ref(q, w, kernel, true), features_ref(k, w, kernel, false),
                               v);
    EXPECT_LE(max_relative_error(got, want), kTolerance);
    // The library's own features in the quadratic form give the same answer.
    auto own = quadratic_form(performer_features(q, w, kernel, true),
                              performer_features(k, w, kernel, false), v);
    EXPECT_LE(max_relative_error(got, own), kTolerance);
  }
}

// FAVOR+'s positive random features estimate exp(q.k / sqrt(hd)) only if W's rows are
// isotropic: orthogonal_random_features fixes the signs of QR's Q by diag(R) (raw LAPACK Q
// leans towards the axes; with it this check measured an error of 0.25 instead of 0.047).
TEST(PerformerAttention, SoftmaxKernelApproximatesSoftmaxAttention) {
  c10::InferenceMode guard;
  at::manual_seed(33);
  const int64_t n = 16, hd = 4, m = 16384;
  auto w = orthogonal_random_features(m, hd);
  auto q = testing::randn({2, n, hd}, 0.5), k = testing::randn({2, n, hd}, 0.5);
  auto v = testing::randn({2, n, hd});
  auto got = performer_attention_core(q, k, v, w, PerformerKernel::kSoftmax);
  EXPECT_LE(max_relative_error(got, testing::masked_attention_oracle(q, k, v)), 0.08);
}

// Each row of a block is uniformly distributed in direction (a Haar-random Q), so every entry
// of the unit rows averages to zero over many blocks.
TEST(PerformerAttention, ProjectionRowsHaveNoPreferredDirection) {
  at::manual_seed(38);
  const int64_t hd = 4, blocks = 1000;
  auto w = orthogonal_random_features(blocks * hd, hd).to(at::kDouble);
  auto unit = (w / w.norm(2, {1}, /*keepdim=*/true)).view({blocks, hd, hd});
  // Isotropic: each mean has standard deviation 0.5 / sqrt(1000) = 0.016.
  auto means = unit.mean(0);
  EXPECT_LE(means.abs().max().item<double>(), 0.1) << "mean unit row entries per block position:\n"
                                                    << means;
}

TEST(PerformerAttention, ForwardMatchesOracleFromOwnProjections) {
  const int64_t dim = 16, heads = 2, m = 24;
  for (const auto& [name, kernel] : kKernels) {
    SCOPED_TRACE(name);
    at::manual_seed(34);
    PerformerAttention module(
        PerformerAttentionOptions(dim, heads).num_random_features(m).kernel_type(name));
    module->eval();
    c10::InferenceMode guard;
    auto x = testing::randn({2, 9, dim});
    const auto& p = module->proj;
    auto q = testing::split_heads_ref(testing::linear64(x, p.q_proj->weight, p.q_proj->bias), heads);
    auto k = testing::split_heads_ref(testing::linear64(x, p.k_proj->weight, p.k_proj->bias), heads);
    auto v = testing::split_heads_ref(testing::linear64(x, p.v_proj->weight, p.v_proj->bias), heads);
    auto w = module->projection_matrix;
    auto attn = quadratic_form(features_ref(q, w, kernel, true), features_ref(k, w, kernel, false),
                               v);
    auto want = testing::linear64(testing::merge_heads_ref(attn), p.out_proj->weight,
                                  p.out_proj->bias);
    EXPECT_LE(max_relative_error(module->forward(x), want), kTolerance);
  }
}

TEST(PerformerAttention, ProjectionMatrixIsARegisteredBufferOfShapeFeaturesByHeadDim) {
  PerformerAttention module(PerformerAttentionOptions(24, 3).num_random_features(10));
  auto buffers = module->named_buffers();
  ASSERT_TRUE(buffers.contains("projection_matrix"));
  EXPECT_EQ(buffers["projection_matrix"].sizes(), (std::vector<int64_t>{10, 8}));
  EXPECT_TRUE(buffers["projection_matrix"].is_same(module->projection_matrix));
  EXPECT_FALSE(module->named_parameters().contains("projection_matrix"));
}

TEST(PerformerAttention, ForwardUsesTheRegisteredProjectionBuffer) {
  at::manual_seed(35);
  PerformerAttention module(PerformerAttentionOptions(8, 2).num_random_features(6));
  module->eval();
  auto x = testing::randn({1, 5, 8});
  at::Tensor before;
  {
    c10::InferenceMode guard;
    before = module->forward(x);
  }
  {
    at::NoGradGuard no_grad;
    module->named_buffers()["projection_matrix"].copy_(orthogonal_random_features(6, 4));
  }
  c10::InferenceMode guard;
  EXPECT_FALSE(at::allclose(module->forward(x), before));
}

TEST(PerformerAttention, ProjectionRowsAreOrthogonalWithinEachHeadDimBlock) {
  at::manual_seed(36);
  const int64_t hd = 4, m = 10;  // blocks of rows [0, 4), [4, 8), [8, 10)
  PerformerAttention module(PerformerAttentionOptions(2 * hd, 2).num_random_features(m));
  auto w = module->projection_matrix.to(at::kDouble);
  auto norms = w.norm(2, {1}, /*keepdim=*/true);
  EXPECT_GT(norms.min().item<double>(), 0.0);
  // Rows are scaled by chi-distributed norms, not left at unit length.
  EXPECT_GT(norms.std().item<double>(), 1e-3);
  auto unit = w / norms;
  for (int64_t r0 = 0; r0 < m; r0 += hd) {
    const int64_t rows = std::min(hd, m - r0);
    SCOPED_TRACE("block at row " + std::to_string(r0));
    auto block = unit.narrow(0, r0, rows);
    auto gram = at::matmul(block, block.t());
    EXPECT_LE((gram - at::eye(rows, gram.options())).abs().max().item<double>(), 1e-5);
  }
}

TEST(PerformerAttention, RejectsUnknownKernelType) {
  EXPECT_TRUE(ThrowsWith(
      [] { PerformerAttention(PerformerAttentionOptions(16, 2).kernel_type("foo")); },
      {"kernel_type must be one of softmax, relu, elu", "'foo'"}));
  EXPECT_TRUE(ThrowsWith([] { parse_performer_kernel("Softmax"); }, {"'Softmax'"}));
}

TEST(PerformerAttention, RejectsBadOptionsAndInputs) {
  EXPECT_TRUE(ThrowsWith(
      [] { PerformerAttention(PerformerAttentionOptions(16, 2).num_random_features(0)); },
      {"num_random_features must be >= 1, got 0"}));
  EXPECT_TRUE(ThrowsWith([] { PerformerAttention(PerformerAttentionOptions(16, 3)); },
                         {"PerformerAttention", "num_heads (3) must divide dim (16)"}));
  PerformerAttention module(PerformerAttentionOptions(16, 2).num_random_features(8));
  c10::InferenceMode guard;
  EXPECT_TRUE(ThrowsWith([&] { module->forward(testing::randn({2, 3, 15})); },
                         {"x must be [B, T, 16]", "got [2, 3, 15]"}));
  auto x = testing::randn({2, 3, 16});
  x[0][1][2] = -std::numeric_limits<float>::infinity();
  EXPECT_TRUE(ThrowsWith([&] { module->forward(x); }, {"x contains non-finite values"}));
}

TEST(PerformerAttention, SoftmaxFeaturesStayFiniteForLargeInputs) {
  c10::InferenceMode guard;
  at::manual_seed(37);
  const int64_t n = 12, hd = 8, m = 16;
  auto w = orthogonal_random_features(m, hd);
  // |u| reaches the thousands: exp(u) alone overflows float32 (and float64).
  auto q = testing::randn({2, n, hd}, 100.0), k = testing::randn({2, n, hd}, 100.0);
  auto v = testing::randn({2, n, hd});
  ASSERT_GT(at::matmul(q * std::pow(hd, -0.25), w.t()).abs().max().item<double>(), 100.0);
  for (bool is_query : {true, false}) {
    auto phi = performer_features(is_query ? q : k, w, PerformerKernel::kSoftmax, is_query);
    EXPECT_TRUE(at::isfinite(phi).all().item<bool>());
    EXPECT_GT(phi.min().item<double>(), 0.0);
  }
  auto out = performer_attention_core(q, k, v, w, PerformerKernel::kSoftmax);
  ASSERT_TRUE(at::isfinite(out).all().item<bool>());
  // With positive weights every output is a convex combination of the values.
  auto vmin = std::get<0>(v.min(1, /*keepdim=*/true)), vmax = std::get<0>(v.max(1, true));
  EXPECT_TRUE((out >= vmin - 1e-5).all().item<bool>());
  EXPECT_TRUE((out <= vmax + 1e-5).all().item<bool>());
  EXPECT_LE(max_relative_error(out, quadratic_form(features_ref(q, w, PerformerKernel::kSoftmax,
                                                                true),
                                                   features_ref(k, w, PerformerKernel::kSoftmax,
                                                                false),
                                                   v)),
            kTolerance);
}

}  // namespace
}  // namespace hvlm
