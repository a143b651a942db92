#include "server/segment_runner.h"

#include "server/service_error.h"
#include "server/tensor_codec.h"

#include "attention/batch_split.h"
#include "attention/tensor_checks.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#if HVLM_WITH_CUDA
#include "attention/cuda_kernels.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#endif

#include <algorithm>
#include <chrono>
#include <exception>
#include <functional>
#include <optional>
#include <string>

namespace hvlm {
namespace {

using Clock = std::chrono::steady_clock;

// Checks x against the stack and converts it to the stack's dtype where it is (on the host for
// requests; it moves to the stack's device with its batch, see to_stack_device): for a GPU
// stack into pinned memory, from which the device reads it directly. (A stream's features
// arrive decoded in the stack's dtype, pinned, so they pass through unchanged.) A value finite
// in the wire dtype may overflow the stack's (3e38 in bfloat16, 7e4 in float16): that is the
// caller's input error, caught here rather than inside a (possibly batched) forward pass.
at::Tensor prepare(const HostedStack& stack, const at::Tensor& x, const char* what) {
  if (x.dim() != 3 || x.size(2) != stack.dim()) {
    fail(ErrorCode::kInvalidArgument, what, " must be [T, ", stack.dim(), "] or [B, T, ",
         stack.dim(), "] for stack '", stack.name, "', got last dimension ",
         x.dim() > 0 ? x.size(-1) : 0);
  }
  const bool to_pinned = stack.device.is_cuda() && x.is_cpu() &&
                         !(x.scalar_type() == stack.dtype && x.is_contiguous() && x.is_pinned());
  at::Tensor converted = to_pinned
                             ? at::empty(x.sizes(), x.options().dtype(stack.dtype).pinned_memory(true)).copy_(x)
                             : x.to(stack.dtype);
  if (stack.dtype != x.scalar_type() && !all_finite(converted)) fail_outside_range(what, stack.dtype);
  return converted;
}

// `parts` (of one dtype and shape past dim 0) concatenated along dim 0 on `device`. On a GPU
// one kernel per 64 parts (concat_rows), whose host cost does not grow with the parts' sizes
// (at::cat costs about a microsecond a part); it reads parts in pinned host memory across the
// bus, where staging them into one buffer first was a host memcpy of the whole batch on the
// thread that issues every pass. The parts must live until the device is past the copy: a
// batch holds its segments until it finished.
at::Tensor concat_on(at::Device device, const std::vector<at::Tensor>& parts) {
#if HVLM_WITH_CUDA
  if (device.is_cuda() && parts.size() > 1 &&
      std::all_of(parts.begin(), parts.end(), [&](const at::Tensor& p) { return cuda::concat_rows_reads(p, device); })) {
    return cuda::concat_rows(parts, device);
  }
#endif
  return (parts.size() == 1 ? parts.front() : at::cat(parts, 0)).to(device, /*non_blocking=*/true);
}

// The inputs of `parts` (prepared, in the stack's dtype) concatenated along the batch, on the
// stack's device. For a GPU stack they come from the host's pinned memory (prepare), so neither
// one part's asynchronous copy nor a batch's concat_rows waits for the device.
at::Tensor to_stack_device(const HostedStack& stack, const std::vector<at::Tensor>& parts) {
  return concat_on(stack.device, parts);
}

#if HVLM_WITH_CUDA
// While alive, an exception leaving the scope first waits for the device's current stream, so
// that what the queued work reads may be freed: a launch that fails hands its segments back to
// the caller, whose inputs the device may still be reading (to_stack_device). Failures are
// rare; the wait is then cheap.
class WaitForDeviceOnFailure {
 public:
  explicit WaitForDeviceOnFailure(at::Device device)
      : device_(device), exceptions_(std::uncaught_exceptions()) {}
  ~WaitForDeviceOnFailure() {
    if (!device_.is_cuda() || std::uncaught_exceptions() == exceptions_) return;
    try {
      at::cuda::getCurrentCUDAStream(device_.index()).synchronize();
    } catch (...) {  // a broken device: nothing left to protect
    }
  }
  WaitForDeviceOnFailure(const WaitForDeviceOnFailure&) = delete;
  WaitForDeviceOnFailure& operator=(const WaitForDeviceOnFailure&) = delete;

 private:
  at::Device device_;
  int exceptions_;
};
#endif

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
  const at::Tensor x = to_stack_device(stack, {prepare(stack, features, "features")});
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

// A batch's results on their way out (copy_out).
struct BatchCopies {
  at::Tensor y;       // [rows, T, D] on the host (pinned on a GPU)
  at::Tensor finite;  // [rows] bool on the host: that row's output and next state are finite
  // Each session's own copy of its rows of the next banks and states.
  std::map<size_t, std::vector<at::Tensor>> bank_tokens, bank_counts, conv_states, ssm_states;
#if HVLM_WITH_CUDA
  std::optional<at::cuda::CUDAEvent> done;  // the device got past all of the above (on a GPU)
#endif
};

namespace {

// Queues a batch's results out, behind its forward pass and bank updates: y for the whole
// batch in one copy (into pinned memory on a GPU, a direct DMA), beside it which batch rows
// came out finite, output and next state alike (reduced on the device: a segment that
// overflowed fails alone, and its session keeps a finite state), and each session's own copy
// of its rows of the next banks and states, so that one session's state never pins the whole
// batch's memory (all sessions' copies of one tensor are one multi-tensor copy). On a GPU
// finish_segment_batch waits for `done`.
BatchCopies copy_out(const at::Tensor& y, const std::map<size_t, MemoryBank>& next_banks,
                     const std::map<size_t, MambaState>& next_states, const std::vector<int64_t>& rows) {
  BatchCopies copies;
#if HVLM_WITH_CUDA
  const bool on_gpu = y.is_cuda();
#else
  // A GPU stack in a build without our CUDA code (HVLM_CUDA=off on a CUDA LibTorch): no event to
  // wait for, so the copies back are synchronous.
  const bool on_gpu = false;
#endif
  auto split = [&](const at::Tensor& t) {
    return rows.size() == 1 ? std::vector<at::Tensor>{t} : split_batch_copies(t, rows);
  };
  library_call("copying the results out: ", [&] {
    auto rows_finite = [](const at::Tensor& t) { return at::isfinite(t).flatten(1).all(1); };
    at::Tensor all = rows_finite(y);
    for (const auto& [i, bank] : next_banks) {
      all = all.logical_and(rows_finite(bank.tokens));
      copies.bank_tokens[i] = split(bank.tokens);
      copies.bank_counts[i] = split(bank.counts);
    }
    for (const auto& [i, state] : next_states) {
      all = all.logical_and(rows_finite(state.conv_state)).logical_and(rows_finite(state.ssm_state));
      copies.conv_states[i] = split(state.conv_state);
      copies.ssm_states[i] = split(state.ssm_state);
    }
    copies.finite = at::empty(all.sizes(), all.options().device(at::kCPU).pinned_memory(on_gpu));
    copies.finite.copy_(all, /*non_blocking=*/on_gpu);
    copies.y = at::empty(y.sizes(), y.options().device(at::kCPU).pinned_memory(on_gpu));
    copies.y.copy_(y, /*non_blocking=*/on_gpu);
#if HVLM_WITH_CUDA
    if (on_gpu) {
      copies.done.emplace();
      copies.done->record(at::cuda::getCurrentCUDAStream(y.device().index()));
    }
#endif
    return 0;
  });
  return copies;
}

}  // namespace

// A batch between launch_segment_batch and finish_segment_batch.
struct LaunchedBatch {
  std::vector<PreparedSegment> segments;  // their leases are held until the end
  const HostedStack* stack = nullptr;
  std::vector<int64_t> rows;              // batch rows of each segment
  BatchCopies copies;
  BatchIssueTimings issue;  // the forward's and the memory update's host time come from here
  // When launch returned: compute runs on from here until finish sees the device done, so a
  // batch waiting for the finisher (the one before it still finishing) is in its compute time.
  Clock::time_point launched_at;
  bool finished = false;  // finish_segment_batch waited for the device

  LaunchedBatch() = default;
  LaunchedBatch(const LaunchedBatch&) = delete;
  LaunchedBatch& operator=(const LaunchedBatch&) = delete;
  // A batch dropped without finish (its issuer failed after the launch) still waits for the
  // device before its segments' inputs, which the device may be reading, are freed.
  ~LaunchedBatch() {
#if HVLM_WITH_CUDA
    if (finished || !copies.done) return;
    try {
      copies.done->synchronize();
    } catch (...) {  // a broken device: nothing left to protect
    }
#endif
  }
};

std::shared_ptr<LaunchedBatch> launch_segment_batch(std::vector<PreparedSegment>& segments) {
  c10::InferenceMode guard;
  TORCH_CHECK(!segments.empty(), "launch_segment_batch: no segments");
  auto batch = std::make_shared<LaunchedBatch>();
  const HostedStack& stack = segments.front().lease->stack();
  batch->stack = &stack;
#if HVLM_WITH_CUDA
  // From the first copy queued on (concat_on reads the segments' pinned inputs) to the return.
  const WaitForDeviceOnFailure inputs_in_use(stack.device);
#endif
  const bool single = segments.size() == 1;
  // Concatenates one per-session tensor along the batch (no copy for a batch of one).
  auto gather = [&](const std::function<at::Tensor(const PreparedSegment&)>& get) {
    if (single) return get(segments.front());
    std::vector<at::Tensor> parts;
    parts.reserve(segments.size());
    for (const auto& s : segments) parts.push_back(get(s));
    return concat_on(parts.front().device(), parts);
  };
  for (const auto& s : segments) batch->rows.push_back(s.x.size(0));
  BatchIssueTimings& issue = batch->issue;
  auto phase_start = Clock::now();
  // Ends a phase: its time into `field`, and the next phase starts.
  auto phase_end = [&phase_start](int64_t& field) {
    const auto now = Clock::now();
    field = micros_between(phase_start, now);
    phase_start = now;
  };

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
  phase_end(issue.gather);
  std::vector<at::Tensor> inputs;
  for (const auto& s : segments) inputs.push_back(s.x);
  const at::Tensor x = to_stack_device(stack, inputs);
  phase_end(issue.inputs);

  // Every request was checked on the host (decode rejects non-finite values, prepare() values
  // that overflow the stack's dtype, import non-finite states), so the library's value checks,
  // each a wait for the device, are skipped; a stack that itself overflows is caught below, on
  // the output and the next state.
  const FiniteValuesChecked checked;
  StackOutput out = run_stack(stack, x, memories, states);
  phase_end(issue.forward);

  // The memory updates are queued behind the forward pass on the device, so on a GPU the CPU
  // issues them while the device computes.
  std::map<size_t, MemoryBank> next_banks;
  for (const auto& entry : banks) {
    const size_t i = entry.first;
    // Inside the FiniteValuesChecked scope above: the banks come from these updates or from an
    // import that checked their counts, so their value checks (waits for the device) are skipped.
    next_banks[i] = library_call("memory bank of block " + std::to_string(i) + ": ", [&] {
      return update_memory_bank(entry.second, out.memory_inputs[i], stack.memory.at(i));
    });
  }
  phase_end(issue.update);
  std::map<size_t, MambaState> next_states;
  for (size_t i : stack.mamba_blocks) next_states[i] = out.states[i];
  batch->copies = copy_out(out.y, next_banks, next_states, batch->rows);
  phase_end(issue.copies);
  batch->segments = std::move(segments);
  batch->launched_at = Clock::now();
  return batch;
}

const BatchIssueTimings& issue_timings(const LaunchedBatch& batch) { return batch.issue; }

std::vector<SegmentOutcome> finish_segment_batch(SessionStore& sessions, LaunchedBatch& batch,
                                                 StageTimings* timings) {
  c10::InferenceMode guard;
  std::vector<PreparedSegment>& segments = batch.segments;
  std::vector<SegmentOutcome> outcomes(segments.size());
  const HostedStack& stack = *batch.stack;
  BatchCopies& copies = batch.copies;
  std::exception_ptr device_error;
  try {
#if HVLM_WITH_CUDA
    if (copies.done) library_call("waiting for the device: ", [&] { copies.done->synchronize(); return 0; });
#endif
  } catch (...) {
    device_error = std::current_exception();
  }
  batch.finished = true;
  if (timings) timings->compute_micros = batch.issue.forward + micros_since(batch.launched_at);

  const auto start = Clock::now();
  const bool single = segments.size() == 1;
  const bool* row_finite = copies.finite.data_ptr<bool>();
  // From here on each segment succeeds or fails alone: a failure (its memory budget, its
  // session closed meanwhile) must not touch the segments already committed.
  int64_t row = 0;
  for (size_t j = 0; j < segments.size(); ++j) {
    PreparedSegment& segment = segments[j];
    const int64_t rows = batch.rows[j];
    try {
      if (device_error) std::rethrow_exception(device_error);
      SessionState next;
      next.batch = segment.lease->state().batch;
      SegmentResult& result = outcomes[j].result;
      for (const auto& [i, tokens] : copies.bank_tokens) {
        next.banks[i] = {tokens[j], copies.bank_counts[i][j]};
        result.bank_lengths.push_back(tokens[j].size(1));
      }
      for (const auto& [i, conv] : copies.conv_states) next.states[i] = {conv[j], copies.ssm_states[i][j]};
      result.output = single ? copies.y : copies.y.narrow(0, row, rows);
      if (!std::all_of(row_finite + row, row_finite + row + rows, [](bool f) { return f; })) {
        fail(ErrorCode::kInternal, "stack '", stack.name, "' produced non-finite values (the ",
             dtype_name(stack.dtype), " range overflowed) in its output or memory; the session is unchanged");
      }
      result.sequence = segment.lease->sequence();
      result.stack = &stack;
      sessions.commit(*segment.lease, std::move(next));
    } catch (...) {
      outcomes[j].error = std::current_exception();
    }
    row += rows;
  }
  if (timings) timings->memory_update_micros = batch.issue.update + batch.issue.copies + micros_since(start);
  return outcomes;
}

std::vector<SegmentOutcome> run_segment_batch(SessionStore& sessions, std::vector<PreparedSegment>& segments,
                                              StageTimings* timings) {
  if (segments.empty()) return {};
  return finish_segment_batch(sessions, *launch_segment_batch(segments), timings);
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
