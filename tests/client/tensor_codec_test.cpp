// hvlm.v1.Tensor encoding and decoding: the byte-exact little-endian layout of each dtype,
// exact round trips of representable values, and rejection of tensors that break the API's
// rules (unknown dtype, empty or zero dimensions, raw_data of the wrong size).
#include "client/tensor_codec.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace hvlm::client {
namespace {

TEST(TensorCodec, Float32IsLittleEndianBinary32ByteForByte) {
  const std::vector<float> values = {1.0f, -2.0f, 0.5f};
  const hvlm::v1::Tensor tensor = encode_tensor(values.data(), {1, 3}, hvlm::v1::FLOAT32);
  EXPECT_EQ(tensor.dtype(), hvlm::v1::FLOAT32);
  ASSERT_EQ(tensor.shape_size(), 2);
  EXPECT_EQ(tensor.shape(0), 1);
  EXPECT_EQ(tensor.shape(1), 3);
  EXPECT_EQ(tensor.raw_data(),
            std::string("\x00\x00\x80\x3f" "\x00\x00\x00\xc0" "\x00\x00\x00\x3f", 12));
}

TEST(TensorCodec, Float16IsLittleEndianBinary16ByteForByte) {
  const std::vector<float> values = {1.0f, -2.0f, 65504.0f};
  const hvlm::v1::Tensor tensor = encode_tensor(values.data(), {3}, hvlm::v1::FLOAT16);
  EXPECT_EQ(tensor.raw_data(), std::string("\x00\x3c" "\x00\xc0" "\xff\x7b", 6));
}

TEST(TensorCodec, Bfloat16IsTheUpperHalfOfBinary32) {
  const std::vector<float> values = {1.0f, -2.0f, 3.140625f};
  const hvlm::v1::Tensor tensor = encode_tensor(values.data(), {3}, hvlm::v1::BFLOAT16);
  EXPECT_EQ(tensor.raw_data(), std::string("\x80\x3f" "\x00\xc0" "\x49\x40", 6));
}

TEST(TensorCodec, RepresentableValuesRoundTripExactly) {
  // Values exactly representable in both 16-bit formats (8 significant bits, small exponents).
  const std::vector<float> values = {0.0f, -0.0f, 1.0f, -1.5f, 0.375f, 96.0f, -0.0078125f, 2.5f};
  for (hvlm::v1::DType dtype : {hvlm::v1::FLOAT32, hvlm::v1::FLOAT16, hvlm::v1::BFLOAT16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const DecodedTensor decoded = decode_tensor(encode_tensor(values.data(), {2, 2, 2}, dtype));
    EXPECT_EQ(decoded.dtype, dtype);
    EXPECT_EQ(decoded.shape, (std::vector<int64_t>{2, 2, 2}));
    EXPECT_EQ(decoded.values, values);
  }
}

TEST(TensorCodec, NarrowingRoundsToNearest) {
  const float value = 1.0f + 0x1.0p-12f;  // not representable in either 16-bit format
  EXPECT_EQ(decode_tensor(encode_tensor(&value, {1}, hvlm::v1::FLOAT16)).values[0], 1.0f);
  EXPECT_EQ(decode_tensor(encode_tensor(&value, {1}, hvlm::v1::BFLOAT16)).values[0], 1.0f);
}

TEST(TensorCodec, EncodingRejectsBadDtypesAndShapes) {
  const float value = 1.0f;
  EXPECT_THROW(encode_tensor(&value, {1}, hvlm::v1::DTYPE_UNSPECIFIED), TensorCodecError);
  EXPECT_THROW(encode_tensor(&value, {}, hvlm::v1::FLOAT32), TensorCodecError);
  EXPECT_THROW(encode_tensor(&value, {1, 0}, hvlm::v1::FLOAT32), TensorCodecError);
}

TEST(TensorCodec, DecodingRejectsTensorsThatBreakTheRules) {
  hvlm::v1::Tensor tensor;
  tensor.set_dtype(hvlm::v1::FLOAT32);
  tensor.add_shape(2);
  tensor.set_raw_data(std::string(8, '\0'));
  EXPECT_NO_THROW(decode_tensor(tensor));

  hvlm::v1::Tensor bad = tensor;
  bad.set_dtype(hvlm::v1::DTYPE_UNSPECIFIED);
  EXPECT_THROW(decode_tensor(bad), TensorCodecError);
  bad = tensor;
  bad.set_dtype(static_cast<hvlm::v1::DType>(7));
  EXPECT_THROW(decode_tensor(bad), TensorCodecError);
  bad = tensor;
  bad.clear_shape();
  EXPECT_THROW(decode_tensor(bad), TensorCodecError);
  bad = tensor;
  bad.add_shape(0);
  EXPECT_THROW(decode_tensor(bad), TensorCodecError);
  bad = tensor;
  bad.set_shape(0, -2);
  EXPECT_THROW(decode_tensor(bad), TensorCodecError);
  bad = tensor;
  bad.set_raw_data(std::string(7, '\0'));
  EXPECT_THROW(decode_tensor(bad), TensorCodecError);
  bad = tensor;
  bad.set_raw_data(std::string(12, '\0'));
  EXPECT_THROW(decode_tensor(bad), TensorCodecError);
  // A shape whose product overflows is caught before any allocation.
  bad = tensor;
  bad.add_shape(int64_t{1} << 62);
  bad.add_shape(int64_t{1} << 62);
  EXPECT_THROW(decode_tensor(bad), TensorCodecError);
}

// 65504 is float16's largest value; 65519 still rounds down to it, 65520 rounds up to infinity.
// bfloat16's largest is about 3.39e38, so float32's largest overflows it. Infinities and NaN
// are not overflows (the server refuses them as non-finite), and float32 never overflows.
TEST(TensorCodec, FirstOverflowFindsFiniteValuesTheDtypeCannotHold) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float big = std::numeric_limits<float>::max();
  const std::vector<float> half_ok = {65504.0f, -65519.0f, inf, nan, 1e-9f};
  EXPECT_EQ(first_overflow(half_ok.data(), half_ok.size(), hvlm::v1::FLOAT16), -1);
  const std::vector<float> half_bad = {1.0f, inf, -65520.0f, 1e6f};
  EXPECT_EQ(first_overflow(half_bad.data(), half_bad.size(), hvlm::v1::FLOAT16), 2);
  EXPECT_EQ(first_overflow(half_bad.data(), half_bad.size(), hvlm::v1::BFLOAT16), -1);
  const std::vector<float> bf_bad = {3.38e38f, -big};
  EXPECT_EQ(first_overflow(bf_bad.data(), bf_bad.size(), hvlm::v1::BFLOAT16), 1);
  EXPECT_EQ(first_overflow(bf_bad.data(), bf_bad.size(), hvlm::v1::FLOAT32), -1);
}

TEST(TensorCodec, AStacksDtypeIsItsWireDtype) {
  hvlm::v1::StackInfo stack;
  stack.set_name("video");
  for (const auto& [name, dtype] : {std::pair<std::string, hvlm::v1::DType>{"float32", hvlm::v1::FLOAT32},
                                    {"bfloat16", hvlm::v1::BFLOAT16},
                                    {"float16", hvlm::v1::FLOAT16}}) {
    stack.set_dtype(name);
    EXPECT_EQ(stack_wire_dtype(stack), dtype) << name;
  }
  stack.set_dtype("float64");
  try {
    stack_wire_dtype(stack);
    ADD_FAILURE() << "float64 taken as a wire dtype";
  } catch (const TensorCodecError& e) {
    EXPECT_STREQ(e.what(), "stack 'video' reports dtype 'float64', which is not a wire dtype; pass --dtype");
  }
}

TEST(TensorCodec, DtypeNamesParseBack) {
  for (hvlm::v1::DType dtype : {hvlm::v1::FLOAT32, hvlm::v1::FLOAT16, hvlm::v1::BFLOAT16}) {
    EXPECT_EQ(parse_dtype(dtype_name(dtype)), dtype);
  }
  EXPECT_EQ(parse_dtype("float64"), std::nullopt);
  EXPECT_EQ(dtype_size(hvlm::v1::FLOAT32), 4u);
  EXPECT_EQ(dtype_size(hvlm::v1::BFLOAT16), 2u);
  EXPECT_EQ(dtype_size(hvlm::v1::DTYPE_UNSPECIFIED), 0u);
  EXPECT_EQ(shape_string({2, 64, 768}), "[2, 64, 768]");
}

}  // namespace
}  // namespace hvlm::client
