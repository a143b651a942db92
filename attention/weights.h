// Loading and saving a module's weights as safetensors. Tensor names are the module's
// parameter and buffer paths (e.g. blocks.0.attn.q_proj.weight), equal to the Python twin's
// state_dict() keys. Loading checks every name, shape, dtype and value first and reports
// every mismatch in one error; the module is changed only when all of them pass.
// Not thread-safe with respect to concurrent forwards on the same module.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <map>
#include <string>

namespace hvlm {

// The module's parameters and buffers by path.
std::map<std::string, at::Tensor> module_state(const torch::nn::Module& module);

// Copies `state` into the module's parameters and buffers. Throws, changing nothing, unless
// the names match exactly, every shape and dtype matches and every value is finite.
// `source` names the origin of `state` in the error message.
void load_state(torch::nn::Module& module, const std::map<std::string, at::Tensor>& state,
                const std::string& source);

// read_safetensors(path), then load_state.
void load_weights(torch::nn::Module& module, const std::string& path);

// write_safetensors(path, module_state(module), metadata).
void save_weights(const torch::nn::Module& module, const std::string& path,
                  const std::map<std::string, std::string>& metadata = {});

}  // namespace hvlm
