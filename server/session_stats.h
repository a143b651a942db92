// SessionStats: the session store's lifetime counters and current totals, for logs and
// metrics. Plain value type (a copy taken under the store's lock).
#pragma once

#include <cstdint>

namespace hvlm {

struct SessionStats {
  /// Open now.
  int64_t active = 0;
  /// Since start: opened or imported.
  int64_t created = 0;
  /// Since start: closed by CloseSession.
  int64_t closed = 0;
  /// Since start: closed after the idle TTL.
  int64_t expired = 0;
  /// Since start: closed to make room (evict_lru).
  int64_t evicted = 0;
  /// Since start: opens, imports or segments refused by a session or memory limit.
  int64_t rejected = 0;
  /// Bytes all sessions' banks and states hold now.
  int64_t memory_bytes = 0;
};

}  // namespace hvlm
