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

// Runs `x` as the next segment of session `session_id` and commits the session's next state.
// On any error the session is unchanged. See SessionStore::begin_segment for `sequence` and
// `stream` (the stream's binding, or nullptr).
SegmentResult run_segment(SessionStore& sessions, const std::string& session_id,
                          std::optional<uint64_t> sequence, const at::Tensor& x,
                          const SessionStore::Session* stream, StageTimings* timings);

}  // namespace hvlm
