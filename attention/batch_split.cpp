#include "attention/batch_split.h"

#include "attention/torch_compat.h"

#include <ATen/ATen.h>

namespace hvlm {

std::vector<at::Tensor> split_batch_copies(const at::Tensor& t, const std::vector<int64_t>& rows) {
  const std::vector<at::Tensor> views = t.split_with_sizes(rows, 0);
  std::vector<at::Tensor> pieces;
  pieces.reserve(views.size());
  for (const auto& view : views) pieces.push_back(at::empty(view.sizes(), view.options()));
#if HVLM_TORCH_AT_LEAST(2, 1)
  at::_foreach_copy_(pieces, views);
#else
  for (size_t i = 0; i < views.size(); ++i) pieces[i].copy_(views[i]);
#endif
  return pieces;
}

}  // namespace hvlm
