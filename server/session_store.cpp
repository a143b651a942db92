#include "server/session_store.h"

#include "server/log.h"
#include "server/service_error.h"

#include <algorithm>
#include <cstdio>
#include <random>

namespace hvlm {

struct SessionStore::Session {
  std::string id;
  const HostedStack* stack = nullptr;
  int64_t created_unix_micros = 0;
  // All below guarded by SessionStore::mu_.
  SessionState state;
  int64_t bytes = 0;
  bool busy = false;
  bool streaming = false;
  bool closed = false;
  Clock::time_point last_used;
  int64_t last_used_unix_micros = 0;
};

namespace {

// A session lifecycle event, logged after the store's lock is released.
struct Event {
  const char* what;
  log::Fields fields;
};

void log_events(const std::vector<Event>& events) {
  for (const Event& e : events) log::info(e.what, e.fields);
}

int64_t unix_micros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

void check_session_id(const std::string& id) {
  if (id.empty() || id.size() > 128) {
    fail(ErrorCode::kInvalidArgument, "session_id must be 1 to 128 characters, got ", id.size());
  }
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) fail(ErrorCode::kInvalidArgument, "session_id may hold only [A-Za-z0-9._-]");
  }
}

// --- Lease ---------------------------------------------------------------------------------

SessionStore::Lease::Lease(SessionStore* store, std::shared_ptr<Session> session,
                           const HostedStack* stack, SessionState state)
    : store_(store), session_(std::move(session)), stack_(stack), state_(std::move(state)) {}

SessionStore::Lease::Lease(Lease&& other) noexcept
    : store_(other.store_),
      session_(std::move(other.session_)),
      stack_(other.stack_),
      state_(std::move(other.state_)),
      active_(other.active_) {
  other.active_ = false;
}

SessionStore::Lease::~Lease() {
  if (active_ && session_) store_->release(*session_);
}

const std::string& SessionStore::Lease::session_id() const { return session_->id; }

// --- SessionStore --------------------------------------------------------------------------

SessionStore::SessionStore(Options options) : options_(options) {}
SessionStore::~SessionStore() = default;

std::shared_ptr<SessionStore::Session> SessionStore::find_locked(const std::string& id) const {
  check_session_id(id);
  const auto it = sessions_.find(id);
  if (it == sessions_.end()) fail(ErrorCode::kNotFound, "no session '", id, "'");
  return it->second;
}

std::string SessionStore::new_id_locked() {
  static thread_local std::mt19937_64 rng([] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seq);
  }());
  for (;;) {
    char buf[33];
    std::snprintf(buf, sizeof(buf), "%016llx%016llx", static_cast<unsigned long long>(rng()),
                  static_cast<unsigned long long>(rng()));
    if (!sessions_.count(buf)) return buf;
  }
}

SessionInfo SessionStore::info_locked(const Session& s) const {
  SessionInfo info;
  info.session_id = s.id;
  info.stack = s.stack->name;
  info.segments_seen = s.state.segments_seen;
  info.batch = s.state.batch;
  for (size_t i : s.stack->memory_blocks) {
    MemoryBankInfo bank;
    bank.block_index = i;
    const auto it = s.state.banks.find(i);
    if (it != s.state.banks.end() && it->second.tokens.defined()) {
      bank.length = it->second.tokens.size(1);
      bank.bytes = memory_bank_bytes(it->second);
    }
    info.banks.push_back(bank);
  }
  info.state_bytes = s.state.state_bytes();
  info.total_bytes = s.bytes;
  info.created_unix_micros = s.created_unix_micros;
  info.last_used_unix_micros = s.last_used_unix_micros;
  info.streaming = s.streaming;
  return info;
}

bool SessionStore::make_room_locked(int64_t extra_sessions, int64_t extra_bytes, const Session* keep,
                                    std::vector<std::pair<std::string, std::string>>* evicted) {
  int64_t sessions_over = static_cast<int64_t>(sessions_.size()) + extra_sessions - options_.max_sessions;
  int64_t bytes_over = stats_.memory_bytes + extra_bytes - options_.max_memory_bytes;
  if (sessions_over <= 0 && bytes_over <= 0) return true;
  if (!options_.evict_lru) return false;
  std::vector<Session*> idle;
  for (auto& [id, s] : sessions_) {
    if (s.get() != keep && !s->busy && !s->streaming) idle.push_back(s.get());
  }
  std::sort(idle.begin(), idle.end(), [](const Session* a, const Session* b) { return a->last_used < b->last_used; });
  // Decide first, evict after: a request that cannot fit must not cost anyone their session.
  size_t victims = 0;
  for (int64_t so = sessions_over, bo = bytes_over; (so > 0 || bo > 0); ++victims) {
    if (victims == idle.size()) return false;
    so -= 1;
    bo -= idle[victims]->bytes;
  }
  for (size_t i = 0; i < victims; ++i) {
    evicted->emplace_back(idle[i]->id, idle[i]->stack->name);
    remove_locked(std::string(idle[i]->id));
    ++stats_.evicted;
  }
  return true;
}

void SessionStore::remove_locked(const std::string& id) {
  const auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  it->second->closed = true;
  stats_.memory_bytes -= it->second->bytes;
  sessions_.erase(it);
  stats_.active = static_cast<int64_t>(sessions_.size());
}

SessionInfo SessionStore::open(const HostedStack& stack, const std::string& requested_id) {
  if (!requested_id.empty()) check_session_id(requested_id);
  std::vector<std::pair<std::string, std::string>> evicted;
  SessionInfo info;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!requested_id.empty() && sessions_.count(requested_id)) {
      fail(ErrorCode::kAlreadyExists, "session '", requested_id, "' already exists");
    }
    if (!make_room_locked(1, 0, nullptr, &evicted)) {
      ++stats_.rejected;
      fail(ErrorCode::kResourceExhausted, "session limit reached: ", options_.max_sessions,
           " sessions are open", options_.evict_lru ? " and none is idle" : "");
    }
    auto s = std::make_shared<Session>();
    s->id = requested_id.empty() ? new_id_locked() : requested_id;
    s->stack = &stack;
    s->created_unix_micros = s->last_used_unix_micros = unix_micros();
    s->last_used = Clock::now();
    sessions_[s->id] = s;
    ++stats_.created;
    stats_.active = static_cast<int64_t>(sessions_.size());
    info = info_locked(*s);
  }
  log_evictions(evicted);
  log::info("session opened", {{"session_id", info.session_id}, {"stack", info.stack}});
  return info;
}

SessionInfo SessionStore::import(const HostedStack& stack, const std::string& id, SessionState state) {
  check_session_id(id);
  const int64_t bytes = state.total_bytes();
  std::vector<std::pair<std::string, std::string>> evicted;
  SessionInfo info;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (sessions_.count(id)) fail(ErrorCode::kAlreadyExists, "session '", id, "' already exists");
    if (!make_room_locked(1, bytes, nullptr, &evicted)) {
      ++stats_.rejected;
      fail(ErrorCode::kResourceExhausted, "session limit reached: cannot import session '", id,
           "' (", bytes, " bytes) with ", sessions_.size(), " of ", options_.max_sessions,
           " sessions open and ", stats_.memory_bytes, " of ", options_.max_memory_bytes,
           " session memory bytes used");
    }
    auto s = std::make_shared<Session>();
    s->id = id;
    s->stack = &stack;
    s->created_unix_micros = s->last_used_unix_micros = unix_micros();
    s->last_used = Clock::now();
    s->state = std::move(state);
    s->bytes = bytes;
    sessions_[id] = s;
    stats_.memory_bytes += bytes;
    ++stats_.created;
    stats_.active = static_cast<int64_t>(sessions_.size());
    info = info_locked(*s);
  }
  log_evictions(evicted);
  log::info("session imported", {{"session_id", info.session_id}, {"stack", info.stack},
                                 {"segments_seen", std::to_string(info.segments_seen)},
                                 {"bytes", std::to_string(info.total_bytes)}});
  return info;
}

void SessionStore::close(const std::string& id) {
  log::Fields fields;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto s = find_locked(id);
    fields = {{"session_id", id}, {"stack", s->stack->name},
              {"segments_seen", std::to_string(s->state.segments_seen)}};
    remove_locked(id);
    ++stats_.closed;
  }
  log::info("session closed", fields);
}

SessionInfo SessionStore::info(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  return info_locked(*find_locked(id));
}

std::pair<const HostedStack*, SessionState> SessionStore::snapshot(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto s = find_locked(id);
  return {s->stack, s->state};
}

std::shared_ptr<SessionStore::Session> SessionStore::attach_stream(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto s = find_locked(id);
  if (s->streaming) {
    fail(ErrorCode::kFailedPrecondition, "session '", id, "' already has a stream attached");
  }
  s->streaming = true;
  return s;
}

void SessionStore::detach_stream(const std::shared_ptr<Session>& binding) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!binding || binding->closed) return;
  binding->streaming = false;
  binding->last_used = Clock::now();
  binding->last_used_unix_micros = unix_micros();
}

SessionStore::Lease SessionStore::begin_segment(const std::string& id,
                                                std::optional<uint64_t> sequence, int64_t batch,
                                                const Session* stream) {
  std::shared_ptr<Session> s;
  SessionState state;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s = find_locked(id);
    if (stream != nullptr && s.get() != stream) {
      fail(ErrorCode::kNotFound, "session '", id, "' was closed; this stream served it");
    }
    if (s->streaming && stream == nullptr) {
      fail(ErrorCode::kFailedPrecondition, "session '", id, "' is attached to a stream; send its "
           "segments there");
    }
    if (s->busy) fail(ErrorCode::kAborted, "session '", id, "' is busy with another segment");
    if (sequence && *sequence != s->state.segments_seen) {
      fail(ErrorCode::kFailedPrecondition, "session '", id, "' expects sequence ",
           s->state.segments_seen, ", got ", *sequence,
           *sequence < s->state.segments_seen ? " (duplicate or replayed segment)" : " (out of order)");
    }
    if (s->state.batch != 0 && s->state.batch != batch) {
      fail(ErrorCode::kInvalidArgument, "session '", id, "' has batch size ", s->state.batch,
           ", got features with batch ", batch);
    }
    s->busy = true;
    state = s->state;
  }
  const HostedStack* stack = s->stack;
  if (state.batch == 0) {
    const uint64_t seen = state.segments_seen;
    try {
      state = initial_session_state(*stack, batch);
    } catch (...) {
      release(*s);
      throw;
    }
    state.segments_seen = seen;
  }
  return Lease(this, std::move(s), stack, std::move(state));
}

void SessionStore::commit(Lease& lease, SessionState next) {
  next.segments_seen = lease.sequence() + 1;
  const int64_t bytes = next.total_bytes();
  Session& s = *lease.session_;
  std::vector<std::pair<std::string, std::string>> evicted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    lease.active_ = false;
    s.busy = false;
    if (s.closed) fail(ErrorCode::kAborted, "session '", s.id, "' was closed while its segment ran");
    if (!make_room_locked(0, bytes - s.bytes, &s, &evicted)) {
      ++stats_.rejected;
      fail(ErrorCode::kResourceExhausted, "session memory budget exhausted: session '", s.id,
           "' would hold ", bytes, " bytes, ", stats_.memory_bytes - s.bytes, " of ",
           options_.max_memory_bytes, " are used by other sessions");
    }
    stats_.memory_bytes += bytes - s.bytes;
    s.bytes = bytes;
    s.state = std::move(next);
    s.last_used = Clock::now();
    s.last_used_unix_micros = unix_micros();
  }
  log_evictions(evicted);
}

void SessionStore::log_evictions(const std::vector<std::pair<std::string, std::string>>& evicted) {
  for (const auto& [id, stack] : evicted) {
    log::info("session evicted", {{"session_id", id}, {"stack", stack}, {"reason", "make room (on_full: evict_lru)"}});
  }
}

void SessionStore::release(Session& session) {
  std::lock_guard<std::mutex> lock(mu_);
  session.busy = false;
}

size_t SessionStore::expire_idle() {
  const auto cutoff = Clock::now() - std::chrono::duration_cast<Clock::duration>(
                                         std::chrono::duration<double>(options_.idle_ttl_seconds));
  const auto now = Clock::now();
  std::vector<Event> events;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> expired;
    for (const auto& [id, s] : sessions_) {
      if (!s->busy && !s->streaming && s->last_used < cutoff) {
        expired.push_back(id);
        const double idle = std::chrono::duration<double>(now - s->last_used).count();
        events.push_back({"session expired", {{"session_id", id}, {"stack", s->stack->name},
                                              {"idle_seconds", std::to_string(idle)}}});
      }
    }
    for (const auto& id : expired) remove_locked(id);
    stats_.expired += static_cast<int64_t>(expired.size());
  }
  log_events(events);
  return events.size();
}

SessionStats SessionStore::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace hvlm
