#include "server/segment_runner.h"

#include "server/service_error.h"

#include "attention/batch_split.h"
#include "attention/tensor_checks.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <string>

namespace hvlm {
namespace {

using Clock = std::chrono::steady_clock;

int64_t micros_since(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
}

// Checks x against the stack and moves it to the stack's device and dtype. A value finite in
// the wire dtype may overflow the stack's (3e38 in bfloat16, 7e4 in float16): that is the
// caller's input error, caught here rather than inside a (possibly batched) forward pass. The
// check converts on x's own device (the CPU for requests), so it never waits for the GPU,
// whose stream may be busy with another batch.
at::Tensor prepare(const HostedStack& stack, const at::Tensor& x, const char* what) {
  if (x.dim() != 3 || x.size(2) != stack.dim()) {
    fail(ErrorCode::kInvalidArgument, what, " must be [T, ", stack.dim(), "] or [B, T, ",
         stack.dim(), "] for stack '", stack.name, "', got last dimension ",
         x.dim() > 0 ? x.size(-1) : 0);
  }
  if (stack.dtype != x.scalar_type() && x.numel() > 0 && !at::isfinite(x.to(stack.dtype)).all().item<bool>()) {
    fail(ErrorCode::kInvalidArgument, what, " has values outside the range of the stack's ",
         c10::toString(stack.dtype), " (they overflow to infinity)");
  }
  return x.to(stack.device, stack.dtype, /*non_blocking=*/true);
}

// Runs a library call. Its failures are INTERNAL (inputs were checked before), named by
// `context`; CUDA out-of-memory keeps its type, so the edge answers RESOURCE_EXHAUSTED.
template <typename Fn>
auto library_call(const std::string& context, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const c10::OutOfMemoryError&) {
    throw;
  } catch (const c10::Error& e) {
    fail(ErrorCode::kInternal, context, e.what_without_backtrace());
  }
}

StackOutput run_stack(const HostedStack& stack, const at::Tensor& x,
                      const std::vector<at::Tensor>& memories, const std::vector<MambaState>& states) {
  return library_call("stack '" + stack.name + "' failed: ",
                      [&] { return stack.module->forward(x, memories, states); });
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

PreparedSegment prepare_segment(SessionStore& sessions, const std::string& session_id,
                                std::optional<uint64_t> sequence, const at::Tensor& features,
                                const SessionStore::Session* stream) {
  c10::InferenceMode guard;
  auto lease = std::make_unique<SessionStore::Lease>(
      sessions.begin_segment(session_id, sequence, features.size(0), stream));
  at::Tensor x = prepare(lease->stack(), features, "features");
  return PreparedSegment{std::move(lease), std::move(x)};
}

std::vector<int64_t> batch_key(const PreparedSegment& segment) {
  std::vector<int64_t> key{reinterpret_cast<intptr_t>(&segment.lease->stack()), segment.x.size(0),
                           segment.x.size(1)};
  for (const auto& [i, bank] : segment.lease->state().banks) key.push_back(bank.tokens.size(1));
  return key;
}

std::vector<SegmentOutcome> run_segment_batch(SessionStore& sessions, std::vector<PreparedSegment>& segments,
                                              StageTimings* timings) {
  c10::InferenceMode guard;
  std::vector<SegmentOutcome> outcomes(segments.size());
  if (segments.empty()) return outcomes;
  const HostedStack& stack = segments.front().lease->stack();
  const bool single = segments.size() == 1;
  // Concatenates one per-session tensor along the batch (no copy for a batch of one).
  auto gather = [&](const std::function<at::Tensor(const PreparedSegment&)>& get) {
    if (single) return get(segments.front());
    std::vector<at::Tensor> parts;
    parts.reserve(segments.size());
    for (const auto& s : segments) parts.push_back(get(s));
    return at::cat(parts, 0);
  };
  std::vector<int64_t> rows;  // batch rows of each segment
  for (const auto& s : segments) rows.push_back(s.x.size(0));

  const size_t n = stack.module->num_blocks();
  const SessionState& first = segments.front().lease->state();
  std::vector<at::Tensor> memories(n);
  std::vector<MambaState> states(n);
  std::map<size_t, MemoryBank> banks;
  for (const auto& [i, bank] : first.banks) {
    const size_t block = i;
    banks[i] = {gather([block](const PreparedSegment& s) { return s.lease->state().banks.at(block).tokens; }),
                gather([block](const PreparedSegment& s) { return s.lease->state().banks.at(block).counts; })};
    memories[i] = banks[i].tokens;
  }
  for (const auto& [i, state] : first.states) {
    const size_t block = i;
    states[i] = {gather([block](const PreparedSegment& s) { return s.lease->state().states.at(block).conv_state; }),
                 gather([block](const PreparedSegment& s) { return s.lease->state().states.at(block).ssm_state; })};
  }
  const at::Tensor x = gather([](const PreparedSegment& s) { return s.x; });

  // Every request was checked on the host (decode rejects non-finite values, prepare() values
  // that overflow the stack's dtype, import non-finite states), so the library's value checks,
  // each a wait for the device, are skipped; a stack that itself overflows is caught below, on
  // the output and the next state.
  const FiniteValuesChecked checked;
  auto start = Clock::now();
  StackOutput out = run_stack(stack, x, memories, states);
  const int64_t forward_micros = micros_since(start);

  // The memory updates and each session's copies of its banks and states are queued behind the
  // forward pass on the device, so on a GPU the CPU issues them while the device computes; the
  // copy of y then waits for all of it.
  start = Clock::now();
  std::map<size_t, MemoryBank> next_banks;
  for (const auto& entry : banks) {
    const size_t i = entry.first;
    // Inside the FiniteValuesChecked scope above: the banks come from these updates or from an
    // import that checked their counts, so their value checks (waits for the device) are skipped.
    next_banks[i] = library_call("memory bank of block " + std::to_string(i) + ": ", [&] {
      return update_memory_bank(entry.second, out.memory_inputs[i], stack.memory.at(i));
    });
  }
  // Each session keeps its own copy of its rows, so that one session's state never pins the
  // whole batch's memory (all sessions' copies of one tensor are one multi-tensor copy).
  auto split = [&](const at::Tensor& t) {
    return single ? std::vector<at::Tensor>{t} : split_batch_copies(t, rows);
  };
  std::map<size_t, std::vector<at::Tensor>> bank_tokens, bank_counts, conv_states, ssm_states;
  library_call("splitting the batch: ", [&] {
    for (const auto& [i, bank] : next_banks) {
      bank_tokens[i] = split(bank.tokens);
      bank_counts[i] = split(bank.counts);
    }
    for (size_t i : stack.mamba_blocks) {
      conv_states[i] = split(out.states[i].conv_state);
      ssm_states[i] = split(out.states[i].ssm_state);
    }
    return 0;
  });
  const int64_t update_micros = micros_since(start);
  start = Clock::now();
  // One copy for the whole batch, into pinned memory on a GPU (a direct DMA); waits for the
  // device. Beside it, which batch rows came out finite, output and next state alike (reduced on
  // the device): a segment that overflowed fails alone, and its session keeps a finite state.
  at::Tensor y = at::empty(out.y.sizes(), out.y.options().device(at::kCPU).pinned_memory(out.y.is_cuda()));
  at::Tensor finite;
  library_call("copying the output: ", [&] {
    auto rows_finite = [](const at::Tensor& t) { return at::isfinite(t).flatten(1).all(1); };
    at::Tensor all = rows_finite(out.y);
    for (const auto& entry : next_banks) all = all.logical_and(rows_finite(entry.second.tokens));
    for (size_t i : stack.mamba_blocks) {
      all = all.logical_and(rows_finite(out.states[i].conv_state)).logical_and(rows_finite(out.states[i].ssm_state));
    }
    finite = all.to(at::kCPU);
    return y.copy_(out.y);
  });
  const bool* row_finite = finite.data_ptr<bool>();
  if (timings) timings->compute_micros = forward_micros + micros_since(start);

  start = Clock::now();
  // From here on each segment succeeds or fails alone: a failure (its memory budget, its
  // session closed meanwhile) must not touch the segments already committed.
  int64_t row = 0;
  for (size_t j = 0; j < segments.size(); ++j) {
    PreparedSegment& segment = segments[j];
    try {
      SessionState next;
      next.batch = segment.lease->state().batch;
      SegmentResult& result = outcomes[j].result;
      for (const auto& [i, bank] : next_banks) {
        next.banks[i] = {bank_tokens[i][j], bank_counts[i][j]};
        result.bank_lengths.push_back(bank.tokens.size(1));
      }
      for (size_t i : stack.mamba_blocks) next.states[i] = {conv_states[i][j], ssm_states[i][j]};
      result.output = single ? y : y.narrow(0, row, rows[j]);
      if (!std::all_of(row_finite + row, row_finite + row + rows[j], [](bool f) { return f; })) {
        fail(ErrorCode::kInternal, "stack '", stack.name, "' produced non-finite values (the ",
             dtype_name(stack.dtype), " range overflowed) in its output or memory; the session is unchanged");
      }
      result.sequence = segment.lease->sequence();
      result.stack = &stack;
      sessions.commit(*segment.lease, std::move(next));
    } catch (...) {
      outcomes[j].error = std::current_exception();
    }
    row += rows[j];
  }
  if (timings) timings->memory_update_micros = update_micros + micros_since(start);
  return outcomes;
}

SegmentResult run_segment(SessionStore& sessions, const std::string& session_id,
                          std::optional<uint64_t> sequence, const at::Tensor& features,
                          const SessionStore::Session* stream, StageTimings* timings) {
  std::vector<PreparedSegment> batch;
  batch.push_back(prepare_segment(sessions, session_id, sequence, features, stream));
  std::vector<SegmentOutcome> outcomes = run_segment_batch(sessions, batch, timings);
  if (outcomes.front().error) std::rethrow_exception(outcomes.front().error);
  return std::move(outcomes.front().result);
}

}  // namespace hvlm
