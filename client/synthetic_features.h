// SyntheticFeatures: deterministic standard-normal features for tests and load generation.
// A seed selects the sequence: splitmix64 spreads it into the state of an xorshift64*
// generator whose 53-bit uniforms go through the Box-Muller transform. The same seed gives
// the same values on every run (bit-identical across machines with the same libm).
// Not thread-safe: one generator per thread.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hvlm::client {

class SyntheticFeatures {
 public:
  explicit SyntheticFeatures(uint64_t seed);

  // The next standard normal sample.
  float next();
  // Writes the next `count` samples to `out`.
  void fill(float* out, size_t count);

 private:
  uint64_t next_u64();
  // Uniform in (0, 1]: never 0, so its logarithm is finite.
  double next_open_unit();

  uint64_t state_;
  // Box-Muller yields samples in pairs; the second waits here.
  bool has_spare_ = false;
  double spare_ = 0;
};

}  // namespace hvlm::client
