// The kernel of piece_copy.h. Grid: x = blocks striding over one piece, y = the piece. Each
// thread keeps kUnroll independent loads in flight (of the widest word the piece allows): a read
// across the bus takes a microsecond or two (an access to the device's own memory, less), so
// throughput needs many outstanding requests.
#include "attention/cuda/piece_copy.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace hvlm::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;
constexpr int kMaxBlocksPerPiece = 64;

struct PieceTable {
  CopyPiece pieces[kCopyMaxPieces];
};

// Copies n words of type W from src to to, each thread kUnroll words a round.
template <typename W>
__device__ __forceinline__ void copy_words(const W* src, W* to, int64_t n, int64_t first, int64_t stride) {
  for (int64_t i = first; i < n; i += kUnroll * stride) {
    W v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = i + u * stride;
      if (j < n) v[u] = src[j];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = i + u * stride;
      if (j < n) to[j] = v[u];
    }
  }
}

__global__ void __launch_bounds__(kThreads) copy_pieces_kernel(const PieceTable table, char* dst) {
  const CopyPiece piece = table.pieces[blockIdx.y];
  char* out = dst + piece.dst_offset;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  // The widest word that the source, the size and the destination all allow (the same for the
  // whole block: no divergence).
  const uintptr_t align = reinterpret_cast<uintptr_t>(piece.src) | static_cast<uintptr_t>(piece.bytes) |
                          reinterpret_cast<uintptr_t>(out);
  if (align % 16 == 0) {
    copy_words(static_cast<const uint4*>(piece.src), reinterpret_cast<uint4*>(out), piece.bytes / 16, first, stride);
  } else if (align % 8 == 0) {
    copy_words(static_cast<const uint2*>(piece.src), reinterpret_cast<uint2*>(out), piece.bytes / 8, first, stride);
  } else if (align % 4 == 0) {
    copy_words(static_cast<const uint32_t*>(piece.src), reinterpret_cast<uint32_t*>(out), piece.bytes / 4, first,
               stride);
  } else if (align % 2 == 0) {
    copy_words(static_cast<const uint16_t*>(piece.src), reinterpret_cast<uint16_t*>(out), piece.bytes / 2, first,
               stride);
  } else {
    copy_words(static_cast<const uint8_t*>(piece.src), reinterpret_cast<uint8_t*>(out), piece.bytes, first, stride);
  }
}

}  // namespace

void copy_pieces(const CopyPiece* pieces, int64_t count, void* dst, void* stream) {
  auto fail = [](const std::string& what) {
    throw std::invalid_argument("hvlm::kernels::cuda::copy_pieces: " + what);
  };
  if (count < 0) fail("negative piece count");
  if (count == 0) return;
  if (pieces == nullptr) fail("null pieces");
  for (int64_t i = 0; i < count; ++i) {
    if (pieces[i].bytes < 0 || pieces[i].dst_offset < 0) fail("negative size or offset of piece " + std::to_string(i));
    if (pieces[i].bytes > 0 && (pieces[i].src == nullptr || dst == nullptr)) {
      fail("null source or destination of piece " + std::to_string(i));
    }
  }
  for (int64_t first = 0; first < count; first += kCopyMaxPieces) {
    const int n = static_cast<int>(std::min<int64_t>(kCopyMaxPieces, count - first));
    PieceTable table{};
    int64_t largest = 0;
    for (int i = 0; i < n; ++i) {
      table.pieces[i] = pieces[first + i];
      largest = std::max(largest, pieces[first + i].bytes);
    }
    if (largest == 0) continue;
    const int64_t per_block = static_cast<int64_t>(kThreads) * kUnroll * 16;
    const unsigned blocks = static_cast<unsigned>(
        std::clamp<int64_t>((largest + per_block - 1) / per_block, 1, kMaxBlocksPerPiece));
    copy_pieces_kernel<<<dim3(blocks, n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        table, static_cast<char*>(dst));
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) {
      throw std::runtime_error(std::string("hvlm copy_pieces: launch failed: ") + cudaGetErrorString(err));
    }
  }
}

}  // namespace hvlm::kernels::cuda
