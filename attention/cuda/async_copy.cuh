// cp.async wrappers shared by our CUDA kernels (sm_80+ PTX): 16 bytes from global to shared
// memory without passing through registers, grouped by commit and waited for by group.
#pragma once

#include <cuda_runtime.h>

namespace hvlm::kernels::cuda {

// One 16-byte copy; both addresses 16-byte aligned. It belongs to the next committed group.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(gmem) : "memory");
}

// The same, but only when `valid`; otherwise the 16 bytes are zero-filled and nothing is read
// (gmem must still be a valid address).
__device__ __forceinline__ void cp_async16_or_zero(void* smem, const void* gmem, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(src_bytes) : "memory");
}

// Closes this thread's group of copies issued since the last commit (possibly empty).
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

// Waits until all of this thread's committed groups but the newest N have landed (visible to
// this thread; a barrier makes them visible to the block).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

}  // namespace hvlm::kernels::cuda
