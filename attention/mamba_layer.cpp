#include "attention/mamba_layer.h"

#include "attention/selective_scan_cpu.h"
#include "attention/tensor_checks.h"
#if HVLM_WITH_CUDA
#include "attention/cuda_kernels.h"
#endif

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/nn/init.h>

#include <cmath>
#include <mutex>
#include <vector>

namespace hvlm {
namespace {

// Tokens per chunk of a long sequence: large enough for efficient projections, small enough
// that the [T, 2E] activations of one chunk stay in tens of MiB.
constexpr int64_t kChunkTokens = 2048;

}  // namespace

struct MambaLayerImpl::KernelConstants {
  at::Tensor conv_weight;  // [d_conv, E], contiguous, the conv weight's dtype
  at::Tensor conv_bias;    // [E], contiguous
  at::Tensor dt_bias;      // [E] float32
  at::Tensor a;            // [E, N] float32: -exp(A_log)
  at::Tensor d;            // [E] float32
};

struct MambaLayerImpl::ConstantsCache {
  // What the constants were derived from, per source parameter: its storage (held, so that no
  // other tensor can take its address meanwhile), that storage's address and the parameter's
  // version counter (bumped by every in-place write).
  struct Source {
    c10::Storage storage;
    const void* data = nullptr;
    int64_t version = 0;
    bool operator==(const Source& o) const { return data == o.data && version == o.version; }
  };
  std::mutex mu;
  std::vector<Source> sources;
  std::shared_ptr<const KernelConstants> constants;
};

MambaLayerImpl::MambaLayerImpl(const MambaLayerOptions& options_) : options(options_) {
  reset();
}

void MambaLayerImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.dim() > 0, "MambaLayer: dim must be positive, got ", o.dim());
  TORCH_CHECK(o.state_size() >= 1, "MambaLayer: state_size must be >= 1, got ", o.state_size());
  TORCH_CHECK(o.d_conv() >= 1, "MambaLayer: d_conv must be >= 1, got ", o.d_conv());
  TORCH_CHECK(o.dt_rank() >= 0, "MambaLayer: dt_rank must be >= 0 (0 = auto), got ",
              o.dt_rank());
  TORCH_CHECK(o.dt_init() == "constant" || o.dt_init() == "random",
              "MambaLayer: dt_init must be 'constant' or 'random', got '", o.dt_init(), "'");
  TORCH_CHECK(o.dt_min() > 0 && o.dt_max() >= o.dt_min() && o.dt_init_floor() > 0,
              "MambaLayer: need 0 < dt_min <= dt_max and dt_init_floor > 0, got dt_min=",
              o.dt_min(), " dt_max=", o.dt_max(), " dt_init_floor=", o.dt_init_floor());
  TORCH_CHECK(o.dropout() >= 0.0 && o.dropout() < 1.0,
              "MambaLayer: dropout must be in [0, 1), got ", o.dropout());
  TORCH_CHECK(std::isfinite(o.expand_factor()) && o.expand_factor() > 0,
              "MambaLayer: expand_factor must be positive, got ", o.expand_factor());
  inner_dim_ = static_cast<int64_t>(o.expand_factor() * static_cast<double>(o.dim()));
  TORCH_CHECK(inner_dim_ >= 1, "MambaLayer: expand_factor * dim must be >= 1, got ",
              o.expand_factor(), " * ", o.dim());
  dt_rank_ = o.dt_rank() > 0 ? o.dt_rank() : (o.dim() + 15) / 16;
  const int64_t e = inner_dim_, n = o.state_size();

  in_proj = register_module(
      "in_proj", torch::nn::Linear(torch::nn::LinearOptions(o.dim(), 2 * e).bias(false)));
  conv1d = register_module(
      "conv1d", torch::nn::Conv1d(
                    torch::nn::Conv1dOptions(e, e, o.d_conv()).groups(e).padding(o.d_conv() - 1)));
  x_proj = register_module(
      "x_proj", torch::nn::Linear(torch::nn::LinearOptions(e, dt_rank_ + 2 * n).bias(false)));
  dt_proj = register_module("dt_proj", torch::nn::Linear(dt_rank_, e));
  out_proj = register_module(
      "out_proj", torch::nn::Linear(torch::nn::LinearOptions(e, o.dim()).bias(false)));
  A_log = register_parameter("A_log", at::empty({e, n}));
  D = register_parameter("D", at::empty({e}));
  constants_cache_ = std::make_shared<ConstantsCache>();  // a clone derives its own
  reset_parameters();
}

void MambaLayerImpl::reset_parameters() {
  at::NoGradGuard no_grad;
  const auto& o = options;
  const double std_dev = std::pow(static_cast<double>(dt_rank_), -0.5);
  if (o.dt_init() == "constant") {
    dt_proj->weight.fill_(std_dev);
  } else {
    dt_proj->weight.uniform_(-std_dev, std_dev);
  }
  // Initial step sizes log-uniform in [dt_min, dt_max]; the bias is their inverse softplus.
  auto dt = at::exp(at::rand({inner_dim_}, at::kDouble) *
                        (std::log(o.dt_max()) - std::log(o.dt_min())) +
                    std::log(o.dt_min()))
                .clamp_min(o.dt_init_floor());
  dt_proj->bias.copy_(dt + at::log(-at::expm1(-dt)));
  // S4D-real: A[c, s] = -(s + 1).
  A_log.copy_(at::log(at::arange(1, o.state_size() + 1, at::kFloat)).expand_as(A_log));
  D.fill_(1.0);
}

void MambaLayerImpl::pretty_print(std::ostream& stream) const {
  stream << "hvlm::MambaLayer(dim=" << options.dim() << ", state_size=" << options.state_size()
         << ", inner_dim=" << inner_dim_ << ", d_conv=" << options.d_conv()
         << ", dt_rank=" << dt_rank_ << ")";
}

MambaState MambaLayerImpl::initial_state(int64_t batch) const {
  auto opts = in_proj->weight.options().dtype(at::kFloat);
  return {at::zeros({batch, inner_dim_, options.d_conv() - 1}, opts),
          at::zeros({batch, inner_dim_, options.state_size()}, opts)};
}

void MambaLayerImpl::check_state(const MambaState& state, int64_t batch) const {
  TORCH_CHECK(state.defined(), "mamba state must have both conv_state and ssm_state");
  const std::vector<int64_t> conv{batch, inner_dim_, options.d_conv() - 1};
  const std::vector<int64_t> ssm{batch, inner_dim_, options.state_size()};
  TORCH_CHECK(state.conv_state.sizes() == at::IntArrayRef(conv), "conv_state must be ",
              shape_string(conv), ", got ", shape_string(state.conv_state.sizes()));
  TORCH_CHECK(state.ssm_state.sizes() == at::IntArrayRef(ssm), "ssm_state must be ",
              shape_string(ssm), ", got ", shape_string(state.ssm_state.sizes()));
  TORCH_CHECK(state.conv_state.scalar_type() == at::kFloat &&
                  state.ssm_state.scalar_type() == at::kFloat,
              "mamba state must be float32, got ", c10::toString(state.conv_state.scalar_type()),
              " and ", c10::toString(state.ssm_state.scalar_type()));
  check_finite(state.conv_state, "conv_state");
  check_finite(state.ssm_state, "ssm_state");
}

std::shared_ptr<const MambaLayerImpl::KernelConstants> MambaLayerImpl::kernel_constants() {
  std::vector<ConstantsCache::Source> sources;
  for (const at::Tensor* t : {&conv1d->weight, &conv1d->bias, &dt_proj->bias, &A_log, &D}) {
    // (An inference tensor has no version counter; parameters are not created as such.)
    sources.push_back({t->storage(), t->data_ptr(), t->is_inference() ? 0 : t->_version()});
  }
  ConstantsCache& cache = *constants_cache_;
  std::lock_guard<std::mutex> lock(cache.mu);
  if (cache.constants && cache.sources == sources) return cache.constants;
  at::NoGradGuard no_grad;
  auto constants = std::make_shared<KernelConstants>();
  constants->conv_weight = conv1d->weight.reshape({inner_dim_, options.d_conv()}).t().contiguous();
  constants->conv_bias = conv1d->bias.contiguous();
  constants->dt_bias = dt_proj->bias.to(at::kFloat).contiguous();
  constants->a = (-at::exp(A_log.to(at::kFloat))).contiguous();
  constants->d = D.to(at::kFloat).contiguous();
  cache.sources = std::move(sources);
  cache.constants = constants;
  return constants;
}

at::Tensor MambaLayerImpl::forward(const at::Tensor& x) {
  return forward_stream(x, MambaState{}).first;
}

std::pair<at::Tensor, MambaState> MambaLayerImpl::forward_stream(const at::Tensor& x,
                                                                 const MambaState& state) {
  check_tokens(x, options.dim(), "x", in_proj->weight.scalar_type());
#if HVLM_WITH_CUDA
  TORCH_CHECK((x.device().is_cpu() && x.scalar_type() == at::kFloat) || x.is_cuda(),
              "MambaLayer runs on CPU in float32 or on CUDA, got ", x.device(), " ",
              c10::toString(x.scalar_type()));
#else
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat,
              "MambaLayer runs on CPU in float32 (this build has no CUDA kernels), got ", x.device(), " ",
              c10::toString(x.scalar_type()));
#endif
  const int64_t batch = x.size(0), length = x.size(1);
  MambaState next;
  if (state.conv_state.defined() || state.ssm_state.defined()) {
    check_state(state, batch);
    TORCH_CHECK(state.conv_state.device() == x.device() && state.ssm_state.device() == x.device(),
                "mamba state must be on x's device (", x.device(), "), got ", state.conv_state.device(), " and ",
                state.ssm_state.device());
    // The conv only reads its state (it writes the next one to a new tensor); the scan updates
    // h in place, so that gets a copy.
    next = {state.conv_state.contiguous(), state.ssm_state.clone(at::MemoryFormat::Contiguous)};
  } else {
    next = initial_state(batch);
  }
  if (x.is_cuda() || length <= kChunkTokens) {  // a GPU takes the whole sequence at once
    auto y = run_chunk(x, next.conv_state, next.ssm_state);
    return {at::dropout(y, options.dropout(), is_training()), next};
  }
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  for (int64_t t0 = 0; t0 < length; t0 += kChunkTokens) {
    const int64_t len = std::min(kChunkTokens, length - t0);
    y.narrow(1, t0, len).copy_(run_chunk(x.narrow(1, t0, len), next.conv_state, next.ssm_state));
  }
  return {at::dropout(y, options.dropout(), is_training()), next};
}

at::Tensor MambaLayerImpl::run_chunk(const at::Tensor& x, at::Tensor& conv_state, at::Tensor& ssm_state) {
  auto xz = in_proj->forward(x).contiguous();  // [B, L, 2E]: x | z
#if HVLM_WITH_CUDA
  if (x.is_cuda()) {
    const auto constants = kernel_constants();
    // 2-byte dtypes: conv, x_proj and dt_proj + softplus as one kernel where it takes the shapes.
    if (auto in = cuda::mamba_input(xz, constants->conv_weight, constants->conv_bias, conv_state, x_proj->weight,
                                    dt_proj->weight, constants->dt_bias)) {
      return out_proj->forward(cuda::mamba_scan(in->u, in->x_dbl, dt_proj->weight, constants->dt_bias, constants->a,
                                                constants->d, xz, ssm_state, in->delta));
    }
    auto u = cuda::mamba_conv(xz, constants->conv_weight, constants->conv_bias, conv_state);
    auto x_dbl = x_proj->forward(u).contiguous();  // [B, L, R + 2N]: dt | B | C
    return out_proj->forward(cuda::mamba_scan(u, x_dbl, dt_proj->weight, constants->dt_bias, constants->a,
                                              constants->d, xz, ssm_state));
  }
#endif
  auto u = conv_stage(xz, conv_state);
  auto x_dbl = x_proj->forward(u).contiguous();  // [B, L, R + 2N]: dt | B | C
  auto delta = at::softplus(dt_proj->forward(x_dbl.narrow(-1, 0, dt_rank_))).contiguous();
  return out_proj->forward(scan_stage(u, x_dbl, delta, xz, ssm_state));
}

at::Tensor MambaLayerImpl::conv_stage(const at::Tensor& xz, at::Tensor& conv_state) {
  const int64_t batch = xz.size(0), length = xz.size(1), e = inner_dim_;
  auto u = at::empty({batch, length, e}, xz.options());
  auto conv_next = at::empty_like(conv_state);
  const auto constants = kernel_constants();
  kernels::CausalConvArgs conv;
  conv.batch = batch;
  conv.length = length;
  conv.channels = e;
  conv.kernel = options.d_conv();
  conv.x = xz.data_ptr<float>();
  conv.row_stride_x = 2 * e;
  conv.weight = constants->conv_weight.data_ptr<float>();
  conv.bias = constants->conv_bias.data_ptr<float>();
  conv.state_in = conv_state.data_ptr<float>();
  conv.state_out = conv_next.data_ptr<float>();
  conv.out = u.data_ptr<float>();
  at::parallel_for(0, kernels::scan_work_items(batch, e), 1, [&](int64_t begin, int64_t end) {
    kernels::causal_conv_silu(conv, begin, end);
  });
  conv_state = conv_next;
  return u;
}

at::Tensor MambaLayerImpl::scan_stage(const at::Tensor& u, const at::Tensor& x_dbl,
                                      const at::Tensor& delta, const at::Tensor& xz,
                                      at::Tensor& ssm_state) {
  const int64_t batch = u.size(0), length = u.size(1);
  const int64_t e = inner_dim_, n = options.state_size(), r = dt_rank_;
  const auto constants = kernel_constants();
  auto y = at::empty({batch, length, e}, u.options());
  kernels::SelectiveScanArgs scan;
  scan.batch = batch;
  scan.length = length;
  scan.channels = e;
  scan.state_size = n;
  scan.u = u.data_ptr<float>();
  scan.delta = delta.data_ptr<float>();
  scan.a = constants->a.data_ptr<float>();
  scan.b = x_dbl.data_ptr<float>() + r;
  scan.c = x_dbl.data_ptr<float>() + r + n;
  scan.row_stride_bc = r + 2 * n;
  scan.d = constants->d.data_ptr<float>();
  scan.z = xz.data_ptr<float>() + e;
  scan.row_stride_z = 2 * e;
  scan.h = ssm_state.data_ptr<float>();
  scan.y = y.data_ptr<float>();
  at::parallel_for(0, kernels::scan_work_items(batch, e), 1, [&](int64_t begin, int64_t end) {
    kernels::selective_scan(scan, begin, end);
  });
  return y;
}

}  // namespace hvlm
