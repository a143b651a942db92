// The standard process_* series every Prometheus client exports (CPU seconds, resident and
// virtual memory, open and maximum file descriptors, start time), read from /proc/self at
// scrape time. Linux only. Thread-safe.
#pragma once

#include "server/metrics.h"

namespace hvlm {

/// Registers process_cpu_seconds_total, process_resident_memory_bytes,
/// process_virtual_memory_bytes, process_open_fds, process_max_fds and
/// process_start_time_seconds. A value that cannot be read is left out of that scrape.
void register_process_metrics(metrics::Registry& registry);

}  // namespace hvlm
