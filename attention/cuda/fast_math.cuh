// Device math shared by our CUDA kernels: the special-function unit's base-2 exp, the constant
// that turns natural exps into it, and the softplus built on them. Explicit intrinsics, so no
// kernel relies on --use_fast_math.
#pragma once

namespace hvlm::kernels::cuda {

constexpr float kLog2e = 1.4426950408889634f;

// 2^x on the special-function unit (one MUFU.EX2); max relative error about 2^-22; -inf -> 0,
// +inf past 2^128.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// softplus(x) = max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1], with log1p(e) = e q(e) and q
// the polynomial of coefficients c (lowest first), a fit of log1p(e) / e on [0, 1]. One
// special-function operation, branch-free. Past torch's threshold (x > 20) the log1p term is
// below x's rounding, so the result is x as torch's; below x = -87 the flushed exp gives 0
// for e^x.
template <int N>
__device__ __forceinline__ float softplus_fit(float x, const float (&c)[N]) {
  const float e = exp2_approx(-kLog2e * fabsf(x));
  float q = c[N - 1];
#pragma unroll
  for (int i = N - 2; i >= 0; --i) q = fmaf(q, e, c[i]);
  return fmaf(e, q, fmaxf(x, 0.0f));
}

// torch.nn.functional.softplus (beta 1, threshold 20) to a relative error of ~2e-6 for
// x > -20 (a degree-6 fit, 1.4e-6 in float32, plus exp2_approx's 2^-22 and the rounding of its
// argument, which grows with |x|: up to ~3.5e-6 near x = -87); ~10 instructions besides the MUFU.
__device__ __forceinline__ float softplus_approx(float x) {
  constexpr float c[] = {0.9999987483024597f,  -0.4998692572116852f, 0.3310913145542145f, -0.2350282371044159f,
                         0.1492079347372055f,  -0.06639033555984497f, 0.014137922786176205f};
  return softplus_fit(x, c);
}

// The same with a degree-4 fit (relative error below 6e-5, 1.5% of bfloat16's half unit in the
// last place), two FMAs fewer: for results rounded to bfloat16.
__device__ __forceinline__ float softplus_approx_bf16(float x) {
  constexpr float c[] = {0.99994295835495f, -0.4969727098941803f, 0.30628377199172974f, -0.15740761160850525f,
                         0.04134032502770424f};
  return softplus_fit(x, c);
}

}  // namespace hvlm::kernels::cuda
