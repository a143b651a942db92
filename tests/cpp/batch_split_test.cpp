#include "attention/batch_split.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace hvlm {
namespace {

TEST(BatchSplit, PiecesHoldTheRowsInTheirOwnMemory) {
  const auto t = at::randn({6, 3, 4});
  const auto pieces = split_batch_copies(t, {1, 3, 2});
  ASSERT_EQ(pieces.size(), 3u);
  int64_t row = 0;
  for (const auto& piece : pieces) {
    EXPECT_TRUE(piece.is_contiguous());
    EXPECT_TRUE(at::equal(piece, t.narrow(0, row, piece.size(0))));
    // Its own allocation: not a view into t, so it does not keep t alive.
    EXPECT_FALSE(piece.is_alias_of(t));
    row += piece.size(0);
  }
  EXPECT_EQ(row, 6);
  pieces[1].zero_();
  EXPECT_NE(t.narrow(0, 1, 3).abs().sum().item<float>(), 0.0f);
}

TEST(BatchSplit, RowsThatDoNotAddUpAreAnError) {
  const auto t = at::zeros({4, 2});
  EXPECT_THROW(split_batch_copies(t, {1, 2}), c10::Error);
  EXPECT_THROW(split_batch_copies(t, {3, 2}), c10::Error);
}

}  // namespace
}  // namespace hvlm
