#include "attention/linear_attention_block.h"

#include "attention/tensor_checks.h"

#include <ATen/ATen.h>

namespace hvlm {

LinearAttentionBlockImpl::LinearAttentionBlockImpl(const LinearAttentionBlockOptions& options_)
    : options(options_) {
  reset();
}

void LinearAttentionBlockImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.attention_type() == "performer" || o.attention_type() == "mamba",
              "LinearAttentionBlock: attention_type must be performer or mamba, got '",
              o.attention_type(), "'");
  const int64_t hidden = mlp_hidden_dim(o.dim(), o.mlp_ratio());
  TORCH_CHECK(o.dropout() >= 0.0 && o.dropout() < 1.0,
              "LinearAttentionBlock: dropout must be in [0, 1), got ", o.dropout());
  norm1 = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.dim()})));
  if (o.attention_type() == "performer") {
    performer = register_module(
        "attn", PerformerAttention(PerformerAttentionOptions(o.dim(), o.num_heads())
                                       .num_random_features(o.num_random_features())
                                       .kernel_type(o.kernel_type())
                                       .dropout(o.dropout())));
  } else {
    mamba = register_module("attn", MambaLayer(MambaLayerOptions(o.dim())
                                                   .state_size(o.state_size())
                                                   .expand_factor(o.expand_factor())
                                                   .d_conv(o.d_conv())
                                                   .dt_rank(o.dt_rank())
                                                   .dt_init(o.dt_init())
                                                   .dt_min(o.dt_min())
                                                   .dt_max(o.dt_max())
                                                   .dt_init_floor(o.dt_init_floor())
                                                   .dropout(o.dropout())));
  }
  norm2 = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.dim()})));
  mlp = register_module("mlp", Mlp(MlpOptions(o.dim(), hidden).dropout(o.dropout())));
}

void LinearAttentionBlockImpl::pretty_print(std::ostream& stream) const {
  stream << "hvlm::LinearAttentionBlock(dim=" << options.dim()
         << ", attention_type=" << options.attention_type() << ")";
}

at::Tensor LinearAttentionBlockImpl::forward(const at::Tensor& x) {
  return forward_stream(x, MambaState{}).first;
}

std::pair<at::Tensor, MambaState> LinearAttentionBlockImpl::forward_stream(
    const at::Tensor& x, const MambaState& state) {
  check_tokens(x, options.dim(), "x", norm1->weight.scalar_type());
  auto normed = norm1->forward(x);
  at::Tensor attn;
  MambaState next;
  if (mamba) {
    std::tie(attn, next) = mamba->forward_stream(normed, state);
  } else {
    TORCH_CHECK(!state.conv_state.defined() && !state.ssm_state.defined(),
                "a performer block takes no recurrent state; only mamba blocks do");
    attn = performer->forward(normed);
  }
  auto h = x + at::dropout(attn, options.dropout(), is_training());
  return {h + mlp->forward(norm2->forward(h)), next};
}

}  // namespace hvlm
