// CUDA against CPU: every module, the stack and streaming give on a GPU what they give on the
// CPU (float32 within 1e-4, bfloat16 within 2e-2 relative, the GPU issue's tolerances). The
// CPU float32 result is the reference; the same weights are copied to the GPU. Every test is
// skipped (reported as such) where LibTorch sees no CUDA device.
// Also: the raw kernel wrappers (attention/cuda_kernels.h) refuse mismatched operands.
#include "attention/attention_stack.h"
#include "attention/cross_memory_attention.h"
#include "attention/dense_attention.h"
#include "attention/local_global_attention.h"
#include "attention/mamba_layer.h"
#include "attention/performer_attention.h"
#include "attention/strided_attention.h"
#include "tests/cpp/test_util.h"
#if HVLM_WITH_CUDA
#include "attention/batch_split.h"
#include "attention/cuda_kernels.h"
#include "attention/memory_bank.h"
#include "attention/tensor_checks.h"
#include "tests/cuda_sync_debug.h"
#endif

#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <functional>
#include <string>
#include <vector>

namespace hvlm {
namespace {

using testing::randn;

constexpr double kFloat32Tolerance = 1e-4;
constexpr double kBFloat16Tolerance = 2e-2;

#define SKIP_WITHOUT_CUDA()                                                     \
  do {                                                                          \
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device visible"; \
  } while (0)

// ||got - want|| / ||want|| (norm-wise, float64), got moved to the CPU.
double relative_error(const at::Tensor& got, const at::Tensor& want) {
  const auto g = got.to(at::kCPU, at::kDouble), w = want.to(at::kDouble);
  EXPECT_EQ(g.sizes(), w.sizes());
  return (g - w).norm().item<double>() / w.norm().item<double>();
}

struct Precision {
  at::ScalarType dtype;
  double tolerance;
};
const Precision kPrecisions[] = {{at::kFloat, kFloat32Tolerance}, {at::kBFloat16, kBFloat16Tolerance}};

// Runs `run` on a copy of `module` on the CPU (float32) and on CUDA in each precision, with
// the inputs moved along, and compares.
template <typename Module>
void expect_cuda_matches_cpu(Module module, const std::vector<at::Tensor>& inputs,
                             const std::function<at::Tensor(Module&, const std::vector<at::Tensor>&)>& run,
                             const std::string& what) {
  c10::InferenceMode guard;
  module->eval();
  const at::Tensor want = run(module, inputs);
  for (const Precision& p : kPrecisions) {
    auto gpu = std::dynamic_pointer_cast<typename Module::ContainedType>(module->clone());
    Module on_gpu(gpu);
    on_gpu->to(at::Device(at::kCUDA), p.dtype);
    std::vector<at::Tensor> moved;
    for (const auto& t : inputs) moved.push_back(t.to(at::Device(at::kCUDA), p.dtype));
    const at::Tensor got = run(on_gpu, moved);
    EXPECT_TRUE(got.is_cuda()) << what;
    EXPECT_EQ(got.scalar_type(), p.dtype) << what;
    EXPECT_TRUE(got.isfinite().all().item<bool>()) << what << " in " << p.dtype;
    EXPECT_LE(relative_error(got, want), p.tolerance) << what << " in " << p.dtype;
  }
}

TEST(Cuda, StandardAttentionMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  for (int64_t n : {1, 77, 512}) {
    expect_cuda_matches_cpu<StandardAttention>(
        StandardAttention(StandardAttentionOptions(64, 4)), {randn({2, n, 64})},
        [](StandardAttention& m, const std::vector<at::Tensor>& in) { return m->forward(in[0]); },
        "standard n=" + std::to_string(n));
  }
}

TEST(Cuda, StridedAttentionMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  for (int64_t n : {1, 5, 64, 301}) {  // shorter than, a multiple of, and not a multiple of the stride
    expect_cuda_matches_cpu<StridedAttention>(
        StridedAttention(StridedAttentionOptions(64, 4, 8)), {randn({2, n, 64})},
        [](StridedAttention& m, const std::vector<at::Tensor>& in) { return m->forward(in[0]); },
        "strided n=" + std::to_string(n));
  }
}

TEST(Cuda, LocalGlobalAttentionMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  struct Case {
    int64_t dim, heads, n, window, globals;
  };
  // head dims 16 and 64 (the kernel), 24 (the generic path); n below, at and above the window;
  // no globals, a few, and more than the kernel takes.
  for (const Case& c : std::vector<Case>{{64, 4, 1, 8, 0},
                                         {64, 4, 7, 8, 2},
                                         {64, 4, 300, 16, 4},
                                         {128, 2, 1000, 64, 4},
                                         {96, 4, 200, 8, 3},
                                         {64, 4, 300, 8, 100}}) {
    expect_cuda_matches_cpu<LocalGlobalAttention>(
        LocalGlobalAttention(
            LocalGlobalAttentionOptions(c.dim, c.heads).local_window(c.window).num_global_tokens(c.globals)),
        {randn({2, c.n, c.dim})},
        [](LocalGlobalAttention& m, const std::vector<at::Tensor>& in) { return m->forward(in[0]); },
        "local_global n=" + std::to_string(c.n) + " w=" + std::to_string(c.window) +
            " g=" + std::to_string(c.globals) + " hd=" + std::to_string(c.dim / c.heads));
  }
}

TEST(Cuda, CrossMemoryAttentionMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  for (int64_t memory_batch : {1, 2}) {
    expect_cuda_matches_cpu<CrossMemoryAttention>(
        CrossMemoryAttention(CrossMemoryAttentionOptions(64, 4)), {randn({2, 33, 64}), randn({memory_batch, 100, 64})},
        [](CrossMemoryAttention& m, const std::vector<at::Tensor>& in) { return m->forward(in[0], in[1]); },
        "cross_memory memory batch " + std::to_string(memory_batch));
  }
}

TEST(Cuda, PerformerAttentionMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  expect_cuda_matches_cpu<PerformerAttention>(
      PerformerAttention(PerformerAttentionOptions(64, 4).num_random_features(32)), {randn({2, 257, 64})},
      [](PerformerAttention& m, const std::vector<at::Tensor>& in) { return m->forward(in[0]); }, "performer");
  // Head dims 64 and 32 take the fused kernels in bfloat16: n of one token, not a multiple of
  // the 64-token tile, and many tiles; 64 and 256 features.
  struct Case {
    int64_t dim, heads, features, n;
  };
  for (const Case& c : std::vector<Case>{{256, 4, 64, 1}, {256, 4, 256, 257}, {256, 4, 256, 5000}, {128, 4, 64, 300}}) {
    expect_cuda_matches_cpu<PerformerAttention>(
        PerformerAttention(PerformerAttentionOptions(c.dim, c.heads).num_random_features(c.features)),
        {randn({2, c.n, c.dim})},
        [](PerformerAttention& m, const std::vector<at::Tensor>& in) { return m->forward(in[0]); },
        "performer hd=" + std::to_string(c.dim / c.heads) + " m=" + std::to_string(c.features) +
            " n=" + std::to_string(c.n));
  }
}

TEST(Cuda, MambaLayerMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  for (int64_t n : {1, 3, 200, 5000}) {
    expect_cuda_matches_cpu<MambaLayer>(
        MambaLayer(MambaLayerOptions(48).state_size(16)), {randn({2, n, 48})},
        [](MambaLayer& m, const std::vector<at::Tensor>& in) { return m->forward(in[0]); },
        "mamba n=" + std::to_string(n));
  }
}

TEST(Cuda, MambaStreamingCarriesStateLikeCpu) {
  SKIP_WITHOUT_CUDA();
  c10::InferenceMode guard;
  MambaLayer cpu(MambaLayerOptions(32).state_size(8).d_conv(4));
  cpu->eval();
  const auto x = randn({2, 45, 32});
  const auto [want, want_state] = cpu->forward_stream(x, MambaState{});
  auto gpu = MambaLayer(std::dynamic_pointer_cast<MambaLayerImpl>(cpu->clone()));
  gpu->to(at::Device(at::kCUDA));
  // Three uneven segments, the state carried between them.
  MambaState state;
  std::vector<at::Tensor> pieces;
  int64_t t0 = 0;
  for (int64_t len : {1, 20, 24}) {
    auto [y, next] = gpu->forward_stream(x.narrow(1, t0, len).to(at::kCUDA), state);
    EXPECT_TRUE(next.ssm_state.is_cuda());
    EXPECT_EQ(next.ssm_state.scalar_type(), at::kFloat);
    pieces.push_back(y);
    state = next;
    t0 += len;
  }
  EXPECT_LE(relative_error(at::cat(pieces, 1), want), kFloat32Tolerance);
  EXPECT_LE(relative_error(state.ssm_state, want_state.ssm_state), kFloat32Tolerance);
  EXPECT_LE(relative_error(state.conv_state, want_state.conv_state), kFloat32Tolerance);
}

#if HVLM_WITH_CUDA
// A call the wrappers must refuse, given the state it would update.
struct RefusedCall {
  std::string what;
  std::function<void(at::Tensor&)> call;
};

// The scan's kernels read their operands through raw pointers: every mismatched shape, dtype
// or device is refused before any launch, and the state is left as it was.
TEST(Cuda, MambaScanRefusesMismatchedOperands) {
  SKIP_WITHOUT_CUDA();
  c10::InferenceMode guard;
  const int64_t B = 2, L = 10, E = 8, N = 4, R = 3;
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const auto on = [&](at::Tensor t) { return t.to(at::Device(at::kCUDA), dtype); };
    const auto f32 = [](at::Tensor t) { return t.to(at::Device(at::kCUDA), at::kFloat); };
    const at::Tensor u = on(randn({B, L, E})), x_dbl = on(randn({B, L, R + 2 * N})),
                     dt_weight = on(randn({E, R})), xz = on(randn({B, L, 2 * E}));
    const at::Tensor dt_bias = f32(randn({E})), a = f32(-randn({E, N}).abs()), d = f32(randn({E}));
    at::Tensor state = f32(randn({B, E, N}));
    const at::Tensor before = state.clone();
    const std::vector<RefusedCall> cases = {
        {"short dt_weight", [&](at::Tensor& h) { hvlm::cuda::mamba_scan(u, x_dbl, dt_weight.narrow(0, 0, E - 1), dt_bias, a, d, xz, h); }},
        {"x_dbl too narrow", [&](at::Tensor& h) { hvlm::cuda::mamba_scan(u, x_dbl.narrow(2, 0, R + 2 * N - 1).contiguous(), dt_weight, dt_bias, a, d, xz, h); }},
        {"x_dbl too short", [&](at::Tensor& h) { hvlm::cuda::mamba_scan(u, x_dbl.narrow(1, 0, L - 1).contiguous(), dt_weight, dt_bias, a, d, xz, h); }},
        {"x_dbl in float16", [&](at::Tensor& h) { hvlm::cuda::mamba_scan(u, x_dbl.to(at::kHalf), dt_weight, dt_bias, a, d, xz, h); }},
        {"xz of E channels", [&](at::Tensor& h) { hvlm::cuda::mamba_scan(u, x_dbl, dt_weight, dt_bias, a, d, xz.narrow(2, 0, E).contiguous(), h); }},
        {"a of N - 1 states", [&](at::Tensor& h) { hvlm::cuda::mamba_scan(u, x_dbl, dt_weight, dt_bias, a.narrow(1, 0, N - 1).contiguous(), d, xz, h); }},
        {"d on the CPU", [&](at::Tensor& h) { hvlm::cuda::mamba_scan(u, x_dbl, dt_weight, dt_bias, a, d.cpu(), xz, h); }},
        {"u of rank 2", [&](at::Tensor& h) { hvlm::cuda::mamba_scan(u[0], x_dbl, dt_weight, dt_bias, a, d, xz, h); }},
        {"state of another batch", [&](at::Tensor& h) {
           at::Tensor wrong = h.narrow(0, 0, 1).clone();
           hvlm::cuda::mamba_scan(u, x_dbl, dt_weight, dt_bias, a, d, xz, wrong);
         }},
        {"state on the CPU", [&](at::Tensor&) {
           at::Tensor host = before.cpu();
           hvlm::cuda::mamba_scan(u, x_dbl, dt_weight, dt_bias, a, d, xz, host);
         }},
        {"ready delta one step short", [&](at::Tensor& h) {
           hvlm::cuda::mamba_scan(u, x_dbl, dt_weight, dt_bias, a, d, xz, h, u.narrow(1, 0, L - 1).contiguous());
         }},
        {"ready delta in float16", [&](at::Tensor& h) {
           hvlm::cuda::mamba_scan(u, x_dbl, dt_weight, dt_bias, a, d, xz, h, u.to(at::kHalf));
         }},
        {"ready delta on the CPU", [&](at::Tensor& h) {
           hvlm::cuda::mamba_scan(u, x_dbl, dt_weight, dt_bias, a, d, xz, h, u.cpu());
         }},
    };
    for (const RefusedCall& c : cases) {
      EXPECT_THROW(c.call(state), c10::Error) << c.what << " in " << dtype;
      EXPECT_TRUE(at::equal(state, before)) << c.what << " changed the state";
    }
    // The operands as given are accepted, and the scan then moves the state.
    const at::Tensor y = hvlm::cuda::mamba_scan(u, x_dbl, dt_weight, dt_bias, a, d, xz, state);
    EXPECT_EQ(y.sizes(), u.sizes());
    EXPECT_FALSE(at::equal(state, before));
  }
}

TEST(Cuda, MambaConvRefusesMismatchedOperands) {
  SKIP_WITHOUT_CUDA();
  c10::InferenceMode guard;
  const int64_t B = 2, L = 10, E = 8, K = 4;
  const auto on = [](at::Tensor t) { return t.to(at::Device(at::kCUDA), at::kBFloat16); };
  const at::Tensor xz = on(randn({B, L, 2 * E})), weight = on(randn({K, E})), bias = on(randn({E}));
  at::Tensor state = randn({B, E, K - 1}).to(at::kCUDA);
  const at::Tensor before = state.clone();
  const std::vector<RefusedCall> cases = {
      {"weight of E - 1 channels", [&](at::Tensor& s) { hvlm::cuda::mamba_conv(xz, weight.narrow(1, 0, E - 1).contiguous(), bias, s); }},
      {"bias on the CPU", [&](at::Tensor& s) { hvlm::cuda::mamba_conv(xz, weight, bias.cpu(), s); }},
      {"state of another batch", [&](at::Tensor& s) {
         at::Tensor wrong = s.narrow(0, 0, 1).clone();
         hvlm::cuda::mamba_conv(xz, weight, bias, wrong);
       }},
      {"state of K steps", [&](at::Tensor&) {
         at::Tensor wrong = randn({B, E, K}).to(at::kCUDA);
         hvlm::cuda::mamba_conv(xz, weight, bias, wrong);
       }},
      {"state in bfloat16", [&](at::Tensor&) {
         at::Tensor wrong = before.to(at::kBFloat16);
         hvlm::cuda::mamba_conv(xz, weight, bias, wrong);
       }},
      {"state on the CPU", [&](at::Tensor&) {
         at::Tensor host = before.cpu();
         hvlm::cuda::mamba_conv(xz, weight, bias, host);
       }},
  };
  for (const RefusedCall& c : cases) {
    EXPECT_THROW(c.call(state), c10::Error) << c.what;
    EXPECT_TRUE(at::equal(state, before)) << c.what << " changed the state";
  }
  // The operands as given are accepted, and the conv then replaces the state.
  const at::Tensor u = hvlm::cuda::mamba_conv(xz, weight, bias, state);
  EXPECT_EQ(u.sizes(), (std::vector<int64_t>{B, L, E}));
  EXPECT_FALSE(at::equal(state, before));
}

// The fused input stage (conv + x_proj + dt_proj/softplus, attention/cuda/mamba_input.h) at a
// length where it is the path taken: u and the conv state exactly as the conv kernel's, x_dbl
// and delta as the separate products; a short sequence leaves it to the separate kernels.
TEST(Cuda, MambaInputStageMatchesSeparateKernels) {
  SKIP_WITHOUT_CUDA();
  c10::InferenceMode guard;
  const int64_t B = 1, L = 65536, E = 256, K = 4, R = 8, N = 16;
  const auto on = [](at::Tensor t) { return t.to(at::Device(at::kCUDA), at::kBFloat16); };
  const at::Tensor xz = on(randn({B, L, 2 * E})), conv_w = on(randn({K, E}) * 0.5), conv_b = on(randn({E}) * 0.5),
                   w_x = on(randn({R + 2 * N, E}) * 0.06), w_dt = on(randn({E, R}) * 0.3);
  const at::Tensor dt_bias = (randn({E}) - 3).to(at::kCUDA);
  const at::Tensor state_in = randn({B, E, K - 1}).to(at::kCUDA);
  at::Tensor fused_state = state_in.clone(), conv_state = state_in.clone();
  const auto in = hvlm::cuda::mamba_input(xz, conv_w, conv_b, fused_state, w_x, w_dt, dt_bias);
  ASSERT_TRUE(in.has_value()) << "the fused stage declined a 65536-row sequence";
  const at::Tensor u = hvlm::cuda::mamba_conv(xz, conv_w, conv_b, conv_state);
  EXPECT_TRUE(at::equal(in->u, u));
  EXPECT_TRUE(at::equal(fused_state, conv_state));
  const at::Tensor x_dbl = at::matmul(u.to(at::kFloat), w_x.to(at::kFloat).t());
  EXPECT_LE(relative_error(in->x_dbl, x_dbl.cpu()), 1e-2);
  const at::Tensor delta =
      at::softplus(at::matmul(in->x_dbl.narrow(2, 0, R).to(at::kFloat), w_dt.to(at::kFloat).t()) + dt_bias);
  EXPECT_LE(relative_error(in->delta, delta.cpu()), 1e-2);
  // Too few rows to fill the GPU: declined, the state untouched.
  at::Tensor short_state = state_in.clone();
  EXPECT_FALSE(hvlm::cuda::mamba_input(xz.narrow(1, 0, 1000).contiguous(), conv_w, conv_b, short_state, w_x, w_dt,
                                       dt_bias)
                   .has_value());
  EXPECT_TRUE(at::equal(short_state, state_in));
}

// A long bfloat16 sequence (the fused input stage's path) continued from a short one (the
// separate kernels' path), against the CPU in float32.
TEST(Cuda, MambaLongSequenceContinuesAcrossInputPaths) {
  SKIP_WITHOUT_CUDA();
  c10::InferenceMode guard;
  MambaLayer cpu(MambaLayerOptions(128).state_size(16).d_conv(4));
  cpu->eval();
  const int64_t first = 1000, total = 66536;
  const auto x = randn({1, total, 128});
  const auto [want, want_state] = cpu->forward_stream(x, MambaState{});
  auto gpu = MambaLayer(std::dynamic_pointer_cast<MambaLayerImpl>(cpu->clone()));
  gpu->to(at::Device(at::kCUDA), at::kBFloat16);
  const auto xg = x.to(at::Device(at::kCUDA), at::kBFloat16);
  auto [y1, state1] = gpu->forward_stream(xg.narrow(1, 0, first), MambaState{});
  auto [y2, state2] = gpu->forward_stream(xg.narrow(1, first, total - first), state1);
  EXPECT_LE(relative_error(at::cat({y1, y2}, 1), want), kBFloat16Tolerance);
  EXPECT_LE(relative_error(state2.ssm_state, want_state.ssm_state), kBFloat16Tolerance);
  EXPECT_LE(relative_error(state2.conv_state, want_state.conv_state), kBFloat16Tolerance);
}
#endif

const char* kStackSpec = R"({"dim": 64, "blocks": [
  {"type": "local_global", "num_heads": 4, "local_window": 8, "num_global_tokens": 2},
  {"type": "cross_memory", "num_heads": 4},
  {"type": "mamba", "state_size": 8},
  {"type": "strided", "num_heads": 4, "stride": 4},
  {"type": "performer", "num_heads": 4, "num_random_features": 16}]})";

TEST(Cuda, StackStreamingMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  c10::InferenceMode guard;
  AttentionStack cpu(StackSpec::parse(kStackSpec));
  cpu->eval();
  for (const Precision& p : kPrecisions) {
    auto gpu = AttentionStack(std::dynamic_pointer_cast<AttentionStackImpl>(cpu->clone()));
    gpu->to(at::Device(at::kCUDA), p.dtype);
    std::vector<at::Tensor> cpu_memories(5), gpu_memories(5);
    std::vector<MambaState> cpu_states(5), gpu_states(5);
    for (int segment = 0; segment < 3; ++segment) {
      const auto x = randn({2, 16 + 5 * segment, 64});
      if (segment > 0) {
        cpu_memories[1] = randn({2, 8 * segment, 64});
        gpu_memories[1] = cpu_memories[1].to(at::kCUDA, p.dtype);
      }
      auto want = cpu->forward(x, cpu_memories, cpu_states);
      auto got = gpu->forward(x.to(at::kCUDA, p.dtype), gpu_memories, gpu_states);
      EXPECT_LE(relative_error(got.y, want.y), p.tolerance) << "segment " << segment << " in " << p.dtype;
      cpu_states = want.states;
      gpu_states = got.states;
    }
  }
}

#if HVLM_WITH_CUDA
using testing::SyncDebugModeScope;

// concat_rows gives what at::cat gives, for parts in pinned host memory and on the device
// (mixed), pieces copied in words of 16, 8, 4, 2 and 1 bytes, empty parts and all parts empty,
// over more parts than one launch takes; it refuses a part in pageable memory, which the device
// could not read.
TEST(Cuda, ConcatRowsConcatenatesPinnedHostAndDeviceParts) {
  SKIP_WITHOUT_CUDA();
  const at::Device gpu(at::kCUDA);
  struct Case {
    at::ScalarType dtype;
    std::vector<int64_t> row;  // the sizes past dim 0
  };
  // Rows of 64, 60, 24, 18 and 5 bytes: parts of 0-2 rows then move in words of 16, 4, 8, 2
  // and 1 bytes (the widest their sizes and offsets allow).
  for (const Case& c : {Case{at::kBFloat16, {4, 8}}, Case{at::kFloat, {3, 5}}, Case{at::kDouble, {3}},
                        Case{at::kHalf, {3, 3}}, Case{at::kChar, {5}}}) {
    std::vector<at::Tensor> parts;
    for (int64_t i = 0; i < 70; ++i) {
      std::vector<int64_t> sizes{i % 3};
      sizes.insert(sizes.end(), c.row.begin(), c.row.end());
      const at::Tensor part = randn(sizes).mul(50).clamp(-127, 127).to(c.dtype);  // int8 holds it
      parts.push_back(i % 4 == 1 ? part.to(gpu) : part.pin_memory());
    }
    const at::Tensor got = cuda::concat_rows(parts, gpu);
    EXPECT_TRUE(got.is_cuda());
    std::vector<at::Tensor> on_host;
    for (const auto& p : parts) on_host.push_back(p.cpu());
    EXPECT_TRUE(at::equal(got.cpu(), at::cat(on_host, 0))) << c.dtype;
  }
  // Parts that are all empty (a memory bank before a session's first segment): nothing to copy.
  const at::Tensor empty = cuda::concat_rows({randn({1, 0, 8}).to(gpu), randn({1, 0, 8}).to(gpu)}, gpu);
  EXPECT_EQ(empty.sizes(), (std::vector<int64_t>{2, 0, 8}));
  try {
    cuda::concat_rows({randn({2, 4}).pin_memory(), randn({1, 4})}, gpu);
    ADD_FAILURE() << "a pageable part was taken";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("part 1 must be a contiguous tensor on cuda:0 or in pinned host memory"),
              std::string::npos)
        << e.what();
  }
}

// A serving pass queues all of its work without waiting for the device: its inputs gathered
// from pinned host memory, the stack's forward with a memory and Mamba states in, the fifo
// update of the memory bank (pooling, so its window counts are built too) and the per-session
// copies of the results, once the values are known to be finite as the server knows them. One
// wait would hold the batcher's issue of the next pass until this one's device work is done
// (the fifo window counts once were a pageable copy that did just that, and kept the batcher's
// thread busy).
TEST(Cuda, ServingPassQueuesWithoutWaitingForTheDevice) {
  SKIP_WITHOUT_CUDA();
  c10::InferenceMode guard;
  AttentionStack stack(StackSpec::parse(kStackSpec));
  stack->eval();
  stack->to(at::Device(at::kCUDA), at::kBFloat16);
  const auto on_gpu = [](const at::Tensor& t) { return t.to(at::Device(at::kCUDA), at::kBFloat16); };
  const at::Tensor x = on_gpu(randn({2, 20, 64}));
  std::vector<at::Tensor> memories(5);
  memories[1] = on_gpu(randn({2, 12, 64}));
  const MemoryBank bank{memories[1], at::rand({2, 12}).add(1).to(at::kCUDA)};
  MemoryBankOptions fifo;
  fifo.capacity = 16;
  fifo.tokens_per_segment = 6;  // 20 rows pooled to 6 windows; 2 bank tokens drop out
  // A first pass outside the check: one-time setup (handles, kernel attributes) may wait.
  std::vector<MambaState> states = stack->forward(x, memories, std::vector<MambaState>(5)).states;
  torch::cuda::synchronize();

  StackOutput out;
  MemoryBank next;
  std::vector<at::Tensor> per_session;
  const std::vector<at::Tensor> pinned_inputs{randn({1, 20, 64}).to(at::kBFloat16).pin_memory(),
                                              randn({1, 20, 64}).to(at::kBFloat16).pin_memory()};
  at::Tensor gathered;
  {
    const FiniteValuesChecked checked;
    const SyncDebugModeScope no_waits(c10::cuda::SyncDebugMode::L_ERROR);
    EXPECT_NO_THROW({
      gathered = cuda::concat_rows(pinned_inputs, at::Device(at::kCUDA));
      out = stack->forward(x, memories, states);
      next = update_memory_bank(bank, out.memory_inputs[1], fifo);
      per_session = split_batch_copies(next.tokens, {1, 1});
    });
  }
  ASSERT_TRUE(next.tokens.defined());
  EXPECT_TRUE(at::equal(gathered.cpu(), at::cat(pinned_inputs, 0)));
  // The same update on the CPU: the counts (the oldest 10 bank counts, then the 6 windows'
  // lengths) exactly, the tokens within bfloat16 rounding.
  const MemoryBank want = update_memory_bank({bank.tokens.cpu().to(at::kFloat), bank.counts.cpu()},
                                             out.memory_inputs[1].cpu().to(at::kFloat), fifo);
  EXPECT_TRUE(at::equal(next.counts.cpu(), want.counts));
  EXPECT_LE(relative_error(next.tokens, want.tokens), kBFloat16Tolerance);
  ASSERT_EQ(per_session.size(), 2u);
  EXPECT_TRUE(at::equal(per_session[1].cpu(), next.tokens.narrow(0, 1, 1).cpu()));
}
#endif

}  // namespace
}  // namespace hvlm
