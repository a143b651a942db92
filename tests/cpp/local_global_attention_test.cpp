// LocalGlobalAttention: a window of |i - j| <= w/2 plus the global set G, with global queries
// attending to everything, one softmax per query (docs/attention.md); checked against a dense
// masked-attention oracle for many shapes and block sizes, plus the options it rejects.
#include "attention/local_global_attention.h"

#include "tests/cpp/test_util.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <tuple>
#include <vector>

namespace hvlm {
namespace {

using testing::kTolerance;
using testing::local_global_mask;
using testing::masked_attention_oracle;
using testing::max_relative_error;
using testing::ThrowsWith;

std::vector<int64_t> to_vector(const at::Tensor& t) {
  auto c = t.to(at::kLong).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

struct CoreCase {
  int64_t n, window, globals, block_size;
  std::string str() const {
    return "n=" + std::to_string(n) + " w=" + std::to_string(window) + " g=" +
           std::to_string(globals) + " block_size=" + std::to_string(block_size);
  }
};

void expect_core_matches_oracle(const std::vector<CoreCase>& cases) {
  c10::InferenceMode guard;
  at::manual_seed(11);
  const int64_t groups = 3, hd = 8;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.str());
    auto q = testing::randn({groups, c.n, hd});
    auto k = testing::randn({groups, c.n, hd});
    auto v = testing::randn({groups, c.n, hd});
    auto got = local_global_attention_core(q, k, v, c.window, c.globals, c.block_size);
    auto want = masked_attention_oracle(q, k, v, local_global_mask(c.n, c.window, c.globals));
    EXPECT_LE(max_relative_error(got, want), kTolerance);
  }
}

TEST(LocalGlobalAttention, GlobalPositionsAreSpreadEvenly) {
  EXPECT_EQ(to_vector(global_positions(10, 4)), (std::vector<int64_t>{0, 2, 5, 7}));
  EXPECT_EQ(to_vector(global_positions(64, 4)), (std::vector<int64_t>{0, 16, 32, 48}));
  EXPECT_EQ(to_vector(global_positions(7, 1)), (std::vector<int64_t>{0}));
  EXPECT_EQ(to_vector(global_positions(5, 5)), (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST(LocalGlobalAttention, GlobalPositionsCountDuplicatesOnceWhenMoreGlobalsThanTokens) {
  EXPECT_EQ(to_vector(global_positions(3, 5)), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(to_vector(global_positions(2, 7)), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(to_vector(global_positions(1, 4)), (std::vector<int64_t>{0}));
  for (int64_t n : {1, 2, 5, 9, 16}) {
    for (int64_t g : {1, 3, 8, 17, 40}) {
      EXPECT_EQ(to_vector(global_positions(n, g)), testing::global_positions_ref(n, g))
          << "n=" << n << " g=" << g;
    }
  }
}

TEST(LocalGlobalAttention, GlobalPositionsOfAHugeGlobalCountCostOnlyN) {
  // g far beyond n would be an unbounded allocation if positions were listed per t.
  EXPECT_EQ(to_vector(global_positions(5, int64_t{1} << 40)),
            (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(to_vector(global_positions(5, 5)), (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST(LocalGlobalAttention, GlobalPositionListIsTheSamePositionsOnTheHost) {
  for (int64_t n : {1, 2, 5, 9, 16, 8192}) {
    for (int64_t g : std::vector<int64_t>{0, 1, 3, 4, 8, 17, 40, int64_t{1} << 40}) {
      EXPECT_EQ(global_position_list(n, g), to_vector(global_positions(n, g))) << "n=" << n << " g=" << g;
    }
  }
}

TEST(LocalGlobalAttention, GlobalPositionsAreEmptyWithoutGlobalTokens) {
  EXPECT_EQ(global_positions(10, 0).numel(), 0);
  EXPECT_EQ(global_positions(1, 0).numel(), 0);
}

TEST(LocalGlobalAttention, CoreMatchesMaskedOracleWhenLengthIsNotAMultipleOfWindow) {
  expect_core_matches_oracle({{37, 8, 3, 0}, {23, 4, 2, 0}, {50, 6, 4, 0}, {33, 2, 3, 0}});
}

TEST(LocalGlobalAttention, CoreMatchesMaskedOracleWhenLengthIsAMultipleOfWindow) {
  expect_core_matches_oracle({{32, 8, 4, 0}, {16, 4, 2, 0}});
}

TEST(LocalGlobalAttention, CoreMatchesMaskedOracleWhenSequenceIsShorterThanWindow) {
  expect_core_matches_oracle({{5, 16, 2, 0}, {3, 64, 1, 0}, {9, 10, 0, 0}});
}

TEST(LocalGlobalAttention, CoreMatchesMaskedOracleForASingleToken) {
  expect_core_matches_oracle({{1, 4, 1, 0}, {1, 4, 0, 0}, {1, 2, 5, 0}, {1, 4, 0, 3}});
}

TEST(LocalGlobalAttention, CoreWithoutGlobalTokensIsPureWindowAttention) {
  expect_core_matches_oracle({{20, 6, 0, 0}, {41, 8, 0, 0}, {41, 8, 0, 3}});
}

TEST(LocalGlobalAttention, CoreWithAtLeastAsManyGlobalsAsTokensIsDenseAttention) {
  c10::InferenceMode guard;
  at::manual_seed(12);
  for (auto [n, g] : {std::pair<int64_t, int64_t>{12, 12}, {12, 25}, {7, 100}}) {
    SCOPED_TRACE("n=" + std::to_string(n) + " g=" + std::to_string(g));
    auto q = testing::randn({2, n, 8}), k = testing::randn({2, n, 8}), v = testing::randn({2, n, 8});
    EXPECT_LE(max_relative_error(local_global_attention_core(q, k, v, 2, g),
                                 masked_attention_oracle(q, k, v)),
              kTolerance);
  }
  expect_core_matches_oracle({{12, 4, 12, 0}, {12, 4, 25, 5}});
}

TEST(LocalGlobalAttention, CoreResultDoesNotDependOnBlockSize) {
  std::vector<CoreCase> cases;
  for (int64_t block : {1, 2, 3, 5, 8, 13, 37, 64, 1000}) cases.push_back({37, 8, 3, block});
  for (int64_t block : {1, 4, 7}) cases.push_back({10, 2, 2, block});
  expect_core_matches_oracle(cases);
}

TEST(LocalGlobalAttention, GlobalQueriesAttendToEveryKey) {
  c10::InferenceMode guard;
  at::manual_seed(13);
  const int64_t n = 30, g = 3;
  auto q = testing::randn({2, n, 8}), k = testing::randn({2, n, 8}), v = testing::randn({2, n, 8});
  auto out = local_global_attention_core(q, k, v, 4, g);
  auto dense = masked_attention_oracle(q, k, v);
  for (int64_t p : testing::global_positions_ref(n, g)) {
    SCOPED_TRACE("global position " + std::to_string(p));
    EXPECT_LE(max_relative_error(out.select(1, p), dense.select(1, p)), kTolerance);
  }
}

TEST(LocalGlobalAttention, KeysOutsideWindowAndGlobalSetAreInvisible) {
  c10::InferenceMode guard;
  at::manual_seed(14);
  const int64_t n = 24, w = 4, g = 2;  // G = {0, 12}
  auto q = testing::randn({1, n, 8}), k = testing::randn({1, n, 8}), v = testing::randn({1, n, 8});
  auto base = local_global_attention_core(q, k, v, w, g);
  // Token 20's key and value: seen by queries 18..22 and by the global queries only.
  auto k2 = k.clone(), v2 = v.clone();
  k2.select(1, 20).mul_(-3.0);
  v2.select(1, 20).add_(5.0);
  auto changed = local_global_attention_core(q, k2, v2, w, g);
  for (int64_t i = 0; i < n; ++i) {
    const bool sees = (i >= 18 && i <= 22) || i == 0 || i == 12;
    EXPECT_EQ(!at::allclose(base.select(1, i), changed.select(1, i)), sees) << "query " << i;
  }
}

TEST(LocalGlobalAttention, ForwardMatchesOracleFromOwnProjections) {
  at::manual_seed(15);
  const int64_t dim = 16, heads = 2;
  for (auto [t, w, g] : {std::tuple<int64_t, int64_t, int64_t>{19, 4, 3}, {6, 8, 2}, {1, 2, 1},
                         {25, 6, 0}}) {
    SCOPED_TRACE("t=" + std::to_string(t) + " w=" + std::to_string(w) + " g=" + std::to_string(g));
    LocalGlobalAttention m(
        LocalGlobalAttentionOptions(dim, heads).local_window(w).num_global_tokens(g));
    m->eval();
    c10::InferenceMode guard;
    auto x = testing::randn({2, t, dim});
    auto want = testing::projected_attention_oracle(m->proj, x, x, heads,
                                                    local_global_mask(t, w, g));
    EXPECT_LE(max_relative_error(m->forward(x), want), kTolerance);
  }
}

TEST(LocalGlobalAttention, RejectsOddWindow) {
  EXPECT_TRUE(ThrowsWith(
      [] { LocalGlobalAttention(LocalGlobalAttentionOptions(16, 2).local_window(5)); },
      {"local_window must be even and >= 2, got 5"}));
}

TEST(LocalGlobalAttention, RejectsZeroWindow) {
  EXPECT_TRUE(ThrowsWith(
      [] { LocalGlobalAttention(LocalGlobalAttentionOptions(16, 2).local_window(0)); },
      {"local_window must be even and >= 2, got 0"}));
}

TEST(LocalGlobalAttention, RejectsNegativeGlobalTokenCount) {
  EXPECT_TRUE(ThrowsWith(
      [] { LocalGlobalAttention(LocalGlobalAttentionOptions(16, 2).num_global_tokens(-1)); },
      {"num_global_tokens must be >= 0, got -1"}));
}

TEST(LocalGlobalAttention, RejectsHeadsNotDividingDimAndBadInput) {
  EXPECT_TRUE(ThrowsWith([] { LocalGlobalAttention(LocalGlobalAttentionOptions(16, 5)); },
                         {"LocalGlobalAttention", "num_heads (5) must divide dim (16)"}));
  LocalGlobalAttention m(LocalGlobalAttentionOptions(16, 2).local_window(4));
  c10::InferenceMode guard;
  EXPECT_TRUE(ThrowsWith([&] { m->forward(testing::randn({2, 5, 12})); },
                         {"x must be [B, T, 16]", "got [2, 5, 12]"}));
  auto x = testing::randn({1, 5, 16});
  x[0][0][0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(ThrowsWith([&] { m->forward(x); }, {"x contains non-finite values"}));
}

}  // namespace
}  // namespace hvlm
