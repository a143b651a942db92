#include "client/tensor_codec.h"

#include "client/half_precision.h"
#include "client/little_endian.h"

#include <cmath>
#include <cstring>

namespace hvlm::client {

size_t dtype_size(hvlm::v1::DType dtype) {
  switch (dtype) {
    case hvlm::v1::FLOAT32:
      return 4;
    case hvlm::v1::FLOAT16:
    case hvlm::v1::BFLOAT16:
      return 2;
    default:
      return 0;
  }
}

std::string dtype_name(hvlm::v1::DType dtype) {
  switch (dtype) {
    case hvlm::v1::FLOAT32:
      return "float32";
    case hvlm::v1::FLOAT16:
      return "float16";
    case hvlm::v1::BFLOAT16:
      return "bfloat16";
    default:
      return "unspecified";
  }
}

std::optional<hvlm::v1::DType> parse_dtype(const std::string& name) {
  if (name == "float32") return hvlm::v1::FLOAT32;
  if (name == "float16") return hvlm::v1::FLOAT16;
  if (name == "bfloat16") return hvlm::v1::BFLOAT16;
  return std::nullopt;
}

hvlm::v1::DType stack_wire_dtype(const hvlm::v1::StackInfo& stack) {
  const std::optional<hvlm::v1::DType> dtype = parse_dtype(stack.dtype());
  if (!dtype) {
    throw TensorCodecError("stack '" + stack.name() + "' reports dtype '" + stack.dtype() +
                           "', which is not a wire dtype; pass --dtype");
  }
  return *dtype;
}

int64_t first_overflow(const float* values, size_t count, hvlm::v1::DType dtype) {
  // Whether a finite value becomes infinite when narrowed to `dtype`.
  auto overflows = [dtype](float v) {
    switch (dtype) {
      case hvlm::v1::FLOAT16: return std::isinf(half_bits_to_float(float_to_half_bits(v)));
      case hvlm::v1::BFLOAT16: return std::isinf(bfloat16_bits_to_float(float_to_bfloat16_bits(v)));
      default: return false;
    }
  };
  for (size_t i = 0; i < count; ++i) {
    if (std::isfinite(values[i]) && overflows(values[i])) return static_cast<int64_t>(i);
  }
  return -1;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

void encode_tensor(const float* values, const std::vector<int64_t>& shape, hvlm::v1::DType dtype,
                   hvlm::v1::Tensor* out) {
  const size_t item = dtype_size(dtype);
  if (item == 0) {
    throw TensorCodecError("cannot encode a tensor as dtype " + dtype_name(dtype));
  }
  if (shape.empty()) throw TensorCodecError("cannot encode a tensor without dimensions");
  size_t count = 1;
  for (int64_t dim : shape) {
    if (dim < 1) {
      throw TensorCodecError("tensor dimensions must be at least 1, got " + shape_string(shape));
    }
    count *= static_cast<size_t>(dim);
  }
  out->Clear();
  out->set_dtype(dtype);
  for (int64_t dim : shape) out->add_shape(dim);
  std::string* raw = out->mutable_raw_data();
  raw->resize(count * item);
  unsigned char* p = reinterpret_cast<unsigned char*>(raw->data());
  switch (dtype) {
    case hvlm::v1::FLOAT32:
      for (size_t i = 0; i < count; ++i) {
        uint32_t bits;
        std::memcpy(&bits, &values[i], sizeof bits);
        store_le32(p + 4 * i, bits);
      }
      break;
    case hvlm::v1::FLOAT16:
      for (size_t i = 0; i < count; ++i) store_le16(p + 2 * i, float_to_half_bits(values[i]));
      break;
    default:  // BFLOAT16
      for (size_t i = 0; i < count; ++i) store_le16(p + 2 * i, float_to_bfloat16_bits(values[i]));
      break;
  }
}

hvlm::v1::Tensor encode_tensor(const float* values, const std::vector<int64_t>& shape,
                               hvlm::v1::DType dtype) {
  hvlm::v1::Tensor tensor;
  encode_tensor(values, shape, dtype, &tensor);
  return tensor;
}

DecodedTensor decode_tensor(const hvlm::v1::Tensor& tensor) {
  DecodedTensor decoded;
  decoded.dtype = tensor.dtype();
  const size_t item = dtype_size(decoded.dtype);
  if (item == 0) {
    throw TensorCodecError("tensor dtype " + std::to_string(static_cast<int>(tensor.dtype())) +
                           " is not FLOAT32, FLOAT16 or BFLOAT16");
  }
  decoded.shape.assign(tensor.shape().begin(), tensor.shape().end());
  if (decoded.shape.empty()) throw TensorCodecError("tensor has no dimensions");
  // Every dimension is at least 1, so the partial products only grow: comparing each with
  // the number of elements raw_data holds rules out overflow before any allocation.
  const std::string& raw = tensor.raw_data();
  const size_t capacity = raw.size() / item;
  size_t count = 1;
  for (int64_t dim : decoded.shape) {
    if (dim < 1) {
      throw TensorCodecError("tensor dimensions must be at least 1, got " +
                             shape_string(decoded.shape));
    }
    if (static_cast<uint64_t>(dim) > capacity || count > capacity / static_cast<size_t>(dim)) {
      count = 0;
      break;
    }
    count *= static_cast<size_t>(dim);
  }
  if (count == 0 || count * item != raw.size()) {
    throw TensorCodecError("tensor of shape " + shape_string(decoded.shape) + " and dtype " +
                           dtype_name(decoded.dtype) + " has " + std::to_string(raw.size()) +
                           " bytes of raw_data, which does not match its shape");
  }
  decoded.values.resize(count);
  const unsigned char* p = reinterpret_cast<const unsigned char*>(raw.data());
  switch (decoded.dtype) {
    case hvlm::v1::FLOAT32:
      for (size_t i = 0; i < count; ++i) {
        const uint32_t bits = load_le32(p + 4 * i);
        std::memcpy(&decoded.values[i], &bits, sizeof bits);
      }
      break;
    case hvlm::v1::FLOAT16:
      for (size_t i = 0; i < count; ++i) decoded.values[i] = half_bits_to_float(load_le16(p + 2 * i));
      break;
    default:  // BFLOAT16
      for (size_t i = 0; i < count; ++i) {
        decoded.values[i] = bfloat16_bits_to_float(load_le16(p + 2 * i));
      }
      break;
  }
  return decoded;
}

}  // namespace hvlm::client
