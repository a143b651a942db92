// ServiceMetrics: every hvlm_* series the server exports (docs/observability.md lists them),
// defined in one place over a metrics::Registry. The service edge reports each finished
// request and segment here; values kept elsewhere (session counts, the worker queue, device
// memory, process statistics) are read at scrape time through watch().
//
// Thread-safety: all methods are safe to call concurrently. The per-stack children are
// created by add_stack() before serving, so the per-segment path takes no lock; the
// per-request counter looks its (rpc, code) child up under the family's mutex.
// Lifetime: the registry must outlive this object; the functions given to watch() must stay
// callable until the registry is no longer rendered.
#pragma once

#include "server/metrics.h"
#include "server/session_stats.h"
#include "server/stage_timings.h"

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace hvlm {

// The labels of hvlm_build_info.
struct BuildInfo {
  std::string version;
  std::string libtorch_version;
  std::string device;
};

class ServiceMetrics {
 public:
  ServiceMetrics(metrics::Registry& registry, const BuildInfo& build);

  /// Creates the per-stack series of `stack` (call for every hosted stack before serving).
  void add_stack(const std::string& stack);

  // Values read at scrape time. Each function is optional.
  struct Sources {
    std::function<SessionStats()> sessions;
    int64_t session_memory_limit_bytes = 0;
    std::function<size_t()> queued_requests;
    /// Per device ("cuda:0"): bytes allocated by tensors, bytes reserved by the allocator.
    std::function<std::vector<std::pair<std::string, std::pair<double, double>>>()> device_memory;
  };
  /// Registers the scrape-time series. Call once.
  void watch(Sources sources);

  /// A finished call (or, for StreamSegments, one segment message): counts it by rpc and gRPC
  /// status code, and observes its latency by rpc and stack (stack may be empty).
  void request_done(const std::string& rpc, const std::string& stack, int grpc_code, double seconds);
  /// A forward pass over `segments` requests' segments (1 until cross-session batching).
  void batch_done(const std::string& stack, int64_t segments);
  /// The batcher thread spent `seconds` issuing one batched pass (gathering the sessions' state,
  /// queueing the pass on the device).
  void batch_issued(const std::string& stack, double seconds);
  /// A segment processed: `tokens` = B * T, its stage timings, and for a session's segment the
  /// lengths of its memory banks after the update (nullptr for a stateless Forward, which has
  /// no memory-update stage).
  void segment_done(const std::string& stack, int64_t tokens, const StageTimings& timings,
                    const std::vector<int64_t>* bank_lengths);
  void stream_opened() { active_streams_.add(1); }
  void stream_closed() { active_streams_.add(-1); }

 private:
  struct PerStack {
    metrics::Counter* segments;
    metrics::Counter* tokens;
    metrics::Histogram* queue;
    metrics::Histogram* decode;
    metrics::Histogram* compute;
    metrics::Histogram* memory_update;
    metrics::Histogram* encode;
    metrics::Histogram* bank_length;
    metrics::Histogram* batch_size;
    metrics::Counter* batch_issue_seconds;
  };
  const PerStack* find(const std::string& stack) const;

  metrics::Registry& registry_;
  metrics::Family<metrics::Counter>& requests_;
  metrics::Family<metrics::Histogram>& request_seconds_;
  metrics::Family<metrics::Histogram>& stage_seconds_;
  metrics::Family<metrics::Counter>& segments_;
  metrics::Family<metrics::Counter>& tokens_;
  metrics::Family<metrics::Histogram>& bank_length_;
  metrics::Family<metrics::Histogram>& batch_size_;
  metrics::Family<metrics::Counter>& batch_issue_seconds_;
  metrics::Gauge& active_streams_;
  std::map<std::string, PerStack> stacks_;  // written by add_stack() before serving only
};

// The gRPC name of a status code ("OK", "INVALID_ARGUMENT"), "UNKNOWN" outside 0..16.
const char* grpc_code_name(int code);

}  // namespace hvlm
