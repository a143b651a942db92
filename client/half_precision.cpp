#include "client/half_precision.h"

#include <cstring>

namespace hvlm::client {
namespace {

uint32_t float_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

float bits_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// `magnitude >> shift`, rounded to nearest with ties to even; 1 <= shift <= 31.
uint32_t shift_right_round_even(uint32_t magnitude, unsigned shift) {
  const uint32_t kept = magnitude >> shift;
  const uint32_t remainder = magnitude & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  return kept + ((remainder > half || (remainder == half && (kept & 1u))) ? 1u : 0u);
}

}  // namespace

uint16_t float_to_half_bits(float value) {
  const uint32_t bits = float_bits(value);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t exponent = (bits >> 23) & 0xffu;
  const uint32_t mantissa = bits & 0x7fffffu;

  if (exponent == 0xffu) {
    // Infinity stays infinity; NaN keeps its top payload bits and is made quiet so that a
    // payload living only in the low bits cannot turn into infinity.
    if (mantissa == 0) return static_cast<uint16_t>(sign | 0x7c00u);
    return static_cast<uint16_t>(sign | 0x7e00u | (mantissa >> 13));
  }
  // binary16 normals have unbiased exponents -14..15, i.e. float exponent fields 113..142.
  if (exponent >= 143) return static_cast<uint16_t>(sign | 0x7c00u);
  if (exponent >= 113) {
    // The rounding carry may run into the exponent field, which is exactly right (up to
    // 0x7c00, infinity, for values at or above 65520).
    const uint32_t unrounded = ((exponent - 112u) << 23) | mantissa;
    return static_cast<uint16_t>(sign | shift_right_round_even(unrounded, 13));
  }
  // Subnormal binary16 (units of 2^-24): the full significand times 2^(exponent - 150 + 24).
  // Below 2^-25 everything rounds to zero (2^-25 itself ties to the even zero).
  if (exponent < 102) return static_cast<uint16_t>(sign);
  const uint32_t significand = mantissa | 0x800000u;
  // A carry out of the subnormal range yields 0x0400, the smallest normal: also right.
  return static_cast<uint16_t>(sign | shift_right_round_even(significand, 126u - exponent));
}

float half_bits_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1fu) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  if (mantissa == 0) return bits_float(sign);
  // Subnormal: normalise the mantissa so that its leading one becomes the implicit bit.
  uint32_t shifted = mantissa;
  uint32_t float_exponent = 113;  // 2^-14, the exponent of the smallest binary16 normal
  while ((shifted & 0x400u) == 0) {
    shifted <<= 1;
    --float_exponent;
  }
  return bits_float(sign | (float_exponent << 23) | ((shifted & 0x3ffu) << 13));
}

uint16_t float_to_bfloat16_bits(float value) {
  const uint32_t bits = float_bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // quiet NaN, sign kept
  }
  // Round to nearest even on the low half; the carry handles overflow to infinity.
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float bfloat16_bits_to_float(uint16_t bits) {
  return bits_float(static_cast<uint32_t>(bits) << 16);
}

}  // namespace hvlm::client
