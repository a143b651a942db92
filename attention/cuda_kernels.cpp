#include "attention/cuda_kernels.h"

#include "attention/cuda/window_attention.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>

namespace hvlm::cuda {
namespace {

kernels::cuda::ElementType element_type(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return kernels::cuda::ElementType::kFloat32;
    case at::kBFloat16: return kernels::cuda::ElementType::kBFloat16;
    case at::kHalf: return kernels::cuda::ElementType::kFloat16;
    default: TORCH_CHECK(false, name, ": CUDA kernels take float32, bfloat16 or float16, got ", t.scalar_type());
  }
}

}  // namespace

bool window_attention_supported(int64_t head_dim, int64_t num_global) {
  return kernels::cuda::window_attention_supported(head_dim, num_global);
}

at::Tensor window_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t half_window,
                            const at::Tensor& global_positions) {
  TORCH_CHECK(q.dim() == 3 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "window_attention: q, k, v must be [G, n, hd] of one shape, got ", q.sizes(), ", ", k.sizes(), ", ",
              v.sizes());
  TORCH_CHECK(q.is_cuda() && k.device() == q.device() && v.device() == q.device(),
              "window_attention: q, k, v must be on one CUDA device");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "window_attention: q, k, v must have one dtype");
  const c10::cuda::CUDAGuard device_guard(q.device());
  const auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const auto gpos = global_positions.to(q.device(), at::kInt).contiguous();
  auto out = at::empty_like(qc);
  kernels::cuda::WindowAttentionArgs args;
  args.dtype = element_type(q, "window_attention");
  args.groups = q.size(0);
  args.length = q.size(1);
  args.head_dim = q.size(2);
  args.half_window = half_window;
  args.q = qc.data_ptr();
  args.k = kc.data_ptr();
  args.v = vc.data_ptr();
  args.global_positions = gpos.numel() > 0 ? gpos.data_ptr<int32_t>() : nullptr;
  args.num_global = gpos.numel();
  args.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(q.size(2))));
  args.out = out.data_ptr();
  args.stream = at::cuda::getCurrentCUDAStream().stream();
  try {
    kernels::cuda::window_attention(args);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, e.what());
  }
  return out;
}

}  // namespace hvlm::cuda
