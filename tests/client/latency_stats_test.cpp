// LatencyStats: numpy-style linearly interpolated percentiles of known lists, mean,
// throughput over a span, merging, and NaN for an empty collection.
#include "client/latency_stats.h"

#include <gtest/gtest.h>

#include <cmath>

namespace hvlm::client {
namespace {

TEST(LatencyStats, PercentilesInterpolateLinearlyLikeNumpy) {
  LatencyStats stats;
  for (int i = 10; i >= 1; --i) stats.add(i);  // order of arrival does not matter
  // numpy.percentile([1..10], [0, 50, 90, 99, 100]) = 1, 5.5, 9.1, 9.91, 10.
  EXPECT_DOUBLE_EQ(stats.percentile(0), 1.0);
  EXPECT_DOUBLE_EQ(stats.percentile(50), 5.5);
  EXPECT_DOUBLE_EQ(stats.percentile(90), 9.1);
  EXPECT_DOUBLE_EQ(stats.percentile(99), 9.91);
  EXPECT_DOUBLE_EQ(stats.percentile(100), 10.0);
  EXPECT_DOUBLE_EQ(stats.mean(), 5.5);
}

TEST(LatencyStats, SummaryHoldsEveryStatisticAndThroughput) {
  LatencyStats stats;
  for (double v : {4.0, 1.0, 3.0, 2.0, 100.0}) stats.add(v);
  const LatencySummary summary = stats.summarize(2.0);
  EXPECT_EQ(summary.count, 5u);
  EXPECT_DOUBLE_EQ(summary.p50, 3.0);
  EXPECT_DOUBLE_EQ(summary.p90, 61.6);   // 4 + 0.6 * (100 - 4)
  EXPECT_DOUBLE_EQ(summary.p99, 96.16);  // 4 + 0.96 * (100 - 4)
  EXPECT_DOUBLE_EQ(summary.mean, 22.0);
  EXPECT_DOUBLE_EQ(summary.per_second, 2.5);
}

TEST(LatencyStats, SingleSampleIsEveryPercentile) {
  LatencyStats stats;
  stats.add(7.25);
  EXPECT_DOUBLE_EQ(stats.percentile(50), 7.25);
  EXPECT_DOUBLE_EQ(stats.percentile(99), 7.25);
}

TEST(LatencyStats, EmptyStatsAreNaNAndZeroThroughput) {
  const LatencySummary summary = LatencyStats().summarize(1.0);
  EXPECT_EQ(summary.count, 0u);
  EXPECT_TRUE(std::isnan(summary.p50));
  EXPECT_TRUE(std::isnan(summary.mean));
  EXPECT_EQ(summary.per_second, 0.0);
}

TEST(LatencyStats, MergeCombinesSamples) {
  LatencyStats a, b;
  a.add(1);
  a.add(2);
  b.add(3);
  a.merge(b);
  EXPECT_EQ(a.count(), 3u);
  EXPECT_DOUBLE_EQ(a.percentile(50), 2.0);
  EXPECT_EQ(a.summarize(0).per_second, 0.0);  // no span, no rate
}

TEST(LatencyStats, PercentileArgumentsAreClamped) {
  LatencyStats stats;
  stats.add(1);
  stats.add(3);
  EXPECT_DOUBLE_EQ(stats.percentile(-5), 1.0);
  EXPECT_DOUBLE_EQ(stats.percentile(250), 3.0);
}

}  // namespace
}  // namespace hvlm::client
