#include "server/rate_limiter.h"

namespace hvlm {

bool RateLimiter::admit(const std::string& key, Clock::time_point now, int64_t* suppressed) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    if (entries_.size() >= max_keys_) entries_.clear();
    entries_.emplace(key, Entry{now, 0});
    *suppressed = 0;
    return true;
  }
  Entry& e = it->second;
  if (now - e.last_admitted < interval_) {
    ++e.suppressed;
    return false;
  }
  *suppressed = e.suppressed;
  e = Entry{now, 0};
  return true;
}

}  // namespace hvlm
