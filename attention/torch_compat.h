// The few places where Debian 12's LibTorch 1.13 (CPU) and PyTorch 2.x's LibTorch differ.
// Everything version-dependent goes through this header, so the rest of the library compiles
// unchanged against both.
#pragma once

#include <torch/version.h>

#define HVLM_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||       \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// at::scaled_dot_product_attention (fused flash / memory-efficient kernels) exists from 2.0 on.
#define HVLM_HAS_SDPA HVLM_TORCH_AT_LEAST(2, 0)

#if HVLM_TORCH_AT_LEAST(2, 1)
#include <optional>
namespace hvlm::compat {
template <typename T>
using optional = std::optional<T>;
}  // namespace hvlm::compat
#else
#include <c10/util/Optional.h>
namespace hvlm::compat {
template <typename T>
using optional = c10::optional<T>;
}  // namespace hvlm::compat
#endif

// c10::Allocator::allocate became a const member in 1.x and non-const in 2.x, and 2.3 added
// the pure virtual copy_data.
#if HVLM_TORCH_AT_LEAST(2, 3)
#define HVLM_ALLOCATE_CONST
#define HVLM_ALLOCATOR_HAS_COPY_DATA 1
#else
#define HVLM_ALLOCATE_CONST const
#define HVLM_ALLOCATOR_HAS_COPY_DATA 0
#endif
