// SyntheticFeatures: the same seed gives the same values, different seeds differ, and the
// samples look standard normal (mean, variance, tails).
#include "client/synthetic_features.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace hvlm::client {
namespace {

TEST(SyntheticFeatures, SameSeedSameValues) {
  std::vector<float> a(1001), b(1001);
  SyntheticFeatures(42).fill(a.data(), a.size());
  SyntheticFeatures(42).fill(b.data(), b.size());
  EXPECT_EQ(a, b);
}

TEST(SyntheticFeatures, DifferentSeedsDiffer) {
  std::vector<float> a(16), b(16), c(16);
  SyntheticFeatures(0).fill(a.data(), a.size());
  SyntheticFeatures(1).fill(b.data(), b.size());
  SyntheticFeatures(~0ull).fill(c.data(), c.size());
  EXPECT_NE(a, b);
  EXPECT_NE(a, c);
}

TEST(SyntheticFeatures, FillContinuesTheSequence) {
  std::vector<float> whole(10), parts(10);
  SyntheticFeatures(7).fill(whole.data(), whole.size());
  SyntheticFeatures split(7);
  split.fill(parts.data(), 3);
  split.fill(parts.data() + 3, 7);
  EXPECT_EQ(whole, parts);
}

TEST(SyntheticFeatures, SamplesAreStandardNormal) {
  constexpr int kCount = 200000;
  SyntheticFeatures generator(3);
  double sum = 0, sum_squares = 0;
  int beyond_two = 0;
  for (int i = 0; i < kCount; ++i) {
    const double x = generator.next();
    ASSERT_TRUE(std::isfinite(x));
    sum += x;
    sum_squares += x * x;
    beyond_two += std::abs(x) > 2.0;
  }
  const double mean = sum / kCount;
  const double variance = sum_squares / kCount - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.01);
  EXPECT_NEAR(variance, 1.0, 0.02);
  EXPECT_NEAR(static_cast<double>(beyond_two) / kCount, 0.0455, 0.003);  // P(|Z| > 2)
}

}  // namespace
}  // namespace hvlm::client
