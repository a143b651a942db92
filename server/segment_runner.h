// Runs features through a hosted stack: statelessly (Forward without a session), or as the
// next segment of a session, whose memory banks and mamba states go in and, updated by each
// block's memory policy, come back into the SessionStore. No gRPC here; errors are
// ServiceErrors. Thread-safe: many segments of different sessions run concurrently.
#pragma once

#include "server/session_store.h"
#include "server/stage_timings.h"
#include "server/stack_registry.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace hvlm {

// `x` is [B, T, D] on any device and in any floating dtype; it is checked against the stack
// (D, finite) and converted to the stack's device and dtype. `memories` maps cross_memory block
// indices to [B or 1, m, D] tokens. Returns [B, T, D] in the stack's dtype, on its device.
at::Tensor forward_stateless(const HostedStack& stack, const at::Tensor& x,
                             const std::map<size_t, at::Tensor>& memories, StageTimings* timings);

struct SegmentResult {
  at::Tensor output;
  uint64_t sequence = 0;
  /// The session's stack.
  const HostedStack* stack = nullptr;
  /// Tokens in each memory bank after the update, by cross_memory block index order.
  std::vector<int64_t> bank_lengths;
};

// A session's next segment with its lease taken: the features checked and in the stack's
// dtype, ready to run alone or batched with other sessions' segments. They stay where they came
// from (the host, for requests) until their batch goes to the stack's device in one copy.
struct PreparedSegment {
  std::unique_ptr<SessionStore::Lease> lease;
  at::Tensor x;  // [B, T, D]
};

// Takes the lease of session `session_id`'s next segment (see SessionStore::begin_segment for
// `sequence` and `stream`) and prepares `features` for it. On error nothing is held.
PreparedSegment prepare_segment(SessionStore& sessions, const std::string& session_id,
                                std::optional<uint64_t> sequence, const at::Tensor& features,
                                const SessionStore::Session* stream);

// Whether two prepared segments can run as one forward pass: the same stack, B, T and memory
// bank lengths (so inputs, banks and states concatenate along the batch exactly).
std::vector<int64_t> batch_key(const PreparedSegment& segment);

// The result of one segment of a batch: a result, or the error of that segment alone.
struct SegmentOutcome {
  SegmentResult result;
  std::exception_ptr error;
};

// Runs segments of one batch_key as one forward pass: inputs, memory banks and mamba states
// concatenated along the batch, each bank updated by its policy, then each session's slice
// committed. Outputs come back on the CPU. A failure of the forward pass or the bank update
// throws, every session unchanged and every lease still held in `segments` (so the caller may
// retry the segments one by one); after that, a failure of one segment (memory budget, closed
// meanwhile) is that segment's outcome alone. `timings` receives compute_micros and
// memory_update_micros. The same as finish_segment_batch(launch_segment_batch(segments)).
std::vector<SegmentOutcome> run_segment_batch(SessionStore& sessions, std::vector<PreparedSegment>& segments,
                                              StageTimings* timings);

// run_segment_batch in two halves, so that one thread can issue the next batch while another
// waits for this one: launch issues the forward pass, the bank updates and the copies out (on
// a GPU they run on after it returns) and takes the segments, leases and all; it throws as
// run_segment_batch does, `segments` then untouched. finish waits for the device and commits
// each segment, with run_segment_batch's outcomes; the leases go when the batch is destroyed.
// A session's lease keeps its next segment out of any batch until this one committed, so
// batches in flight together never share a session.
struct LaunchedBatch;
std::shared_ptr<LaunchedBatch> launch_segment_batch(std::vector<PreparedSegment>& segments);
std::vector<SegmentOutcome> finish_segment_batch(SessionStore& sessions, LaunchedBatch& batch,
                                                 StageTimings* timings);

// Where the host's time went while launch_segment_batch issued a batch, in microseconds, by
// phase in order (on a GPU the device runs on behind them): gathering the sessions' banks and
// states, sending the inputs, the stack's forward, the bank updates, and the copies out (each
// session's copy of its next state, the output and its finite check).
struct BatchIssueTimings {
  int64_t gather = 0, inputs = 0, forward = 0, update = 0, copies = 0;
};
const BatchIssueTimings& issue_timings(const LaunchedBatch& batch);

// Runs `x` as the next segment of session `session_id` and commits the session's next state
// (prepare_segment + run_segment_batch of one). On any error the session is unchanged.
SegmentResult run_segment(SessionStore& sessions, const std::string& session_id,
                          std::optional<uint64_t> sequence, const at::Tensor& x,
                          const SessionStore::Session* stream, StageTimings* timings);

}  // namespace hvlm
