// Conversions between binary32 floats and the two 16-bit formats the API carries: IEEE 754
// binary16 ("float16", numpy's '<f2') and bfloat16 (the upper half of a binary32).
// Narrowing rounds to nearest, ties to even; overflow gives infinity of the same sign; NaN
// stays NaN (quiet). Widening is exact. Pure functions; thread-safe.
#pragma once

#include <cstdint>

namespace hvlm::client {

// The binary16 bit pattern nearest to `value` (subnormal results included).
uint16_t float_to_half_bits(float value);

// The value of a binary16 bit pattern, exactly.
float half_bits_to_float(uint16_t bits);

// The bfloat16 bit pattern nearest to `value`.
uint16_t float_to_bfloat16_bits(float value);

// The value of a bfloat16 bit pattern, exactly.
float bfloat16_bits_to_float(uint16_t bits);

}  // namespace hvlm::client
