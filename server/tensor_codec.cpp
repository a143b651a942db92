#include "server/tensor_codec.h"

#include "attention/tensor_checks.h"
#include "server/service_error.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <limits>

namespace hvlm {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "hvlm's wire format assumes a little-endian host");

c10::ScalarType scalar_type(v1::DType dtype, const std::string& field) {
  switch (dtype) {
    case v1::FLOAT32: return at::kFloat;
    case v1::FLOAT16: return at::kHalf;
    case v1::BFLOAT16: return at::kBFloat16;
    default:
      fail(ErrorCode::kInvalidArgument, field, ".dtype must be FLOAT32, FLOAT16 or BFLOAT16, got ",
           v1::DType_Name(dtype).empty() ? std::to_string(static_cast<int>(dtype)) : v1::DType_Name(dtype));
  }
}

// An element of the message's bytes (a protobuf string need not be aligned for U).
template <typename U>
U load_unaligned(const char* p) {
  U v;
  std::memcpy(&v, p, sizeof(U));
  return v;
}

struct ConvertFlags {
  bool non_finite = false;  // a wire value is NaN or infinite
  bool overflow = false;    // a finite wire value became infinite in the new dtype
};

// The wire's float32 values as bfloat16, rounded to nearest even exactly as c10::BFloat16 does
// for finite values; branch-free, so that the compiler vectorises it.
ConvertFlags float_to_bfloat16(const char* src, uint16_t* dst, int64_t n) {
  uint32_t non_finite = 0, overflow = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = load_unaligned<uint32_t>(src + 4 * i);
    non_finite |= static_cast<uint32_t>((u & 0x7F800000u) == 0x7F800000u);
    const uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    overflow |= static_cast<uint32_t>((r & 0x7F80u) == 0x7F80u);
    dst[i] = static_cast<uint16_t>(r);
  }
  return {non_finite != 0, overflow != 0};
}

// Any other pair of dtypes, value by value through float (which holds every wire value exactly).
template <typename Src, typename Dst>
ConvertFlags convert_values(const char* src, Dst* dst, int64_t n) {
  ConvertFlags flags;
  for (int64_t i = 0; i < n; ++i) {
    const float f = static_cast<float>(load_unaligned<Src>(src + sizeof(Src) * i));
    flags.non_finite |= !std::isfinite(f);
    dst[i] = static_cast<Dst>(f);
    flags.overflow |= !std::isfinite(static_cast<float>(dst[i]));
  }
  return flags;
}

// The wire's values (of dtype `from`) into `dst`, which has another dtype, in one pass.
ConvertFlags convert_wire(const char* src, c10::ScalarType from, at::Tensor& dst) {
  const int64_t n = dst.numel();
  if (from == at::kFloat && dst.scalar_type() == at::kBFloat16) {
    return float_to_bfloat16(src, reinterpret_cast<uint16_t*>(dst.data_ptr()), n);
  }
  ConvertFlags flags;
  auto into = [&](auto* out) {
    switch (from) {
      case at::kFloat: flags = convert_values<float>(src, out, n); break;
      case at::kBFloat16: flags = convert_values<c10::BFloat16>(src, out, n); break;
      default: flags = convert_values<c10::Half>(src, out, n); break;
    }
  };
  switch (dst.scalar_type()) {
    case at::kFloat: into(dst.data_ptr<float>()); break;
    case at::kBFloat16: into(dst.data_ptr<c10::BFloat16>()); break;
    default: into(dst.data_ptr<c10::Half>()); break;
  }
  return flags;
}

// `src` (bfloat16 or float16, contiguous on the host) widened to float32 into `dst`.
void widen_to_float(const at::Tensor& src, char* dst) {
  const int64_t n = src.numel();
  if (src.scalar_type() == at::kBFloat16) {
    const auto* in = reinterpret_cast<const uint16_t*>(src.data_ptr());
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t u = static_cast<uint32_t>(in[i]) << 16;
      std::memcpy(dst + 4 * i, &u, 4);
    }
  } else {
    const auto* in = src.data_ptr<c10::Half>();
    for (int64_t i = 0; i < n; ++i) {
      const float f = static_cast<float>(in[i]);
      std::memcpy(dst + 4 * i, &f, 4);
    }
  }
}

}  // namespace

DecodedTokens decode_tokens(const v1::Tensor& tensor, const std::string& field, int64_t max_tokens,
                            bool allow_empty_time, bool pinned, std::optional<c10::ScalarType> store_as) {
  DecodedTokens out;
  out.dtype = tensor.dtype();
  const c10::ScalarType type = scalar_type(tensor.dtype(), field);
  const int rank = tensor.shape_size();
  if (rank != 2 && rank != 3) {
    fail(ErrorCode::kInvalidArgument, field, " must be [T, D] or [B, T, D], got ", rank, " dimensions");
  }
  std::vector<int64_t> shape(tensor.shape().begin(), tensor.shape().end());
  if (rank == 2) shape.insert(shape.begin(), 1);
  out.unbatched = rank == 2;
  const char* names[] = {"B", "T", "D"};
  for (int i = 0; i < 3; ++i) {
    const bool may_be_zero = i == 1 && allow_empty_time;
    if (shape[i] < (may_be_zero ? 0 : 1)) {
      fail(ErrorCode::kInvalidArgument, field, ".shape: ", names[i], " must be ",
           may_be_zero ? ">= 0" : ">= 1", ", got ", shape[i]);
    }
  }
  // Bounds before multiplying, so the products below cannot overflow.
  const int64_t limit = std::numeric_limits<int32_t>::max();
  if (shape[0] > limit || shape[1] > limit || shape[2] > (1 << 20)) {
    fail(ErrorCode::kInvalidArgument, field, ".shape is out of range");
  }
  const int64_t tokens = shape[0] * shape[1];
  if (tokens > max_tokens) {
    fail(ErrorCode::kResourceExhausted, field, " has ", tokens, " tokens (B * T), more than the limit ",
         max_tokens);
  }
  const int64_t bytes = tokens * shape[2] * static_cast<int64_t>(c10::elementSize(type));
  if (static_cast<int64_t>(tensor.raw_data().size()) != bytes) {
    fail(ErrorCode::kInvalidArgument, field, ".raw_data has ", tensor.raw_data().size(),
         " bytes, but shape and dtype need ", bytes);
  }
  const c10::ScalarType held = store_as.value_or(type);
  TORCH_CHECK(held == at::kFloat || held == at::kBFloat16 || held == at::kHalf,
              "decode_tokens: store_as must be float32, bfloat16 or float16");
  out.tokens = at::empty(shape, at::TensorOptions().dtype(held).pinned_memory(pinned));
  if (bytes == 0) return out;
  ConvertFlags flags;
  if (held == type) {
    std::memcpy(out.tokens.data_ptr(), tensor.raw_data().data(), static_cast<size_t>(bytes));
    flags.non_finite = !all_finite(out.tokens);
  } else {
    flags = convert_wire(tensor.raw_data().data(), type, out.tokens);
  }
  if (flags.non_finite) fail(ErrorCode::kInvalidArgument, field, " has non-finite values (NaN or infinity)");
  if (flags.overflow) fail_outside_range(field, held);
  return out;
}

void fail_outside_range(const std::string& field, c10::ScalarType dtype) {
  fail(ErrorCode::kInvalidArgument, field, " has values outside the range of the stack's ", c10::toString(dtype),
       " (they overflow to infinity)");
}

void encode_tokens(const at::Tensor& tokens, bool unbatched, v1::DType dtype, v1::Tensor* out) {
  const c10::ScalarType type = scalar_type(dtype, "output");
  out->set_dtype(dtype);
  out->clear_shape();
  for (int64_t i = unbatched && tokens.size(0) == 1 ? 1 : 0; i < tokens.dim(); ++i) out->add_shape(tokens.size(i));
  if (type == at::kFloat && (tokens.scalar_type() == at::kBFloat16 || tokens.scalar_type() == at::kHalf) &&
      tokens.is_cpu() && tokens.is_contiguous()) {
    std::string* raw = out->mutable_raw_data();
    raw->resize(static_cast<size_t>(tokens.numel()) * 4);
    widen_to_float(tokens, raw->data());
    return;
  }
  const at::Tensor t = tokens.to(at::kCPU, type).contiguous();
  out->set_raw_data(t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size());
}

}  // namespace hvlm
