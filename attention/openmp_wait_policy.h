// Process start-up helper for binaries that use the attention library on CPU.
// LibTorch's intra-op threads (OpenMP) spin after each parallel region by default, while
// OpenBLAS runs GEMMs on threads of its own; on a small machine the spinning threads take the
// cores that the GEMM needs (measured here on 2 cores: a 64-token segment through the video
// stack took 150 ms instead of 52 ms). OMP_WAIT_POLICY=PASSIVE avoids that, but the OpenMP
// runtime reads it only when it loads, before main() runs.
#pragma once

namespace hvlm {

// Call first thing in main(). If OMP_WAIT_POLICY is unset, sets it to PASSIVE and re-executes
// the program (same argv) so the OpenMP runtime sees it; returns normally when it is already
// set (by the user or by the re-execution) or when re-execution fails.
void use_passive_openmp_wait(char** argv);

}  // namespace hvlm
