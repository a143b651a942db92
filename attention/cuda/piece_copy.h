// The CUDA kernel that assembles a batch on the device from many pieces, each in device memory
// or in pinned host memory, which it reads across the bus directly (pinned memory is mapped
// into the device's address space under unified addressing).
//
// Why: a batched serving pass concatenates many small tensors, one per session: inputs on the
// host (~100 KB each) and memory banks and states on the device. Staging the inputs into one
// pinned buffer first is a host memcpy of the whole batch on the thread that issues every pass
// (~15 us a segment on the H200's host); one cudaMemcpyAsync per piece costs microseconds of
// host time each, and at::cat about one per piece. One launch per kCopyMaxPieces pieces costs
// the same host time whatever their size.
//
// Plain CUDA C++ without LibTorch; the contract of attention/cuda/mamba_kernels.h holds (work
// enqueued on `stream` and not waited for, std::invalid_argument for bad arguments,
// std::runtime_error for a failed launch, stateless). The pieces must stay allocated and
// unchanged until the device is past the copy.
#pragma once

#include <cstdint>

namespace hvlm::kernels::cuda {

struct CopyPiece {
  const void* src = nullptr;  // device memory, or pinned (page-locked, mapped) host memory
  int64_t bytes = 0;
  int64_t dst_offset = 0;     // where the piece goes, in bytes from dst
};

/// Pieces per launch (kernel parameters); copy_pieces takes any count in several.
constexpr int kCopyMaxPieces = 64;

/// Copies every piece to dst + dst_offset (device memory of the current device). Each piece moves
/// in the widest words (16, 8, 4, 2 bytes or single bytes) that its source, size and
/// destination are all aligned to.
/// Destination ranges must not overlap.
void copy_pieces(const CopyPiece* pieces, int64_t count, void* dst, void* stream);

}  // namespace hvlm::kernels::cuda
