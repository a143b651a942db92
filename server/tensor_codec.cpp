#include "server/tensor_codec.h"

#include "attention/tensor_checks.h"
#include "server/service_error.h"

#include <ATen/ATen.h>

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

}  // namespace

DecodedTokens decode_tokens(const v1::Tensor& tensor, const std::string& field, int64_t max_tokens,
                            bool allow_empty_time, bool pinned) {
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
  out.tokens = at::empty(shape, at::TensorOptions().dtype(type).pinned_memory(pinned));
  if (bytes > 0) std::memcpy(out.tokens.data_ptr(), tensor.raw_data().data(), static_cast<size_t>(bytes));
  if (bytes > 0 && !all_finite(out.tokens)) {
    fail(ErrorCode::kInvalidArgument, field, " has non-finite values (NaN or infinity)");
  }
  return out;
}

void encode_tokens(const at::Tensor& tokens, bool unbatched, v1::DType dtype, v1::Tensor* out) {
  at::Tensor t = tokens.to(at::kCPU, scalar_type(dtype, "output")).contiguous();
  if (unbatched) t = t.squeeze(0);
  out->set_dtype(dtype);
  out->clear_shape();
  for (int64_t s : t.sizes()) out->add_shape(s);
  out->set_raw_data(t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size());
}

}  // namespace hvlm
