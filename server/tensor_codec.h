// Conversion between hvlm.v1.Tensor (dtype, shape, raw little-endian bytes) and at::Tensor, with
// every check a request needs before anything is allocated: dtype known, dimensions in range,
// byte length exact, element count within the caller's limit, values finite. Errors are
// ServiceErrors (INVALID_ARGUMENT / RESOURCE_EXHAUSTED) naming the field. Stateless; thread-safe.
#pragma once

#include "hvlm/v1/attention_service.pb.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

namespace hvlm {

struct DecodedTokens {
  /// [B, T, D] CPU tensor in the wire dtype (a [T, D] input gets B = 1).
  at::Tensor tokens;
  /// True when the input was [T, D]; the output is then returned as [T, D] too.
  bool unbatched = false;
  /// The wire dtype, used for the response.
  v1::DType dtype = v1::FLOAT32;
};

// Decodes a [T, D] or [B, T, D] tensor named `field` (e.g. "features"). `allow_empty_time`
// permits T = 0 (memories). `max_tokens` bounds B * T (RESOURCE_EXHAUSTED beyond it).
// `pinned`: put the tokens in page-locked memory (for a stack on a GPU: the copy to the device
// can then run asynchronously); needs a CUDA-enabled LibTorch.
// `store_as`: hold the tokens in this dtype (the stack's, so that nothing converts them again)
// instead of the wire's. The copy out of the message converts (rounding to nearest even, as
// at::Tensor::to) and checks the values in the same pass; a finite wire value that overflows
// `store_as` (above 3.4e38 for bfloat16, 65504 for float16) is INVALID_ARGUMENT.
DecodedTokens decode_tokens(const v1::Tensor& tensor, const std::string& field, int64_t max_tokens,
                            bool allow_empty_time, bool pinned = false,
                            std::optional<c10::ScalarType> store_as = std::nullopt);

// Fails with INVALID_ARGUMENT: `field` holds finite values that overflow `dtype`, the stack's
// (the one message for it, whether found while decoding or while preparing a segment).
[[noreturn]] void fail_outside_range(const std::string& field, c10::ScalarType dtype);

// Encodes `tokens` ([B, T, D], any device, floating) as `dtype`; drops B when `unbatched`. A
// contiguous host tensor is converted straight into the message's bytes (one pass).
void encode_tokens(const at::Tensor& tokens, bool unbatched, v1::DType dtype, v1::Tensor* out);

}  // namespace hvlm
