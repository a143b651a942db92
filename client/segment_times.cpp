#include "client/segment_times.h"

namespace hvlm::client {
namespace {

double micros_to_ms(int64_t micros) { return static_cast<double>(micros) / 1e3; }

}  // namespace

void SegmentTimes::add(const SegmentStream::Exchange& exchange) {
  const hvlm::v1::StageTimings& t = exchange.response.timings();
  round_trips_.add(exchange.round_trip_ms);
  server_total_.add(exchange.server_ms);
  outside_server_.add(exchange.round_trip_ms - exchange.server_ms);
  queue_.add(micros_to_ms(t.queue_micros()));
  decode_.add(micros_to_ms(t.decode_micros()));
  compute_.add(micros_to_ms(t.compute_micros()));
  memory_update_.add(micros_to_ms(t.memory_update_micros()));
  encode_.add(micros_to_ms(t.encode_micros()));
}

void SegmentTimes::merge(const SegmentTimes& other) {
  round_trips_.merge(other.round_trips_);
  server_total_.merge(other.server_total_);
  outside_server_.merge(other.outside_server_);
  queue_.merge(other.queue_);
  decode_.merge(other.decode_);
  compute_.merge(other.compute_);
  memory_update_.merge(other.memory_update_);
  encode_.merge(other.encode_);
}

void SegmentTimes::summarize(double seconds, RunSummary& summary) const {
  summary.latency_ms = round_trips_.summarize(seconds);
  summary.server_total_ms = server_total_.summarize(seconds);
  summary.outside_server_ms = outside_server_.summarize(seconds);
  summary.server_stages_ms.queue = queue_.summarize(seconds);
  summary.server_stages_ms.decode = decode_.summarize(seconds);
  summary.server_stages_ms.compute = compute_.summarize(seconds);
  summary.server_stages_ms.memory_update = memory_update_.summarize(seconds);
  summary.server_stages_ms.encode = encode_.summarize(seconds);
  summary.server_compute_ms = summary.server_stages_ms.compute;
}

}  // namespace hvlm::client
