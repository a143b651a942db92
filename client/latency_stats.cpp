#include "client/latency_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace hvlm::client {

double sorted_percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return std::numeric_limits<double>::quiet_NaN();
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t below = static_cast<size_t>(std::floor(rank));
  const size_t above = std::min(below + 1, sorted.size() - 1);
  const double fraction = rank - static_cast<double>(below);
  return sorted[below] + fraction * (sorted[above] - sorted[below]);
}

void LatencyStats::add(double milliseconds) { samples_.push_back(milliseconds); }

void LatencyStats::merge(const LatencyStats& other) {
  samples_.insert(samples_.end(), other.samples_.begin(), other.samples_.end());
}

double LatencyStats::percentile(double p) const {
  std::vector<double> sorted = samples_;
  std::sort(sorted.begin(), sorted.end());
  return sorted_percentile(sorted, p);
}

double LatencyStats::mean() const {
  if (samples_.empty()) return std::numeric_limits<double>::quiet_NaN();
  return std::accumulate(samples_.begin(), samples_.end(), 0.0) /
         static_cast<double>(samples_.size());
}

LatencySummary LatencyStats::summarize(double seconds) const {
  std::vector<double> sorted = samples_;
  std::sort(sorted.begin(), sorted.end());
  LatencySummary summary;
  summary.count = sorted.size();
  summary.p50 = sorted_percentile(sorted, 50);
  summary.p90 = sorted_percentile(sorted, 90);
  summary.p99 = sorted_percentile(sorted, 99);
  summary.mean = mean();
  summary.per_second = seconds > 0 ? static_cast<double>(sorted.size()) / seconds : 0.0;
  return summary;
}

}  // namespace hvlm::client
