// The `stream` command: one session's features, read from a .npy file or synthesised, sent
// through a stack in segments of T frames over one StreamSegments call (lock-step: each
// segment once the previous one is answered), with the outputs gathered back into one array.
// Prints a line per segment and the summary to `out`; writes --output and --json files.
// Reentrant: concurrent runs share nothing.
#pragma once

#include "client/command_line.h"
#include "client/run_summary.h"

#include <cstdint>
#include <ostream>
#include <vector>

namespace hvlm::client {

// Features [B, N, D] (rank 3) or [N, D] (rank 2, B = 1), row-major.
struct FeatureArray {
  /// 2 for [N, D], 3 for [B, N, D].
  int rank = 2;
  int64_t batch = 1, frames = 0, dim = 0;
  std::vector<float> values;

  std::vector<int64_t> shape() const;
  // Frames [start, start + count) of every batch item, as a row-major [B?, count, D] array.
  std::vector<float> slice_frames(int64_t start, int64_t count) const;
  // Writes `segment` ([B?, count, D]) into frames [start, start + count).
  void store_frames(int64_t start, int64_t count, const std::vector<float>& segment);
};

// Runs `stream`. Throws UsageError when the input contradicts a flag (--dim, --batch) or the
// synthetic features would be too large, RpcError when an RPC fails, NpyError for an unusable
// file and std::runtime_error for anything else. The session is closed before returning,
// also on failure (best effort then).
RunSummary run_stream(const StreamOptions& options, std::ostream& out);

}  // namespace hvlm::client
