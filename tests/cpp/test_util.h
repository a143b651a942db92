// Helpers shared by the GoogleTest suites of the attention library: error comparison, an
// independent dense masked-attention oracle written with plain at:: ops (in float64), and a
// matcher for the library's c10::Error messages. Nothing here calls the code under test's
// attention kernels; the oracles read a module's weights only.
#pragma once

#include "attention/multi_head.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

namespace hvlm::testing {

// The tolerance of docs/attention.md for float32 results against a reference.
constexpr double kTolerance = 1e-5;

// max|got - want| / max|want|, in float64; shapes must match (a mismatch fails the test and
// returns infinity). When `want` is all zeros this is max|got - want|.
double max_relative_error(const at::Tensor& got, const at::Tensor& want);

// Float32 tensors of normal samples; `scale` multiplies them.
at::Tensor randn(at::IntArrayRef shape, double scale = 1.0);

// softmax(q k^T / sqrt(hd), masked to `allowed`) v, computed in float64 and returned as
// float64. q [..., Tq, hd], k and v [..., Tk, hd]; `allowed` (bool, broadcastable to
// [..., Tq, Tk]) may be undefined for dense attention.
at::Tensor masked_attention_oracle(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& allowed = {});

// allowed[i, j] = (i - j) mod stride == 0, for n tokens.
at::Tensor strided_mask(int64_t n, int64_t stride);

// Global positions {floor(t * n / g) : t < g}, as a sorted distinct list (scalar arithmetic).
std::vector<int64_t> global_positions_ref(int64_t n, int64_t g);

// allowed[i, j] = |i - j| <= w / 2, or j global, or i global (docs/attention.md).
at::Tensor local_global_mask(int64_t n, int64_t local_window, int64_t num_global_tokens);

// A Linear layer applied in float64: x W^T + b (b may be undefined).
at::Tensor linear64(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {});

// [B, T, H * hd] -> [B, H, T, hd] and back, written independently of the library's helpers.
at::Tensor split_heads_ref(const at::Tensor& x, int64_t num_heads);
at::Tensor merge_heads_ref(const at::Tensor& x);

// out_proj(merge(masked_attention(split(q_proj(queries)), split(k_proj(keys)), ...))) in
// float64, from the weights in `proj`. keys [B or 1, Tk, D] broadcast over the batch.
at::Tensor projected_attention_oracle(const QkvProjections& proj, const at::Tensor& queries,
                                      const at::Tensor& keys, int64_t num_heads,
                                      const at::Tensor& allowed = {});

// Passes iff `fn` throws a c10::Error whose message contains every one of `parts`.
::testing::AssertionResult ThrowsWith(const std::function<void()>& fn,
                                      std::initializer_list<std::string> parts);

// The message of the c10::Error that `fn` throws ("" and a test failure if it does not).
std::string error_message(const std::function<void()>& fn);

}  // namespace hvlm::testing
