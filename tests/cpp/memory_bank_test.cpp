// Memory banks: fifo pooling against adaptive_avg_pool1d, capacity eviction, merge's choice of
// pair, count weighting, tie-breaking and batch independence on hand examples, both policies
// against a naive oracle over successive segments, other dtypes, untouched inputs, and the
// options and inputs it rejects.
#include "attention/memory_bank.h"
#include "attention/tensor_checks.h"

#include "tests/cpp/test_util.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace hvlm {
namespace {

using testing::max_relative_error;
using testing::ThrowsWith;

using Rows = std::vector<std::vector<float>>;

// One batch item of a bank, as plain vectors: the naive oracle's state.
struct NaiveItem {
  Rows tokens;
  std::vector<double> counts;
};

at::Tensor tensor2d(const Rows& rows) {
  const int64_t n = static_cast<int64_t>(rows.size()), d = n ? rows[0].size() : 0;
  auto out = at::empty({n, d}, at::kFloat);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t e = 0; e < d; ++e) out[i][e] = rows[i][e];
  }
  return out;
}

// rows of item i of a [B, T, D] tensor.
Rows item_rows(const at::Tensor& x, int64_t i) {
  auto c = x[i].to(at::kFloat).contiguous();
  Rows rows(c.size(0), std::vector<float>(c.size(1)));
  const float* p = c.data_ptr<float>();
  for (auto& row : rows) {
    std::copy(p, p + row.size(), row.begin());
    p += row.size();
  }
  return rows;
}

// [B, M, D] tokens and [B, M] counts from per-item oracle states.
MemoryBank to_bank(const std::vector<NaiveItem>& items) {
  std::vector<at::Tensor> tokens, counts;
  for (const auto& item : items) {
    tokens.push_back(tensor2d(item.tokens));
    std::vector<float> c(item.counts.begin(), item.counts.end());
    counts.push_back(at::tensor(c, at::kFloat));
  }
  return {at::stack(tokens), at::stack(counts)};
}

// Adaptive average pooling to P = min(T, per_segment) rows, append, keep the last `capacity`.
void naive_fifo(NaiveItem& item, const Rows& segment, int64_t capacity, int64_t per_segment) {
  const int64_t t = segment.size(), p = std::min(t, per_segment), d = segment[0].size();
  for (int64_t i = 0; i < p; ++i) {
    const int64_t begin = i * t / p, end = ((i + 1) * t + p - 1) / p;
    std::vector<float> mean(d, 0.0f);
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t e = 0; e < d; ++e) mean[e] += segment[r][e];
    }
    for (auto& v : mean) v /= static_cast<float>(end - begin);
    item.tokens.push_back(mean);
    item.counts.push_back(static_cast<double>(end - begin));
  }
  while (static_cast<int64_t>(item.tokens.size()) > capacity) {
    item.tokens.erase(item.tokens.begin());
    item.counts.erase(item.counts.begin());
  }
}

double naive_cosine(const std::vector<float>& a, const std::vector<float>& b) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t e = 0; e < a.size(); ++e) {
    ab += static_cast<double>(a[e]) * b[e];
    aa += static_cast<double>(a[e]) * a[e];
    bb += static_cast<double>(b[e]) * b[e];
  }
  return ab / std::max(std::sqrt(aa) * std::sqrt(bb), 1e-8);
}

// Append with count 1, then merge the most similar adjacent pair (recomputing every
// similarity each time) until `capacity` tokens remain.
void naive_merge(NaiveItem& item, const Rows& segment, int64_t capacity) {
  for (const auto& row : segment) {
    item.tokens.push_back(row);
    item.counts.push_back(1.0);
  }
  while (static_cast<int64_t>(item.tokens.size()) > capacity) {
    size_t best = 0;
    double best_sim = -std::numeric_limits<double>::infinity();
    for (size_t j = 0; j + 1 < item.tokens.size(); ++j) {
      const double sim = naive_cosine(item.tokens[j], item.tokens[j + 1]);
      if (sim > best_sim) best_sim = sim, best = j;
    }
    const double cj = item.counts[best], ck = item.counts[best + 1];
    auto& a = item.tokens[best];
    const auto& b = item.tokens[best + 1];
    for (size_t e = 0; e < a.size(); ++e) {
      a[e] = static_cast<float>((cj * a[e] + ck * b[e]) / (cj + ck));
    }
    item.counts[best] = cj + ck;
    item.tokens.erase(item.tokens.begin() + best + 1);
    item.counts.erase(item.counts.begin() + best + 1);
  }
}

MemoryBankOptions fifo(int64_t capacity, int64_t per_segment) {
  return {MemoryPolicy::kFifo, capacity, per_segment};
}
MemoryBankOptions merge(int64_t capacity) { return {MemoryPolicy::kMerge, capacity, 16}; }

MemoryBank bank_of(const Rows& tokens, const std::vector<float>& counts) {
  return {tensor2d(tokens).unsqueeze(0), at::tensor(counts, at::kFloat).unsqueeze(0)};
}

void expect_bank(const MemoryBank& got, const Rows& tokens, const std::vector<float>& counts) {
  EXPECT_LE(max_relative_error(got.tokens, tensor2d(tokens).unsqueeze(0)), 1e-7);
  EXPECT_TRUE(at::equal(got.counts, at::tensor(counts, at::kFloat).unsqueeze(0)))
      << "counts " << got.counts;
}

TEST(MemoryBank, PolicyNamesRoundTrip) {
  for (auto policy : {MemoryPolicy::kFifo, MemoryPolicy::kMerge}) {
    EXPECT_EQ(parse_memory_policy(memory_policy_name(policy)), policy);
  }
  EXPECT_EQ(memory_policy_name(MemoryPolicy::kFifo), "fifo");
  EXPECT_EQ(memory_policy_name(MemoryPolicy::kMerge), "merge");
}

TEST(MemoryBank, EmptyBankHasNoTokensInTheGivenDtype) {
  auto bank = empty_memory_bank(3, 8, at::TensorOptions().dtype(at::kDouble));
  EXPECT_EQ(bank.tokens.sizes(), (std::vector<int64_t>{3, 0, 8}));
  EXPECT_EQ(bank.tokens.scalar_type(), at::kDouble);
  EXPECT_EQ(bank.counts.sizes(), (std::vector<int64_t>{3, 0}));
  EXPECT_EQ(bank.counts.scalar_type(), at::kFloat);
}

TEST(MemoryBank, FifoPoolsSegmentLikeAdaptiveAvgPool1d) {
  c10::InferenceMode guard;
  auto segment = testing::randn({2, 11, 5});
  auto bank = update_memory_bank(empty_memory_bank(2, 5, segment.options()), segment, fifo(64, 4));
  auto want = at::adaptive_avg_pool1d(segment.transpose(1, 2), {4}).transpose(1, 2);
  EXPECT_LE(max_relative_error(bank.tokens, want), 1e-6);
  // Windows of T = 11 rows pooled to 4: rows 0-2, 2-5, 5-8, 8-10.
  EXPECT_TRUE(at::equal(bank.counts, at::tensor({3.f, 4.f, 4.f, 3.f}).expand({2, 4})));
}

TEST(MemoryBank, FifoKeepsEveryTokenOfASegmentShorterThanTokensPerSegment) {
  c10::InferenceMode guard;
  auto segment = testing::randn({2, 3, 4});
  auto bank = update_memory_bank(empty_memory_bank(2, 4, segment.options()), segment, fifo(64, 16));
  EXPECT_TRUE(at::equal(bank.tokens, segment));
  EXPECT_TRUE(at::equal(bank.counts, at::ones({2, 3})));
}

TEST(MemoryBank, FifoCapacityDropsOldestTokens) {
  c10::InferenceMode guard;
  auto first = testing::randn({2, 3, 4}), second = testing::randn({2, 4, 4});
  auto options = fifo(/*capacity=*/5, /*per_segment=*/8);
  auto bank = update_memory_bank(empty_memory_bank(2, 4, first.options()), first, options);
  bank = update_memory_bank(bank, second, options);
  EXPECT_TRUE(at::equal(bank.tokens, at::cat({first.narrow(1, 2, 1), second}, 1)));
  // A segment longer than the capacity keeps only its own newest tokens.
  auto third = testing::randn({2, 7, 4});
  bank = update_memory_bank(bank, third, fifo(5, 7));
  EXPECT_TRUE(at::equal(bank.tokens, third.narrow(1, 2, 5)));
  EXPECT_TRUE(at::equal(bank.counts, at::ones({2, 5})));
}

TEST(MemoryBank, SuccessiveSegmentsMatchNaiveOracle) {
  c10::InferenceMode guard;
  const int64_t b = 3, d = 6;
  for (auto options : {fifo(/*capacity=*/8, /*per_segment=*/3), merge(/*capacity=*/8)}) {
    SCOPED_TRACE(memory_policy_name(options.policy));
    auto bank = empty_memory_bank(b, d, at::kFloat);
    std::vector<NaiveItem> naive(b);
    for (int64_t t : {5, 9, 1, 12, 3, 7, 20}) {
      SCOPED_TRACE("segment of " + std::to_string(t));
      auto segment = testing::randn({b, t, d});
      bank = update_memory_bank(bank, segment, options);
      for (int64_t i = 0; i < b; ++i) {
        if (options.policy == MemoryPolicy::kFifo) {
          naive_fifo(naive[i], item_rows(segment, i), options.capacity, options.tokens_per_segment);
        } else {
          naive_merge(naive[i], item_rows(segment, i), options.capacity);
        }
      }
      auto want = to_bank(naive);
      ASSERT_EQ(bank.tokens.sizes(), want.tokens.sizes());
      EXPECT_LE(max_relative_error(bank.tokens, want.tokens), 1e-6);
      EXPECT_TRUE(at::equal(bank.counts, want.counts)) << bank.counts << want.counts;
    }
  }
}

TEST(MemoryBank, MergeAveragesMostSimilarAdjacentPairWeightedByCounts) {
  // Pairs' cosines: 0, 1, -1/sqrt(2): (0, 4) with count 3 meets (0, 2) with count 1.
  auto bank = bank_of({{2, 0}, {0, 4}}, {1, 3});
  auto segment = tensor2d({{0, 2}, {1, -1}}).unsqueeze(0);
  expect_bank(update_memory_bank(bank, segment, merge(3)), {{2, 0}, {0, 3.5}, {1, -1}},
              {1, 4, 1});
  // Then the cosines are 0, -1/sqrt(2): (2, 0) with count 1 meets (0, 3.5) with count 4.
  expect_bank(update_memory_bank(bank, segment, merge(2)), {{0.4f, 2.8f}, {1, -1}}, {5, 1});
}

TEST(MemoryBank, MergeTreatsBatchItemsIndependently) {
  c10::InferenceMode guard;
  auto first = tensor2d({{1, 0}, {1, 0.1f}, {0, 1}, {-1, 0}});    // best pair: 0
  auto second = tensor2d({{1, 0}, {0, 1}, {-1, 0}, {-1, 0.1f}});  // best pair: 2
  auto empty = empty_memory_bank(2, 2, at::kFloat);
  auto both = update_memory_bank(empty, at::stack({first, second}), merge(3));
  expect_bank({both.tokens.narrow(0, 0, 1), both.counts.narrow(0, 0, 1)},
              {{1, 0.05f}, {0, 1}, {-1, 0}}, {2, 1, 1});
  expect_bank({both.tokens.narrow(0, 1, 1), both.counts.narrow(0, 1, 1)},
              {{1, 0}, {0, 1}, {-1, 0.05f}}, {1, 1, 2});
  for (int64_t i = 0; i < 2; ++i) {
    auto alone = update_memory_bank(empty_memory_bank(1, 2, at::kFloat),
                                    (i ? second : first).unsqueeze(0), merge(3));
    EXPECT_TRUE(at::equal(alone.tokens, both.tokens.narrow(0, i, 1)));
    EXPECT_TRUE(at::equal(alone.counts, both.counts.narrow(0, i, 1)));
  }
}

TEST(MemoryBank, MergeTiesPickLowestPair) {
  // Every adjacent pair has cosine exactly 1.
  auto segment = tensor2d({{1, 0}, {2, 0}, {3, 0}, {4, 0}}).unsqueeze(0);
  auto empty = empty_memory_bank(1, 2, at::kFloat);
  expect_bank(update_memory_bank(empty, segment, merge(3)), {{1.5f, 0}, {3, 0}, {4, 0}},
              {2, 1, 1});
  expect_bank(update_memory_bank(empty, segment, merge(2)), {{2, 0}, {4, 0}}, {3, 1});
}

TEST(MemoryBank, MergeGivesZeroTokensSimilarityZero) {
  // Cosines -1 and 0/max(0, 1e-8) = 0: the pair with the zero token merges.
  auto segment = tensor2d({{1, 0}, {-1, 0}, {0, 0}}).unsqueeze(0);
  expect_bank(update_memory_bank(empty_memory_bank(1, 2, at::kFloat), segment, merge(2)),
              {{1, 0}, {-0.5f, 0}}, {1, 2});
}

TEST(MemoryBank, MergeWithinCapacityOnlyAppends) {
  c10::InferenceMode guard;
  auto first = testing::randn({2, 3, 4}), second = testing::randn({2, 2, 4});
  auto bank = update_memory_bank(empty_memory_bank(2, 4, at::kFloat), first, merge(5));
  bank = update_memory_bank(bank, second, merge(5));
  EXPECT_TRUE(at::equal(bank.tokens, at::cat({first, second}, 1)));
  EXPECT_TRUE(at::equal(bank.counts, at::ones({2, 5})));
}

TEST(MemoryBank, OtherDtypesComeBackInTheirOwnDtype) {
  c10::InferenceMode guard;
  auto first = testing::randn({2, 9, 4}), second = testing::randn({2, 6, 4});
  for (auto dtype : {at::kDouble, at::kBFloat16, at::kHalf}) {
    for (auto options : {fifo(6, 4), merge(6)}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + " " + memory_policy_name(options.policy));
      auto bank = empty_memory_bank(2, 4, at::TensorOptions().dtype(dtype));
      for (const auto& segment : {first, second}) {
        // The same update in float32 on the dtype's values: the bank as stored (rounded to the
        // dtype by the previous update) and the segment. Comparing whole float32 histories
        // instead would let one rounding flip which pair a later merge picks.
        const MemoryBank as_float{bank.tokens.to(at::kFloat), bank.counts};
        const auto want = update_memory_bank(as_float, segment.to(dtype).to(at::kFloat), options);
        bank = update_memory_bank(bank, segment.to(dtype), options);
        EXPECT_EQ(bank.tokens.scalar_type(), dtype);
        EXPECT_EQ(bank.counts.scalar_type(), at::kFloat);
        EXPECT_LE(max_relative_error(bank.tokens, want.tokens), dtype == at::kDouble ? 1e-6 : 1e-2);
        EXPECT_TRUE(at::equal(bank.counts, want.counts));
      }
    }
  }
}

TEST(MemoryBank, InputsAreNeverModified) {
  for (bool inference : {true, false}) {
    SCOPED_TRACE(inference ? "under InferenceMode" : "without InferenceMode");
    c10::InferenceMode guard(inference);
    for (auto options : {fifo(4, 2), fifo(20, 16), merge(4), merge(20)}) {
      SCOPED_TRACE(memory_policy_name(options.policy) + " capacity " +
                   std::to_string(options.capacity));
      auto bank = update_memory_bank(empty_memory_bank(2, 3, at::kFloat),
                                     testing::randn({2, 5, 3}), options);
      auto segment = testing::randn({2, 6, 3});
      auto tokens = bank.tokens.clone(), counts = bank.counts.clone(), seg = segment.clone();
      auto updated = update_memory_bank(bank, segment, options);
      EXPECT_TRUE(at::equal(bank.tokens, tokens));
      EXPECT_TRUE(at::equal(bank.counts, counts));
      EXPECT_TRUE(at::equal(segment, seg));
      EXPECT_FALSE(updated.tokens.is_alias_of(bank.tokens) || updated.tokens.is_alias_of(segment));
      EXPECT_FALSE(updated.counts.is_alias_of(bank.counts));
    }
  }
}

TEST(MemoryBank, LongSegmentMergesIntoCapacity) {
  c10::InferenceMode guard;
  auto bank = update_memory_bank(empty_memory_bank(1, 768, at::kFloat),
                                 testing::randn({1, 4096, 768}), merge(256));
  EXPECT_EQ(bank.tokens.sizes(), (std::vector<int64_t>{1, 256, 768}));
  EXPECT_EQ(bank.counts.sum().item<double>(), 4096.0);
  EXPECT_TRUE(at::isfinite(bank.tokens).all().item<bool>());
}

TEST(MemoryBank, RejectsBadOptions) {
  auto bank = empty_memory_bank(1, 4, at::kFloat);
  auto segment = testing::randn({1, 2, 4});
  EXPECT_TRUE(ThrowsWith([] { check_memory_bank_options(fifo(0, 4)); },
                         {"capacity must be >= 1, got 0"}));
  EXPECT_TRUE(ThrowsWith([&] { update_memory_bank(bank, segment, merge(-3)); },
                         {"capacity must be >= 1, got -3"}));
  EXPECT_TRUE(ThrowsWith([&] { update_memory_bank(bank, segment, fifo(8, 0)); },
                         {"tokens_per_segment must be >= 1, got 0"}));
  EXPECT_TRUE(ThrowsWith([] { parse_memory_policy("lru"); },
                         {"memory policy must be \"fifo\" or \"merge\", got \"lru\""}));
  EXPECT_TRUE(ThrowsWith([] { empty_memory_bank(0, 4, at::kFloat); },
                         {"batch must be >= 1, got 0"}));
  EXPECT_TRUE(ThrowsWith([] { empty_memory_bank(1, 4, at::kLong); },
                         {"memory bank dtype must be floating point, got Long"}));
}

TEST(MemoryBank, RejectsSegmentsThatDoNotFitTheBank) {
  auto bank = update_memory_bank(empty_memory_bank(2, 4, at::kFloat), testing::randn({2, 3, 4}),
                                 merge(8));
  auto options = merge(8);
  EXPECT_TRUE(ThrowsWith([&] { update_memory_bank(bank, testing::randn({3, 5, 4}), options); },
                         {"segment batch must match the bank's (2)", "got [3, 5, 4]"}));
  EXPECT_TRUE(ThrowsWith([&] { update_memory_bank(bank, testing::randn({2, 5, 3}), options); },
                         {"segment must be [B, T, 4] (the bank's dim)", "got [2, 5, 3]"}));
  EXPECT_TRUE(ThrowsWith([&] { update_memory_bank(bank, testing::randn({5, 4}), options); },
                         {"segment must be [B, T, 4]", "got [5, 4]"}));
  EXPECT_TRUE(ThrowsWith([&] { update_memory_bank(bank, testing::randn({2, 0, 4}), options); },
                         {"segment must have at least 1 token", "got [2, 0, 4]"}));
  EXPECT_TRUE(ThrowsWith(
      [&] { update_memory_bank(bank, testing::randn({2, 5, 4}).to(at::kDouble), options); },
      {"segment dtype must match the bank's (Float), got Double"}));
  EXPECT_TRUE(ThrowsWith([&] { update_memory_bank(bank, at::Tensor(), options); },
                         {"segment must be a [B, T, 4] tensor, got an undefined tensor"}));
  // Caught by every path: fifo, merge's append-only case, and the merge loop itself.
  auto bad = testing::randn({2, 5, 4});
  bad[1][2][3] = std::numeric_limits<float>::quiet_NaN();
  auto bad_bank = bank;
  bad_bank.tokens = bank.tokens.clone();
  bad_bank.tokens[0][1][0] = std::numeric_limits<float>::infinity();
  for (auto any : {fifo(8, 2), merge(8), merge(4)}) {
    EXPECT_TRUE(ThrowsWith([&] { update_memory_bank(bank, bad, any); },
                           {"segment contains non-finite values"}));
    EXPECT_TRUE(ThrowsWith([&] { update_memory_bank(bad_bank, testing::randn({2, 5, 4}), any); },
                           {"bank.tokens contains non-finite values"}));
  }
}

TEST(MemoryBank, ValueChecksAreSkippedOnlyInsideAFiniteValuesCheckedScope) {
  auto segment = testing::randn({2, 5, 4});
  auto bank = update_memory_bank(empty_memory_bank(2, 4, at::kFloat), testing::randn({2, 3, 4}), fifo(8, 4));
  const MemoryBank zero_counts{bank.tokens, at::zeros({2, 3})};
  auto nan_segment = segment.clone();
  nan_segment[0][0][0] = NAN;
  EXPECT_TRUE(ThrowsWith([&] { update_memory_bank(zero_counts, segment, fifo(8, 4)); }, {"bank.counts must be positive"}));
  EXPECT_TRUE(ThrowsWith([&] { update_memory_bank(bank, nan_segment, fifo(8, 4)); },
                         {"segment contains non-finite values"}));
  {
    const FiniteValuesChecked checked;  // the caller vouches for the values
    EXPECT_NO_THROW(update_memory_bank(zero_counts, segment, fifo(8, 4)));
    EXPECT_NO_THROW(update_memory_bank(bank, nan_segment, fifo(8, 4)));
    // Shapes are still checked.
    EXPECT_TRUE(ThrowsWith([&] { update_memory_bank({bank.tokens, at::ones({2, 4})}, segment, fifo(8, 4)); },
                           {"bank.counts must be [B, M] = [2, 3]"}));
  }
  EXPECT_TRUE(ThrowsWith([&] { update_memory_bank(zero_counts, segment, fifo(8, 4)); }, {"bank.counts must be positive"}));
}

TEST(MemoryBank, RejectsMalformedBanks) {
  auto segment = testing::randn({2, 5, 4});
  auto bank = update_memory_bank(empty_memory_bank(2, 4, at::kFloat), testing::randn({2, 3, 4}),
                                 merge(8));
  auto options = merge(8);
  EXPECT_TRUE(ThrowsWith([&] { update_memory_bank(MemoryBank{}, segment, options); },
                         {"bank.tokens must be a [B, M, D] tensor, got an undefined tensor"}));
  EXPECT_TRUE(ThrowsWith(
      [&] { update_memory_bank({bank.tokens, at::ones({2, 4})}, segment, options); },
      {"bank.counts must be [B, M] = [2, 3]", "got [2, 4]"}));
  EXPECT_TRUE(ThrowsWith(
      [&] { update_memory_bank({bank.tokens, bank.counts.to(at::kDouble)}, segment, options); },
      {"bank.counts must have dtype float32, got Double"}));
  EXPECT_TRUE(ThrowsWith(
      [&] { update_memory_bank({bank.tokens, at::zeros({2, 3})}, segment, options); },
      {"bank.counts must be positive"}));
  EXPECT_TRUE(ThrowsWith(
      [&] { update_memory_bank({bank.tokens.to(at::kInt), bank.counts}, segment, options); },
      {"bank.tokens must have a floating dtype, got Int"}));
}

}  // namespace
}  // namespace hvlm
