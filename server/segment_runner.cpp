#include "server/segment_runner.h"

#include "server/service_error.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <chrono>

namespace hvlm {
namespace {

using Clock = std::chrono::steady_clock;

int64_t micros_since(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
}

// Checks x against the stack and moves it to the stack's device and dtype.
at::Tensor prepare(const HostedStack& stack, const at::Tensor& x, const char* what) {
  if (x.dim() != 3 || x.size(2) != stack.dim()) {
    fail(ErrorCode::kInvalidArgument, what, " must be [T, ", stack.dim(), "] or [B, T, ",
         stack.dim(), "] for stack '", stack.name, "', got last dimension ",
         x.dim() > 0 ? x.size(-1) : 0);
  }
  return x.to(stack.device, stack.dtype);
}

StackOutput run_stack(const HostedStack& stack, const at::Tensor& x,
                      const std::vector<at::Tensor>& memories, const std::vector<MambaState>& states) {
  try {
    return stack.module->forward(x, memories, states);
  } catch (const c10::Error& e) {
    fail(ErrorCode::kInternal, "stack '", stack.name, "' failed: ", e.what_without_backtrace());
  }
}

}  // namespace

at::Tensor forward_stateless(const HostedStack& stack, const at::Tensor& features,
                             const std::map<size_t, at::Tensor>& memories, StageTimings* timings) {
  c10::InferenceMode guard;
  const at::Tensor x = prepare(stack, features, "features");
  std::vector<at::Tensor> block_memories;
  if (!memories.empty()) {
    block_memories.resize(stack.module->num_blocks());
    for (const auto& [index, tokens] : memories) {
      if (!stack.memory.count(index)) {
        fail(ErrorCode::kInvalidArgument, "memories: block ", index, " of stack '", stack.name,
             "' is not a cross_memory block");
      }
      if (tokens.dim() != 3 || tokens.size(2) != stack.dim() ||
          (tokens.size(0) != 1 && tokens.size(0) != x.size(0))) {
        fail(ErrorCode::kInvalidArgument, "memories: block ", index, " tokens must be [m, ",
             stack.dim(), "] or [B or 1, m, ", stack.dim(), "] with B = ", x.size(0));
      }
      block_memories[index] = tokens.to(stack.device, stack.dtype);
    }
  }
  const auto start = Clock::now();
  at::Tensor y = run_stack(stack, x, block_memories, {}).y;
  if (timings) timings->compute_micros = micros_since(start);
  return y;
}

SegmentResult run_segment(SessionStore& sessions, const std::string& session_id,
                          std::optional<uint64_t> sequence, const at::Tensor& features,
                          const SessionStore::Session* stream, StageTimings* timings) {
  c10::InferenceMode guard;
  SessionStore::Lease lease = sessions.begin_segment(session_id, sequence, features.size(0), stream);
  const HostedStack& stack = lease.stack();
  const at::Tensor x = prepare(stack, features, "features");
  const SessionState& state = lease.state();

  const size_t n = stack.module->num_blocks();
  std::vector<at::Tensor> memories(n);
  std::vector<MambaState> states(n);
  for (const auto& [i, bank] : state.banks) memories[i] = bank.tokens;
  for (const auto& [i, s] : state.states) states[i] = s;

  auto start = Clock::now();
  StackOutput out = run_stack(stack, x, memories, states);
  if (timings) timings->compute_micros = micros_since(start);

  start = Clock::now();
  SessionState next;
  next.batch = state.batch;
  for (const auto& [i, bank] : state.banks) {
    try {
      next.banks[i] = update_memory_bank(bank, out.memory_inputs[i], stack.memory.at(i));
    } catch (const c10::Error& e) {
      fail(ErrorCode::kInternal, "memory bank of block ", i, ": ", e.what_without_backtrace());
    }
  }
  for (size_t i : stack.mamba_blocks) next.states[i] = out.states[i];
  SegmentResult result{out.y, lease.sequence(), &stack, {}};
  for (const auto& [i, bank] : next.banks) result.bank_lengths.push_back(bank.tokens.size(1));
  sessions.commit(lease, std::move(next));
  if (timings) timings->memory_update_micros = micros_since(start);
  return result;
}

}  // namespace hvlm
