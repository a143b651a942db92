#include "attention/cross_memory_attention.h"

#include "attention/dense_attention.h"
#include "attention/tensor_checks.h"

#include <ATen/ATen.h>

namespace hvlm {

CrossMemoryAttentionImpl::CrossMemoryAttentionImpl(const CrossMemoryAttentionOptions& options_)
    : options(options_) {
  reset();
}

void CrossMemoryAttentionImpl::reset() {
  check_head_options("CrossMemoryAttention", options.dim(), options.num_heads());
  TORCH_CHECK(options.dropout() >= 0.0 && options.dropout() < 1.0,
              "CrossMemoryAttention: dropout must be in [0, 1), got ", options.dropout());
  proj.register_in(*this, options.dim());
}

void CrossMemoryAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "hvlm::CrossMemoryAttention(dim=" << options.dim()
         << ", num_heads=" << options.num_heads() << ")";
}

void CrossMemoryAttentionImpl::check_inputs(const at::Tensor& local,
                                            const at::Tensor& memory) const {
  const auto dtype = proj.q_proj->weight.scalar_type();
  check_tokens(local, options.dim(), "local", dtype);
  check_tokens(memory, options.dim(), "memory", dtype, /*min_tokens=*/0);
  TORCH_CHECK(memory.size(0) == local.size(0) || memory.size(0) == 1,
              "memory batch must be 1 or match local's batch (", local.size(0), "), got ",
              shape_string(memory.sizes()));
}

at::Tensor CrossMemoryAttentionImpl::attend(const at::Tensor& local, const at::Tensor& memory) {
  if (memory.size(1) == 0) return at::zeros_like(local);
  const auto h = options.num_heads();
  auto q = split_heads(proj.q_proj->forward(local), h);
  auto k = split_heads(proj.k_proj->forward(memory), h);
  auto v = split_heads(proj.v_proj->forward(memory), h);
  if (k.size(0) != q.size(0)) {
    k = k.expand({q.size(0), -1, -1, -1});
    v = v.expand({q.size(0), -1, -1, -1});
  }
  auto out = at::dropout(merge_heads(dense_attention(q, k, v)), options.dropout(), is_training());
  return proj.out_proj->forward(out);
}

at::Tensor CrossMemoryAttentionImpl::forward(const at::Tensor& local, const at::Tensor& memory,
                                             bool residual) {
  check_inputs(local, memory);
  if (residual && memory.size(1) == 0) return local;
  auto attn = attend(local, memory);
  return residual ? local + attn : attn;
}

at::Tensor CrossMemoryAttentionImpl::fuse_with_memory(const at::Tensor& local,
                                                      const at::Tensor& memory,
                                                      double fusion_ratio) {
  TORCH_CHECK(fusion_ratio >= 0.0 && fusion_ratio <= 1.0,
              "fusion_ratio must be in [0, 1], got ", fusion_ratio);
  check_inputs(local, memory);
  if (memory.size(1) == 0) return local;
  return local * (1.0 - fusion_ratio) + attend(local, memory) * fusion_ratio;
}

}  // namespace hvlm
