#include "attention/performer_attention.h"

#include "attention/tensor_checks.h"
#if HVLM_WITH_CUDA
#include "attention/cuda_kernels.h"
#endif

#include <ATen/ATen.h>

#include <cmath>

namespace hvlm {
namespace {

constexpr double kSoftmaxEps = 1e-4;  // keeps phi > 0 when exp underflows
constexpr double kReluEps = 1e-3;

}  // namespace

PerformerKernel parse_performer_kernel(const std::string& name) {
  if (name == "softmax") return PerformerKernel::kSoftmax;
  if (name == "relu") return PerformerKernel::kRelu;
  if (name == "elu") return PerformerKernel::kElu;
  TORCH_CHECK(false, "kernel_type must be one of softmax, relu, elu, got '", name, "'");
}

at::Tensor orthogonal_random_features(int64_t num_features, int64_t head_dim) {
  std::vector<at::Tensor> blocks;
  for (int64_t rows = 0; rows < num_features; rows += head_dim) {
    auto qr = at::linalg_qr(at::randn({head_dim, head_dim}));
    // Fixing the signs by diag(R) makes Q uniformly (Haar) distributed; raw QR output leans
    // towards the axes.
    auto signs = at::sign(std::get<1>(qr).diagonal()).unsqueeze(0);
    blocks.push_back((std::get<0>(qr) * signs).t());
  }
  auto w = at::cat(blocks, 0).narrow(0, 0, num_features);
  auto norms = at::randn({num_features, head_dim}).norm(2, {1}, /*keepdim=*/true);
  return (w * norms).contiguous();
}

at::Tensor performer_features(const at::Tensor& x, const at::Tensor& projection,
                              PerformerKernel kernel, bool is_query) {
  const double data_scale = std::pow(static_cast<double>(x.size(-1)), -0.25);
  auto xs = x * data_scale;
  auto u = at::matmul(xs, projection.t());  // [G, n, m]
#if HVLM_WITH_CUDA
  if (x.is_cuda() && kernel == PerformerKernel::kSoftmax) {
    // The same function in one pass over u: exp(u - |x'|^2/2 - s) * r + eps * r
    // = exp(u - (|x'|^2/2 + s - log r)) + eps * r.
    const double ratio = 1.0 / std::sqrt(static_cast<double>(projection.size(0)));
    auto shift = xs.to(at::kFloat).pow(2).sum(-1).mul_(0.5);  // [G, n]
    auto stab = is_query ? at::amax(u, {-1}).to(at::kFloat) : at::amax(u, {-2, -1}, /*keepdim=*/true).to(at::kFloat).squeeze(-1);
    shift.add_(stab).sub_(std::log(ratio));
    return cuda::performer_features(u, shift, kSoftmaxEps * ratio);
  }
#endif
  switch (kernel) {
    case PerformerKernel::kRelu:
      return at::relu_(u).add_(kReluEps);
    case PerformerKernel::kElu:
      return at::elu(u).add_(1.0);
    case PerformerKernel::kSoftmax:
      break;
  }
  // exp(u - |x'|^2 / 2 - s): s is the per-token max for queries and the per-sequence max for
  // keys; both cancel in the ratio and keep exp from overflowing.
  auto diag = xs.pow(2).sum(-1, /*keepdim=*/true).mul_(0.5);
  auto stab = is_query ? std::get<0>(u.max(-1, /*keepdim=*/true))
                       : at::amax(u, {-2, -1}, /*keepdim=*/true);
  const double ratio = 1.0 / std::sqrt(static_cast<double>(projection.size(0)));
  return u.sub_(diag).sub_(stab).exp_().add_(kSoftmaxEps).mul_(ratio);
}

at::Tensor performer_attention_core(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& projection, PerformerKernel kernel) {
  auto phi_k = performer_features(k, projection, kernel, /*is_query=*/false);  // [G, n, m]
  auto kv = at::matmul(phi_k.transpose(1, 2), v);                             // [G, m, hd]
  auto k_sum = phi_k.sum(1).unsqueeze(-1);                                    // [G, m, 1]
  phi_k.reset();
  auto phi_q = performer_features(q, projection, kernel, /*is_query=*/true);  // [G, n, m]
  auto num = at::matmul(phi_q, kv);
  auto den = at::matmul(phi_q, k_sum);
  return num.div_(den);
}

PerformerAttentionImpl::PerformerAttentionImpl(const PerformerAttentionOptions& options_)
    : options(options_) {
  reset();
}

void PerformerAttentionImpl::reset() {
  check_head_options("PerformerAttention", options.dim(), options.num_heads());
  TORCH_CHECK(options.num_random_features() >= 1,
              "PerformerAttention: num_random_features must be >= 1, got ",
              options.num_random_features());
  TORCH_CHECK(options.dropout() >= 0.0 && options.dropout() < 1.0,
              "PerformerAttention: dropout must be in [0, 1), got ", options.dropout());
  kernel_ = parse_performer_kernel(options.kernel_type());
  proj.register_in(*this, options.dim());
  projection_matrix = register_buffer(
      "projection_matrix", orthogonal_random_features(options.num_random_features(),
                                                      options.dim() / options.num_heads()));
}

void PerformerAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "hvlm::PerformerAttention(dim=" << options.dim()
         << ", num_heads=" << options.num_heads()
         << ", num_random_features=" << options.num_random_features()
         << ", kernel_type=" << options.kernel_type() << ")";
}

at::Tensor PerformerAttentionImpl::forward(const at::Tensor& x) {
  return proj.self_attention(x, options.num_heads(), options.dropout(), is_training(),
                             [this](const at::Tensor& q, const at::Tensor& k,
                                    const at::Tensor& v) { return attention_core(q, k, v); });
}

at::Tensor PerformerAttentionImpl::attention_core(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v) {
#if HVLM_WITH_CUDA
  // bf16/fp16 on a GPU: the fused core reads the per-head views in place, in one pass over
  // all heads, and returns a view that merge_heads turns into [B, n, dim] without a copy.
  if (q.is_cuda() && kernel_ == PerformerKernel::kSoftmax && k.sizes() == q.sizes() &&
      v.sizes() == q.sizes() && projection_matrix.scalar_type() == q.scalar_type() &&
      cuda::performer_attention_supported(q.scalar_type(), q.size(3), projection_matrix.size(0))) {
    return cuda::performer_attention(q, k, v, projection_matrix);
  }
#endif
  const int64_t n = q.size(2), m = options.num_random_features(), hd = q.size(3);
  // features and their exp/temporaries (about 3 [n, m] tensors), plus scaled copies of q, k
  const int64_t bytes_per_head = static_cast<int64_t>(sizeof(float)) * (3 * n * m + 3 * n * hd);
  return run_head_chunks(q, k, v, bytes_per_head,
                         [&](const at::Tensor& qc, const at::Tensor& kc, const at::Tensor& vc) {
                           return performer_attention_core(qc, kc, vc, projection_matrix, kernel_);
                         });
}

}  // namespace hvlm
