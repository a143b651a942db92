// SegmentTimes: the timings of a run's measured segments, as the client saw them (round trips)
// and as the server reported them (its StageTimings), summarised into a RunSummary. Value type;
// thread-compatible (give each thread its own and merge them afterwards).
#pragma once

#include "client/latency_stats.h"
#include "client/run_summary.h"
#include "client/segment_stream.h"

namespace hvlm::client {

class SegmentTimes {
 public:
  // Adds one segment: its round trip, the server's stages and their sum, and the rest.
  void add(const SegmentStream::Exchange& exchange);
  // Adds every segment of `other`.
  void merge(const SegmentTimes& other);
  size_t count() const { return round_trips_.count(); }
  // Fills `summary`'s latency_ms, server_compute_ms, server_total_ms, outside_server_ms and
  // server_stages_ms; throughput over `seconds`.
  void summarize(double seconds, RunSummary& summary) const;

 private:
  LatencyStats round_trips_, server_total_, outside_server_;
  LatencyStats queue_, decode_, compute_, memory_update_, encode_;
};

}  // namespace hvlm::client
