// Memory banks: the per-session, per-cross_memory-block tokens that CrossMemoryAttention
// attends to, and the policies that fold each new video segment into them (docs/attention.md,
// "Memory banks"). `fifo` pools each segment to a few tokens and keeps the newest `capacity`;
// `merge` (MA-LMM's memory bank compression) appends every segment token and then repeatedly
// averages the most similar adjacent pair until `capacity` tokens remain.
// Thread-safety: stateless functions over values; concurrent calls on different banks, or on
// the same bank (inputs are only read), are safe.
// Lifetime: a MemoryBank is a plain value owned by its caller (the server's session); an update
// returns a new bank whose tensors share no storage with its inputs. Inference-only: nothing
// here records autograd history, and it runs under c10::InferenceMode.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>

#include <cstdint>
#include <string>

namespace hvlm {

/// How a bank takes in a segment: see update_memory_bank.
enum class MemoryPolicy { kFifo, kMerge };

/// "fifo" / "merge".
std::string memory_policy_name(MemoryPolicy policy);

/// The inverse of memory_policy_name. Throws c10::Error naming the bad value for anything else.
MemoryPolicy parse_memory_policy(const std::string& name);

/// Options of a memory bank's update policy.
/// Example: MemoryBankOptions{MemoryPolicy::kMerge, /*capacity=*/256}
struct MemoryBankOptions {
  /// The update policy.
  MemoryPolicy policy = MemoryPolicy::kFifo;
  /// Most tokens the bank keeps after an update (>= 1).
  int64_t capacity = 256;
  /// fifo: tokens each segment is pooled to (>= 1); unused by merge.
  int64_t tokens_per_segment = 16;
};

/// Throws c10::Error naming the field ("capacity must be >= 1, got 0").
void check_memory_bank_options(const MemoryBankOptions& options);

/// One block's memory: a dense batch of token sequences of equal length M.
struct MemoryBank {
  /// [B, M, D] tokens, M <= capacity.
  at::Tensor tokens;
  /// [B, M] float32: how many segment tokens each bank token stands for (fifo: the pooling
  /// window length; merge: the summed counts).
  at::Tensor counts;
};

/// An empty bank: tokens [B, 0, D] with the dtype and device of `options` (a floating dtype),
/// counts [B, 0] float32 on that device. batch and dim must be >= 1.
MemoryBank empty_memory_bank(int64_t batch, int64_t dim, const at::TensorOptions& options);

/// Returns the bank after taking in `segment`; never modifies its inputs. `segment` is
/// [B, T, D] (T >= 1, finite values) with the bank's B, D, dtype and device; bank.counts must
/// be [B, M] float32 on that device with positive values. Errors name the mismatch.
///
/// fifo: the segment is pooled to P = min(T, tokens_per_segment) tokens by adaptive average
/// pooling over time (output i averages rows floor(i*T/P) .. ceil((i+1)*T/P)-1; its count is
/// that window's length), appended after the bank's tokens, and only the last `capacity` tokens
/// are kept. Runs as ATen ops on the tensors' device and dtype (CPU float16 pools in float32).
///
/// merge: all T tokens are appended (count 1 each); then, while more than `capacity` remain,
/// each batch item independently replaces its adjacent pair (j, j+1) of highest cosine
/// similarity (ties: lowest j) by the count-weighted mean
/// (c_j x_j + c_{j+1} x_{j+1}) / (c_j + c_{j+1}) with count c_j + c_{j+1}. Cosine similarity is
/// a.b / max(|a| |b|, 1e-8) (so a zero token has similarity 0 with everything). It runs on CPU
/// over a float32 copy: dot products, norms and the weighted means are accumulated in double,
/// each merged token is rounded to float32 when stored; other dtypes and devices are converted
/// to float32 CPU for the merge and the result converted back. Each merge updates only the two
/// similarities it changes, so an update costs O((M + T) D + merges * (D + log(M + T))).
/// The checks of bank.counts and of the values of bank.tokens and segment are skipped inside a
/// FiniteValuesChecked scope (attention/tensor_checks.h).
MemoryBank update_memory_bank(const MemoryBank& bank, const at::Tensor& segment,
                              const MemoryBankOptions& options);

}  // namespace hvlm
