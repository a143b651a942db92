#include "attention/multi_head.h"

#include "attention/tensor_checks.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>

namespace hvlm {

void QkvProjections::register_in(torch::nn::Module& owner, int64_t dim) {
  q_proj = owner.register_module("q_proj", torch::nn::Linear(dim, dim));
  k_proj = owner.register_module("k_proj", torch::nn::Linear(dim, dim));
  v_proj = owner.register_module("v_proj", torch::nn::Linear(dim, dim));
  out_proj = owner.register_module("out_proj", torch::nn::Linear(dim, dim));
}

at::Tensor QkvProjections::self_attention(
    const at::Tensor& x, int64_t num_heads, double dropout, bool training,
    const std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>&
        core) {
  check_tokens(x, q_proj->weight.size(1), "x", q_proj->weight.scalar_type());
  at::Tensor q, k, v;
  if (x.is_cuda()) {
    // One [3D, D] product instead of three: x is read once and the GEMM is three times wider.
    // q, k and v are head views into its output (cores take strided heads).
    const int64_t d = q_proj->weight.size(0);
    const auto qkv = at::linear(x, at::cat({q_proj->weight, k_proj->weight, v_proj->weight}),
                                at::cat({q_proj->bias, k_proj->bias, v_proj->bias}));
    q = split_heads(qkv.narrow(-1, 0, d), num_heads);
    k = split_heads(qkv.narrow(-1, d, d), num_heads);
    v = split_heads(qkv.narrow(-1, 2 * d, d), num_heads);
  } else {
    q = split_heads(q_proj->forward(x), num_heads);
    k = split_heads(k_proj->forward(x), num_heads);
    v = split_heads(v_proj->forward(x), num_heads);
  }
  auto out = at::dropout(merge_heads(core(q, k, v)), dropout, training);
  return out_proj->forward(out);
}

void check_head_options(const char* module, int64_t dim, int64_t num_heads) {
  TORCH_CHECK(dim > 0, module, ": dim must be positive, got ", dim);
  TORCH_CHECK(num_heads > 0, module, ": num_heads must be positive, got ", num_heads);
  TORCH_CHECK(dim % num_heads == 0, module, ": num_heads (", num_heads,
              ") must divide dim (", dim, ")");
}

at::Tensor split_heads(const at::Tensor& x, int64_t num_heads) {
  const auto b = x.size(0), t = x.size(1), d = x.size(2);
  return x.view({b, t, num_heads, d / num_heads}).transpose(1, 2);
}

at::Tensor merge_heads(const at::Tensor& x) {
  const auto b = x.size(0), h = x.size(1), t = x.size(2), hd = x.size(3);
  return x.transpose(1, 2).reshape({b, t, h * hd});
}

at::Tensor run_head_chunks(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           int64_t bytes_per_head, const HeadCore& core) {
  const auto b = q.size(0), h = q.size(1), tq = q.size(2), hd = q.size(3);
  const auto tk = k.size(2);
  const int64_t groups = b * h;
  const auto qf = q.reshape({groups, tq, hd});
  const auto kf = k.reshape({groups, tk, hd});
  const auto vf = v.reshape({groups, tk, v.size(3)});
  const int64_t budget = q.is_cuda() ? kCudaHeadChunkBudgetBytes : kHeadChunkBudgetBytes;
  const int64_t per_chunk = std::clamp<int64_t>(budget / std::max<int64_t>(bytes_per_head, 1), 1, groups);
  if (per_chunk >= groups) {
    return core(qf, kf, vf).view({b, h, tq, -1});
  }
  at::Tensor out;
  for (int64_t g0 = 0; g0 < groups; g0 += per_chunk) {
    const int64_t n = std::min(per_chunk, groups - g0);
    auto part = core(qf.narrow(0, g0, n), kf.narrow(0, g0, n), vf.narrow(0, g0, n));
    if (!out.defined()) out = at::empty({groups, tq, part.size(2)}, part.options());
    out.narrow(0, g0, n).copy_(part);
  }
  return out.view({b, h, tq, -1});
}

}  // namespace hvlm
