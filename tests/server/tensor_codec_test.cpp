// The wire codec's conversions: decoding straight into the stack's dtype must give what
// at::Tensor::to gives (the path it replaces: decode in the wire dtype, then convert), bit for
// bit, and reject what that path rejected with the same errors; encoding a bfloat16 or float16
// output as float32 must give exactly its float32 values.
#include "server/service_error.h"
#include "server/tensor_codec.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace hvlm {
namespace {

v1::Tensor wire(const at::Tensor& t, v1::DType dtype) {
  v1::Tensor out;
  out.set_dtype(dtype);
  for (int64_t s : t.sizes()) out.add_shape(s);
  const at::Tensor c = t.contiguous();
  out.set_raw_data(c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size());
  return out;
}

v1::Tensor float_wire(const std::vector<float>& values) {
  return wire(at::tensor(values).reshape({1, static_cast<int64_t>(values.size()), 1}), v1::FLOAT32);
}

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), static_cast<size_t>(a.nbytes())) == 0;
}

float from_bits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Values where rounding to bfloat16 is decided: ties to even either way, just above and below a
// tie, subnormals, the largest values that still round to a finite bfloat16, signed zeros.
std::vector<float> rounding_edges() {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, -1.0f, 1e-40f, -1e-40f, 1e-45f, 3.3895313892515355e38f,
                          -3.3895313892515355e38f, 3.3961e38f, std::numeric_limits<float>::min()};
  for (uint32_t base : {0x3F800000u, 0x3F810000u, 0x00010000u, 0x7F7E0000u, 0xC2C80000u}) {
    for (uint32_t low : {0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu, 0x0001u}) v.push_back(from_bits(base | low));
  }
  return v;
}

TEST(TensorCodec, DecodesFloat32IntoBFloat16AsTensorToDoes) {
  std::vector<float> values = rounding_edges();
  const at::Tensor random = at::randn({4000}) * at::exp(at::randn({4000}) * 8);
  values.insert(values.end(), random.data_ptr<float>(), random.data_ptr<float>() + random.numel());
  const at::Tensor x = at::tensor(values).reshape({1, static_cast<int64_t>(values.size()), 1});
  const DecodedTokens d = decode_tokens(wire(x, v1::FLOAT32), "features", 1 << 20, false, false, at::kBFloat16);
  EXPECT_EQ(d.dtype, v1::FLOAT32);  // the reply keeps the wire's dtype
  EXPECT_TRUE(same_bits(d.tokens, x.to(at::kBFloat16)));
}

TEST(TensorCodec, DecodesIntoEachDtypeAsTensorToDoes) {
  const at::Tensor x = at::randn({2, 33, 7}) * 100;
  for (const auto& [wire_dtype, wire_type] : {std::pair{v1::FLOAT32, at::kFloat}, std::pair{v1::BFLOAT16, at::kBFloat16},
                                              std::pair{v1::FLOAT16, at::kHalf}}) {
    const at::Tensor sent = x.to(wire_type);
    for (const c10::ScalarType held : {at::kFloat, at::kBFloat16, at::kHalf}) {
      const DecodedTokens d = decode_tokens(wire(sent, wire_dtype), "features", 1 << 20, false, false, held);
      EXPECT_TRUE(same_bits(d.tokens, sent.to(held))) << v1::DType_Name(wire_dtype) << " -> " << c10::toString(held);
    }
  }
}

void expect_invalid(const v1::Tensor& t, c10::ScalarType held, const std::string& message) {
  try {
    decode_tokens(t, "features", 1 << 20, false, false, held);
    ADD_FAILURE() << "no error; wanted one containing: " << message;
  } catch (const ServiceError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
  }
}

TEST(TensorCodec, RejectsValuesTheStackDtypeCannotHold) {
  expect_invalid(float_wire({1.0f, 3.4e38f}), at::kBFloat16,
                 "features has values outside the range of the stack's BFloat16 (they overflow to infinity)");
  expect_invalid(float_wire({-70000.0f}), at::kHalf, "features has values outside the range of the stack's Half");
  // The largest values each dtype holds pass.
  EXPECT_NO_THROW(decode_tokens(float_wire({65504.0f, -65504.0f}), "features", 1 << 20, false, false, at::kHalf));
  EXPECT_NO_THROW(decode_tokens(float_wire({3.3895313892515355e38f}), "features", 1 << 20, false, false, at::kBFloat16));
  // A non-finite value is named as such, also beside an overflowing one.
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (const c10::ScalarType held : {at::kBFloat16, at::kHalf, at::kFloat}) {
    expect_invalid(float_wire({1.0f, nan}), held, "features has non-finite values (NaN or infinity)");
    expect_invalid(float_wire({3.4e38f, -inf}), held, "features has non-finite values (NaN or infinity)");
  }
  expect_invalid(wire(at::full({1, 2, 1}, inf).to(at::kBFloat16), v1::BFLOAT16), at::kFloat, "non-finite");
}

TEST(TensorCodec, EncodesHalfPrecisionOutputsAsTheirFloat32Values) {
  const at::Tensor y = at::randn({1, 17, 5}) * 1000;
  for (const c10::ScalarType type : {at::kBFloat16, at::kHalf}) {
    const at::Tensor out = y.to(type);
    const at::Tensor want = out.to(at::kFloat);
    for (const bool unbatched : {false, true}) {
      v1::Tensor t;
      encode_tokens(out, unbatched, v1::FLOAT32, &t);
      EXPECT_EQ(t.dtype(), v1::FLOAT32);
      const std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
      EXPECT_EQ(shape, unbatched ? std::vector<int64_t>({17, 5}) : std::vector<int64_t>({1, 17, 5}));
      ASSERT_EQ(t.raw_data().size(), static_cast<size_t>(want.nbytes()));
      EXPECT_EQ(std::memcmp(t.raw_data().data(), want.data_ptr(), want.nbytes()), 0) << c10::toString(type);
    }
    // A strided output takes the general path, with the same result.
    v1::Tensor strided;
    encode_tokens(out.transpose(1, 2), false, v1::FLOAT32, &strided);
    const at::Tensor want_strided = want.transpose(1, 2).contiguous();
    ASSERT_EQ(strided.raw_data().size(), static_cast<size_t>(want_strided.nbytes()));
    EXPECT_EQ(std::memcmp(strided.raw_data().data(), want_strided.data_ptr(), want_strided.nbytes()), 0);
  }
}

}  // namespace
}  // namespace hvlm
