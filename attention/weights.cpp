#include "attention/weights.h"

#include "attention/safetensors.h"
#include "attention/tensor_checks.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <sstream>
#include <vector>

namespace hvlm {
namespace {

// The most names listed per kind of mismatch; the rest are counted.
constexpr size_t kMaxListed = 32;

class MismatchReport {
 public:
  void add(const char* kind, std::string what) { kinds_[kind].push_back(std::move(what)); }
  bool empty() const { return kinds_.empty(); }
  std::string str() const {
    std::ostringstream out;
    for (const auto& [kind, items] : kinds_) {
      out << "\n  " << kind << " (" << items.size() << "): ";
      for (size_t i = 0; i < items.size() && i < kMaxListed; ++i) {
        out << (i ? ", " : "") << items[i];
      }
      if (items.size() > kMaxListed) out << ", ... and " << items.size() - kMaxListed << " more";
    }
    return out.str();
  }

 private:
  std::map<std::string, std::vector<std::string>> kinds_;
};

}  // namespace

std::map<std::string, at::Tensor> module_state(const torch::nn::Module& module) {
  std::map<std::string, at::Tensor> state;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) state[p.key()] = p.value();
  for (const auto& b : module.named_buffers(/*recurse=*/true)) state[b.key()] = b.value();
  return state;
}

void load_state(torch::nn::Module& module, const std::map<std::string, at::Tensor>& state,
                const std::string& source) {
  auto own = module_state(module);
  MismatchReport report;
  for (const auto& [name, target] : own) {
    auto it = state.find(name);
    if (it == state.end()) {
      report.add("missing", name + " " + shape_string(target.sizes()));
      continue;
    }
    const auto& value = it->second;
    if (value.sizes() != target.sizes()) {
      report.add("shape mismatch", name + " expected " + shape_string(target.sizes()) + ", got " +
                                       shape_string(value.sizes()));
    } else if (value.scalar_type() != target.scalar_type()) {
      report.add("dtype mismatch", name + " expected " + c10::toString(target.scalar_type()) +
                                       ", got " + c10::toString(value.scalar_type()));
    } else if (value.is_floating_point() && !all_finite(value)) {
      report.add("non-finite values", name);
    }
  }
  for (const auto& [name, value] : state) {
    if (!own.count(name)) report.add("unexpected", name + " " + shape_string(value.sizes()));
  }
  TORCH_CHECK(report.empty(), "weights from '", source, "' do not match the module:",
              report.str());
  at::NoGradGuard no_grad;
  for (auto& [name, target] : own) target.copy_(state.at(name));
}

void load_weights(torch::nn::Module& module, const std::string& path) {
  load_state(module, read_safetensors(path).tensors, path);
}

void save_weights(const torch::nn::Module& module, const std::string& path,
                  const std::map<std::string, std::string>& metadata) {
  write_safetensors(path, module_state(module), metadata);
}

}  // namespace hvlm
