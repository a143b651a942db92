#include "attention/tensor_checks.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <sstream>

namespace hvlm {

std::string shape_string(at::IntArrayRef shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) {
    out << (i ? ", " : "") << shape[i];
  }
  out << ']';
  return out.str();
}

namespace {
thread_local int finite_values_checked = 0;  // open FiniteValuesChecked scopes on this thread
}  // namespace

FiniteValuesChecked::FiniteValuesChecked() { ++finite_values_checked; }
FiniteValuesChecked::~FiniteValuesChecked() { --finite_values_checked; }

bool values_already_checked() { return finite_values_checked > 0; }

void check_finite(const at::Tensor& x, const char* name) {
  if (x.numel() == 0 || values_already_checked()) return;
  TORCH_CHECK(at::isfinite(x).all().item<bool>(), name,
              " contains non-finite values (NaN or Inf); inputs must be finite");
}

void check_tokens(const at::Tensor& x, int64_t dim, const char* name, at::ScalarType dtype,
                  int64_t min_tokens) {
  TORCH_CHECK(x.defined(), name, " must be a [B, T, ", dim, "] tensor, got an undefined tensor");
  TORCH_CHECK(x.dim() == 3 && x.size(2) == dim, name, " must be [B, T, ", dim, "], got ",
              shape_string(x.sizes()));
  TORCH_CHECK(x.size(0) >= 1, name, " must have a batch of at least 1, got ",
              shape_string(x.sizes()));
  TORCH_CHECK(x.size(1) >= min_tokens, name, " must have at least ", min_tokens,
              " token(s), got ", shape_string(x.sizes()));
  TORCH_CHECK(x.scalar_type() == dtype, name, " must have dtype ", c10::toString(dtype),
              " (the module's parameter dtype), got ", c10::toString(x.scalar_type()));
  check_finite(x, name);
}

}  // namespace hvlm
