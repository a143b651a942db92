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

// torch.nn.functional.softplus (beta 1, threshold 20: x > 20 ? x : log1p(e^x)) to a relative
// error below 2e-6, with one special-function operation and ~10 others, branch-free:
//   softplus(x) = max(x, 0) + log1p(e),  e = exp(-|x|) in (0, 1],
// with log1p(e) = e q(e), q a degree-6 fit of log1p(e) / e on [0, 1] (relative error 1.4e-6
// in float32, and exp2_approx's 2^-22). Past the threshold the log1p term is below x's
// rounding, so the result is x as torch's. Below x = -87 the flushed exp gives 0 for e^x.
__device__ __forceinline__ float softplus_approx(float x) {
  const float e = exp2_approx(-kLog2e * fabsf(x));
  float q = 0.014137922786176205f;
  q = fmaf(q, e, -0.06639033555984497f);
  q = fmaf(q, e, 0.1492079347372055f);
  q = fmaf(q, e, -0.2350282371044159f);
  q = fmaf(q, e, 0.3310913145542145f);
  q = fmaf(q, e, -0.4998692572116852f);
  q = fmaf(q, e, 0.9999987483024597f);
  return fmaf(e, q, fmaxf(x, 0.0f));
}

// softplus_approx with a degree-4 fit (relative error below 6e-5, 1.5% of bfloat16's half unit
// in the last place), two FMAs fewer: for results rounded to bfloat16.
__device__ __forceinline__ float softplus_approx_bf16(float x) {
  const float e = exp2_approx(-kLog2e * fabsf(x));
  float q = 0.04134032502770424f;
  q = fmaf(q, e, -0.15740761160850525f);
  q = fmaf(q, e, 0.30628377199172974f);
  q = fmaf(q, e, -0.4969727098941803f);
  q = fmaf(q, e, 0.99994295835495f);
  return fmaf(e, q, fmaxf(x, 0.0f));
}

}  // namespace hvlm::kernels::cuda
