// Tensor-core building blocks shared by our attention kernels (sm_80+ PTX; we build for sm_90):
// the m16n8k16 mma with float32 accumulation, ldmatrix loads, and packing two floats into one
// register of two 16-bit values (element.cuh). T is __nv_bfloat16 or __half.
//
// Fragment layout of m16n8k16 (groupID g = lane / 4, t = lane % 4): A registers a0 (row g,
// columns 2t, 2t+1), a1 (row g+8), a2 (row g, columns +8), a3 (row g+8, columns +8); B registers
// b0 (k rows 2t, 2t+1 of column g), b1 (k rows +8); C/D d0, d1 (row g, columns 2t, 2t+1), d2, d3
// (row g+8). A C tile pair packed with pack2 is the A fragment of the next product.
#pragma once

#include "attention/cuda/element.cuh"  // pack2

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace hvlm::kernels::cuda {

// d += a b for one m16n8k16 tile with float32 accumulation; T selects bf16 or f16 operands.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Four 8x8 b16 matrices from shared memory (`addr` a shared-space address); lanes 8i..8i+7 give
// the row addresses of matrix i, and r_i receives matrix i with lane l holding row l/4, columns
// 2(l%4), 2(l%4)+1 (.trans: the transpose).
__device__ __forceinline__ void ldsm_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                              uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

}  // namespace hvlm::kernels::cuda
