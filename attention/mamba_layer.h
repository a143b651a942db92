// MambaLayer: a Mamba-1 selective state-space block (Gu & Dao 2023) with the reference
// implementation's parameter names and shapes (docs/attention.md):
//   in_proj -> causal depthwise conv1d -> SiLU -> x_proj -> dt_proj + softplus ->
//   selective scan -> gate by SiLU(z) -> out_proj.
// Besides the full-sequence forward there is a streaming form that takes and returns the
// recurrent state, such that segments run one after another equal their concatenation.
// The recurrent state is an argument, never module state: one instance serves every session.
// CPU path: the conv and the scan are fused C++ loops (selective_scan_cpu.h), parallel over
// channel blocks; long sequences run in chunks of time so working memory stays bounded.
// Inference only: no gradient flows through the fused kernels (train with the Python twin).
// Thread-safety: forward and forward_stream are safe to call concurrently in eval mode.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <string>
#include <utility>

namespace hvlm {

/// The recurrent state of one MambaLayer for a batch of sequences.
struct MambaState {
  /// [B, E, d_conv - 1]: the last d_conv - 1 inputs of the causal conv, oldest first.
  at::Tensor conv_state;
  /// [B, E, state_size], float32: the SSM state h.
  at::Tensor ssm_state;

  bool defined() const { return conv_state.defined() && ssm_state.defined(); }
};

/// Options for MambaLayer.
/// Example: MambaLayer(MambaLayerOptions(768).state_size(16).expand_factor(2.0))
struct MambaLayerOptions {
  explicit MambaLayerOptions(int64_t dim) : dim_(dim) {}
  /// Model dimension D (features per token).
  TORCH_ARG(int64_t, dim);
  /// SSM state size N per channel.
  TORCH_ARG(int64_t, state_size) = 16;
  /// Inner channels E = int(expand_factor * dim).
  TORCH_ARG(double, expand_factor) = 2.0;
  /// Width of the causal depthwise convolution, in tokens.
  TORCH_ARG(int64_t, d_conv) = 4;
  /// Rank of the delta projection; 0 means ceil(dim / 16).
  TORCH_ARG(int64_t, dt_rank) = 0;
  /// Initialisation of dt_proj.weight: "constant" or "random".
  TORCH_ARG(std::string, dt_init) = "random";
  /// Smallest initial step size delta.
  TORCH_ARG(double, dt_min) = 1e-3;
  /// Largest initial step size delta.
  TORCH_ARG(double, dt_max) = 0.1;
  /// Floor of the initial step size.
  TORCH_ARG(double, dt_init_floor) = 1e-4;
  /// Dropout on the output, applied only in training mode.
  TORCH_ARG(double, dropout) = 0.0;
};

class MambaLayerImpl : public torch::nn::Cloneable<MambaLayerImpl> {
 public:
  explicit MambaLayerImpl(const MambaLayerOptions& options);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  /// x [B, T, D] -> [B, T, D], from the zero state.
  at::Tensor forward(const at::Tensor& x);

  /// x [B, T, D] continuing from `state` (undefined state: zeros) -> (y, state after x).
  std::pair<at::Tensor, MambaState> forward_stream(const at::Tensor& x, const MambaState& state);

  /// The zero state for `batch` sequences.
  MambaState initial_state(int64_t batch) const;

  /// Throws unless `state` fits this layer and a batch of `batch` sequences.
  void check_state(const MambaState& state, int64_t batch) const;

  /// E, the inner channel count.
  int64_t inner_dim() const { return inner_dim_; }
  /// R, the delta projection rank.
  int64_t dt_rank() const { return dt_rank_; }

  /// The fused CPU stages of one chunk (float32, contiguous inputs; exposed for benchmarks).
  /// silu(causal_conv(x)) for xz [B, L, 2E] (x | z) continuing from conv_state [B, E, d_conv-1],
  /// which is replaced by the state after this chunk -> u [B, L, E].
  at::Tensor conv_stage(const at::Tensor& xz, at::Tensor& conv_state);
  /// The selective scan gated by silu(z): u [B, L, E], x_dbl [B, L, R + 2N] (dt | B | C),
  /// delta [B, L, E] (after softplus), xz as above; ssm_state [B, E, N] is updated in place
  /// -> y [B, L, E] (before out_proj).
  at::Tensor scan_stage(const at::Tensor& u, const at::Tensor& x_dbl, const at::Tensor& delta,
                        const at::Tensor& xz, at::Tensor& ssm_state);

  MambaLayerOptions options;
  torch::nn::Linear in_proj{nullptr};
  torch::nn::Conv1d conv1d{nullptr};
  torch::nn::Linear x_proj{nullptr};
  torch::nn::Linear dt_proj{nullptr};
  torch::nn::Linear out_proj{nullptr};
  at::Tensor A_log;  // [E, N]; A = -exp(A_log)
  at::Tensor D;      // [E]

 private:
  // The parameters in the layouts the conv and scan kernels take (defined in the .cpp).
  struct KernelConstants;
  struct ConstantsCache;
  // The current parameters' KernelConstants: derived on first use and again only after a
  // parameter changed (in place, or replaced by to()), instead of on every forward.
  std::shared_ptr<const KernelConstants> kernel_constants();

  // One chunk of time; updates `conv_state` and `ssm_state` in place.
  at::Tensor run_chunk(const at::Tensor& x, at::Tensor& conv_state, at::Tensor& ssm_state);

  std::shared_ptr<ConstantsCache> constants_cache_;

  int64_t inner_dim_ = 0;
  int64_t dt_rank_ = 0;
};
TORCH_MODULE(MambaLayer);

}  // namespace hvlm
