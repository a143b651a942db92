#include "server/service_metrics.h"

namespace hvlm {
namespace {

using metrics::exponential_buckets;

// 100 us .. ~105 s in factors of 2: a 64-token CPU segment (~50 ms) and a queue of thousands
// of them both land inside.
std::vector<double> latency_buckets() { return exponential_buckets(1e-4, 2, 21); }
// Stages can be much shorter than whole requests (decode and encode take microseconds).
std::vector<double> stage_buckets() { return exponential_buckets(1e-5, 2, 24); }

}  // namespace

const char* grpc_code_name(int code) {
  static const char* const kNames[] = {
      "OK",           "CANCELLED",        "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
      "NOT_FOUND",    "ALREADY_EXISTS",   "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",      "OUT_OF_RANGE",     "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
      "DATA_LOSS",    "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? kNames[code] : "UNKNOWN";
}

ServiceMetrics::ServiceMetrics(metrics::Registry& registry, const BuildInfo& build)
    : registry_(registry),
      requests_(registry.counter("hvlm_requests_total",
                                 "Finished RPCs by method and gRPC status code; StreamSegments counts each "
                                 "segment message.",
                                 {"rpc", "code"})),
      request_seconds_(registry.histogram("hvlm_request_duration_seconds",
                                          "Time from a request's arrival to its response, by method and stack "
                                          "(StreamSegments: per segment).",
                                          {"rpc", "stack"}, latency_buckets())),
      stage_seconds_(registry.histogram("hvlm_stage_duration_seconds",
                                        "Time a segment spent in each stage: queue (waiting for a worker), decode, "
                                        "compute (the forward pass), memory_update, encode.",
                                        {"stack", "stage"}, stage_buckets())),
      segments_(registry.counter("hvlm_segments_total",
                                 "Segments processed (session segments and stateless Forward calls).", {"stack"})),
      tokens_(registry.counter("hvlm_tokens_total", "Tokens processed (batch x segment length).", {"stack"})),
      bank_length_(registry.histogram("hvlm_memory_bank_length_tokens",
                                      "Tokens in a session's memory bank after each segment's update, per bank.",
                                      {"stack"}, {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192})),
      batch_size_(registry.histogram("hvlm_batch_size",
                                     "Requests' segments run together in one forward pass (1 without "
                                     "cross-session batching).",
                                     {"stack"}, {1, 2, 4, 8, 16, 32, 64, 128, 256})),
      batch_issue_seconds_(registry.counter("hvlm_batch_issue_seconds_total",
                                            "Time the batcher thread spent issuing batched forward passes "
                                            "(every batch goes through that one thread: a rate near 1 means it "
                                            "issues passes back to back, which bounds throughput only if the "
                                            "queue time grows too).",
                                            {"stack"})),
      active_streams_(registry.gauge("hvlm_active_streams", "StreamSegments calls open now.").get()) {
  registry.gauge("hvlm_build_info", "Always 1; the labels say which build is running.",
                 {"version", "libtorch_version", "device"})
      .labels({build.version, build.libtorch_version, build.device})
      .set(1);
}

void ServiceMetrics::add_stack(const std::string& stack) {
  // Series exist from the start, so that rate() and increase() count the first request too (a
  // series first seen holding 1 has no earlier sample to rise from). Codes: those the service
  // returns.
  static const char* const kRpcs[] = {"ListStacks",  "Forward",       "StreamSegments", "OpenSession",
                                      "CloseSession", "GetSession",   "ExportSession",  "ImportSession"};
  static const int kCodes[] = {0, 1, 3, 4, 5, 6, 8, 9, 10, 13, 14};
  for (const char* rpc : kRpcs) {
    for (int code : kCodes) requests_.labels({rpc, grpc_code_name(code)});
    // ListStacks and CloseSession are not tied to a stack: their latency is labelled stack="".
    const bool stackless = std::string(rpc) == "ListStacks" || std::string(rpc) == "CloseSession";
    request_seconds_.labels({rpc, stackless ? "" : stack});
  }
  auto stage = [&](const char* name) { return &stage_seconds_.labels({stack, name}); };
  stacks_[stack] = PerStack{&segments_.labels({stack}), &tokens_.labels({stack}), stage("queue"),
                            stage("decode"),           stage("compute"),         stage("memory_update"),
                            stage("encode"),           &bank_length_.labels({stack}), &batch_size_.labels({stack}),
                            &batch_issue_seconds_.labels({stack})};
}

const ServiceMetrics::PerStack* ServiceMetrics::find(const std::string& stack) const {
  const auto it = stacks_.find(stack);
  return it == stacks_.end() ? nullptr : &it->second;
}

void ServiceMetrics::watch(Sources sources) {
  if (sources.sessions) {
    using Stat = int64_t SessionStats::*;
    auto add = [&](metrics::MetricType type, const char* name, const char* help, Stat field) {
      registry_.callback(type, name, help, {}, [get = sources.sessions, field] {
        return std::vector<metrics::Sample>{{{}, static_cast<double>(get().*field)}};
      });
    };
    using metrics::MetricType;
    add(MetricType::kGauge, "hvlm_sessions_active", "Sessions open now.", &SessionStats::active);
    add(MetricType::kCounter, "hvlm_sessions_created_total", "Sessions opened or imported.", &SessionStats::created);
    add(MetricType::kCounter, "hvlm_sessions_closed_total", "Sessions closed by CloseSession.", &SessionStats::closed);
    add(MetricType::kCounter, "hvlm_sessions_expired_total", "Sessions closed after the idle TTL.",
        &SessionStats::expired);
    add(MetricType::kCounter, "hvlm_sessions_evicted_total", "Idle sessions closed to make room (evict_lru).",
        &SessionStats::evicted);
    add(MetricType::kCounter, "hvlm_sessions_rejected_total",
        "Opens, imports or segments refused by the session count or memory limit.", &SessionStats::rejected);
    add(MetricType::kGauge, "hvlm_session_memory_bytes", "Bytes all sessions' memory banks and states hold.",
        &SessionStats::memory_bytes);
  }
  registry_.gauge("hvlm_session_memory_limit_bytes", "max_session_memory_bytes: the budget of all sessions' state.")
      .get()
      .set(static_cast<double>(sources.session_memory_limit_bytes));
  if (sources.queued_requests) {
    registry_.callback(metrics::MetricType::kGauge, "hvlm_queued_requests",
                       "Requests waiting for a worker, plus segments waiting for their batch.", {},
                       [get = sources.queued_requests] {
                         return std::vector<metrics::Sample>{{{}, static_cast<double>(get())}};
                       });
  }
  if (sources.device_memory) {
    auto get = sources.device_memory;
    registry_.callback(metrics::MetricType::kGauge, "hvlm_device_memory_bytes",
                       "GPU memory held by tensors (allocated) and by the caching allocator (reserved).",
                       {"device", "kind"}, [get] {
                         std::vector<metrics::Sample> samples;
                         for (const auto& [device, bytes] : get()) {
                           samples.push_back({{device, "allocated"}, bytes.first});
                           samples.push_back({{device, "reserved"}, bytes.second});
                         }
                         return samples;
                       });
  }
}

void ServiceMetrics::request_done(const std::string& rpc, const std::string& stack, int grpc_code, double seconds) {
  requests_.labels({rpc, grpc_code_name(grpc_code)}).inc();
  request_seconds_.labels({rpc, stack}).observe(seconds);
}

void ServiceMetrics::batch_done(const std::string& stack, int64_t segments) {
  if (const PerStack* s = find(stack)) s->batch_size->observe(static_cast<double>(segments));
}

void ServiceMetrics::batch_issued(const std::string& stack, double seconds) {
  if (const PerStack* s = find(stack)) s->batch_issue_seconds->inc(seconds);
}

void ServiceMetrics::segment_done(const std::string& stack, int64_t tokens, const StageTimings& t,
                                  const std::vector<int64_t>* bank_lengths) {
  const PerStack* s = find(stack);
  if (s == nullptr) return;
  s->segments->inc();
  s->tokens->inc(static_cast<double>(tokens));
  s->queue->observe(t.queue_micros * 1e-6);
  s->decode->observe(t.decode_micros * 1e-6);
  s->compute->observe(t.compute_micros * 1e-6);
  s->encode->observe(t.encode_micros * 1e-6);
  if (bank_lengths != nullptr) {
    s->memory_update->observe(t.memory_update_micros * 1e-6);
    for (int64_t length : *bank_lengths) s->bank_length->observe(static_cast<double>(length));
  }
}

}  // namespace hvlm
