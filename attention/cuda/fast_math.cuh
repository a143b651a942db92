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

// 2^x on the FMA pipe, for kernels whose special-function unit is the bottleneck (the exp
// unit does 16 results a clock per SM, the FMA pipe 128): x clamped to [-126, 126], split as
// j + f with j = round(x) (by the 1.5 * 2^23 rounding trick) and f in [-0.5, 0.5], 2^f as
// 1 + f q(f) with q a degree-4 minimax fit (so 2^0 is exactly 1), and j added to the result's
// exponent field. Max relative error 1.9e-7 in float32 (1.7e-7 seen over every f; exp2_approx:
// 2^-22 = 2.4e-7), 11 instructions where exp2_approx is one MUFU. Below -126 (-inf included)
// the result is 2^-126 (about 1e-38) instead of a denormal or 0, above 126 (+inf included)
// 2^126; a NaN argument gives 2^-126 too, where exp2_approx would give NaN.
__device__ __forceinline__ float exp2_poly(float x) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: x + kRound has round(x) in its low bits
  x = fminf(fmaxf(x, -126.0f), 126.0f);
  // Explicitly rounded adds: the reduction relies on (x + kRound) - kRound not being folded.
  const float r = __fadd_rn(x, kRound);
  const float f = __fsub_rn(x, __fsub_rn(r, kRound));
  float q = 0.0013264709850773215f;  // 2^f = 1 + f q(f): exactly 1 at f = 0
  q = fmaf(q, f, 0.009671507403254509f);
  q = fmaf(q, f, 0.05550733581185341f);
  q = fmaf(q, f, 0.24022242426872253f);
  q = fmaf(q, f, 0.6931470036506653f);
  const float p = fmaf(q, f, 1.0f);
  // r's bit pattern is 0x4B400000 + j: shifted up by 23 only j's low 9 bits remain, which added
  // (modulo 2^32) to p's exponent field (126 or 127) give the exponent of p 2^j: at least 1
  // for j >= -126 (p >= 1 when x = -126), so never a denormal.
  const unsigned j_bits = static_cast<unsigned>(__float_as_int(r)) << 23;
  return __uint_as_float(static_cast<unsigned>(__float_as_int(p)) + j_bits);
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

// The softplus for results rounded to bfloat16 (kBf16: the degree-4 fit is enough) or to a
// finer type afterwards.
template <bool kBf16>
__device__ __forceinline__ float softplus_rounded(float x) {
  if constexpr (kBf16) {
    return softplus_approx_bf16(x);
  } else {
    return softplus_approx(x);
  }
}

// x * sigmoid(x). For x < -88 the exp overflows to inf and x * (1 / inf) gives -0: the limit.
__device__ __forceinline__ float silu(float x) {
  return __fdividef(x, 1.0f + exp2_approx(-kLog2e * x));
}

}  // namespace hvlm::kernels::cuda
