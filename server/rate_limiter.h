// RateLimiter: lets the first occurrence of each key through, then at most one per interval,
// and counts what it held back so the next admitted occurrence can say how many were
// suppressed. Used to keep a flood of identical errors from flooding the log. Remembers at
// most max_keys keys (it forgets them all when full, so memory stays bounded whatever the
// keys). Thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace hvlm {

class RateLimiter {
 public:
  using Clock = std::chrono::steady_clock;

  explicit RateLimiter(Clock::duration interval, size_t max_keys = 1024)
      : interval_(interval), max_keys_(max_keys) {}

  /// Whether an occurrence of `key` at `now` should be logged. When it should, *suppressed is
  /// set to the occurrences held back since the last admitted one.
  bool admit(const std::string& key, Clock::time_point now, int64_t* suppressed);

 private:
  struct Entry {
    Clock::time_point last_admitted;
    int64_t suppressed = 0;
  };
  const Clock::duration interval_;
  const size_t max_keys_;
  std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;  // guarded by mu_
};

}  // namespace hvlm
