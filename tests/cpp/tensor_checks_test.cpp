// all_finite: every dtype's NaN and infinities found wherever they sit, finite extremes
// (largest, smallest normal, subnormal, -0) accepted, and the same answer as at::isfinite on
// strided and random tensors.
#include "attention/tensor_checks.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <limits>

namespace hvlm {
namespace {

TEST(AllFinite, FindsNaNAndInfinityAtAnyPositionInEveryDtype) {
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}) {
    for (const double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                             -std::numeric_limits<double>::infinity()}) {
      for (const int64_t at_index : {int64_t{0}, int64_t{1000}, int64_t{4095}}) {
        at::Tensor t = at::randn({4, 1024}).to(dtype);
        t.view(-1)[at_index] = bad;
        EXPECT_FALSE(all_finite(t)) << c10::toString(dtype) << " value " << bad << " at " << at_index;
      }
    }
    EXPECT_TRUE(all_finite(at::randn({4, 1024}).to(dtype))) << c10::toString(dtype);
  }
}

TEST(AllFinite, AcceptsFiniteExtremes) {
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}) {
    at::Tensor t = at::empty({5}, at::TensorOptions().dtype(dtype));
    const double largest = dtype == at::kHalf ? 65504.0 : dtype == at::kBFloat16 ? 3.3895313892515355e38
                          : dtype == at::kFloat ? std::numeric_limits<float>::max()
                                                : std::numeric_limits<double>::max();
    t[0] = largest;
    t[1] = -largest;
    t[2] = -0.0;
    t[3] = dtype == at::kHalf ? 6.0e-8 : 1e-40;  // subnormal (or flushed to zero): finite
    t[4] = 1.0;
    EXPECT_TRUE(all_finite(t)) << c10::toString(dtype);
    EXPECT_TRUE(all_finite(at::empty({0}, at::TensorOptions().dtype(dtype)))) << "empty";
  }
}

TEST(AllFinite, AgreesWithLibTorchOnStridedAndOtherTensors) {
  at::Tensor t = at::randn({64, 32});
  t[5][7] = std::numeric_limits<float>::infinity();
  const at::Tensor strided = t.t();  // not contiguous: the at::isfinite path
  EXPECT_FALSE(strided.is_contiguous());
  EXPECT_EQ(all_finite(strided), at::isfinite(strided).all().item<bool>());
  EXPECT_FALSE(all_finite(strided));
  EXPECT_TRUE(all_finite(t.narrow(0, 6, 10)));  // rows without the infinity
  EXPECT_TRUE(all_finite(at::arange(10)));      // an integer tensor has no non-finite values
}

}  // namespace
}  // namespace hvlm
