#include "server/stack_registry.h"

#include "attention/dense_attention.h"
#include "attention/weights.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <torch/utils.h>

#include <cstdio>
#include <cstring>

namespace hvlm {
namespace {

// FNV-1a, 64-bit, over 8-byte words (then the tail): fast enough for ~100 MB of weights at
// start-up, and only used to tell whether two servers compute the same function.
class Fingerprint {
 public:
  void add(const void* data, size_t size) {
    const auto* p = static_cast<const unsigned char*>(data);
    size_t i = 0;
    for (; i + 8 <= size; i += 8) {
      uint64_t word = 0;
      std::memcpy(&word, p + i, 8);
      mix(word);
    }
    for (; i < size; ++i) mix(p[i]);
    mix(size);
  }
  void add(const std::string& s) { add(s.data(), s.size()); }
  std::string hex() const {
    char buf[17];
    std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h_));
    return buf;
  }

 private:
  void mix(uint64_t v) {
    h_ ^= v;
    h_ *= 0x100000001b3ULL;
  }
  uint64_t h_ = 0xcbf29ce484222325ULL;
};

c10::ScalarType parse_dtype(const std::string& name) {
  if (name == "bfloat16") return c10::kBFloat16;
  if (name == "float16") return c10::kHalf;
  return c10::kFloat;
}

std::unique_ptr<HostedStack> build(const StackConfig& sc, c10::Device device, c10::ScalarType dtype) {
  auto hs = std::make_unique<HostedStack>();
  hs->name = sc.name;
  hs->device = device;
  hs->dtype = dtype;
  const std::string where = "stacks." + sc.name;
  try {
    torch::manual_seed(sc.seed);
    hs->module = AttentionStack(sc.spec);
    hs->module->eval();
    if (!sc.weights_path.empty()) {
      load_weights(*hs->module, sc.weights_path);
      hs->weights_loaded = true;
      hs->weights_source = sc.weights_path;
    } else {
      hs->weights_source = "random init (seed " + std::to_string(sc.seed) + ")";
    }
    hs->module->to(device, dtype);
  } catch (const c10::Error& e) {
    throw ConfigError(where + ": " + e.what_without_backtrace());
  }
  hs->memory_blocks = hs->module->memory_blocks();
  hs->mamba_blocks = hs->module->mamba_blocks();
  hs->memory = sc.memory;
  for (const auto& [index, options] : hs->memory) {
    try {
      check_memory_bank_options(options);
    } catch (const c10::Error& e) {
      throw ConfigError(where + ".memory (block " + std::to_string(index) + "): " +
                        e.what_without_backtrace());
    }
  }

  // Warm-up: one small forward that also tells the shapes of each mamba block's state.
  try {
    c10::InferenceMode guard;
    const at::Tensor x = at::zeros({1, 8, sc.spec.dim}, at::TensorOptions().dtype(dtype).device(device));
    const StackOutput out = hs->module->forward(x);
    for (size_t i : hs->mamba_blocks) {
      const auto& s = out.states[i];
      const auto conv = s.conv_state.sizes().vec();
      const auto ssm = s.ssm_state.sizes().vec();
      hs->state_layouts[i] = {std::vector<int64_t>(conv.begin() + 1, conv.end()),
                              std::vector<int64_t>(ssm.begin() + 1, ssm.end()),
                              s.conv_state.scalar_type(), s.ssm_state.scalar_type()};
    }
  } catch (const c10::Error& e) {
    throw ConfigError(where + ": warm-up forward on " + device.str() + " failed: " + e.what_without_backtrace());
  }

  Fingerprint fp;
  fp.add(sc.spec.to_json().dump());
  fp.add(std::string(c10::toString(dtype)));
  for (const auto& [name, tensor] : module_state(*hs->module)) {
    fp.add(name);
    const at::Tensor t = tensor.to(at::kCPU).contiguous();
    fp.add(t.data_ptr(), t.numel() * t.element_size());
  }
  hs->fingerprint = fp.hex();
  return hs;
}

}  // namespace

std::string dtype_name(c10::ScalarType dtype) {
  if (dtype == c10::kBFloat16) return "bfloat16";
  if (dtype == c10::kHalf) return "float16";
  return "float32";
}

c10::Device resolve_device(const std::string& name) {
  if (name == "cpu") return c10::Device(c10::kCPU);
  const bool cuda = torch::cuda::is_available();
  if (name == "cuda" && !cuda) {
    throw ConfigError("device: cuda was asked for, but no CUDA device is available to this LibTorch");
  }
  return cuda ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
}

std::unique_ptr<StackRegistry> StackRegistry::create(const ServerConfig& config) {
  std::unique_ptr<StackRegistry> registry(new StackRegistry());
  registry->device_ = resolve_device(config.device);
  if (registry->device_.is_cuda()) prefer_flash_attention();  // no per-shape setup (dense_attention.h)
  const c10::ScalarType dtype = parse_dtype(config.dtype);
  if (registry->device_.is_cpu() && dtype != c10::kFloat) {
    throw ConfigError("dtype: " + config.dtype + " needs a CUDA device; on cpu use float32");
  }
  for (const auto& sc : config.stacks) {
    if (registry->stacks_.count(sc.name)) throw ConfigError("stacks." + sc.name + ": duplicate name");
    registry->stacks_[sc.name] = build(sc, registry->device_, dtype);
  }
  return registry;
}

const HostedStack* StackRegistry::find(const std::string& name) const {
  const auto it = stacks_.find(name);
  return it == stacks_.end() ? nullptr : it->second.get();
}

std::vector<const HostedStack*> StackRegistry::list() const {
  std::vector<const HostedStack*> out;
  for (const auto& kv : stacks_) out.push_back(kv.second.get());
  return out;
}

}  // namespace hvlm
