#include "server/session_state.h"

#include "attention/safetensors.h"
#include "attention/tensor_checks.h"
#include "server/service_error.h"

#include <ATen/ATen.h>

#include <set>

namespace hvlm {
namespace {

constexpr const char* kFormat = "hvlm.session.v1";

int64_t bytes_of(const at::Tensor& t) { return t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : 0; }

uint64_t parse_u64(const std::map<std::string, std::string>& meta, const std::string& key) {
  const auto it = meta.find(key);
  if (it == meta.end()) fail(ErrorCode::kInvalidArgument, "session state: metadata has no '", key, "'");
  const std::string& s = it->second;
  if (s.empty() || s.size() > 19 || s.find_first_not_of("0123456789") != std::string::npos) {
    fail(ErrorCode::kInvalidArgument, "session state: metadata '", key, "' must be a decimal integer");
  }
  return std::stoull(s);
}

const std::string& meta_string(const std::map<std::string, std::string>& meta, const std::string& key) {
  const auto it = meta.find(key);
  if (it == meta.end()) fail(ErrorCode::kInvalidArgument, "session state: metadata has no '", key, "'");
  return it->second;
}

std::string shape_text(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Takes `name` out of `tensors`, checking its shape (a -1 entry matches any size) and values.
at::Tensor take(std::map<std::string, at::Tensor>& tensors, const std::string& name,
                const std::vector<int64_t>& shape, c10::ScalarType dtype) {
  const auto it = tensors.find(name);
  if (it == tensors.end()) fail(ErrorCode::kInvalidArgument, "session state: tensor '", name, "' is missing");
  at::Tensor t = it->second;
  tensors.erase(it);
  bool match = t.dim() == static_cast<int64_t>(shape.size());
  for (size_t i = 0; match && i < shape.size(); ++i) match = shape[i] < 0 || t.size(i) == shape[i];
  if (!match) {
    fail(ErrorCode::kInvalidArgument, "session state: tensor '", name, "' has shape ",
         shape_text(t.sizes()), ", expected ", shape_text(shape), " (-1: any)");
  }
  if (t.scalar_type() != dtype) {
    fail(ErrorCode::kInvalidArgument, "session state: tensor '", name, "' has dtype ",
         c10::toString(t.scalar_type()), ", expected ", c10::toString(dtype));
  }
  if (!all_finite(t)) {
    fail(ErrorCode::kInvalidArgument, "session state: tensor '", name, "' has non-finite values");
  }
  return t;
}

// {batch, shape...}
std::vector<int64_t> batched(const std::vector<int64_t>& shape, int64_t batch) {
  std::vector<int64_t> out{batch};
  out.insert(out.end(), shape.begin(), shape.end());
  return out;
}

}  // namespace

int64_t memory_bank_bytes(const MemoryBank& bank) { return bytes_of(bank.tokens) + bytes_of(bank.counts); }

int64_t SessionState::bank_bytes() const {
  int64_t total = 0;
  for (const auto& [i, b] : banks) total += memory_bank_bytes(b);
  return total;
}

int64_t SessionState::state_bytes() const {
  int64_t total = 0;
  for (const auto& [i, s] : states) total += bytes_of(s.conv_state) + bytes_of(s.ssm_state);
  return total;
}

SessionState initial_session_state(const HostedStack& stack, int64_t batch) {
  SessionState state;
  state.batch = batch;
  const auto options = at::TensorOptions().dtype(stack.dtype).device(stack.device);
  for (size_t i : stack.memory_blocks) state.banks[i] = empty_memory_bank(batch, stack.dim(), options);
  for (size_t i : stack.mamba_blocks) {
    const auto& layout = stack.state_layouts.at(i);
    state.states[i] = MambaState{at::zeros(batched(layout.conv_shape, batch), options.dtype(layout.conv_dtype)),
                                 at::zeros(batched(layout.ssm_shape, batch), options.dtype(layout.ssm_dtype))};
  }
  return state;
}

std::string export_session(const std::string& session_id, const HostedStack& stack,
                           const SessionState& state) {
  std::map<std::string, at::Tensor> tensors;
  for (const auto& [i, bank] : state.banks) {
    tensors["banks." + std::to_string(i) + ".tokens"] = bank.tokens;
    tensors["banks." + std::to_string(i) + ".counts"] = bank.counts;
  }
  for (const auto& [i, s] : state.states) {
    tensors["states." + std::to_string(i) + ".conv_state"] = s.conv_state;
    tensors["states." + std::to_string(i) + ".ssm_state"] = s.ssm_state;
  }
  const std::map<std::string, std::string> meta{
      {"format", kFormat},
      {"session_id", session_id},
      {"stack", stack.name},
      {"fingerprint", stack.fingerprint},
      {"batch", std::to_string(state.batch)},
      {"segments_seen", std::to_string(state.segments_seen)},
  };
  return serialize_safetensors(tensors, meta);
}

ExportedSession import_session(const std::string& bytes, const StackRegistry& stacks, int64_t max_batch) {
  // Exports have a few hundred bytes of header per block; a larger one is not ours, and
  // parsing it could cost far more memory than the message.
  constexpr size_t kMaxHeaderBytes = 1 << 20;
  SafetensorsContents contents;
  try {
    contents = parse_safetensors(bytes.data(), bytes.size(), "session state", kMaxHeaderBytes);
  } catch (const c10::Error& e) {
    fail(ErrorCode::kInvalidArgument, e.what_without_backtrace());
  }
  const auto& meta = contents.metadata;
  if (meta.count("format") == 0 || meta.at("format") != kFormat) {
    fail(ErrorCode::kInvalidArgument, "session state: not an hvlm session export (format must be ", kFormat, ")");
  }
  ExportedSession out;
  out.session_id = meta_string(meta, "session_id");
  out.stack = meta_string(meta, "stack");
  const HostedStack* stack = stacks.find(out.stack);
  if (stack == nullptr) fail(ErrorCode::kNotFound, "session state: no stack named '", out.stack, "' on this server");
  if (meta_string(meta, "fingerprint") != stack->fingerprint) {
    fail(ErrorCode::kFailedPrecondition, "session state: exported from a stack '", out.stack,
         "' with fingerprint ", meta_string(meta, "fingerprint"), ", but this server's has ",
         stack->fingerprint, " (different spec or weights)");
  }
  const uint64_t batch = parse_u64(meta, "batch");
  if (batch > static_cast<uint64_t>(max_batch)) {
    fail(ErrorCode::kInvalidArgument, "session state: batch ", batch, " exceeds the limit ", max_batch);
  }
  SessionState& state = out.state;
  state.segments_seen = parse_u64(meta, "segments_seen");
  state.batch = static_cast<int64_t>(batch);
  auto& tensors = contents.tensors;
  if (state.batch > 0) {
    const int64_t b = state.batch;
    for (size_t i : stack->memory_blocks) {
      const std::string p = "banks." + std::to_string(i);
      at::Tensor tokens = take(tensors, p + ".tokens", {b, -1, stack->dim()}, stack->dtype);
      at::Tensor counts = take(tensors, p + ".counts", {b, tokens.size(1)}, at::kFloat);
      if (counts.numel() > 0 && !at::logical_and(counts > 0, at::isfinite(counts)).all().item<bool>()) {
        fail(ErrorCode::kInvalidArgument, "session state: tensor '", p, ".counts' must be positive and finite");
      }
      const int64_t capacity = stack->memory.at(i).capacity;
      if (tokens.size(1) > capacity) {
        fail(ErrorCode::kInvalidArgument, "session state: bank of block ", i, " holds ",
             tokens.size(1), " tokens, more than its capacity ", capacity);
      }
      state.banks[i] = MemoryBank{tokens.to(stack->device), counts.to(stack->device)};
    }
    for (size_t i : stack->mamba_blocks) {
      const std::string p = "states." + std::to_string(i);
      const auto& layout = stack->state_layouts.at(i);
      state.states[i] = MambaState{
          take(tensors, p + ".conv_state", batched(layout.conv_shape, b), layout.conv_dtype).to(stack->device),
          take(tensors, p + ".ssm_state", batched(layout.ssm_shape, b), layout.ssm_dtype).to(stack->device)};
    }
  }
  if (!tensors.empty()) {
    fail(ErrorCode::kInvalidArgument, "session state: unexpected tensor '", tensors.begin()->first, "'");
  }
  return out;
}

}  // namespace hvlm
