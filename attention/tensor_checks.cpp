#include "attention/tensor_checks.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstring>
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

namespace {

// A value is NaN or infinite exactly when its exponent bits are all ones. Branch-free, so the
// compiler vectorizes the loop; the bits are read through memcpy (no type punning).
template <typename Bits>
bool exponents_finite(const void* data, int64_t count, Bits exponent_mask) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  Bits non_finite = 0;
  for (int64_t i = 0; i < count; ++i) {
    Bits bits;
    std::memcpy(&bits, bytes + i * static_cast<int64_t>(sizeof(Bits)), sizeof(Bits));
    non_finite |= static_cast<Bits>((bits & exponent_mask) == exponent_mask);
  }
  return non_finite == 0;
}

}  // namespace

bool all_finite(const at::Tensor& t) {
  if (t.numel() == 0) return true;
  if (t.device().is_cpu() && t.is_contiguous()) {
    const void* data = t.data_ptr();
    switch (t.scalar_type()) {
      case at::kFloat: return exponents_finite<uint32_t>(data, t.numel(), 0x7f800000u);
      case at::kDouble: return exponents_finite<uint64_t>(data, t.numel(), 0x7ff0000000000000ull);
      case at::kBFloat16: return exponents_finite<uint16_t>(data, t.numel(), 0x7f80u);
      case at::kHalf: return exponents_finite<uint16_t>(data, t.numel(), 0x7c00u);
      default: break;
    }
  }
  return at::isfinite(t).all().item<bool>();
}

void check_finite(const at::Tensor& x, const char* name) {
  if (x.numel() == 0 || values_already_checked()) return;
  TORCH_CHECK(all_finite(x), name,
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
