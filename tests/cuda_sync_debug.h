// LibTorch's CUDA sync debug mode for a scope, for tests that check a path queues its work
// without waiting for the device. Only with HVLM_WITH_CUDA.
#pragma once

#include <c10/cuda/CUDAFunctions.h>

namespace hvlm::testing {

// With L_ERROR, every operation that waits for the device (a copy from pageable memory,
// .item(), a stream synchronize) throws instead.
class SyncDebugModeScope {
 public:
  explicit SyncDebugModeScope(c10::cuda::SyncDebugMode mode)
      : before_(c10::cuda::warning_state().get_sync_debug_mode()) {
    c10::cuda::warning_state().set_sync_debug_mode(mode);
  }
  ~SyncDebugModeScope() { c10::cuda::warning_state().set_sync_debug_mode(before_); }
  SyncDebugModeScope(const SyncDebugModeScope&) = delete;
  SyncDebugModeScope& operator=(const SyncDebugModeScope&) = delete;

 private:
  c10::cuda::SyncDebugMode before_;
};

}  // namespace hvlm::testing
