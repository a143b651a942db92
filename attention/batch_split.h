// Splitting a batched tensor back into per-item tensors that own their memory: what a server
// does after running several sessions' inputs as one batch.
// Thread-safety: stateless.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace hvlm {

/// Splits `t` along dim 0 into pieces of rows[0], rows[1], ... rows (they must add up to
/// t.size(0)), each a fresh contiguous tensor rather than a view, so that no piece keeps the
/// whole batch's memory alive. On LibTorch >= 2.1 the copies run as one multi-tensor copy (a
/// few kernel launches on a GPU) instead of one copy per piece.
std::vector<at::Tensor> split_batch_copies(const at::Tensor& t, const std::vector<int64_t>& rows);

}  // namespace hvlm
