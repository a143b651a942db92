#include "attention/dense_attention.h"

#include "attention/tensor_checks.h"
#include "attention/torch_compat.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace hvlm {
namespace {

constexpr int64_t kFusedMinQueries = 32;

}  // namespace

void prefer_flash_attention() {
#if HVLM_TORCH_AT_LEAST(2, 4)
  at::globalContext().setSDPUseCuDNN(false);
#endif
}

at::Tensor dense_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& allowed) {
#if HVLM_HAS_SDPA
  // On a GPU without a mask: LibTorch's fused kernels (flash attention for bf16/fp16, the
  // memory-efficient kernel for float32), O(T) memory. They take [batch, heads, T, hd].
  // With few queries (the global rows of local_global) the fused kernels would run one block
  // per (batch, head) over all keys; the plain product below spreads over the keys instead.
  if (!allowed.defined() && q.is_cuda() && q.size(-2) >= kFusedMinQueries) {
    // [batch, heads, T, hd] as is, whatever its strides (SDPA reads strided batch, head and
    // token dims, so the head views of the callers need no copy); [G, T, hd] as one head.
    // (An expanded, stride-0 batch, as cross_memory's shared memory, is made real first.)
    auto as4d = [](const at::Tensor& t) {
      const auto strides = t.strides();
      const bool broadcast = std::find(strides.begin(), strides.end(), 0) != strides.end();
      const at::Tensor real = broadcast ? t.contiguous() : t;
      if (t.dim() == 4) return real;
      if (t.dim() == 3) return real.unsqueeze(1);
      return real.reshape({-1, 1, t.size(-2), t.size(-1)});
    };
    auto out = at::scaled_dot_product_attention(as4d(q), as4d(k), as4d(v));
    auto shape = q.sizes().vec();
    shape.back() = v.size(-1);
    return out.view(shape);
  }
#endif
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto scores = at::matmul(q, k.transpose(-1, -2)).mul_(scale);
  if (allowed.defined()) {
    scores.masked_fill_(allowed.logical_not(), -std::numeric_limits<double>::infinity());
  }
  return at::matmul(at::softmax(scores, -1), v);
}

StandardAttentionImpl::StandardAttentionImpl(const StandardAttentionOptions& options_)
    : options(options_) {
  reset();
}

void StandardAttentionImpl::reset() {
  check_head_options("StandardAttention", options.dim(), options.num_heads());
  proj.register_in(*this, options.dim());
}

void StandardAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "hvlm::StandardAttention(dim=" << options.dim()
         << ", num_heads=" << options.num_heads() << ")";
}

at::Tensor StandardAttentionImpl::forward(const at::Tensor& x) {
  return proj.self_attention(x, options.num_heads(), 0.0, is_training(),
                             [this](const at::Tensor& q, const at::Tensor& k,
                                    const at::Tensor& v) { return attention_core(q, k, v); });
}

at::Tensor StandardAttentionImpl::attention_core(const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v) {
  return dense_attention(q, k, v);
}

}  // namespace hvlm
