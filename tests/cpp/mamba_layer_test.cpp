// MambaLayer: the full forward and the streaming form against a naive step-by-step reference
// built from the layer's own parameters with plain at:: ops (float64), parameter names and
// shapes, initialisation, and the states and options it rejects (docs/attention.md).
#include "attention/mamba_layer.h"

#include "tests/cpp/test_util.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace hvlm {
namespace {

using testing::kTolerance;
using testing::linear64;
using testing::max_relative_error;
using testing::ThrowsWith;

struct Reference {
  at::Tensor y;           // [B, T, D]
  at::Tensor conv_state;  // [B, E, d_conv - 1]
  at::Tensor ssm_state;   // [B, E, N]
};

// The documented forward, one time step at a time, in float64. `conv_state` and `ssm_state`
// may be undefined (zeros).
Reference mamba_reference(const MambaLayerImpl& m, const at::Tensor& x,
                          const at::Tensor& conv_state = {}, const at::Tensor& ssm_state = {}) {
  const int64_t b = x.size(0), t = x.size(1), e = m.inner_dim();
  const int64_t n = m.options.state_size(), k = m.options.d_conv(), r = m.dt_rank();
  const auto f64 = at::TensorOptions().dtype(at::kDouble);

  auto xz = linear64(x, m.in_proj->weight);
  auto xi = xz.narrow(-1, 0, e).transpose(1, 2);  // [B, E, T]
  auto z = xz.narrow(-1, e, e);
  auto w = m.conv1d->weight.to(at::kDouble), bias = m.conv1d->bias.to(at::kDouble);
  at::Tensor conv, history;
  if (conv_state.defined()) {
    history = at::cat({conv_state.to(at::kDouble), xi}, -1);
    conv = at::conv1d(history, w, bias, /*stride=*/at::IntArrayRef{1}, /*padding=*/at::IntArrayRef{0},
                      /*dilation=*/at::IntArrayRef{1}, /*groups=*/e);
  } else {
    history = at::cat({at::zeros({b, e, k - 1}, f64), xi}, -1);
    // Symmetric padding d_conv - 1, cut to the first T outputs: the causal convolution.
    const int64_t pad = k - 1;
    conv = at::conv1d(xi, w, bias, at::IntArrayRef{1}, at::IntArrayRef{pad}, at::IntArrayRef{1}, e)
               .narrow(-1, 0, t);
  }
  auto u = at::silu(conv).transpose(1, 2);  // [B, T, E]
  auto x_dbl = linear64(u, m.x_proj->weight);
  auto dt = x_dbl.narrow(-1, 0, r);
  auto bm = x_dbl.narrow(-1, r, n), cm = x_dbl.narrow(-1, r + n, n);
  auto delta = at::softplus(linear64(dt, m.dt_proj->weight, m.dt_proj->bias));  // [B, T, E]
  auto a = -at::exp(m.A_log.to(at::kDouble));                                 // [E, N]
  auto d = m.D.to(at::kDouble);
  auto h = ssm_state.defined() ? ssm_state.to(at::kDouble) : at::zeros({b, e, n}, f64);
  std::vector<at::Tensor> ys;
  for (int64_t i = 0; i < t; ++i) {
    auto dl = delta.select(1, i), ui = u.select(1, i);  // [B, E]
    h = at::exp(dl.unsqueeze(-1) * a) * h +
        (dl * ui).unsqueeze(-1) * bm.select(1, i).unsqueeze(1);
    ys.push_back((h * cm.select(1, i).unsqueeze(1)).sum(-1) + d * ui);
  }
  auto y = at::stack(ys, 1) * at::silu(z);
  return {linear64(y, m.out_proj->weight), history.narrow(-1, t, k - 1), h};
}

// A layer whose A_log and D also differ per channel and state (the initial values are the
// same for every channel, which would hide channel mix-ups).
MambaLayer make_layer(MambaLayerOptions options, uint64_t seed) {
  at::manual_seed(seed);
  MambaLayer m(options);
  at::NoGradGuard no_grad;
  m->A_log.add_(at::rand_like(m->A_log) * 0.5 - 0.25);
  m->D.add_(at::randn_like(m->D) * 0.3);
  m->conv1d->weight.mul_(2.0);
  m->eval();
  return m;
}

void expect_matches_reference(MambaLayer m, const at::Tensor& x, double tol = kTolerance) {
  c10::InferenceMode guard;
  auto [y, state] = m->forward_stream(x, MambaState{});
  auto want = mamba_reference(*m, x);
  EXPECT_LE(max_relative_error(y, want.y), tol);
  EXPECT_LE(max_relative_error(state.conv_state, want.conv_state), tol);
  EXPECT_LE(max_relative_error(state.ssm_state, want.ssm_state), tol);
  EXPECT_LE(max_relative_error(m->forward(x), want.y), tol);
}

TEST(MambaLayer, ForwardMatchesStepByStepReference) {
  expect_matches_reference(make_layer(MambaLayerOptions(8).state_size(4).expand_factor(1.5), 41),
                           testing::randn({2, 23, 8}));
}

TEST(MambaLayer, ForwardMatchesReferenceWhenInnerDimIsNotAMultipleOf32) {
  // E = 40 (a full block of 32 and a tail of 8), 37 (tail of 5) and 12 (tail only).
  expect_matches_reference(
      make_layer(MambaLayerOptions(20).state_size(5).d_conv(3).dt_rank(3), 42),
      testing::randn({2, 17, 20}));
  expect_matches_reference(
      make_layer(MambaLayerOptions(37).state_size(3).expand_factor(1.0), 43),
      testing::randn({2, 9, 37}));
  expect_matches_reference(
      make_layer(MambaLayerOptions(6).state_size(2).expand_factor(2.0).d_conv(2), 44),
      testing::randn({3, 5, 6}));
}

TEST(MambaLayer, ForwardMatchesReferenceWithConvWidthOne) {
  expect_matches_reference(make_layer(MambaLayerOptions(8).state_size(4).d_conv(1), 45),
                           testing::randn({2, 7, 8}));
}

TEST(MambaLayer, SequenceLongerThanOneChunkMatchesReference) {
  // Two full chunks of 2048 tokens and a partial third.
  auto m = make_layer(MambaLayerOptions(8).state_size(4).expand_factor(1.5), 46);
  expect_matches_reference(m, testing::randn({2, 2 * 2048 + 37, 8}));
}

TEST(MambaLayer, ForwardStreamFromAGivenStateMatchesReference) {
  auto m = make_layer(MambaLayerOptions(12).state_size(3).expand_factor(2.0), 47);
  c10::InferenceMode guard;
  auto x = testing::randn({2, 6, 12});
  auto conv_state = testing::randn({2, 24, 3}), ssm_state = testing::randn({2, 24, 3});
  auto [y, next] = m->forward_stream(x, {conv_state, ssm_state});
  auto want = mamba_reference(*m, x, conv_state, ssm_state);
  EXPECT_LE(max_relative_error(y, want.y), kTolerance);
  EXPECT_LE(max_relative_error(next.conv_state, want.conv_state), kTolerance);
  EXPECT_LE(max_relative_error(next.ssm_state, want.ssm_state), kTolerance);
}

// Runs x in consecutive segments of the given lengths, passing each state on.
std::pair<at::Tensor, MambaState> run_segments(MambaLayer m, const at::Tensor& x,
                                               const std::vector<int64_t>& lengths) {
  MambaState state;
  std::vector<at::Tensor> ys;
  int64_t t0 = 0;
  for (int64_t len : lengths) {
    auto [y, next] = m->forward_stream(x.narrow(1, t0, len), state);
    ys.push_back(y);
    state = next;
    t0 += len;
  }
  EXPECT_EQ(t0, x.size(1));
  return {at::cat(ys, 1), state};
}

TEST(MambaLayer, SegmentsRunInSequenceEqualTheirConcatenation) {
  std::mt19937 rng(7);
  for (int64_t d_conv : {4, 1, 2}) {
    auto m = make_layer(MambaLayerOptions(10).state_size(4).expand_factor(1.5).d_conv(d_conv), 48);
    c10::InferenceMode guard;
    const int64_t total = 40;
    auto x = testing::randn({2, total, 10});
    auto [y_full, state_full] = m->forward_stream(x, MambaState{});
    for (int trial = 0; trial < 4; ++trial) {
      std::vector<int64_t> lengths;
      if (trial == 0) {
        lengths.assign(total, 1);  // token by token
      } else {
        for (int64_t left = total; left > 0;) {
          const int64_t len = std::min<int64_t>(left, 1 + rng() % (trial == 1 ? 3 : 12));
          lengths.push_back(len);
          left -= len;
        }
      }
      std::string split;
      for (auto len : lengths) split += std::to_string(len) + " ";
      SCOPED_TRACE("d_conv=" + std::to_string(d_conv) + " segments: " + split);
      auto [y, state] = run_segments(m, x, lengths);
      EXPECT_LE(max_relative_error(y, y_full), 1e-6);
      EXPECT_LE(max_relative_error(state.conv_state, state_full.conv_state), 1e-6);
      EXPECT_LE(max_relative_error(state.ssm_state, state_full.ssm_state), 1e-6);
    }
  }
}

TEST(MambaLayer, StreamingAcrossTheChunkBoundaryEqualsOneForward) {
  auto m = make_layer(MambaLayerOptions(8).state_size(4).expand_factor(1.0), 49);
  c10::InferenceMode guard;
  auto x = testing::randn({1, 2048 + 300, 8});
  auto [y_full, state_full] = m->forward_stream(x, MambaState{});
  auto [y, state] = run_segments(m, x, {1, 2047, 1, 299});
  EXPECT_LE(max_relative_error(y, y_full), 1e-6);
  EXPECT_LE(max_relative_error(state.ssm_state, state_full.ssm_state), 1e-6);
  EXPECT_LE(max_relative_error(state.conv_state, state_full.conv_state), 1e-6);
}

TEST(MambaLayer, ForwardStreamLeavesTheCallersStateUnchanged) {
  auto m = make_layer(MambaLayerOptions(8).state_size(4), 50);
  c10::InferenceMode guard;
  MambaState state{testing::randn({2, 16, 3}), testing::randn({2, 16, 4})};
  const MambaState copy{state.conv_state.clone(), state.ssm_state.clone()};
  auto [y, next] = m->forward_stream(testing::randn({2, 5, 8}), state);
  EXPECT_TRUE(at::equal(state.conv_state, copy.conv_state));
  EXPECT_TRUE(at::equal(state.ssm_state, copy.ssm_state));
  EXPECT_FALSE(next.ssm_state.is_same(state.ssm_state));
}

TEST(MambaLayer, ForwardIsForwardStreamFromTheZeroState) {
  auto m = make_layer(MambaLayerOptions(8).state_size(4), 51);
  c10::InferenceMode guard;
  auto x = testing::randn({2, 9, 8});
  auto zero = m->initial_state(2);
  EXPECT_TRUE(at::equal(m->forward(x), m->forward_stream(x, zero).first));
}

TEST(MambaLayer, ForwardFollowsParametersChangedAfterAForward) {
  // The conv and scan take their constants (the transposed conv weight, A = -exp(A_log), ...)
  // from a cache keyed by the parameters: a change in place or a replaced parameter must show.
  auto m = make_layer(MambaLayerOptions(8).state_size(4), 52);
  const auto x = testing::randn({2, 9, 8});
  {
    c10::InferenceMode guard;
    m->forward(x);
  }
  {
    at::NoGradGuard no_grad;
    m->A_log.add_(0.3);
    m->D.mul_(-1.0);
    m->conv1d->weight.add_(0.1);
    m->conv1d->bias.add_(0.1);
    m->dt_proj->bias.add_(0.5);
  }
  expect_matches_reference(m, x);
  {
    at::NoGradGuard no_grad;
    m->A_log.set_data(m->A_log.detach() * 0.5);  // new storage, as to() gives
  }
  expect_matches_reference(m, x);
  // A clone derives its own constants: changing it leaves the original as it was.
  MambaLayer copy(std::dynamic_pointer_cast<MambaLayerImpl>(m->clone()));
  {
    at::NoGradGuard no_grad;
    copy->D.add_(1.0);
  }
  expect_matches_reference(copy, x);
  expect_matches_reference(m, x);
}

TEST(MambaLayer, InitialStateIsZerosOfTheDocumentedShapes) {
  MambaLayer m(MambaLayerOptions(8).state_size(5).expand_factor(1.5).d_conv(3));
  auto s = m->initial_state(4);
  EXPECT_EQ(s.conv_state.sizes(), (std::vector<int64_t>{4, 12, 2}));
  EXPECT_EQ(s.ssm_state.sizes(), (std::vector<int64_t>{4, 12, 5}));
  EXPECT_EQ(s.conv_state.scalar_type(), at::kFloat);
  EXPECT_EQ(s.ssm_state.scalar_type(), at::kFloat);
  EXPECT_EQ(s.conv_state.abs().sum().item<double>(), 0.0);
  EXPECT_EQ(s.ssm_state.abs().sum().item<double>(), 0.0);
}

TEST(MambaLayer, ParametersHaveReferenceMambaNamesAndShapes) {
  // D = 40, E = 80, N = 6, R = ceil(40 / 16) = 3, d_conv = 4.
  MambaLayer m(MambaLayerOptions(40).state_size(6));
  EXPECT_EQ(m->inner_dim(), 80);
  EXPECT_EQ(m->dt_rank(), 3);
  std::map<std::string, std::vector<int64_t>> got;
  for (const auto& p : m->named_parameters()) got[p.key()] = p.value().sizes().vec();
  const std::map<std::string, std::vector<int64_t>> want = {
      {"in_proj.weight", {160, 40}}, {"conv1d.weight", {80, 1, 4}}, {"conv1d.bias", {80}},
      {"x_proj.weight", {15, 80}},   {"dt_proj.weight", {80, 3}},   {"dt_proj.bias", {80}},
      {"A_log", {80, 6}},            {"D", {80}},                   {"out_proj.weight", {40, 80}}};
  EXPECT_EQ(got, want);
  EXPECT_TRUE(m->named_buffers().is_empty());
}

TEST(MambaLayer, ExplicitDtRankAndExpandFactorSetShapes) {
  MambaLayer m(MambaLayerOptions(10).state_size(2).expand_factor(1.5).dt_rank(5).d_conv(2));
  EXPECT_EQ(m->inner_dim(), 15);
  EXPECT_EQ(m->dt_rank(), 5);
  EXPECT_EQ(m->x_proj->weight.sizes(), (std::vector<int64_t>{5 + 2 * 2, 15}));
  EXPECT_EQ(m->dt_proj->weight.sizes(), (std::vector<int64_t>{15, 5}));
  EXPECT_EQ(m->conv1d->weight.sizes(), (std::vector<int64_t>{15, 1, 2}));
}

TEST(MambaLayer, InitialisesALogToLogOneToNAndDToOnes) {
  MambaLayer m(MambaLayerOptions(8).state_size(5));
  auto want = at::log(at::arange(1, 6, at::kDouble)).expand({16, 5});
  EXPECT_LE(max_relative_error(m->A_log, want), 1e-7);
  EXPECT_TRUE(at::equal(m->D, at::ones({16})));
}

TEST(MambaLayer, RandomDtInitKeepsStepSizesWithinRange) {
  for (auto [dt_min, dt_max] : std::vector<std::pair<double, double>>{{1e-3, 0.1}, {0.01, 0.05}}) {
    SCOPED_TRACE("dt_min=" + std::to_string(dt_min) + " dt_max=" + std::to_string(dt_max));
    at::manual_seed(52);
    MambaLayer m(MambaLayerOptions(64).state_size(4).dt_min(dt_min).dt_max(dt_max));
    const double std_dev = 1.0 / std::sqrt(static_cast<double>(m->dt_rank()));  // R = 4
    auto steps = at::softplus(m->dt_proj->bias.to(at::kDouble));
    EXPECT_GE(steps.min().item<double>(), dt_min * (1 - 1e-5));
    EXPECT_LE(steps.max().item<double>(), dt_max * (1 + 1e-5));
    // Log-uniform: the steps spread over the range rather than sitting at one value.
    EXPECT_GT(steps.max().item<double>() / steps.min().item<double>(), 1.5);
    auto w = m->dt_proj->weight;
    EXPECT_LE(w.abs().max().item<double>(), std_dev);
    EXPECT_GT(w.std().item<double>(), 0.1 * std_dev);
  }
}

TEST(MambaLayer, DtInitFloorClampsSmallSteps) {
  at::manual_seed(53);
  MambaLayer m(MambaLayerOptions(64).dt_min(1e-6).dt_max(1e-5).dt_init_floor(5e-6));
  auto steps = at::softplus(m->dt_proj->bias.to(at::kDouble));
  EXPECT_GE(steps.min().item<double>(), 5e-6 * (1 - 1e-5));
  EXPECT_LE(steps.max().item<double>(), 1e-5 * (1 + 1e-5));
}

TEST(MambaLayer, ConstantDtInitFillsWeightWithRankToMinusHalf) {
  MambaLayer m(MambaLayerOptions(64).dt_rank(9).dt_init("constant"));
  auto w = m->dt_proj->weight;
  EXPECT_TRUE(at::equal(w, at::full_like(w, 1.0 / 3.0)));
  auto steps = at::softplus(m->dt_proj->bias.to(at::kDouble));
  EXPECT_GE(steps.min().item<double>(), 1e-3 * (1 - 1e-5));
  EXPECT_LE(steps.max().item<double>(), 0.1 * (1 + 1e-5));
}

TEST(MambaLayer, RejectsStatesOfTheWrongShape) {
  MambaLayer m(MambaLayerOptions(8).state_size(4));  // E = 16, d_conv - 1 = 3
  c10::InferenceMode guard;
  auto x = testing::randn({2, 3, 8});
  EXPECT_TRUE(ThrowsWith(
      [&] { m->forward_stream(x, {testing::randn({2, 16, 4}), testing::randn({2, 16, 4})}); },
      {"conv_state must be [2, 16, 3], got [2, 16, 4]"}));
  EXPECT_TRUE(ThrowsWith(
      [&] { m->forward_stream(x, {testing::randn({2, 16, 3}), testing::randn({2, 4, 16})}); },
      {"ssm_state must be [2, 16, 4], got [2, 4, 16]"}));
  // A state for another batch size.
  EXPECT_TRUE(ThrowsWith([&] { m->forward_stream(x, m->initial_state(3)); },
                         {"conv_state must be [2, 16, 3], got [3, 16, 3]"}));
  // Half a state.
  EXPECT_TRUE(ThrowsWith([&] { m->forward_stream(x, {testing::randn({2, 16, 3}), {}}); },
                         {"mamba state must have both conv_state and ssm_state"}));
}

TEST(MambaLayer, RejectsStatesOfTheWrongDtype) {
  MambaLayer m(MambaLayerOptions(8).state_size(4));
  c10::InferenceMode guard;
  auto x = testing::randn({2, 3, 8});
  auto s = m->initial_state(2);
  EXPECT_TRUE(ThrowsWith([&] { m->forward_stream(x, {s.conv_state, s.ssm_state.to(at::kDouble)}); },
                         {"mamba state must be float32"}));
  EXPECT_TRUE(ThrowsWith([&] { m->forward_stream(x, {s.conv_state.to(at::kHalf), s.ssm_state}); },
                         {"mamba state must be float32"}));
}

TEST(MambaLayer, RejectsNonFiniteStates) {
  MambaLayer m(MambaLayerOptions(8).state_size(4));
  c10::InferenceMode guard;
  auto x = testing::randn({2, 3, 8});
  auto s = m->initial_state(2);
  auto bad_ssm = s.ssm_state.clone();
  bad_ssm[1][5][2] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(ThrowsWith([&] { m->forward_stream(x, {s.conv_state, bad_ssm}); },
                         {"ssm_state contains non-finite values"}));
  auto bad_conv = s.conv_state.clone();
  bad_conv[0][0][0] = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(ThrowsWith([&] { m->forward_stream(x, {bad_conv, s.ssm_state}); },
                         {"conv_state contains non-finite values"}));
}

TEST(MambaLayer, RejectsBadInputs) {
  MambaLayer m(MambaLayerOptions(8).state_size(4));
  c10::InferenceMode guard;
  EXPECT_TRUE(ThrowsWith([&] { m->forward(testing::randn({2, 3, 9})); },
                         {"x must be [B, T, 8]", "got [2, 3, 9]"}));
  auto x = testing::randn({1, 4, 8});
  x[0][2][1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(ThrowsWith([&] { m->forward(x); }, {"x contains non-finite values"}));
}

TEST(MambaLayer, RejectsBadOptions) {
  EXPECT_TRUE(ThrowsWith([] { MambaLayer(MambaLayerOptions(8).dt_init("x")); },
                         {"dt_init must be 'constant' or 'random', got 'x'"}));
  EXPECT_TRUE(ThrowsWith([] { MambaLayer(MambaLayerOptions(8).state_size(0)); },
                         {"state_size must be >= 1, got 0"}));
  EXPECT_TRUE(ThrowsWith([] { MambaLayer(MambaLayerOptions(8).d_conv(0)); },
                         {"d_conv must be >= 1, got 0"}));
  EXPECT_TRUE(ThrowsWith([] { MambaLayer(MambaLayerOptions(4).expand_factor(0.1)); },
                         {"expand_factor * dim must be >= 1"}));
  EXPECT_TRUE(ThrowsWith([] { MambaLayer(MambaLayerOptions(8).dt_min(0.2).dt_max(0.1)); },
                         {"dt_min", "dt_max"}));
}

}  // namespace
}  // namespace hvlm
