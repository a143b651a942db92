// Conversion between float32 arrays in memory and hvlm.v1.Tensor messages: row-major raw
// little-endian bytes of FLOAT32, FLOAT16 or BFLOAT16 elements (narrowing rounds to nearest
// even). Decoding checks the message against the API's rules (known dtype, every dimension at
// least 1, exactly product(shape) * size(dtype) bytes) and reports a violation as a
// TensorCodecError; it never reads past raw_data.
// Stateless functions; thread-safe.
#pragma once

#include "hvlm/v1/attention_service.pb.h"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace hvlm::client {

// A Tensor that does not follow the API's rules, or values that cannot be encoded.
class TensorCodecError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bytes per element: 4 for FLOAT32, 2 for FLOAT16 and BFLOAT16, 0 for anything else.
size_t dtype_size(hvlm::v1::DType dtype);

// "float32", "float16", "bfloat16"; "unspecified" for anything else.
std::string dtype_name(hvlm::v1::DType dtype);

// The DType of "float32", "float16" or "bfloat16"; nullopt for any other text.
std::optional<hvlm::v1::DType> parse_dtype(const std::string& name);

// The wire dtype of a stack's own dtype (StackInfo.dtype): what a client sends by default, since
// the server rounds features to the stack's dtype and widens its outputs from it (the same
// outputs in the fewest bytes). Throws TensorCodecError naming the stack when its dtype is not
// a wire dtype.
hvlm::v1::DType stack_wire_dtype(const hvlm::v1::StackInfo& stack);

// The index of the first of `count` values that is finite but would round to infinity as
// `dtype` (65520 or more in magnitude for FLOAT16, about 3.3962e38 or more for BFLOAT16), or -1
// for none.
int64_t first_overflow(const float* values, size_t count, hvlm::v1::DType dtype);

// "[2, 64, 768]".
std::string shape_string(const std::vector<int64_t>& shape);

// Fills `out` (replacing its contents) with `values`, product(shape) floats in row-major
// order, as `dtype`. Throws TensorCodecError when the dtype is not one of the three, the shape
// is empty, or a dimension is below 1.
void encode_tensor(const float* values, const std::vector<int64_t>& shape, hvlm::v1::DType dtype,
                   hvlm::v1::Tensor* out);

// Same, returning a new message.
hvlm::v1::Tensor encode_tensor(const float* values, const std::vector<int64_t>& shape,
                               hvlm::v1::DType dtype);

// A Tensor's contents, widened to float32.
struct DecodedTensor {
  /// Dimensions, outermost first, each at least 1.
  std::vector<int64_t> shape;
  /// product(shape) values in row-major order.
  std::vector<float> values;
  /// The message's element type.
  hvlm::v1::DType dtype = hvlm::v1::DTYPE_UNSPECIFIED;
};

// Decodes a Tensor; throws TensorCodecError when it breaks the rules above.
DecodedTensor decode_tensor(const hvlm::v1::Tensor& tensor);

}  // namespace hvlm::client
