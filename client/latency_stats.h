// LatencyStats: a collection of per-segment latencies (milliseconds) summarised as the
// p50 / p90 / p99 percentiles, the mean and, over a wall-clock span, segments per second.
// Percentiles interpolate linearly between the closest ranks (numpy.percentile's default):
// the p-th percentile of n sorted samples x is x[k] + f * (x[k+1] - x[k]) with
// k + f = p / 100 * (n - 1). Every statistic of an empty collection is NaN.
// Value type; thread-compatible (give each thread its own and merge them afterwards).
#pragma once

#include <cstddef>
#include <vector>

namespace hvlm::client {

// The summary of a LatencyStats over a span of wall-clock time.
struct LatencySummary {
  /// Samples summarised.
  size_t count = 0;
  /// Percentiles and mean of the samples, in the samples' unit (milliseconds here).
  double p50 = 0, p90 = 0, p99 = 0, mean = 0;
  /// count / the span's seconds; 0 when the span is not positive.
  double per_second = 0;
};

class LatencyStats {
 public:
  // Adds one sample; must be finite.
  void add(double milliseconds);
  // Adds every sample of `other`.
  void merge(const LatencyStats& other);

  size_t count() const { return samples_.size(); }
  // The p-th percentile, p in [0, 100] (clamped).
  double percentile(double p) const;
  double mean() const;
  // Every statistic at once (one sort); per_second uses `seconds`.
  LatencySummary summarize(double seconds) const;

 private:
  std::vector<double> samples_;
};

// The p-th percentile of already sorted samples, as above; NaN when empty.
double sorted_percentile(const std::vector<double>& sorted, double p);

}  // namespace hvlm::client
