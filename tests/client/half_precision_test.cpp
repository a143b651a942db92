// float16 and bfloat16 conversions: exact widening, round-to-nearest-even narrowing (ties,
// subnormals, overflow), and NaN / infinity handling, checked against known bit patterns and
// exhaustively against widening.
#include "client/half_precision.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace hvlm::client {
namespace {

float from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

TEST(HalfPrecision, KnownFloat16BitPatterns) {
  EXPECT_EQ(float_to_half_bits(0.0f), 0x0000);
  EXPECT_EQ(float_to_half_bits(-0.0f), 0x8000);
  EXPECT_EQ(float_to_half_bits(1.0f), 0x3c00);
  EXPECT_EQ(float_to_half_bits(-2.0f), 0xc000);
  EXPECT_EQ(float_to_half_bits(65504.0f), 0x7bff);          // largest finite
  EXPECT_EQ(float_to_half_bits(6.103515625e-05f), 0x0400);  // smallest normal, 2^-14
  EXPECT_EQ(float_to_half_bits(5.9604644775390625e-08f), 0x0001);  // smallest subnormal
  EXPECT_EQ(float_to_half_bits(0.333251953125f), 0x3555);
}

TEST(HalfPrecision, EveryFloat16ValueSurvivesARoundTrip) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const float value = half_bits_to_float(static_cast<uint16_t>(bits));
    if (std::isnan(value)) {
      EXPECT_TRUE(std::isnan(half_bits_to_float(float_to_half_bits(value)))) << bits;
      continue;
    }
    EXPECT_EQ(float_to_half_bits(value), bits) << "bits 0x" << std::hex << bits;
  }
}

TEST(HalfPrecision, Float16RoundsToNearestEven) {
  // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: ties go to the even 1.
  EXPECT_EQ(float_to_half_bits(1.0f + 0x1.0p-11f), 0x3c00);
  // 1 + 3 * 2^-11 lies halfway between 1 + 2^-10 (odd) and 1 + 2^-9: up to even.
  EXPECT_EQ(float_to_half_bits(1.0f + 3 * 0x1.0p-11f), 0x3c02);
  // Just above the halfway point rounds up.
  EXPECT_EQ(float_to_half_bits(1.0f + 0x1.0p-11f + 0x1.0p-20f), 0x3c01);
  // Subnormal ties: 2^-25 ties between 0 and the smallest subnormal (to 0); 3 * 2^-25 goes up.
  EXPECT_EQ(float_to_half_bits(0x1.0p-25f), 0x0000);
  EXPECT_EQ(float_to_half_bits(3 * 0x1.0p-25f), 0x0002);
  EXPECT_EQ(float_to_half_bits(0x1.0p-25f * 1.0001f), 0x0001);
  // Rounding up out of the subnormal range gives the smallest normal.
  EXPECT_EQ(float_to_half_bits(0x1.0p-14f - 0x1.0p-26f), 0x0400);
}

TEST(HalfPrecision, Float16OverflowAndSpecials) {
  EXPECT_EQ(float_to_half_bits(65519.0f), 0x7bff);  // below the halfway point to 65536
  EXPECT_EQ(float_to_half_bits(65520.0f), 0x7c00);  // the tie rounds to even: infinity
  EXPECT_EQ(float_to_half_bits(1e10f), 0x7c00);
  EXPECT_EQ(float_to_half_bits(-1e10f), 0xfc00);
  EXPECT_EQ(float_to_half_bits(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(float_to_half_bits(1e-30f), 0x0000);
  EXPECT_EQ(float_to_half_bits(-1e-30f), 0x8000);
  // A NaN whose payload lives only in the low bits stays NaN.
  const uint16_t nan = float_to_half_bits(from_bits(0x7f800001u));
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x03ff, 0);
  EXPECT_TRUE(std::isinf(half_bits_to_float(0xfc00)));
  EXPECT_TRUE(std::isnan(half_bits_to_float(0x7e00)));
  EXPECT_EQ(half_bits_to_float(0x0001), 0x1.0p-24f);
  EXPECT_EQ(half_bits_to_float(0x03ff), 1023 * 0x1.0p-24f);
}

TEST(HalfPrecision, KnownBfloat16BitPatterns) {
  EXPECT_EQ(float_to_bfloat16_bits(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bfloat16_bits(-2.0f), 0xc000);
  EXPECT_EQ(float_to_bfloat16_bits(3.140625f), 0x4049);
  EXPECT_EQ(bfloat16_bits_to_float(0x4049), 3.140625f);
  EXPECT_EQ(float_to_bfloat16_bits(std::numeric_limits<float>::max()), 0x7f80);  // overflow
  EXPECT_EQ(float_to_bfloat16_bits(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_TRUE(std::isnan(bfloat16_bits_to_float(float_to_bfloat16_bits(from_bits(0x7f800001u)))));
}

TEST(HalfPrecision, Bfloat16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bfloat16_bits(from_bits(0x3f808000u)), 0x3f80);  // tie, even below
  EXPECT_EQ(float_to_bfloat16_bits(from_bits(0x3f818000u)), 0x3f82);  // tie, even above
  EXPECT_EQ(float_to_bfloat16_bits(from_bits(0x3f808001u)), 0x3f81);  // above the tie
  EXPECT_EQ(float_to_bfloat16_bits(from_bits(0x3f807fffu)), 0x3f80);  // below the tie
}

TEST(HalfPrecision, EveryBfloat16ValueSurvivesARoundTrip) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const float value = bfloat16_bits_to_float(static_cast<uint16_t>(bits));
    if (std::isnan(value)) continue;
    EXPECT_EQ(float_to_bfloat16_bits(value), bits) << "bits 0x" << std::hex << bits;
  }
}

}  // namespace
}  // namespace hvlm::client
