#include "server/finite_values.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

namespace hvlm {
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

}  // namespace hvlm
