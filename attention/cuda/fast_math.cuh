// Device math shared by our CUDA kernels: the special-function unit's base-2 exp and log, and
// the constants that turn natural exps and logs into them. Explicit intrinsics, so no kernel
// relies on --use_fast_math.
#pragma once

namespace hvlm::kernels::cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.69314718055994531f;

// 2^x on the special-function unit (one MUFU.EX2); max relative error about 2^-22; -inf -> 0,
// +inf past 2^128.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// log2(x) on the special-function unit (one MUFU.LG2); max absolute error about 2^-22 (so
// relative to the result it grows as x nears 1).
__device__ __forceinline__ float log2_approx(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace hvlm::kernels::cuda
