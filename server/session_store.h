// SessionStore: the server's open sessions, each bound to one hosted stack and holding a
// SessionState between segments. It enforces ordering (one segment at a time, sequence numbers
// in order, one stream per session), the limits on session count and total session memory
// (rejecting or evicting the least recently used idle session), and the idle TTL.
//
// Every lifecycle event (opened, imported, closed, expired, evicted) is logged as one info line
// with its session_id, after the lock is released.
//
// Thread-safety: every method is safe to call concurrently. One mutex (mu_) guards all session
// bookkeeping; it is held only for map and flag updates, never during tensor work, so sessions
// never wait for each other's forward passes. Segment work goes through a Lease: begin_segment()
// marks the session busy and hands out its state, commit() installs the next state; a Lease
// dropped without commit() leaves the session exactly as it was.
#pragma once

#include "server/session_state.h"
#include "server/session_stats.h"
#include "server/stack_registry.h"

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace hvlm {

struct MemoryBankInfo {
  size_t block_index = 0;
  int64_t length = 0;
  int64_t bytes = 0;
};

// A point-in-time description of a session (GetSession).
struct SessionInfo {
  std::string session_id;
  std::string stack;
  uint64_t segments_seen = 0;
  int64_t batch = 0;
  std::vector<MemoryBankInfo> banks;
  int64_t state_bytes = 0;
  int64_t total_bytes = 0;
  int64_t created_unix_micros = 0;
  int64_t last_used_unix_micros = 0;
  bool streaming = false;
};

class SessionStore {
 public:
  struct Options {
    /// Most open sessions.
    int64_t max_sessions = 1024;
    /// Sessions unused this long (and not busy or streaming) are closed by expire_idle().
    double idle_ttl_seconds = 600;
    /// Most bytes all sessions' states hold together.
    int64_t max_memory_bytes = 4LL << 30;
    /// At a limit: evict the least recently used idle session instead of rejecting.
    bool evict_lru = false;
  };

  struct Session;

  // The right to run one segment of a session; see the file comment.
  class Lease {
   public:
    Lease(Lease&&) noexcept;
    Lease& operator=(Lease&&) = delete;
    ~Lease();
    const HostedStack& stack() const { return *stack_; }
    const std::string& session_id() const;
    /// The sequence number this segment takes.
    uint64_t sequence() const { return state_.segments_seen; }
    /// The state to run from (initial_session_state for a session's first segment).
    const SessionState& state() const { return state_; }

   private:
    friend class SessionStore;
    Lease(SessionStore* store, std::shared_ptr<Session> session, const HostedStack* stack,
          SessionState state);
    SessionStore* store_;
    std::shared_ptr<Session> session_;
    const HostedStack* stack_;
    SessionState state_;
    bool active_ = true;
  };

  explicit SessionStore(Options options);
  ~SessionStore();

  /// Opens a session of `stack`. `requested_id` empty: a random 128-bit id (32 hex digits).
  /// Errors: INVALID_ARGUMENT (id syntax), ALREADY_EXISTS, RESOURCE_EXHAUSTED (max_sessions).
  SessionInfo open(const HostedStack& stack, const std::string& requested_id);
  /// Adds a session with an imported state. Errors as open(), plus RESOURCE_EXHAUSTED when its
  /// bytes do not fit the memory budget.
  SessionInfo import(const HostedStack& stack, const std::string& id, SessionState state);
  /// Errors: NOT_FOUND. A segment in flight on a closed session fails with ABORTED at commit.
  void close(const std::string& id);
  /// Errors: NOT_FOUND.
  SessionInfo info(const std::string& id);
  /// The stack and last committed state, for export. Errors: NOT_FOUND.
  std::pair<const HostedStack*, SessionState> snapshot(const std::string& id);

  /// Binds a stream to the session and returns the binding: the session object itself, so a
  /// session closed and reopened under the same id is never mistaken for the bound one.
  /// Errors: NOT_FOUND, FAILED_PRECONDITION (already streaming).
  std::shared_ptr<Session> attach_stream(const std::string& id);
  /// Unbinds it (no-op when that session is gone).
  void detach_stream(const std::shared_ptr<Session>& binding);

  /// Starts a segment. `sequence`, when given, must equal segments_seen; `batch` must equal
  /// the session's batch once fixed. `stream` is the binding from attach_stream for a stream's
  /// own segments, nullptr for other callers, who may not run a segment while a stream is
  /// attached. Errors: INVALID_ARGUMENT (id syntax, batch), NOT_FOUND (also: the stream's
  /// session was closed), FAILED_PRECONDITION (sequence, streaming), ABORTED (a segment is
  /// already in flight).
  Lease begin_segment(const std::string& id, std::optional<uint64_t> sequence, int64_t batch,
                      const Session* stream);
  /// Installs `next` (its segments_seen is set to the lease's sequence + 1) and releases the
  /// lease. Errors, leaving the session unchanged: RESOURCE_EXHAUSTED (memory budget, after
  /// eviction if enabled), ABORTED (closed while the segment ran).
  void commit(Lease& lease, SessionState next);

  /// Closes sessions idle longer than the TTL; returns how many.
  size_t expire_idle();
  SessionStats stats();

 private:
  using Clock = std::chrono::steady_clock;
  void release(Session& session);
  // Makes room for `extra_sessions` more sessions and `extra_bytes` more bytes: true when they
  // fit, evicting idle sessions (least recently used first, never `keep`) when evict_lru is on
  // and that is enough; when it is not, evicts nothing and returns false. Requires mu_.
  // The (id, stack) of every evicted session goes to *evicted, for log_evictions() once mu_
  // is released.
  bool make_room_locked(int64_t extra_sessions, int64_t extra_bytes, const Session* keep,
                        std::vector<std::pair<std::string, std::string>>* evicted);
  static void log_evictions(const std::vector<std::pair<std::string, std::string>>& evicted);
  void remove_locked(const std::string& id);
  SessionInfo info_locked(const Session& session) const;
  std::shared_ptr<Session> find_locked(const std::string& id) const;
  std::string new_id_locked();

  const Options options_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Session>> sessions_;  // guarded by mu_
  SessionStats stats_;                                          // guarded by mu_
};

// Checks a session id: 1 to 128 characters of [A-Za-z0-9._-] (INVALID_ARGUMENT otherwise).
void check_session_id(const std::string& id);

}  // namespace hvlm
