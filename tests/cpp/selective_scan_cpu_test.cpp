// The raw CPU kernels of MambaLayer (causal depthwise conv + SiLU, and the fused selective
// scan) against plain scalar float64 loops written from their contracts in
// selective_scan_cpu.h, with a channel count that leaves a partial channel block, strided
// rows and a carried-in state.
#include "attention/selective_scan_cpu.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace hvlm::kernels {
namespace {

constexpr double kTolerance = 1e-5;
constexpr int64_t kBatch = 2, kChannels = 37, kState = 5;

double silu(double x) { return x / (1.0 + std::exp(-x)); }
double softplus(double x) { return x > 20 ? x : std::log1p(std::exp(x)); }

std::vector<float> normal(size_t n, std::mt19937& rng, double scale = 1.0) {
  std::normal_distribution<float> dist(0.0f, static_cast<float>(scale));
  std::vector<float> out(n);
  for (auto& v : out) v = dist(rng);
  return out;
}

// max|got - want| / max|want|.
double max_relative_error(const std::vector<float>& got, const std::vector<double>& want) {
  EXPECT_EQ(got.size(), want.size());
  double diff = 0, scale = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double d = std::abs(static_cast<double>(got[i]) - want[i]);
    diff = std::isnan(d) ? INFINITY : std::max(diff, d);
    scale = std::max(scale, std::abs(want[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

// ---- causal conv -------------------------------------------------------------------------

struct ConvCase {
  int64_t length, kernel;
  int64_t row_stride_x = 2 * kChannels + 1;  // the conv reads the first kChannels columns
  std::vector<float> x, weight, bias, state_in;

  ConvCase(int64_t length_, int64_t kernel_, uint32_t seed) : length(length_), kernel(kernel_) {
    std::mt19937 rng(seed);
    x = normal(kBatch * length * row_stride_x, rng);
    weight = normal(kernel * kChannels, rng, 0.7);
    bias = normal(kChannels, rng, 0.3);
    state_in = normal(kBatch * kChannels * (kernel - 1), rng);
  }

  CausalConvArgs args(std::vector<float>& state_out, std::vector<float>& out) const {
    CausalConvArgs a;
    a.batch = kBatch;
    a.length = length;
    a.channels = kChannels;
    a.kernel = kernel;
    a.x = x.data();
    a.row_stride_x = row_stride_x;
    a.weight = weight.data();
    a.bias = bias.data();
    a.state_in = state_in.data();
    a.state_out = state_out.data();
    a.out = out.data();
    return a;
  }

  // Scalar reference: xx = state_in followed by x along time.
  void reference(std::vector<double>& state_out, std::vector<double>& out) const {
    const int64_t hist = kernel - 1;
    state_out.assign(kBatch * kChannels * hist, 0.0);
    out.assign(kBatch * length * kChannels, 0.0);
    for (int64_t b = 0; b < kBatch; ++b) {
      for (int64_t c = 0; c < kChannels; ++c) {
        std::vector<double> xx;
        for (int64_t j = 0; j < hist; ++j) xx.push_back(state_in[(b * kChannels + c) * hist + j]);
        for (int64_t t = 0; t < length; ++t) xx.push_back(x[(b * length + t) * row_stride_x + c]);
        for (int64_t t = 0; t < length; ++t) {
          double acc = bias[c];
          for (int64_t k = 0; k < kernel; ++k) acc += weight[k * kChannels + c] * xx[t + k];
          out[(b * length + t) * kChannels + c] = silu(acc);
        }
        for (int64_t j = 0; j < hist; ++j) {
          state_out[(b * kChannels + c) * hist + j] = xx[length + j];
        }
      }
    }
  }
};

void expect_conv_matches_reference(int64_t length, int64_t kernel) {
  SCOPED_TRACE("length=" + std::to_string(length) + " kernel=" + std::to_string(kernel));
  ConvCase c(length, kernel, 100 + static_cast<uint32_t>(length * 10 + kernel));
  std::vector<float> state_out(kBatch * kChannels * (kernel - 1), NAN);
  std::vector<float> out(kBatch * length * kChannels, NAN);
  causal_conv_silu(c.args(state_out, out), 0, scan_work_items(kBatch, kChannels));
  std::vector<double> want_state, want_out;
  c.reference(want_state, want_out);
  EXPECT_LE(max_relative_error(out, want_out), kTolerance);
  EXPECT_LE(max_relative_error(state_out, want_state), kTolerance);
}

TEST(SelectiveScanCpu, CausalConvMatchesScalarReference) {
  expect_conv_matches_reference(9, 4);
  expect_conv_matches_reference(33, 3);
}

TEST(SelectiveScanCpu, CausalConvShorterThanItsHistoryShiftsTheState) {
  // length < kernel - 1: part of the new state still comes from state_in.
  expect_conv_matches_reference(2, 4);
  expect_conv_matches_reference(1, 4);
}

TEST(SelectiveScanCpu, CausalConvWithKernelOneHasNoHistory) {
  expect_conv_matches_reference(6, 1);
}

// ---- selective scan ----------------------------------------------------------------------

struct ScanCase {
  int64_t length;
  int64_t rank = 3;                                  // the dt columns before B and C
  int64_t row_stride_bc = rank + 2 * kState + 2;     // two unused trailing columns
  int64_t row_stride_z = 2 * kChannels + 3;          // z sits after kChannels other columns
  std::vector<float> u, delta, a, bc, d, z, h0;

  ScanCase(int64_t length_, uint32_t seed) : length(length_) {
    std::mt19937 rng(seed);
    u = normal(kBatch * length * kChannels, rng);
    delta = normal(kBatch * length * kChannels, rng);
    for (auto& v : delta) v = static_cast<float>(softplus(v - 1.0));
    a = normal(kChannels * kState, rng, 0.5);
    for (auto& v : a) v = -std::exp(v);
    bc = normal(kBatch * length * row_stride_bc, rng);
    d = normal(kChannels, rng);
    z = normal(kBatch * length * row_stride_z, rng);
    h0 = normal(kBatch * kChannels * kState, rng);
  }

  SelectiveScanArgs args(std::vector<float>& h, std::vector<float>& y) const {
    SelectiveScanArgs s;
    s.batch = kBatch;
    s.length = length;
    s.channels = kChannels;
    s.state_size = kState;
    s.u = u.data();
    s.delta = delta.data();
    s.a = a.data();
    s.b = bc.data() + rank;
    s.c = bc.data() + rank + kState;
    s.row_stride_bc = row_stride_bc;
    s.d = d.data();
    s.z = z.data() + kChannels;
    s.row_stride_z = row_stride_z;
    s.h = h.data();
    s.y = y.data();
    return s;
  }

  void reference(std::vector<double>& h, std::vector<double>& y) const {
    h.assign(h0.begin(), h0.end());
    y.assign(kBatch * length * kChannels, 0.0);
    for (int64_t b = 0; b < kBatch; ++b) {
      for (int64_t t = 0; t < length; ++t) {
        const int64_t row = b * length + t;
        const float* bt = bc.data() + row * row_stride_bc + rank;
        const float* ct = bt + kState;
        for (int64_t c = 0; c < kChannels; ++c) {
          const double dt = delta[row * kChannels + c], ut = u[row * kChannels + c];
          double acc = d[c] * ut;
          for (int64_t s = 0; s < kState; ++s) {
            double& hs = h[(b * kChannels + c) * kState + s];
            hs = std::exp(dt * a[c * kState + s]) * hs + dt * bt[s] * ut;
            acc += ct[s] * hs;
          }
          y[row * kChannels + c] = acc * silu(z[row * row_stride_z + kChannels + c]);
        }
      }
    }
  }
};

TEST(SelectiveScanCpu, ScanMatchesScalarReferenceWithStateInAndOut) {
  for (int64_t length : {1, 7, 40}) {
    SCOPED_TRACE("length=" + std::to_string(length));
    ScanCase c(length, 200 + static_cast<uint32_t>(length));
    std::vector<float> h(c.h0), y(kBatch * length * kChannels, NAN);
    selective_scan(c.args(h, y), 0, scan_work_items(kBatch, kChannels));
    std::vector<double> want_h, want_y;
    c.reference(want_h, want_y);
    EXPECT_LE(max_relative_error(y, want_y), kTolerance);
    EXPECT_LE(max_relative_error(h, want_h), kTolerance);
  }
}

TEST(SelectiveScanCpu, DisjointItemRangesComposeToTheFullRun) {
  const int64_t items = scan_work_items(kBatch, kChannels);
  ASSERT_EQ(items, 4);  // two channel blocks (32 + 5) per sequence
  ScanCase sc(11, 300);
  std::vector<float> h_full(sc.h0), y_full(kBatch * 11 * kChannels, NAN);
  selective_scan(sc.args(h_full, y_full), 0, items);
  std::vector<float> h_parts(sc.h0), y_parts(kBatch * 11 * kChannels, NAN);
  for (auto [begin, end] : std::vector<std::pair<int64_t, int64_t>>{{2, 3}, {0, 1}, {3, 4}, {1, 2}}) {
    selective_scan(sc.args(h_parts, y_parts), begin, end);
  }
  EXPECT_EQ(y_parts, y_full);
  EXPECT_EQ(h_parts, h_full);

  ConvCase cc(11, 4, 301);
  std::vector<float> s_full(kBatch * kChannels * 3), o_full(kBatch * 11 * kChannels);
  causal_conv_silu(cc.args(s_full, o_full), 0, items);
  std::vector<float> s_parts(s_full.size(), NAN), o_parts(o_full.size(), NAN);
  causal_conv_silu(cc.args(s_parts, o_parts), 1, 4);
  causal_conv_silu(cc.args(s_parts, o_parts), 0, 1);
  EXPECT_EQ(o_parts, o_full);
  EXPECT_EQ(s_parts, s_full);
}

TEST(SelectiveScanCpu, StronglyDecayingStatesStayAccurate) {
  // Large delta * |A| drives exp() towards its underflow clamp; the state must decay to the
  // input term, not blow up or turn NaN.
  ScanCase c(6, 400);
  for (auto& v : c.delta) v *= 40.0f;
  std::vector<float> h(c.h0), y(kBatch * 6 * kChannels, NAN);
  selective_scan(c.args(h, y), 0, scan_work_items(kBatch, kChannels));
  std::vector<double> want_h, want_y;
  c.reference(want_h, want_y);
  EXPECT_LE(max_relative_error(y, want_y), kTolerance);
  EXPECT_LE(max_relative_error(h, want_h), kTolerance);
}

}  // namespace
}  // namespace hvlm::kernels
