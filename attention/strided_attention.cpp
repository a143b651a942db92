#include "attention/strided_attention.h"

#include "attention/dense_attention.h"
#include "attention/tensor_checks.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace hvlm {

at::Tensor strided_attention_core(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  int64_t stride) {
  const int64_t g = q.size(0), n = q.size(1), hd = q.size(2);
  // With stride >= n every class holds one token; n classes of one give the same result.
  const int64_t s = std::min(stride, n);
  const int64_t len = (n + s - 1) / s;  // tokens per residue class, the last one padded
  const int64_t pad = len * s - n;
  auto regroup = [&](const at::Tensor& t) {
    auto padded = pad ? at::constant_pad_nd(t, {0, 0, 0, pad}) : t;
    // position i = c * s + r  ->  [G, s (residue r), len (index c), hd]
    return padded.view({g, len, s, hd}).transpose(1, 2);
  };
  at::Tensor allowed;
  if (pad) {
    // Key slot (r, c) is padding iff c * s + r >= n; padded query rows are dropped below.
    auto pos = at::arange(len * s, q.options().dtype(at::kLong)).view({len, s}).t();
    allowed = (pos < n).view({1, s, 1, len});
  }
  auto out = dense_attention(regroup(q), regroup(k), regroup(v), allowed);
  return out.transpose(1, 2).reshape({g, len * s, hd}).narrow(1, 0, n);
}

StridedAttentionImpl::StridedAttentionImpl(const StridedAttentionOptions& options_)
    : options(options_) {
  reset();
}

void StridedAttentionImpl::reset() {
  check_head_options("StridedAttention", options.dim(), options.num_heads());
  TORCH_CHECK(options.stride() >= 1, "StridedAttention: stride must be >= 1, got ",
              options.stride());
  TORCH_CHECK(options.dropout() >= 0.0 && options.dropout() < 1.0,
              "StridedAttention: dropout must be in [0, 1), got ", options.dropout());
  proj.register_in(*this, options.dim());
}

void StridedAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "hvlm::StridedAttention(dim=" << options.dim() << ", num_heads="
         << options.num_heads() << ", stride=" << options.stride() << ")";
}

at::Tensor StridedAttentionImpl::forward(const at::Tensor& x) {
  return proj.self_attention(x, options.num_heads(), options.dropout(), is_training(),
                             [this](const at::Tensor& q, const at::Tensor& k,
                                    const at::Tensor& v) { return attention_core(q, k, v); });
}

at::Tensor strided_attention_unmasked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      int64_t stride) {
  const int64_t g = q.size(0), n = q.size(1), hd = q.size(2);
  const int64_t s = std::min(stride, n);
  const int64_t len = (n + s - 1) / s;
  const int64_t pad = len * s - n;
  const int64_t full = s - pad;  // classes 0 .. full-1 hold len tokens, the others len - 1
  auto regroup = [&](const at::Tensor& t) {
    auto padded = pad ? at::constant_pad_nd(t, {0, 0, 0, pad}) : t;
    return padded.view({g, len, s, hd}).transpose(1, 2);  // [G, s, len, hd]
  };
  const auto qr = regroup(q), kr = regroup(k), vr = regroup(v);
  at::Tensor out;
  if (pad == 0) {
    out = dense_attention(qr, kr, vr);
  } else {
    out = at::zeros({g, s, len, hd}, q.options());
    auto first = [&](const at::Tensor& t) { return t.narrow(1, 0, full); };
    out.narrow(1, 0, full).copy_(dense_attention(first(qr), first(kr), first(vr)));
    if (len > 1) {
      auto rest = [&](const at::Tensor& t) { return t.narrow(1, full, pad).narrow(2, 0, len - 1); };
      out.narrow(1, full, pad).narrow(2, 0, len - 1).copy_(dense_attention(rest(qr), rest(kr), rest(vr)));
    }
  }
  return out.transpose(1, 2).reshape({g, len * s, hd}).narrow(1, 0, n);
}

at::Tensor StridedAttentionImpl::attention_core(const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v) {
  if (q.is_cuda()) {  // fused attention per residue class, all heads at once
    const int64_t b = q.size(0), h = q.size(1), n = q.size(2), hd = q.size(3);
    return strided_attention_unmasked(q.reshape({b * h, n, hd}), k.reshape({b * h, n, hd}),
                                      v.reshape({b * h, n, hd}), options.stride())
        .view(q.sizes());
  }
  const int64_t n = q.size(2);
  const int64_t s = std::min(options.stride(), n);
  const int64_t len = (n + s - 1) / s;
  // scores and probabilities of one head: s classes of len x len, float
  const int64_t bytes_per_head = 2 * s * len * len * static_cast<int64_t>(sizeof(float));
  return run_head_chunks(q, k, v, bytes_per_head,
                         [&](const at::Tensor& qc, const at::Tensor& kc, const at::Tensor& vc) {
                           return strided_attention_core(qc, kc, vc, options.stride());
                         });
}

}  // namespace hvlm
