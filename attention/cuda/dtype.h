// The storage types our CUDA kernels take (attention/cuda/*.cu); arithmetic is float32 inside
// every kernel whatever the storage. Shared by the kernels' plain-C++ interfaces.
#pragma once

namespace hvlm::kernels::cuda {

enum class DType { kFloat32, kBFloat16, kFloat16 };

}  // namespace hvlm::kernels::cuda
