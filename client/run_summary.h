// RunSummary: the outcome of a `stream` or `load` run (segments, latency percentiles,
// throughput, errors), printed for people and written as JSON for scripts. The JSON is written
// by hand; its layout is fixed (keys in this order, numbers with up to 4 decimals, null for a
// statistic without samples):
//   {"mode": "stream", "stack": "s", "sessions": 1, "segment_tokens": 64, "batch": 1,
//    "dim": 768, "dtype": "float32", "warmup_segments": 2, "segments": 14, "seconds": 0.5,
//    "segments_per_second": 28.0,
//    "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "mean": 1.5},
//    "server_compute_ms": {"p50": 0.5, "p90": 0.9, "p99": 1.0, "mean": 0.6},
//    "server_total_ms": {...}, "outside_server_ms": {...},
//    "server_stages_ms": {"queue": {...}, "decode": {...}, "compute": {...},
//                         "memory_update": {...}, "encode": {...}},
//    "errors": 0, "first_error": ""}
// Value type; thread-compatible.
#pragma once

#include "client/latency_stats.h"

#include <cstdint>
#include <ostream>
#include <string>

namespace hvlm::client {

// The server's stages of a run's segments (StageTimings in the API), each summarised.
struct ServerStages {
  LatencySummary queue, decode, compute, memory_update, encode;
};

struct RunSummary {
  /// "stream" or "load".
  std::string mode;
  /// The stack the segments went through.
  std::string stack;
  /// Concurrent sessions (1 for stream).
  int64_t sessions = 1;
  /// Frames per segment T (the last segment of a stream may be shorter).
  int64_t segment_tokens = 0;
  /// Batch size B; 1 for [T, D] features.
  int64_t batch = 1;
  /// Model dimension D.
  int64_t dim = 0;
  /// Wire dtype of the features: float32, float16 or bfloat16.
  std::string dtype;
  /// Segments per session left out of the statistics.
  int64_t warmup_segments = 0;
  /// Wall-clock seconds of the measured (post-warmup) segments.
  double seconds = 0;
  /// Client-side round trips of the measured segments; count is the "segments" figure and
  /// per_second the throughput over `seconds`.
  LatencySummary latency_ms;
  /// The server's compute_micros of the same segments, in milliseconds.
  LatencySummary server_compute_ms;
  /// All the server's stages of the same segments, summed (SegmentStream::Exchange::server_ms).
  LatencySummary server_total_ms;
  /// Per segment, the round trip less server_total: gRPC both ways, the client and the server's
  /// bookkeeping outside its stages. (Negative only where a server reports more time than the
  /// round trip took.)
  LatencySummary outside_server_ms;
  /// Each of the server's stages of the same segments (compute is server_compute_ms again).
  ServerStages server_stages_ms;
  /// Failed RPCs (load: at most one stream and one CloseSession per session).
  int64_t errors = 0;
  /// The first failure, "<RPC>: <STATUS_CODE_NAME>: <message>"; empty without errors.
  std::string first_error;
};

// `text` as a JSON string literal, quotes included; invalid UTF-8 becomes U+FFFD.
std::string json_string(const std::string& text);

// The JSON document above, ending in a newline.
std::string summary_json(const RunSummary& summary);

// Writes summary_json(summary) to `path`; std::runtime_error when that fails.
void write_summary_json(const RunSummary& summary, const std::string& path);

// The human-readable summary: a few lines of segments, latency, throughput and errors.
void print_summary(const RunSummary& summary, std::ostream& out);

}  // namespace hvlm::client
