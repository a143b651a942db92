// SessionStore: ordering, leases, streams, limits, eviction and expiry, without gRPC.
#include "server/service_error.h"
#include "server/session_store.h"
#include "tests/server/server_test_util.h"

#include <gtest/gtest.h>

#include <thread>

namespace hvlm::testing {
namespace {

ErrorCode code_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ServiceError& e) {
    return e.code();
  }
  ADD_FAILURE() << "no ServiceError thrown";
  return ErrorCode::kInternal;
}

class SessionStoreTest : public ::testing::Test {
 protected:
  SessionStoreTest() {
    ServerConfig config = test_config({{"all", all_blocks_spec()}});
    config.log_level = "error";
    stacks_ = StackRegistry::create(config);
    stack_ = stacks_->find("all");
  }

  // Runs one segment's bookkeeping with a state of `bytes_per_bank` token rows.
  void commit_segment(SessionStore& store, const std::string& id, int64_t tokens) {
    auto lease = store.begin_segment(id, std::nullopt, 1, nullptr);
    SessionState next = lease.state();
    next.banks[1] = MemoryBank{at::zeros({1, tokens, 32}), at::ones({1, tokens})};
    store.commit(lease, next);
  }

  std::unique_ptr<StackRegistry> stacks_;
  const HostedStack* stack_ = nullptr;
};

TEST_F(SessionStoreTest, IssuedIdsAreRandom128BitHex) {
  SessionStore store({});
  const std::string a = store.open(*stack_, "").session_id;
  const std::string b = store.open(*stack_, "").session_id;
  EXPECT_EQ(a.size(), 32u);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(a, b);
  EXPECT_EQ(store.open(*stack_, "Mine_1.x-2").session_id, "Mine_1.x-2");
}

TEST_F(SessionStoreTest, SequencesMustFollowInOrder) {
  SessionStore store({});
  const std::string id = store.open(*stack_, "").session_id;
  EXPECT_EQ(code_of([&] { store.begin_segment(id, 1, 1, nullptr); }), ErrorCode::kFailedPrecondition);
  commit_segment(store, id, 2);
  EXPECT_EQ(store.info(id).segments_seen, 1u);
  EXPECT_EQ(code_of([&] { store.begin_segment(id, 0, 1, nullptr); }), ErrorCode::kFailedPrecondition);
  auto lease = store.begin_segment(id, 1, 1, nullptr);
  EXPECT_EQ(lease.sequence(), 1u);
}

TEST_F(SessionStoreTest, OneSegmentAtATimeAndADroppedLeaseChangesNothing) {
  SessionStore store({});
  const std::string id = store.open(*stack_, "").session_id;
  {
    auto lease = store.begin_segment(id, 0, 1, nullptr);
    EXPECT_EQ(code_of([&] { store.begin_segment(id, 0, 1, nullptr); }), ErrorCode::kAborted);
  }
  EXPECT_EQ(store.info(id).segments_seen, 0u);
  EXPECT_EQ(store.info(id).batch, 0);
  auto again = store.begin_segment(id, 0, 1, nullptr);  // free again
  EXPECT_EQ(again.state().batch, 1);
}

TEST_F(SessionStoreTest, BatchIsFixedByTheFirstSegment) {
  SessionStore store({});
  const std::string id = store.open(*stack_, "").session_id;
  commit_segment(store, id, 2);
  EXPECT_EQ(code_of([&] { store.begin_segment(id, 1, 2, nullptr); }), ErrorCode::kInvalidArgument);
}

TEST_F(SessionStoreTest, StreamsAreExclusive) {
  SessionStore store({});
  const std::string id = store.open(*stack_, "").session_id;
  auto binding = store.attach_stream(id);
  EXPECT_EQ(code_of([&] { store.attach_stream(id); }), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(code_of([&] { store.begin_segment(id, 0, 1, nullptr); }), ErrorCode::kFailedPrecondition);
  store.begin_segment(id, 0, 1, binding.get());
  store.detach_stream(binding);
  auto again = store.attach_stream(id);
  EXPECT_TRUE(store.info(id).streaming);
}

TEST_F(SessionStoreTest, AStreamNeverServesASessionReopenedUnderItsId) {
  SessionStore store({});
  store.open(*stack_, "x");
  auto old_binding = store.attach_stream("x");
  store.close("x");
  store.open(*stack_, "x");
  auto new_binding = store.attach_stream("x");
  EXPECT_EQ(code_of([&] { store.begin_segment("x", 0, 1, old_binding.get()); }), ErrorCode::kNotFound);
  store.detach_stream(old_binding);  // must not unbind the new stream
  EXPECT_TRUE(store.info("x").streaming);
  EXPECT_EQ(code_of([&] { store.begin_segment("x", 0, 1, nullptr); }), ErrorCode::kFailedPrecondition);
}

TEST_F(SessionStoreTest, SessionLimitRejectsOrEvictsLeastRecentlyUsedIdle) {
  SessionStore reject({.max_sessions = 2});
  reject.open(*stack_, "a");
  reject.open(*stack_, "b");
  EXPECT_EQ(code_of([&] { reject.open(*stack_, "c"); }), ErrorCode::kResourceExhausted);
  EXPECT_EQ(reject.stats().rejected, 1);

  SessionStore evict({.max_sessions = 2, .evict_lru = true});
  evict.open(*stack_, "a");
  evict.open(*stack_, "b");
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  commit_segment(evict, "a", 1);  // "b" is now the least recently used
  evict.open(*stack_, "c");
  EXPECT_EQ(code_of([&] { evict.info("b"); }), ErrorCode::kNotFound);
  EXPECT_EQ(evict.info("a").segments_seen, 1u);
  EXPECT_EQ(evict.stats().evicted, 1);
  // Busy or streaming sessions are never evicted.
  auto lease = evict.begin_segment("a", 1, 1, nullptr);
  auto binding = evict.attach_stream("c");
  EXPECT_EQ(code_of([&] { evict.open(*stack_, "d"); }), ErrorCode::kResourceExhausted);
}

TEST_F(SessionStoreTest, MemoryBudgetRejectsTheSegmentAndKeepsTheOldState) {
  const int64_t row = 32 * 4 + 4;  // one bank token and its count
  const int64_t base = initial_session_state(*stack_, 1).total_bytes();  // mamba state
  SessionStore store({.max_memory_bytes = 2 * base + 10 * row});
  const std::string a = store.open(*stack_, "a").session_id;
  const std::string b = store.open(*stack_, "b").session_id;
  commit_segment(store, a, 6);
  EXPECT_EQ(store.stats().memory_bytes, 6 * row + base);
  EXPECT_EQ(store.info(a).state_bytes, base);
  const int64_t before = store.info(b).total_bytes;
  EXPECT_EQ(code_of([&] { commit_segment(store, b, 6); }), ErrorCode::kResourceExhausted);
  EXPECT_EQ(store.info(b).segments_seen, 0u);
  EXPECT_EQ(store.info(b).total_bytes, before);
  // Closing `a` frees its bytes; `b` fits then.
  store.close(a);
  commit_segment(store, b, 6);
  EXPECT_EQ(store.info(b).banks[0].length, 6);
}

TEST_F(SessionStoreTest, MemoryBudgetEvictsIdleSessionsWhenAsked) {
  const int64_t row = 32 * 4 + 4;
  const int64_t base = initial_session_state(*stack_, 1).total_bytes();
  SessionStore store({.max_memory_bytes = 2 * base + 10 * row, .evict_lru = true});
  commit_segment(store, store.open(*stack_, "a").session_id, 6);
  store.open(*stack_, "b");
  commit_segment(store, "b", 6);
  EXPECT_EQ(code_of([&] { store.info("a"); }), ErrorCode::kNotFound);
  EXPECT_EQ(store.stats().evicted, 1);
  // A segment that cannot fit even with every idle session gone evicts nobody.
  store.open(*stack_, "c");
  EXPECT_EQ(code_of([&] { commit_segment(store, "c", 40); }), ErrorCode::kResourceExhausted);
  EXPECT_EQ(store.info("b").segments_seen, 1u);
  EXPECT_EQ(store.stats().evicted, 1);
}

TEST_F(SessionStoreTest, MalformedIdsAreInvalidEverywhere) {
  SessionStore store({});
  for (const std::string bad : {"", "a b", "x/y"}) {
    EXPECT_EQ(code_of([&] { store.info(bad); }), ErrorCode::kInvalidArgument) << bad;
    EXPECT_EQ(code_of([&] { store.close(bad); }), ErrorCode::kInvalidArgument) << bad;
    EXPECT_EQ(code_of([&] { store.begin_segment(bad, 0, 1, nullptr); }), ErrorCode::kInvalidArgument);
  }
}

TEST_F(SessionStoreTest, IdleSessionsExpireButBusyAndStreamingOnesDoNot) {
  SessionStore store({.idle_ttl_seconds = 0.05});
  store.open(*stack_, "idle");
  store.open(*stack_, "busy");
  store.open(*stack_, "streaming");
  auto lease = store.begin_segment("busy", 0, 1, nullptr);
  auto binding = store.attach_stream("streaming");
  std::this_thread::sleep_for(std::chrono::milliseconds(80));
  EXPECT_EQ(store.expire_idle(), 1u);
  EXPECT_EQ(code_of([&] { store.info("idle"); }), ErrorCode::kNotFound);
  EXPECT_EQ(store.stats().expired, 1);
  EXPECT_EQ(store.stats().active, 2);
}

TEST_F(SessionStoreTest, CommitAfterCloseIsAbortedAndFreesNothingTwice) {
  SessionStore store({});
  store.open(*stack_, "a");
  auto lease = store.begin_segment("a", 0, 1, nullptr);
  store.close("a");
  EXPECT_EQ(code_of([&] { store.commit(lease, lease.state()); }), ErrorCode::kAborted);
  EXPECT_EQ(store.stats().memory_bytes, 0);
  EXPECT_EQ(store.stats().closed, 1);
}

}  // namespace
}  // namespace hvlm::testing
