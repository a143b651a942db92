// The CUDA kernels of PerformerAttention (softmax feature map):
//  - performer_attention: the whole attention core, fused, for bf16/fp16 on tensor cores;
//  - performer_features: the elementwise tail of the feature map, used by the generic LibTorch
//    path (float32 and shapes the fused core does not take).
//
// Plain CUDA C++ without LibTorch or cuda_runtime.h (see mamba_kernels.h for the common
// contract): device pointers of the current device, work enqueued on `stream` and not waited
// for; invalid arguments throw std::invalid_argument, failed launches std::runtime_error.
// Thread-safety: stateless; concurrent calls on different streams are safe when their outputs
// and workspaces are disjoint.
#pragma once

#include "attention/cuda/dtype.h"
#include "attention/cuda/head_layout.h"

#include <cstddef>
#include <cstdint>

namespace hvlm::kernels::cuda {

// ---------------------------------------------------------------------------------------------
// The fused core
// ---------------------------------------------------------------------------------------------

/// Per group (b, h) with x = q or k [n, hd], the projection P [m, hd], ds = hd^-0.25,
/// r = m^-0.5, eps = 1e-4, u = (ds x) P^T [n, m] and diag_i = |ds x_i|^2 / 2:
///   phi_k = r (exp(u - diag - s_k) + eps), s_k = max of u over all keys and features;
///   phi_q = r (exp(u - diag - s_q,i) + eps), s_q,i = max of u over the features of query i;
///   out = (phi_q (phi_k^T v)) / (phi_q (phi_k^T 1))   row-wise.
/// This is performer_attention_core of attention/performer_attention.cpp with the softmax
/// kernel. Arithmetic is float32 with tensor-core products of 16-bit operands: the key
/// features round to the input dtype, the query features and KV = phi_k^T v to bf16.
///
/// Three launches: a key pass (the stabilised feature map of keys times [v | 1], accumulated
/// per key range with a running per-feature maximum), a combine (rescales the ranges to the
/// group maximum s_k exactly, adds the eps terms, writes KV in bf16), and a query pass (the
/// query feature map with a running per-row maximum, times KV and the key sums).
struct PerformerAttentionArgs {
  DType dtype = DType::kBFloat16;  // of q, k, v, projection, out: kBFloat16 or kFloat16
  int64_t batch = 0, heads = 0;
  int64_t length = 0;              // n, the same for queries and keys
  int64_t head_dim = 0;            // hd; see performer_attention_supported
  int64_t features = 0;            // m; see performer_attention_supported
  // Operands [batch, heads, length, head_dim] at the given strides (elements; head_dim is
  // contiguous). q, k, v: pointer 16-byte aligned and strides multiples of 8 elements.
  const void* q = nullptr;
  HeadStrides q_strides;
  const void* k = nullptr;
  HeadStrides k_strides;
  const void* v = nullptr;
  HeadStrides v_strides;
  const void* projection = nullptr;  // [features, head_dim], contiguous, 16-byte aligned
  void* out = nullptr;               // 4-byte aligned, even strides; must not alias the inputs
  HeadStrides out_strides;
  // At least performer_attention_workspace_bytes(*this) bytes, 16-byte aligned; needs no
  // initialisation, and is in use until the work on `stream` completes.
  void* workspace = nullptr;
  void* stream = nullptr;  // cudaStream_t
  // Testing: caps the number of blocks of the key and query passes (0: one full wave).
  int64_t max_blocks = 0;
  // Benchmarks: when non-null, four cudaEvent_t recorded before the key pass, after it, after
  // the combine and after the query pass.
  void* const* stage_events = nullptr;
};

/// Whether the fused core handles this head_dim (32 or 64) and number of features (a
/// multiple of 16 in 16..256). Callers fall back to the generic path otherwise.
bool performer_attention_supported(int64_t head_dim, int64_t features);

/// Bytes of workspace performer_attention(args) needs. Depends on the sizes and on the current
/// device (its SM count): query it on the device the core will run on, with the same args.
size_t performer_attention_workspace_bytes(const PerformerAttentionArgs& args);

/// Enqueues the core. Throws std::invalid_argument for unsupported shapes, dtypes or
/// alignment, std::runtime_error when a launch fails.
void performer_attention(const PerformerAttentionArgs& args);

// ---------------------------------------------------------------------------------------------
// The elementwise feature-map tail
// ---------------------------------------------------------------------------------------------

/// out[r, f] = exp(u[r, f] - shift[r]) + add in one pass over u (the projections u = x' P^T and
/// the per-row shift come from LibTorch).
struct PerformerFeatureArgs {
  DType dtype = DType::kFloat32;  // of u and out
  int64_t rows = 0;          // G * n
  int64_t features = 0;      // m
  const void* u = nullptr;   // [rows, features], contiguous
  const float* shift = nullptr;  // [rows], float32
  float add = 0.0f;
  void* out = nullptr;       // [rows, features], may alias u
  void* stream = nullptr;    // cudaStream_t
};

/// Launches the kernel; throws std::runtime_error with CUDA's message when the launch fails.
void performer_features(const PerformerFeatureArgs& args);

}  // namespace hvlm::kernels::cuda
