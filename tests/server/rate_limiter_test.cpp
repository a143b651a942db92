// RateLimiter: the first occurrence of a key passes, repeats within the interval are held back
// and counted, the next admitted one reports how many were held back; keys are independent and
// the key table stays bounded. Time is given explicitly: no sleeps.
#include "server/rate_limiter.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace hvlm {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

const RateLimiter::Clock::time_point kT0{seconds(1000)};

TEST(RateLimiter, FirstOccurrenceIsAdmittedWithNothingSuppressed) {
  RateLimiter limiter(seconds(10));
  int64_t suppressed = -1;
  EXPECT_TRUE(limiter.admit("INTERNAL|boom", kT0, &suppressed));
  EXPECT_EQ(suppressed, 0);
}

TEST(RateLimiter, RepeatsWithinTheIntervalAreHeldBackAndReportedByTheNextAdmitted) {
  RateLimiter limiter(seconds(10));
  int64_t suppressed = -1;
  ASSERT_TRUE(limiter.admit("k", kT0, &suppressed));
  suppressed = -1;
  EXPECT_FALSE(limiter.admit("k", kT0, &suppressed));
  EXPECT_FALSE(limiter.admit("k", kT0 + seconds(3), &suppressed));
  EXPECT_FALSE(limiter.admit("k", kT0 + seconds(10) - milliseconds(1), &suppressed));
  EXPECT_EQ(suppressed, -1);  // untouched while held back
  // The interval is measured from the last admitted occurrence, and ends inclusively.
  EXPECT_TRUE(limiter.admit("k", kT0 + seconds(10), &suppressed));
  EXPECT_EQ(suppressed, 3);
  // The count starts over, and so does the interval.
  EXPECT_FALSE(limiter.admit("k", kT0 + seconds(19), &suppressed));
  EXPECT_TRUE(limiter.admit("k", kT0 + seconds(20), &suppressed));
  EXPECT_EQ(suppressed, 1);
  // Nothing held back since the last admitted one: 0.
  EXPECT_TRUE(limiter.admit("k", kT0 + seconds(100), &suppressed));
  EXPECT_EQ(suppressed, 0);
}

TEST(RateLimiter, KeysAreIndependent) {
  RateLimiter limiter(seconds(10));
  int64_t suppressed = -1;
  ASSERT_TRUE(limiter.admit("a", kT0, &suppressed));
  EXPECT_TRUE(limiter.admit("b", kT0 + seconds(1), &suppressed));
  EXPECT_EQ(suppressed, 0);
  EXPECT_FALSE(limiter.admit("a", kT0 + seconds(2), &suppressed));
  EXPECT_FALSE(limiter.admit("a", kT0 + seconds(3), &suppressed));
  EXPECT_FALSE(limiter.admit("b", kT0 + seconds(4), &suppressed));
  EXPECT_TRUE(limiter.admit("a", kT0 + seconds(10), &suppressed));
  EXPECT_EQ(suppressed, 2);
  // b's interval runs from its own first occurrence (t0 + 1 s).
  EXPECT_FALSE(limiter.admit("b", kT0 + seconds(10), &suppressed));
  EXPECT_TRUE(limiter.admit("b", kT0 + seconds(11), &suppressed));
  EXPECT_EQ(suppressed, 2);
}

TEST(RateLimiter, KeyTableIsBoundedByForgettingWhenFull) {
  RateLimiter limiter(seconds(10), 3);
  int64_t suppressed = -1;
  for (const char* key : {"a", "b", "c"}) ASSERT_TRUE(limiter.admit(key, kT0, &suppressed));
  // Known keys do not grow the table: all three are still remembered.
  for (const char* key : {"a", "b", "c"}) EXPECT_FALSE(limiter.admit(key, kT0 + seconds(1), &suppressed)) << key;
  // A fourth key finds the table full: the table is cleared and holds "d" alone.
  EXPECT_TRUE(limiter.admit("d", kT0 + seconds(2), &suppressed));
  EXPECT_EQ(suppressed, 0);
  EXPECT_FALSE(limiter.admit("d", kT0 + seconds(3), &suppressed));
  // "a" was forgotten: admitted at once, with its held-back count lost.
  EXPECT_TRUE(limiter.admit("a", kT0 + seconds(3), &suppressed));
  EXPECT_EQ(suppressed, 0);

  // However many distinct keys arrive, each is admitted once and remembered until the next
  // clear: the table never holds more than max_keys.
  RateLimiter flood(seconds(10), 16);
  for (int i = 0; i < 10000; ++i) {
    ASSERT_TRUE(flood.admit("key" + std::to_string(i), kT0, &suppressed)) << i;
    ASSERT_FALSE(flood.admit("key" + std::to_string(i), kT0, &suppressed)) << i;
  }
  // The table was last cleared for key9984: key9984..key9999 are remembered, key9983 is not.
  for (int i = 10000 - 16; i < 10000; ++i) EXPECT_FALSE(flood.admit("key" + std::to_string(i), kT0, &suppressed)) << i;
  EXPECT_TRUE(flood.admit("key" + std::to_string(10000 - 17), kT0, &suppressed));
}

TEST(RateLimiter, ConcurrentRepeatsAreAdmittedOnceAndAllCounted) {
  constexpr int kThreads = 8;
  constexpr int kRepeats = 1000;
  RateLimiter limiter(seconds(10));
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      int64_t suppressed = 0;
      for (int i = 0; i < kRepeats; ++i) {
        if (limiter.admit("same", kT0, &suppressed)) ++admitted;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(admitted.load(), 1);
  int64_t suppressed = -1;
  EXPECT_TRUE(limiter.admit("same", kT0 + seconds(10), &suppressed));
  EXPECT_EQ(suppressed, kThreads * kRepeats - 1);
}

}  // namespace
}  // namespace hvlm
