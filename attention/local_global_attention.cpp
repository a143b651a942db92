#include "attention/local_global_attention.h"

#include "attention/dense_attention.h"
#include "attention/tensor_checks.h"
#if HVLM_WITH_CUDA
#include "attention/cuda_kernels.h"
#endif

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace hvlm {
namespace {

int64_t pick_block_size(int64_t n, int64_t local_window, int64_t requested) {
  const int64_t b = requested > 0 ? requested : local_window;
  return std::max<int64_t>(1, std::min(b, n));
}

}  // namespace

at::Tensor global_positions(int64_t n, int64_t num_global_tokens, const at::Device& device) {
  auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  if (num_global_tokens <= 0 || n <= 0) return at::empty({0}, opts);
  // With g >= n the steps n/g <= 1 reach every position; this also bounds the work by n.
  if (num_global_tokens >= n) return at::arange(n, opts);
  // floor(t * n / g) in exact integer arithmetic; with g < n consecutive values differ by at
  // least floor(n / g) >= 1, so they are already distinct.
  return at::div(at::arange(num_global_tokens, opts) * n, num_global_tokens, "floor");
}

std::vector<int64_t> global_position_list(int64_t n, int64_t num_global_tokens) {
  std::vector<int64_t> out;
  if (num_global_tokens <= 0 || n <= 0) return out;
  const int64_t count = std::min(num_global_tokens, n);
  out.reserve(static_cast<size_t>(count));
  // floor(t * n / g), as global_positions; with g >= n that is every position.
  for (int64_t t = 0; t < count; ++t) out.push_back(count == n ? t : t * n / num_global_tokens);
  return out;
}

at::Tensor local_global_attention_core(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, int64_t local_window,
                                       int64_t num_global_tokens, int64_t block_size) {
  const int64_t g = q.size(0), n = q.size(1), hd = q.size(2);
  const int64_t half = local_window / 2;
  const int64_t b = pick_block_size(n, local_window, block_size);
  const int64_t nb = (n + b - 1) / b;
  const int64_t npad = nb * b;
  const int64_t span = b + local_window;  // keys a block of queries can see in its window
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const double neg_inf = -std::numeric_limits<double>::infinity();
  auto long_opts = q.options().dtype(at::kLong);

  // Window keys of block j are padded-key positions [j*b, j*b + span), i.e. token positions
  // [j*b - half, j*b - half + span).
  auto kp = at::constant_pad_nd(k, {0, 0, half, npad - n + half});
  auto vp = at::constant_pad_nd(v, {0, 0, half, npad - n + half});
  auto k_win = kp.unfold(1, span, b);                  // [G, nb, hd, span]
  auto v_win = vp.unfold(1, span, b).transpose(2, 3);  // [G, nb, span, hd]
  auto qb = (npad > n ? at::constant_pad_nd(q, {0, 0, 0, npad - n}) : q).view({g, nb, b, hd});
  auto local = at::matmul(qb, k_win).mul_(scale);      // [G, nb, b, span]

  // Query offset qi sees window slot kj iff qi <= kj <= qi + w (|i - j| <= w/2), the key is a
  // real token, or the query itself is padding (its row is dropped; this keeps it finite).
  auto qi = at::arange(b, long_opts).view({1, b, 1});
  auto kj = at::arange(span, long_opts).view({1, 1, span});
  auto key_pos = at::arange(nb, long_opts).view({nb, 1, 1}) * b - half + kj;
  auto query_pos = at::arange(nb, long_opts).view({nb, 1, 1}) * b + qi;
  auto allowed_local = ((kj >= qi) & (kj <= qi + local_window) & (key_pos >= 0) &
                        (key_pos < n)) | (query_pos >= n);
  local.masked_fill_(allowed_local.logical_not(), neg_inf);

  auto gpos = global_positions(n, num_global_tokens, q.device());
  const int64_t ng = gpos.size(0);
  at::Tensor out;
  if (ng == 0) {
    out = at::matmul(at::softmax(local, -1), v_win).view({g, npad, hd});
  } else {
    auto kg = k.index_select(1, gpos), vg = v.index_select(1, gpos);
    auto glob = at::matmul(qb.view({g, npad, hd}), kg.transpose(1, 2)).mul_(scale);
    // A global key already inside the query's window is counted there, once.
    auto dist = (at::arange(npad, long_opts).view({npad, 1}) - gpos.view({1, ng})).abs();
    glob.masked_fill_(dist <= half, neg_inf);
    auto probs = at::softmax(at::cat({local.view({g, npad, span}), glob}, -1), -1);
    out = at::matmul(probs.narrow(-1, 0, span).view({g, nb, b, span}), v_win).view({g, npad, hd});
    out.add_(at::matmul(probs.narrow(-1, span, ng), vg));
  }
  out = out.narrow(1, 0, n);
  if (ng > 0) {
    // Global queries attend to every token.
    auto full = dense_attention(q.index_select(1, gpos), k, v);
    out = out.contiguous().index_copy_(1, gpos, full);
  }
  return out;
}

LocalGlobalAttentionImpl::LocalGlobalAttentionImpl(const LocalGlobalAttentionOptions& options_)
    : options(options_) {
  reset();
}

void LocalGlobalAttentionImpl::reset() {
  check_head_options("LocalGlobalAttention", options.dim(), options.num_heads());
  TORCH_CHECK(options.local_window() >= 2 && options.local_window() % 2 == 0,
              "LocalGlobalAttention: local_window must be even and >= 2, got ",
              options.local_window());
  TORCH_CHECK(options.num_global_tokens() >= 0,
              "LocalGlobalAttention: num_global_tokens must be >= 0, got ",
              options.num_global_tokens());
  TORCH_CHECK(options.dropout() >= 0.0 && options.dropout() < 1.0,
              "LocalGlobalAttention: dropout must be in [0, 1), got ", options.dropout());
  proj.register_in(*this, options.dim());
}

void LocalGlobalAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "hvlm::LocalGlobalAttention(dim=" << options.dim()
         << ", num_heads=" << options.num_heads() << ", local_window=" << options.local_window()
         << ", num_global_tokens=" << options.num_global_tokens() << ")";
}

at::Tensor LocalGlobalAttentionImpl::forward(const at::Tensor& x) {
  return proj.self_attention(x, options.num_heads(), options.dropout(), is_training(),
                             [this](const at::Tensor& q, const at::Tensor& k,
                                    const at::Tensor& v) { return attention_core(q, k, v); });
}

at::Tensor LocalGlobalAttentionImpl::attention_core(const at::Tensor& q, const at::Tensor& k,
                                                    const at::Tensor& v) {
  const int64_t n = q.size(2), hd = q.size(3);
  const int64_t w = options.local_window(), ng = std::min(options.num_global_tokens(), n);
#if HVLM_WITH_CUDA
  // On a GPU: our kernels compute the whole core straight from the (strided) head views, and
  // the result is a view of a [B, n, H, hd] tensor, so merging the heads after it is free.
  if (q.is_cuda()) {
    const auto positions = global_position_list(n, options.num_global_tokens());
    if (cuda::local_global_supported(hd, static_cast<int64_t>(positions.size()))) {
      return cuda::local_global_attention(q, k, v, w / 2, positions);
    }
  }
#endif
  const int64_t npad = n + w;  // upper bound of the padded length
  // scores, probabilities and the concatenation, plus window copies of k and v, per head
  const int64_t bytes_per_head =
      static_cast<int64_t>(sizeof(float)) * (3 * npad * (2 * w + ng) + 4 * npad * hd + ng * n);
  return run_head_chunks(q, k, v, bytes_per_head,
                         [&](const at::Tensor& qc, const at::Tensor& kc, const at::Tensor& vc) {
                           return local_global_attention_core(qc, kc, vc, w,
                                                              options.num_global_tokens());
                         });
}

}  // namespace hvlm
