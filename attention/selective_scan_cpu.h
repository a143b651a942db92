// The CPU kernels of MambaLayer: the causal depthwise conv + SiLU and the selective scan
// (fused with the D skip and the SiLU(z) gate). Plain C++ on raw float pointers, without
// LibTorch, so the loops stay vectorizable and this file compiles in a second. Work is split
// into items of (batch, channel block); callers run disjoint item ranges in parallel.
// Thread-safety: distinct item ranges touch disjoint outputs and may run concurrently.
#pragma once

#include <cstdint>

namespace hvlm::kernels {

// Channels per work item: the scan keeps this many channels' states in registers/L1.
constexpr int64_t kScanChannelBlock = 32;

// Number of work items for `batch` sequences of `channels` channels.
inline int64_t scan_work_items(int64_t batch, int64_t channels) {
  return batch * ((channels + kScanChannelBlock - 1) / kScanChannelBlock);
}

struct CausalConvArgs {
  int64_t batch = 0, length = 0, channels = 0, kernel = 0;
  const float* x = nullptr;      // [batch, length, row_stride_x], first `channels` used
  int64_t row_stride_x = 0;
  const float* weight = nullptr; // [kernel, channels] (the conv1d weight transposed)
  const float* bias = nullptr;   // [channels]
  const float* state_in = nullptr;  // [batch, channels, kernel - 1]: the previous inputs
  float* state_out = nullptr;       // [batch, channels, kernel - 1]; may not alias state_in
  float* out = nullptr;             // [batch, length, channels]: silu(conv(x))
};

// out[b, t, c] = silu(bias[c] + sum_k weight[k, c] * xx[b, t + k, c]), where xx is state_in
// followed by x along time; state_out receives the last kernel - 1 steps of xx.
void causal_conv_silu(const CausalConvArgs& args, int64_t item_begin, int64_t item_end);

struct SelectiveScanArgs {
  int64_t batch = 0, length = 0, channels = 0, state_size = 0;
  const float* u = nullptr;      // [batch, length, channels]
  const float* delta = nullptr;  // [batch, length, channels], already softplus'ed
  const float* a = nullptr;      // [channels, state_size], A = -exp(A_log)
  const float* b = nullptr;      // [batch, length, row_stride_bc] at column 0..state_size
  const float* c = nullptr;      // same layout as b
  int64_t row_stride_bc = 0;
  const float* d = nullptr;      // [channels]
  const float* z = nullptr;      // [batch, length, row_stride_z]: the gate input
  int64_t row_stride_z = 0;
  float* h = nullptr;            // [batch, channels, state_size]: state in, updated in place
  float* y = nullptr;            // [batch, length, channels]
};

// h_t = exp(delta_t * A) h_{t-1} + delta_t B_t u_t;  y_t = (C_t . h_t + D u_t) * silu(z_t).
void selective_scan(const SelectiveScanArgs& args, int64_t item_begin, int64_t item_end);

}  // namespace hvlm::kernels
