// Measures the peak extra memory of a piece of work, two ways:
//  - tensor bytes: a CPU allocator (posix_memalign underneath) that replaces LibTorch's and
//    counts live bytes and their high-water mark (exact for every CPU tensor);
//  - resident memory: the process's VmHWM after resetting it through /proc/self/clear_refs
//    (covers everything, including allocator caching and non-tensor buffers; Linux only).
// Install once at start-up, before any tensor is allocated. Thread-safe counters.
#pragma once

#include <cstdint>

namespace hvlm::bench {

// Replaces LibTorch's CPU allocator with the counting one. Call once, first thing in main().
void install_tracking_allocator();

// Bytes of CPU tensor memory live now.
int64_t live_tensor_bytes();

// Starts a measurement: the high-water marks are reset to the current levels.
void reset_peaks();

// Peak tensor bytes since reset_peaks(), minus those live at reset_peaks().
int64_t peak_extra_tensor_bytes();

// Peak resident bytes since reset_peaks(), minus the resident bytes at reset_peaks();
// -1 where the kernel does not support resetting the peak.
int64_t peak_extra_resident_bytes();

}  // namespace hvlm::bench
