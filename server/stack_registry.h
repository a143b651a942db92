// StackRegistry: the attention stacks a server hosts, built once at start-up from the config
// (weights loaded or seeded random init), moved to the configured device and dtype, warmed up,
// and fingerprinted. Immutable after create(): HostedStack pointers stay valid for the
// registry's lifetime and may be used from any thread (AttentionStack::forward is safe to call
// concurrently in eval mode).
#pragma once

#include "attention/attention_stack.h"
#include "attention/memory_bank.h"
#include "server/config.h"

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace hvlm {

struct HostedStack {
  std::string name;
  /// mutable: LibTorch's forward() is non-const, but in eval mode under InferenceMode it
  /// changes nothing and is safe to call from many threads at once.
  mutable AttentionStack module{nullptr};
  c10::Device device{c10::kCPU};
  c10::ScalarType dtype = c10::kFloat;
  /// Indices of the cross_memory blocks, with their bank settings, and of the mamba blocks.
  std::vector<size_t> memory_blocks;
  std::map<size_t, MemoryBankOptions> memory;
  std::vector<size_t> mamba_blocks;
  /// Per mamba block: the layout of its recurrent state (shapes without the batch dimension).
  struct StateLayout {
    std::vector<int64_t> conv_shape, ssm_shape;
    c10::ScalarType conv_dtype = c10::kFloat, ssm_dtype = c10::kFloat;
  };
  std::map<size_t, StateLayout> state_layouts;
  bool weights_loaded = false;
  /// The weights file, or "random init (seed N)".
  std::string weights_source;
  /// Hex digest of the normalised spec and every parameter and buffer.
  std::string fingerprint;

  const StackSpec& spec() const { return module->spec(); }
  int64_t dim() const { return module->spec().dim; }
};

class StackRegistry {
 public:
  /// Builds every stack of the config. Throws ConfigError naming the stack on any failure
  /// (weights that do not match, device unavailable).
  static std::unique_ptr<StackRegistry> create(const ServerConfig& config);

  /// nullptr when there is no such stack.
  const HostedStack* find(const std::string& name) const;
  /// Sorted by name.
  std::vector<const HostedStack*> list() const;

  /// The device all stacks run on.
  c10::Device device() const { return device_; }

 private:
  StackRegistry() = default;
  c10::Device device_{c10::kCPU};
  std::map<std::string, std::unique_ptr<HostedStack>> stacks_;
};

// "float32", "bfloat16", "float16".
std::string dtype_name(c10::ScalarType dtype);

// "cpu" / "cuda" / "auto" -> a device; throws ConfigError when cuda is asked for and absent.
c10::Device resolve_device(const std::string& name);

}  // namespace hvlm
