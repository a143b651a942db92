// The one-pass ("time-parallel") selective scan: selective_scan's ScanAlgorithm::kTimeParallel
// (attention/cuda/mamba_kernels.h states the function and the operands it takes). Internal to
// the Mamba kernels: mamba_kernels.cu chooses between it and the chunked scan.
#pragma once

#include "attention/cuda/mamba_kernels.h"

#include <string>

namespace hvlm::kernels::cuda {

/// Why the one-pass scan cannot take these (validated, non-empty) operands, or "" when it can.
std::string time_parallel_scan_refusal(const SelectiveScanArgs& args);

/// The share of the GPU's SMs its grid keeps busy, over all its waves (1 = every SM, every
/// wave): the block of a group of channels walks the whole sequence, one block per SM.
double time_parallel_scan_fill(const SelectiveScanArgs& args);

/// Enqueues the scan on operands it takes. Throws std::runtime_error on a failed launch.
void time_parallel_scan(const SelectiveScanArgs& args);

}  // namespace hvlm::kernels::cuda
