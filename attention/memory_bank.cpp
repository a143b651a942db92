#include "attention/memory_bank.h"

#include "attention/tensor_checks.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

namespace hvlm {

std::string memory_policy_name(MemoryPolicy policy) {
  switch (policy) {
    case MemoryPolicy::kFifo:
      return "fifo";
    case MemoryPolicy::kMerge:
      return "merge";
  }
  TORCH_CHECK(false, "memory policy must be kFifo or kMerge, got ", static_cast<int>(policy));
}

MemoryPolicy parse_memory_policy(const std::string& name) {
  if (name == "fifo") return MemoryPolicy::kFifo;
  if (name == "merge") return MemoryPolicy::kMerge;
  TORCH_CHECK(false, "memory policy must be \"fifo\" or \"merge\", got \"", name, "\"");
}

void check_memory_bank_options(const MemoryBankOptions& options) {
  TORCH_CHECK(options.policy == MemoryPolicy::kFifo || options.policy == MemoryPolicy::kMerge,
              "policy must be kFifo or kMerge, got ", static_cast<int>(options.policy));
  TORCH_CHECK(options.capacity >= 1, "capacity must be >= 1, got ", options.capacity);
  TORCH_CHECK(options.tokens_per_segment >= 1, "tokens_per_segment must be >= 1, got ",
              options.tokens_per_segment);
}

MemoryBank empty_memory_bank(int64_t batch, int64_t dim, const at::TensorOptions& options) {
  TORCH_CHECK(batch >= 1, "batch must be >= 1, got ", batch);
  TORCH_CHECK(dim >= 1, "dim must be >= 1, got ", dim);
  const auto dtype = options.dtype().toScalarType();
  TORCH_CHECK(at::isFloatingType(dtype), "memory bank dtype must be floating point, got ",
              c10::toString(dtype));
  const auto where = at::TensorOptions().device(options.device());
  return {at::empty({batch, 0, dim}, where.dtype(dtype)),
          at::empty({batch, 0}, where.dtype(at::kFloat))};
}

namespace {

// Guards the cosine's denominator, so a zero token has similarity 0 instead of NaN.
constexpr double kCosineEps = 1e-8;
constexpr double kNoPair = -std::numeric_limits<double>::infinity();

void check_update_inputs(const MemoryBank& bank, const at::Tensor& segment) {
  const auto& tokens = bank.tokens;
  TORCH_CHECK(tokens.defined(),
              "bank.tokens must be a [B, M, D] tensor, got an undefined tensor "
              "(start from empty_memory_bank)");
  TORCH_CHECK(tokens.dim() == 3 && tokens.size(0) >= 1 && tokens.size(2) >= 1,
              "bank.tokens must be [B, M, D] with B, D >= 1, got ", shape_string(tokens.sizes()));
  TORCH_CHECK(at::isFloatingType(tokens.scalar_type()),
              "bank.tokens must have a floating dtype, got ", c10::toString(tokens.scalar_type()));
  const int64_t b = tokens.size(0), m = tokens.size(1), d = tokens.size(2);

  const auto& counts = bank.counts;
  TORCH_CHECK(counts.defined() && counts.dim() == 2 && counts.size(0) == b && counts.size(1) == m,
              "bank.counts must be [B, M] = [", b, ", ", m, "] like bank.tokens, got ",
              counts.defined() ? shape_string(counts.sizes()) : std::string("undefined"));
  TORCH_CHECK(counts.scalar_type() == at::kFloat, "bank.counts must have dtype float32, got ",
              c10::toString(counts.scalar_type()));
  TORCH_CHECK(counts.device() == tokens.device(), "bank.counts must be on bank.tokens' device (",
              tokens.device(), "), got ", counts.device());

  TORCH_CHECK(segment.defined(), "segment must be a [B, T, ", d,
              "] tensor, got an undefined tensor");
  TORCH_CHECK(segment.dim() == 3 && segment.size(2) == d, "segment must be [B, T, ", d,
              "] (the bank's dim), got ", shape_string(segment.sizes()));
  TORCH_CHECK(segment.size(0) == b, "segment batch must match the bank's (", b, "), got ",
              shape_string(segment.sizes()));
  TORCH_CHECK(segment.size(1) >= 1, "segment must have at least 1 token, got ",
              shape_string(segment.sizes()));
  TORCH_CHECK(segment.scalar_type() == tokens.scalar_type(),
              "segment dtype must match the bank's (", c10::toString(tokens.scalar_type()),
              "), got ", c10::toString(segment.scalar_type()));
  TORCH_CHECK(segment.device() == tokens.device(), "segment device must match the bank's (",
              tokens.device(), "), got ", segment.device());

  TORCH_CHECK(values_already_checked() || m == 0 || at::logical_and(at::gt(counts, 0), at::isfinite(counts)).all().item<bool>(),
              "bank.counts must be positive and finite (each bank token stands for segment "
              "tokens)");
}

// Lengths of adaptive average pooling's P windows when T rows are pooled to P, as float32 on
// `device`: window i holds rows floor(i*T/P) .. ceil((i+1)*T/P)-1. Computed where the bank
// lives: a host tensor copied to a GPU is a pageable copy, which waits for everything queued on
// the stream, and so would stall the issue of every pass (the serving batcher's, above all).
at::Tensor pooling_windows(int64_t t, int64_t p, const at::Device& device) {
  const at::Tensor i = at::arange(p, at::TensorOptions().dtype(at::kLong).device(device));
  const at::Tensor end = at::div((i + 1) * t + (p - 1), p, "floor");  // ceil((i+1)T/P)
  const at::Tensor begin = at::div(i * t, p, "floor");
  return (end - begin).to(at::kFloat);
}

MemoryBank fifo_update(const MemoryBank& bank, const at::Tensor& segment, int64_t capacity,
                       int64_t tokens_per_segment) {
  check_finite(segment, "segment");
  check_finite(bank.tokens, "bank.tokens");
  const int64_t b = segment.size(0), t = segment.size(1), m = bank.tokens.size(1);
  const int64_t p = std::min(t, tokens_per_segment);
  at::Tensor pooled = segment;  // windows of one row each: pooling is the identity
  if (p < t) {
    auto by_time = segment.transpose(1, 2);  // [B, D, T]: pool over the last dim
    // LibTorch 1.13 has no CPU float16 adaptive pooling.
    const bool upcast = by_time.scalar_type() == at::kHalf && by_time.is_cpu();
    pooled = at::adaptive_avg_pool1d(upcast ? by_time.to(at::kFloat) : by_time, {p})
                 .transpose(1, 2)
                 .to(segment.scalar_type());
  }
  const at::Tensor pooled_counts = pooling_windows(t, p, bank.counts.device()).unsqueeze(0).expand({b, p});

  // Slice before concatenating: the cat copies only the kept tokens, into fresh storage.
  const int64_t keep_pooled = std::min(p, capacity);
  const int64_t keep_bank = std::min(m, capacity - keep_pooled);
  return {at::cat({bank.tokens.narrow(1, m - keep_bank, keep_bank),
                   pooled.narrow(1, p - keep_pooled, keep_pooled)},
                  1),
          at::cat({bank.counts.narrow(1, m - keep_bank, keep_bank),
                   pooled_counts.narrow(1, p - keep_pooled, keep_pooled)},
                  1)};
}

// Max over pair slots in which the lowest slot wins ties: the merge's argmax, with
// O(log n) point updates. Slots hold -inf when they start no pair.
class LeftmostMaxTree {
 public:
  explicit LeftmostMaxTree(int64_t n) {
    while (size_ < n) size_ *= 2;
    value_.assign(2 * size_, kNoPair);
    slot_.assign(2 * size_, 0);
    for (int64_t i = 0; i < size_; ++i) slot_[size_ + i] = i;
  }
  // Sets a leaf without updating its ancestors; call build() after the last one.
  void set_leaf(int64_t slot, double value) { value_[size_ + slot] = value; }
  void build() {
    for (int64_t node = size_ - 1; node >= 1; --node) pull(node);
  }
  void set(int64_t slot, double value) {
    int64_t node = size_ + slot;
    value_[node] = value;
    for (node /= 2; node >= 1; node /= 2) pull(node);
  }
  int64_t argmax() const { return slot_[1]; }

 private:
  void pull(int64_t node) {
    const int64_t left = 2 * node, right = left + 1;
    const int64_t best = value_[left] >= value_[right] ? left : right;  // ties: lower slot
    value_[node] = value_[best];
    slot_[node] = slot_[best];
  }
  int64_t size_ = 1;
  std::vector<double> value_;
  std::vector<int64_t> slot_;
};

// a.b in double. Eight independent partial sums, so the additions pipeline (a single running
// sum would wait on each add's latency); their order is fixed, so results are deterministic.
double dot(const float* a, const float* b, int64_t d) {
  constexpr int64_t kLanes = 8;
  double lane[kLanes] = {};
  int64_t e = 0;
  for (; e + kLanes <= d; e += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      lane[l] += static_cast<double>(a[e + l]) * static_cast<double>(b[e + l]);
    }
  }
  for (; e < d; ++e) lane[0] += static_cast<double>(a[e]) * static_cast<double>(b[e]);
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// Merges one batch item: its m bank rows (counts `bank_counts`) then its t segment rows
// (count 1), all read-only, down to `capacity` tokens written to out_tokens [capacity, d] and
// out_counts. Tokens live in a linked list over their original rows, so a merged pair keeps
// the left row's slot and slot order is list order: the lowest slot is the lowest j. A merged
// token is written to a scratch row of its own (reused by later merges into the same slot), so
// the inputs are never copied whole nor written.
void merge_item(const float* bank_rows, const float* bank_counts, int64_t m,
                const float* segment_rows, int64_t t, int64_t d, int64_t capacity,
                float* out_tokens, float* out_counts) {
  const int64_t n = m + t;
  std::vector<const float*> row(n);
  std::vector<float*> owned(n, nullptr);  // the slot's scratch row, once it has one
  std::vector<double> count(n), norm(n);
  std::vector<int64_t> next(n), prev(n);
  for (int64_t i = 0; i < n; ++i) {
    row[i] = i < m ? bank_rows + i * d : segment_rows + (i - m) * d;
    count[i] = i < m ? static_cast<double>(bank_counts[i]) : 1.0;
    // Squares of finite floats cannot overflow a double: a non-finite norm is a non-finite input.
    norm[i] = std::sqrt(dot(row[i], row[i], d));
    TORCH_CHECK(std::isfinite(norm[i]), i < m ? "bank.tokens" : "segment",
                " contains non-finite values (NaN or Inf, or beyond float32 range for the "
                "merge); inputs must be finite");
    next[i] = i + 1;  // n: none
    prev[i] = i - 1;  // -1: none
  }
  auto cosine = [&](int64_t i, int64_t j) {
    return dot(row[i], row[j], d) / std::max(norm[i] * norm[j], kCosineEps);
  };
  LeftmostMaxTree similarity(n);  // slot i: the pair (i, next[i])
  for (int64_t i = 0; i + 1 < n; ++i) similarity.set_leaf(i, cosine(i, i + 1));
  similarity.build();

  // At most one scratch row per merge; left uninitialised, so untouched rows cost nothing.
  const int64_t merges = n - capacity;
  std::unique_ptr<float[]> scratch(new float[merges * d]);
  int64_t scratch_used = 0;
  for (int64_t done = 0; done < merges; ++done) {
    const int64_t j = similarity.argmax(), k = next[j];
    const double cj = count[j], ck = count[k], c = cj + ck;
    if (owned[j] == nullptr) owned[j] = scratch.get() + (scratch_used++) * d;
    const float* a = row[j];  // may be owned[j]: each element is read before it is written
    const float* other = row[k];
    float* merged = owned[j];
    for (int64_t e = 0; e < d; ++e) {
      merged[e] = static_cast<float>((cj * a[e] + ck * other[e]) / c);
    }
    row[j] = merged;
    norm[j] = std::sqrt(dot(merged, merged, d));
    count[j] = c;
    next[j] = next[k];
    if (next[k] < n) prev[next[k]] = j;
    // Only the pairs touching the merged token change.
    similarity.set(k, kNoPair);
    similarity.set(j, next[j] < n ? cosine(j, next[j]) : kNoPair);
    if (prev[j] >= 0) similarity.set(prev[j], cosine(prev[j], j));
  }

  int64_t out = 0;
  for (int64_t i = 0; i < n; i = next[i], ++out) {
    std::copy(row[i], row[i] + d, out_tokens + out * d);
    out_counts[out] = static_cast<float>(count[i]);
  }
}

MemoryBank merge_update(const MemoryBank& bank, const at::Tensor& segment, int64_t capacity) {
  const int64_t b = segment.size(0), t = segment.size(1), d = segment.size(2);
  const int64_t m = bank.tokens.size(1), n = m + t;
  if (n <= capacity) {
    check_finite(segment, "segment");
    check_finite(bank.tokens, "bank.tokens");
    return {at::cat({bank.tokens, segment}, 1),
            at::cat({bank.counts, at::ones({b, t}, bank.counts.options())}, 1)};
  }
  // Read-only float32 CPU views: the inputs themselves when they already are.
  const auto tokens = bank.tokens.to(at::kCPU, at::kFloat).contiguous();
  const auto counts = bank.counts.to(at::kCPU).contiguous();
  const auto rows = segment.to(at::kCPU, at::kFloat).contiguous();
  auto out_tokens = at::empty({b, capacity, d}, rows.options());
  auto out_counts = at::empty({b, capacity}, rows.options());
  const float* token_data = tokens.data_ptr<float>();
  const float* count_data = counts.data_ptr<float>();
  const float* row_data = rows.data_ptr<float>();
  float* out_token_data = out_tokens.data_ptr<float>();
  float* out_count_data = out_counts.data_ptr<float>();
  at::parallel_for(0, b, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      merge_item(token_data + i * m * d, count_data + i * m, m, row_data + i * t * d, t, d,
                 capacity, out_token_data + i * capacity * d, out_count_data + i * capacity);
    }
  });
  return {out_tokens.to(bank.tokens.options()), out_counts.to(bank.counts.device())};
}

}  // namespace

MemoryBank update_memory_bank(const MemoryBank& bank, const at::Tensor& segment,
                              const MemoryBankOptions& options) {
  check_memory_bank_options(options);
  check_update_inputs(bank, segment);
  switch (options.policy) {
    case MemoryPolicy::kFifo:
      return fifo_update(bank, segment, options.capacity, options.tokens_per_segment);
    case MemoryPolicy::kMerge:
      return merge_update(bank, segment, options.capacity);
  }
  TORCH_CHECK(false, "policy must be kFifo or kMerge, got ", static_cast<int>(options.policy));
}

}  // namespace hvlm
