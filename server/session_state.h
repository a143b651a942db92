// SessionState: what a session carries between segments — a memory bank per cross_memory
// block and a recurrent state per mamba block — and its serialised form for ExportSession /
// ImportSession (a safetensors file with the stack's fingerprint in its metadata).
// Value type (tensors are shared, never modified in place); thread-compatible.
#pragma once

#include "attention/mamba_layer.h"
#include "attention/memory_bank.h"
#include "server/stack_registry.h"

#include <cstdint>
#include <map>
#include <string>

namespace hvlm {

struct SessionState {
  /// Batch size fixed by the first segment; 0 before it (then banks and states are empty).
  int64_t batch = 0;
  /// Segments processed: the sequence number the next segment must carry.
  uint64_t segments_seen = 0;
  /// By cross_memory block index.
  std::map<size_t, MemoryBank> banks;
  /// By mamba block index.
  std::map<size_t, MambaState> states;

  /// Bytes held by banks and states.
  int64_t bank_bytes() const;
  int64_t state_bytes() const;
  int64_t total_bytes() const { return bank_bytes() + state_bytes(); }
};

// Bytes held by a bank's tokens and counts.
int64_t memory_bank_bytes(const MemoryBank& bank);

// The state a new session of `stack` with batch size `batch` starts from: empty banks and zero
// states on the stack's device.
SessionState initial_session_state(const HostedStack& stack, int64_t batch);

struct ExportedSession {
  std::string session_id;
  std::string stack;
  SessionState state;
};

// Serialises a session (tensors copied to CPU).
std::string export_session(const std::string& session_id, const HostedStack& stack,
                           const SessionState& state);

// Parses bytes from export_session for one of `stacks`. Checks the format, the stack's name and
// fingerprint, every tensor's name, shape, dtype and values, bank lengths against capacity and
// the batch against max_tokens; throws ServiceError (INVALID_ARGUMENT, NOT_FOUND for an unknown
// stack, FAILED_PRECONDITION for a fingerprint mismatch) without side effects.
ExportedSession import_session(const std::string& bytes, const StackRegistry& stacks,
                               int64_t max_batch);

}  // namespace hvlm
