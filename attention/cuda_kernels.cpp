#include "attention/cuda_kernels.h"

#include "attention/cuda/delta_projection.h"
#include "attention/cuda/mamba_input.h"
#include "attention/cuda/mamba_kernels.h"
#include "attention/cuda/performer_kernels.h"
#include "attention/cuda/piece_copy.h"
#include "attention/cuda/window_attention.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/accumulate.h>

#include <cmath>
#include <initializer_list>

namespace hvlm::cuda {
namespace {

kernels::cuda::DType element_type(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return kernels::cuda::DType::kFloat32;
    case at::kBFloat16: return kernels::cuda::DType::kBFloat16;
    case at::kHalf: return kernels::cuda::DType::kFloat16;
    default: TORCH_CHECK(false, name, ": CUDA kernels take float32, bfloat16 or float16, got ", t.scalar_type());
  }
}

// Every tensor of `others` must be on `ref`'s device: the kernels read them through raw pointers.
void check_same_device(const char* name, const at::Tensor& ref, std::initializer_list<const at::Tensor*> others) {
  for (const at::Tensor* t : others) {
    TORCH_CHECK(t->device() == ref.device(), name, ": every operand must be on ", ref.device(), ", got one on ",
                t->device());
  }
}

// Runs a kernel launcher, turning its std exceptions into c10::Errors.
template <typename Launch>
void launch(const char* what, Launch&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    TORCH_CHECK(false, what, ": ", e.what());
  }
}

}  // namespace

at::Tensor performer_features(const at::Tensor& u, const at::Tensor& shift, double add) {
  TORCH_CHECK(u.is_cuda() && shift.device() == u.device() && shift.scalar_type() == at::kFloat,
              "performer_features: u and a float32 shift on one CUDA device");
  TORCH_CHECK(shift.numel() * u.size(-1) == u.numel(), "performer_features: shift must have one value per row of u");
  const c10::cuda::CUDAGuard device_guard(u.device());
  const auto uc = u.contiguous();
  const auto sc = shift.contiguous();
  auto out = at::empty_like(uc);
  kernels::cuda::PerformerFeatureArgs args;
  args.dtype = element_type(u, "performer_features");
  args.rows = sc.numel();
  args.features = u.size(-1);
  args.u = uc.data_ptr();
  args.shift = sc.data_ptr<float>();
  args.add = static_cast<float>(add);
  args.out = out.data_ptr();
  args.stream = at::cuda::getCurrentCUDAStream().stream();
  launch("performer_features", [&] { kernels::cuda::performer_features(args); });
  return out;
}

namespace {

kernels::cuda::HeadStrides head_strides(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

// t itself when our attention kernels can read it in place with 16-byte loads (last dim
// contiguous, 16-byte aligned data, other strides in whole 16-byte units), else a contiguous copy.
at::Tensor vector_aligned(const at::Tensor& t) {
  const int64_t per_vector = 16 / static_cast<int64_t>(t.element_size());
  bool ok = t.stride(-1) == 1 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) ok = ok && t.stride(d) % per_vector == 0;
  return ok ? t : t.clone(at::MemoryFormat::Contiguous);
}

}  // namespace

bool performer_attention_supported(at::ScalarType dtype, int64_t head_dim, int64_t num_features) {
  return (dtype == at::kBFloat16 || dtype == at::kHalf) &&
         kernels::cuda::performer_attention_supported(head_dim, num_features);
}

at::Tensor performer_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& projection) {
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "performer_attention: q, k, v must be [B, H, n, hd] of one shape, got ", q.sizes(), ", ", k.sizes(),
              ", ", v.sizes());
  TORCH_CHECK(q.is_cuda() && k.device() == q.device() && v.device() == q.device() &&
                  projection.device() == q.device(),
              "performer_attention: q, k, v and projection must be on one CUDA device");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type() &&
                  projection.scalar_type() == q.scalar_type(),
              "performer_attention: q, k, v and projection must have one dtype");
  const int64_t batch = q.size(0), heads = q.size(1), length = q.size(2), head_dim = q.size(3);
  TORCH_CHECK(projection.dim() == 2 && projection.size(1) == head_dim,
              "performer_attention: projection must be [m, ", head_dim, "], got ", projection.sizes());
  const int64_t features = projection.size(0);
  TORCH_CHECK(performer_attention_supported(q.scalar_type(), head_dim, features),
              "performer_attention: unsupported dtype ", q.scalar_type(), ", head_dim ", head_dim, " or ", features,
              " features");
  const c10::cuda::CUDAGuard device_guard(q.device());
  auto out = at::empty({batch, length, heads, head_dim}, q.options());
  auto result = out.permute({0, 2, 1, 3});
  if (out.numel() == 0) return result;
  const auto qa = vector_aligned(q), ka = vector_aligned(k), va = vector_aligned(v);
  const auto proj = vector_aligned(projection.contiguous());
  kernels::cuda::PerformerAttentionArgs args;
  args.dtype = element_type(q, "performer_attention");
  args.batch = batch;
  args.heads = heads;
  args.length = length;
  args.head_dim = head_dim;
  args.features = features;
  args.q = qa.data_ptr();
  args.q_strides = head_strides(qa);
  args.k = ka.data_ptr();
  args.k_strides = head_strides(ka);
  args.v = va.data_ptr();
  args.v_strides = head_strides(va);
  args.projection = proj.data_ptr();
  args.out = out.data_ptr();
  args.out_strides = head_strides(result);
  args.stream = at::cuda::getCurrentCUDAStream().stream();
  size_t bytes = 0;
  launch("performer_attention", [&] { bytes = kernels::cuda::performer_attention_workspace_bytes(args); });
  const auto workspace = at::empty({static_cast<int64_t>(bytes)}, q.options().dtype(at::kByte));
  args.workspace = workspace.data_ptr();
  launch("performer_attention", [&] { kernels::cuda::performer_attention(args); });
  return result;
}

at::Tensor mamba_conv(const at::Tensor& xz, const at::Tensor& conv_weight, const at::Tensor& conv_bias,
                      at::Tensor& conv_state) {
  TORCH_CHECK(xz.is_cuda() && xz.dim() == 3 && xz.is_contiguous(), "mamba_conv: xz must be a contiguous [B, L, 2E] CUDA tensor");
  check_same_device("mamba_conv", xz, {&conv_weight, &conv_bias, &conv_state});
  const int64_t batch = xz.size(0), length = xz.size(1), channels = xz.size(2) / 2;
  TORCH_CHECK(conv_weight.dim() == 2 && conv_weight.size(1) == channels && conv_weight.is_contiguous() &&
                  conv_bias.numel() == channels && conv_bias.is_contiguous() &&
                  conv_weight.scalar_type() == xz.scalar_type() && conv_bias.scalar_type() == xz.scalar_type(),
              "mamba_conv: conv_weight must be a contiguous [K, E] and conv_bias a contiguous [E] of xz's dtype");
  const int64_t kernel = conv_weight.size(0);
  TORCH_CHECK(conv_state.scalar_type() == at::kFloat &&
                  conv_state.sizes() == at::IntArrayRef({batch, channels, kernel - 1}),
              "mamba_conv: conv_state must be float32 [B, E, K - 1] = [", batch, ", ", channels, ", ", kernel - 1,
              "], got ", conv_state.scalar_type(), " ", conv_state.sizes());
  const c10::cuda::CUDAGuard device_guard(xz.device());
  const auto state_in = conv_state.contiguous();
  auto state_out = at::empty_like(state_in);
  auto u = at::empty({batch, length, channels}, xz.options());
  kernels::cuda::CausalConvArgs args;
  args.batch = batch;
  args.length = length;
  args.channels = channels;
  args.kernel = kernel;
  args.dtype = element_type(xz, "mamba_conv");
  args.x = xz.data_ptr();
  args.row_stride_x = 2 * channels;
  args.weight = conv_weight.data_ptr();
  args.bias = conv_bias.data_ptr();
  args.state_in = kernel > 1 ? state_in.data_ptr<float>() : nullptr;
  args.state_out = kernel > 1 ? state_out.data_ptr<float>() : nullptr;
  args.out = u.data_ptr();
  args.stream = at::cuda::getCurrentCUDAStream().stream();
  launch("mamba_conv", [&] { kernels::cuda::causal_conv_silu(args); });
  conv_state = state_out;
  return u;
}

std::optional<MambaInputs> mamba_input(const at::Tensor& xz, const at::Tensor& conv_weight,
                                       const at::Tensor& conv_bias, at::Tensor& conv_state,
                                       const at::Tensor& x_proj_weight, const at::Tensor& dt_weight,
                                       const at::Tensor& dt_bias) {
  if (!xz.is_cuda() || xz.dim() != 3 || !xz.is_contiguous() || xz.size(2) % 2 != 0) return std::nullopt;
  const int64_t batch = xz.size(0), length = xz.size(1), channels = xz.size(2) / 2;
  const auto dtype = xz.scalar_type();
  for (const at::Tensor* t : {&conv_weight, &conv_bias, &x_proj_weight, &dt_weight}) {
    if (t->scalar_type() != dtype || !t->is_contiguous() || t->device() != xz.device()) return std::nullopt;
  }
  if (conv_weight.dim() != 2 || conv_weight.size(1) != channels || conv_bias.numel() != channels ||
      x_proj_weight.dim() != 2 || x_proj_weight.size(1) != channels || dt_weight.dim() != 2 ||
      dt_weight.size(0) != channels || dt_bias.scalar_type() != at::kFloat || !dt_bias.is_contiguous() ||
      dt_bias.numel() != channels || dt_bias.device() != xz.device()) {
    return std::nullopt;
  }
  const int64_t kernel = conv_weight.size(0);
  if (conv_state.scalar_type() != at::kFloat || conv_state.device() != xz.device() ||
      conv_state.sizes() != at::IntArrayRef({batch, channels, kernel - 1})) {
    return std::nullopt;
  }
  if (dtype != at::kBFloat16 && dtype != at::kHalf) return std::nullopt;
  const auto state_in = conv_state.contiguous();
  kernels::cuda::MambaInputArgs args;
  args.dtype = element_type(xz, "mamba_input");
  args.batch = batch;
  args.length = length;
  args.channels = channels;
  args.kernel = kernel;
  args.rank = dt_weight.size(1);
  args.proj = x_proj_weight.size(0);
  args.x = xz.data_ptr();
  args.row_stride_x = 2 * channels;
  args.conv_weight = conv_weight.data_ptr();
  args.conv_bias = conv_bias.data_ptr();
  args.x_proj_weight = x_proj_weight.data_ptr();
  args.dt_weight = dt_weight.data_ptr();
  args.dt_bias = dt_bias.data_ptr<float>();
  // The outputs are not allocated yet (fresh allocations are aligned enough).
  if (!kernels::cuda::mamba_input_supported(args) || !kernels::cuda::mamba_input_preferred(args)) return std::nullopt;
  const c10::cuda::CUDAGuard device_guard(xz.device());
  auto state_out = at::empty_like(state_in);
  MambaInputs out;
  out.u = at::empty({batch, length, channels}, xz.options());
  out.x_dbl = at::empty({batch, length, args.proj}, xz.options());
  out.delta = at::empty({batch, length, channels}, xz.options());
  args.conv_state_in = kernel > 1 ? state_in.data_ptr<float>() : nullptr;
  args.conv_state_out = kernel > 1 ? state_out.data_ptr<float>() : nullptr;
  args.u = out.u.data_ptr();
  args.x_dbl = out.x_dbl.data_ptr();
  args.delta = out.delta.data_ptr();
  args.stream = at::cuda::getCurrentCUDAStream().stream();
  launch("mamba_input", [&] { kernels::cuda::mamba_input_stage(args); });
  conv_state = state_out;
  return out;
}

at::Tensor mamba_scan(const at::Tensor& u, const at::Tensor& x_dbl, const at::Tensor& dt_weight,
                      const at::Tensor& dt_bias, const at::Tensor& a, const at::Tensor& d, const at::Tensor& xz,
                      at::Tensor& ssm_state, const at::Tensor& ready_delta) {
  TORCH_CHECK(u.is_cuda() && u.is_contiguous() && x_dbl.is_contiguous() && xz.is_contiguous(),
              "mamba_scan: u, x_dbl and xz must be contiguous CUDA tensors");
  TORCH_CHECK(ssm_state.scalar_type() == at::kFloat && ssm_state.is_contiguous(),
              "mamba_scan: ssm_state must be contiguous float32");
  check_same_device("mamba_scan", u, {&x_dbl, &dt_weight, &dt_bias, &a, &d, &xz, &ssm_state});
  TORCH_CHECK(u.dim() == 3 && a.dim() == 2 && dt_weight.dim() == 2,
              "mamba_scan: expected u [B, L, E], a [E, N] and dt_weight [E, R], got ", u.sizes(), ", ",
              a.sizes(), " and ", dt_weight.sizes());
  const int64_t batch = u.size(0), length = u.size(1), channels = u.size(2);
  const int64_t rank = dt_weight.size(1), state_size = a.size(1);
  TORCH_CHECK(ssm_state.sizes() == at::IntArrayRef({batch, channels, state_size}),
              "mamba_scan: ssm_state must be [B, E, N] = [", batch, ", ", channels, ", ", state_size, "], got ",
              ssm_state.sizes());
  auto float_vector = [](const at::Tensor& t, int64_t numel) {
    return t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == numel;
  };
  TORCH_CHECK(float_vector(dt_bias, channels) && float_vector(a, channels * state_size) && float_vector(d, channels),
              "mamba_scan: dt_bias [E], a [E, N] and d [E] must be contiguous float32");
  // The kernels read these layouts through raw pointers: a mismatch would read out of bounds.
  TORCH_CHECK(dt_weight.size(0) == channels && x_dbl.dim() == 3 &&
                  x_dbl.size(0) == batch && x_dbl.size(1) == length && x_dbl.size(2) >= rank + 2 * state_size &&
                  x_dbl.scalar_type() == u.scalar_type() && xz.dim() == 3 && xz.size(0) == batch &&
                  xz.size(1) == length && xz.size(2) == 2 * channels && xz.scalar_type() == u.scalar_type(),
              "mamba_scan: expected dt_weight [E, R], x_dbl [B, L, >= R + 2N] and xz [B, L, 2E] in u's dtype, got ",
              dt_weight.sizes(), ", ", x_dbl.sizes(), " ", x_dbl.scalar_type(), ", ", xz.sizes(), " ",
              xz.scalar_type(), " with u ", u.sizes(), " ", u.scalar_type());
  const c10::cuda::CUDAGuard device_guard(u.device());
  const kernels::cuda::DType dtype = element_type(u, "mamba_scan");
  const auto stream = at::cuda::getCurrentCUDAStream().stream();
  // delta: given ready (by mamba_input), or for 2-byte dtypes dt_proj + bias + softplus in one
  // kernel, so the scan reads it ready; otherwise (float32) the product alone, and the scan adds
  // the bias and applies the softplus itself.
  at::Tensor delta = ready_delta;
  const bool project_fused = kernels::cuda::delta_projection_supported(dtype, rank) &&
                             dt_weight.scalar_type() == u.scalar_type();
  if (delta.defined()) {
    TORCH_CHECK(delta.sizes() == u.sizes() && delta.scalar_type() == u.scalar_type() && delta.is_contiguous() &&
                    delta.device() == u.device(),
                "mamba_scan: a ready delta must be a contiguous tensor like u ", u.sizes(), ", got ", delta.sizes(),
                " ", delta.scalar_type());
  } else if (project_fused) {
    const at::Tensor weight = dt_weight.contiguous();
    delta = at::empty_like(u);
    kernels::cuda::DeltaProjectionArgs dp;
    dp.dtype = dtype;
    dp.rows = batch * length;
    dp.channels = channels;
    dp.rank = rank;
    dp.dt = x_dbl.data_ptr();
    dp.row_stride_dt = x_dbl.size(2);
    dp.weight = weight.data_ptr();
    dp.bias = dt_bias.data_ptr<float>();
    dp.delta = delta.data_ptr();
    dp.stream = stream;
    launch("mamba_delta_projection", [&] { kernels::cuda::delta_projection(dp); });
  } else {
    delta = at::matmul(x_dbl.narrow(-1, 0, rank), dt_weight.t()).contiguous();
  }
  const bool delta_ready = ready_delta.defined() || project_fused;
  auto y = at::empty_like(u);
  kernels::cuda::SelectiveScanArgs args;
  args.batch = batch;
  args.length = length;
  args.channels = channels;
  args.state_size = state_size;
  args.dtype = dtype;
  args.u = u.data_ptr();
  args.delta = delta.data_ptr();
  args.delta_bias = delta_ready ? nullptr : dt_bias.data_ptr<float>();
  args.delta_softplus = !delta_ready;
  args.a = a.data_ptr<float>();
  const int64_t element = static_cast<int64_t>(x_dbl.element_size());
  args.b = static_cast<const char*>(x_dbl.data_ptr()) + rank * element;
  args.c = static_cast<const char*>(x_dbl.data_ptr()) + (rank + state_size) * element;
  args.row_stride_bc = x_dbl.size(2);
  args.d = d.data_ptr<float>();
  args.z = static_cast<const char*>(xz.data_ptr()) + channels * element;
  args.row_stride_z = 2 * channels;
  args.h = ssm_state.data_ptr<float>();
  args.y = y.data_ptr();
  args.stream = stream;
  const size_t scratch = kernels::cuda::selective_scan_workspace_bytes(args);
  at::Tensor workspace;
  if (scratch > 0) {
    workspace = at::empty({static_cast<int64_t>(scratch)}, u.options().dtype(at::kByte));
    args.workspace = workspace.data_ptr();
  }
  launch("mamba_scan", [&] { kernels::cuda::selective_scan(args); });
  return y;
}

bool local_global_supported(int64_t head_dim, int64_t num_global) {
  return kernels::cuda::window_attention_supported(head_dim, num_global);
}

at::Tensor local_global_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t half_window,
                                  const std::vector<int64_t>& global_positions) {
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "local_global_attention: q, k, v must be [B, H, n, hd] of one shape, got ", q.sizes(), ", ", k.sizes(),
              ", ", v.sizes());
  TORCH_CHECK(q.is_cuda() && k.device() == q.device() && v.device() == q.device(),
              "local_global_attention: q, k, v must be on one CUDA device");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "local_global_attention: q, k, v must have one dtype");
  TORCH_CHECK(static_cast<int64_t>(global_positions.size()) <= kernels::cuda::kMaxGlobalKeys,
              "local_global_attention: at most ", kernels::cuda::kMaxGlobalKeys, " global tokens, got ",
              global_positions.size());
  const c10::cuda::CUDAGuard device_guard(q.device());
  const int64_t batch = q.size(0), heads = q.size(1), n = q.size(2), hd = q.size(3);
  auto out = at::empty({batch, n, heads, hd}, q.options());
  kernels::cuda::WindowAttentionArgs args;
  args.dtype = element_type(q, "local_global_attention");
  args.batch = batch;
  args.heads = heads;
  args.length = n;
  args.head_dim = hd;
  args.half_window = half_window;
  args.out = out.data_ptr();
  args.out_strides = {n * heads * hd, hd, heads * hd};
  const auto qr = vector_aligned(q), kr = vector_aligned(k), vr = vector_aligned(v);
  args.q = qr.data_ptr();
  args.q_strides = head_strides(qr);
  args.k = kr.data_ptr();
  args.k_strides = head_strides(kr);
  args.v = vr.data_ptr();
  args.v_strides = head_strides(vr);
  args.globals.count = static_cast<int32_t>(global_positions.size());
  for (size_t i = 0; i < global_positions.size(); ++i) {
    args.globals.positions[i] = static_cast<int32_t>(global_positions[i]);
  }
  args.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  args.stream = at::cuda::getCurrentCUDAStream().stream();
  at::Tensor workspace;
  const size_t scratch = kernels::cuda::window_attention_workspace_bytes(args);
  if (scratch > 0) {
    workspace = at::empty({static_cast<int64_t>(scratch)}, q.options().dtype(at::kByte));
    args.workspace = workspace.data_ptr();
  }
  launch("local_global_attention", [&] { kernels::cuda::window_attention(args); });
  return out.transpose(1, 2);
}

namespace {

// `device` with its index: the current device's where it has none.
at::Device with_index(at::Device device) {
  return device.has_index() ? device : at::Device(device.type(), c10::cuda::current_device());
}

}  // namespace

bool concat_rows_reads(const at::Tensor& part, at::Device device) {
  return part.is_contiguous() &&
         (part.device() == with_index(device) || (part.is_cpu() && (part.numel() == 0 || part.is_pinned())));
}

at::Tensor concat_rows(const std::vector<at::Tensor>& parts, at::Device device) {
  TORCH_CHECK(device.is_cuda(), "concat_rows: the destination must be a CUDA device, got ", device);
  TORCH_CHECK(!parts.empty(), "concat_rows: no parts");
  const at::Device target = with_index(device);
  const at::Tensor& first = parts.front();
  TORCH_CHECK(first.defined() && first.dim() > 0, "concat_rows: part 0 must be a tensor of at least one dimension");
  std::vector<kernels::cuda::CopyPiece> pieces(parts.size());
  const int64_t row_bytes = c10::multiply_integers(first.sizes().slice(1)) * static_cast<int64_t>(first.element_size());
  int64_t rows = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const at::Tensor& p = parts[i];
    TORCH_CHECK(concat_rows_reads(p, target), "concat_rows: part ", i, " must be a contiguous tensor on ", target,
                " or in pinned host memory");
    TORCH_CHECK(p.dim() == first.dim() && p.dim() > 0 && p.scalar_type() == first.scalar_type() &&
                    p.sizes().slice(1) == first.sizes().slice(1),
                "concat_rows: part ", i, " is ", p.scalar_type(), " ", p.sizes(), ", part 0 ", first.scalar_type(),
                " ", first.sizes(), ": they must match past dim 0");
    pieces[i].src = p.data_ptr();
    pieces[i].bytes = static_cast<int64_t>(p.nbytes());
    pieces[i].dst_offset = rows * row_bytes;
    rows += p.size(0);
  }
  std::vector<int64_t> sizes = first.sizes().vec();
  sizes[0] = rows;
  const c10::cuda::CUDAGuard device_guard(target);
  at::Tensor out = at::empty(sizes, first.options().device(target));
  if (out.numel() == 0) return out;  // (empty memory banks, before a session's first segment)
  launch("concat_rows", [&] {
    kernels::cuda::copy_pieces(pieces.data(), static_cast<int64_t>(pieces.size()), out.data_ptr(),
                               at::cuda::getCurrentCUDAStream(target.index()).stream());
  });
  return out;
}

}  // namespace hvlm::cuda
