// Input validation shared by every module of the attention library.
// Each check throws c10::Error (TORCH_CHECK) with a message naming the tensor and what was
// expected, e.g. "x must be [B, T, 768], got [12, 512]". Stateless and thread-safe.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace hvlm {

// Renders a shape as "[2, 64, 768]".
std::string shape_string(at::IntArrayRef shape);

// x must be a floating-point [B, T, dim] tensor with B >= 1 and T >= min_tokens, with the given
// dtype and only finite values (NaN and +-Inf are rejected: docs/attention.md, input policy).
void check_tokens(const at::Tensor& x, int64_t dim, const char* name, at::ScalarType dtype,
                  int64_t min_tokens = 1);

// True when no value of `t` is NaN or +-infinity; empty tensors are finite. Contiguous CPU
// tensors of float32, float64, bfloat16 and float16 are decided from their exponent bits in one
// pass over the memory (LibTorch's isfinite(t).all() first builds a bool tensor: ~0.2 ms of a
// core for a 64 x 768 segment with Debian's LibTorch 1.13, against ~0.02 ms); any other tensor
// (another device or dtype, or strided) goes through at::isfinite.
bool all_finite(const at::Tensor& t);

// Every value of x is finite (skipped while a FiniteValuesChecked scope is alive on this thread).
void check_finite(const at::Tensor& x, const char* name);

// While alive, the library's checks of tensor values on this thread are skipped: check_finite,
// and the memory bank's check that its counts are positive and finite. They are the only checks
// that read tensor values, so on a GPU each one is a pass over the tensor plus a wait for the
// device, which stops the host from issuing work ahead of it. For callers whose inputs are
// already checked: a stack's blocks once the stack has checked its inputs, or a server that
// checked its requests (and imported states) on the host. Scopes nest.
class FiniteValuesChecked {
 public:
  FiniteValuesChecked();
  ~FiniteValuesChecked();
  FiniteValuesChecked(const FiniteValuesChecked&) = delete;
  FiniteValuesChecked& operator=(const FiniteValuesChecked&) = delete;
};

// Whether a FiniteValuesChecked scope is alive on this thread.
bool values_already_checked();

}  // namespace hvlm
