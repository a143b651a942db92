// How our attention kernels address a [batch, heads, tokens, head_dim] operand in memory:
// element (b, h, t, d) lives at data + b * batch + h * head + t * token + d (strides in
// elements; head_dim is contiguous). One layout type lets a kernel read q, k and v straight
// out of the projections' [batch, tokens, heads * head_dim] output (head = head_dim,
// token = heads * head_dim) and write its result in that layout, so no head split or merge
// copies run around it; a contiguous [batch, heads, tokens, head_dim] tensor is the case
// head = tokens * head_dim, token = head_dim.
#pragma once

#include <cstdint>

namespace hvlm::kernels::cuda {

struct HeadStrides {
  int64_t batch = 0;  // elements between (b, h, t) and (b + 1, h, t)
  int64_t head = 0;   // elements between (b, h, t) and (b, h + 1, t)
  int64_t token = 0;  // elements between (b, h, t) and (b, h, t + 1)
};

}  // namespace hvlm::kernels::cuda
