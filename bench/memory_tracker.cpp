#include "bench/memory_tracker.h"

#include "attention/torch_compat.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <fstream>
#include <string>

namespace hvlm::bench {
namespace {

std::atomic<int64_t> g_live{0};
std::atomic<int64_t> g_peak{0};
int64_t g_live_at_reset = 0;
int64_t g_rss_at_reset = -1;

void note_allocation(int64_t bytes) {
  const int64_t now = g_live.fetch_add(bytes) + bytes;
  int64_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
}

// Allocations carry their size in a 64-byte prefix, so that the data pointer is also the
// context (LibTorch's raw_allocate requires that) and the deleter can count the bytes freed.
constexpr size_t kPrefix = 64;

void release(void* data) {
  if (data == nullptr) return;
  void* base = static_cast<char*>(data) - kPrefix;
  int64_t bytes = 0;
  std::memcpy(&bytes, base, sizeof(bytes));
  g_live.fetch_sub(bytes);
  std::free(base);
}

class TrackingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) HVLM_ALLOCATE_CONST override {
    void* base = nullptr;
    if (posix_memalign(&base, kPrefix, n + kPrefix) != 0) throw std::bad_alloc();
    const auto bytes = static_cast<int64_t>(n);
    std::memcpy(base, &bytes, sizeof(bytes));
    note_allocation(bytes);
    void* data = static_cast<char*>(base) + kPrefix;
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

#if HVLM_ALLOCATOR_HAS_COPY_DATA
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
#endif
};

int64_t read_status_kib(const char* field) {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == field) {
      int64_t kib = 0;
      status >> kib;
      return kib;
    }
    std::getline(status, key);
  }
  return -1;
}

}  // namespace

void install_tracking_allocator() {
  static TrackingAllocator allocator;
  c10::SetCPUAllocator(&allocator, /*priority=*/100);
}

int64_t live_tensor_bytes() { return g_live.load(); }

void reset_peaks() {
  g_live_at_reset = g_live.load();
  g_peak.store(g_live_at_reset);
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";  // resets VmHWM to the current resident size
  clear.close();
  const int64_t rss = read_status_kib("VmRSS:");
  const int64_t hwm = read_status_kib("VmHWM:");
  g_rss_at_reset = (rss >= 0 && hwm >= 0 && hwm - rss < 1024) ? rss * 1024 : -1;
}

int64_t peak_extra_tensor_bytes() { return g_peak.load() - g_live_at_reset; }

int64_t peak_extra_resident_bytes() {
  if (g_rss_at_reset < 0) return -1;
  return read_status_kib("VmHWM:") * 1024 - g_rss_at_reset;
}

}  // namespace hvlm::bench
