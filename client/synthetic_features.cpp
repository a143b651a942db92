#include "client/synthetic_features.h"

#include <cmath>

namespace hvlm::client {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

SyntheticFeatures::SyntheticFeatures(uint64_t seed) : state_(splitmix64(seed)) {
  if (state_ == 0) state_ = 0x9e3779b97f4a7c15ull;  // xorshift's one fixed point
}

uint64_t SyntheticFeatures::next_u64() {
  state_ ^= state_ >> 12;
  state_ ^= state_ << 25;
  state_ ^= state_ >> 27;
  return state_ * 0x2545f4914f6cdd1dull;
}

double SyntheticFeatures::next_open_unit() {
  return static_cast<double>((next_u64() >> 11) + 1) * 0x1.0p-53;
}

float SyntheticFeatures::next() {
  if (has_spare_) {
    has_spare_ = false;
    return static_cast<float>(spare_);
  }
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  const double radius = std::sqrt(-2.0 * std::log(next_open_unit()));
  const double angle = kTwoPi * next_open_unit();
  spare_ = radius * std::sin(angle);
  has_spare_ = true;
  return static_cast<float>(radius * std::cos(angle));
}

void SyntheticFeatures::fill(float* out, size_t count) {
  for (size_t i = 0; i < count; ++i) out[i] = next();
}

}  // namespace hvlm::client
