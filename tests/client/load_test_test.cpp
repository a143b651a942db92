// The `load` command against an in-process fake server: every measured segment is counted,
// warmup is not, the run stops by itself (segment count or duration), and failed sessions are
// counted with the first error instead of aborting the run. Also the StartGate barrier.
#include "client/load_test.h"

#include "tests/client/fake_attention_service.h"
#include "tests/client/temp_path.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace hvlm::client {
namespace {

using testing::FakeAttentionService;
using testing::FakeServer;
using testing::kFakeDim;

LoadOptions options_for(const FakeServer& server) {
  LoadOptions options;
  options.connection.server = server.address();
  options.connection.timeout_seconds = 10;
  options.stack = "echo";
  options.sessions = 6;
  options.segment_frames = 4;
  options.segments_per_session = 3;
  options.warmup_segments = 1;
  return options;
}

TEST(LoadTest, CountsEveryMeasuredSegmentAndClosesEverySession) {
  FakeServer server;
  const LoadOptions options = options_for(server);
  std::ostringstream out;
  const RunSummary summary = run_load(options, out);
  EXPECT_EQ(summary.latency_ms.count, 18u);  // 6 sessions x 3, warmup left out
  EXPECT_EQ(server.service().segments_served(), 24);
  EXPECT_EQ(summary.errors, 0);
  EXPECT_EQ(summary.first_error, "");
  EXPECT_EQ(summary.dim, kFakeDim);
  EXPECT_EQ(summary.sessions, 6);
  EXPECT_GT(summary.seconds, 0);
  EXPECT_GT(summary.latency_ms.per_second, 0);
  EXPECT_DOUBLE_EQ(summary.server_compute_ms.p99, 1.5);
  // The fake reports 10 us of queue and 1500 us of compute for every segment; the rest of each
  // round trip is outside the server, so the means add up.
  EXPECT_DOUBLE_EQ(summary.server_total_ms.p50, 1.51);
  EXPECT_EQ(summary.outside_server_ms.count, 18u);
  EXPECT_NEAR(summary.outside_server_ms.mean, summary.latency_ms.mean - 1.51, 1e-9);
  EXPECT_DOUBLE_EQ(summary.server_stages_ms.queue.p99, 0.01);
  EXPECT_DOUBLE_EQ(summary.server_stages_ms.compute.p50, 1.5);
  EXPECT_DOUBLE_EQ(summary.server_stages_ms.encode.p50, 0.0);
  EXPECT_EQ(summary.server_stages_ms.memory_update.count, 18u);
  EXPECT_EQ(server.service().sessions_opened(), 6);
  EXPECT_EQ(server.service().sessions_closed(), 6);
  // Without --channels, a connection per session.
  EXPECT_NE(out.str().find("load: 6 sessions on 6 channels,"), std::string::npos) << out.str();
}

TEST(LoadTest, DurationRunsStopByThemselves) {
  FakeServer server;
  LoadOptions options = options_for(server);
  options.segments_per_session = 0;
  options.duration_seconds = 0.3;
  options.sessions = 4;
  options.channels = 2;
  options.batch = 2;
  options.dtype = hvlm::v1::FLOAT16;
  options.json_path = testing::unique_temp_path("summary.json");
  std::ostringstream out;
  const RunSummary summary = run_load(options, out);
  EXPECT_GE(summary.seconds, 0.3);
  EXPECT_LT(summary.seconds, 5.0);
  EXPECT_GE(summary.latency_ms.count, 4u);
  EXPECT_EQ(summary.errors, 0);
  EXPECT_EQ(server.service().sessions_open(), 0);

  std::ifstream in(options.json_path);
  const nlohmann::json json = nlohmann::json::parse(in);
  EXPECT_EQ(json["mode"], "load");
  EXPECT_EQ(json["sessions"], 4);
  EXPECT_EQ(json["batch"], 2);
  EXPECT_EQ(json["dtype"], "float16");
  EXPECT_EQ(json["segments"], summary.latency_ms.count);
  std::remove(options.json_path.c_str());
}

// Without --dtype the features go in the stack's own dtype (a 16-bit stack's server would round
// float32 ones to it anyway); --dtype overrides it; a stack dtype that is no wire dtype is an
// error that names it.
TEST(LoadTest, WithoutDtypeTheFeaturesGoInTheStacksOwn) {
  FakeAttentionService::Options fake;
  fake.stack_dtype = "bfloat16";
  FakeServer server(fake);
  LoadOptions options = options_for(server);
  std::ostringstream out;
  EXPECT_EQ(run_load(options, out).dtype, "bfloat16");
  EXPECT_NE(out.str().find("[4, 8] bfloat16"), std::string::npos) << out.str();
  EXPECT_EQ(server.service().served_by_dtype(), (std::map<hvlm::v1::DType, int64_t>{{hvlm::v1::BFLOAT16, 24}}));

  options.dtype = hvlm::v1::FLOAT32;
  EXPECT_EQ(run_load(options, out).dtype, "float32");
  EXPECT_EQ(server.service().served_by_dtype().at(hvlm::v1::FLOAT32), 24);

  FakeAttentionService::Options odd;
  odd.stack_dtype = "float64";
  FakeServer odd_server(odd);
  LoadOptions odd_options = options_for(odd_server);
  try {
    run_load(odd_options, out);
    ADD_FAILURE() << "a float64 stack was loaded without --dtype";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "stack 'echo' reports dtype 'float64', which is not a wire dtype; pass --dtype");
  }
  EXPECT_EQ(odd_server.service().sessions_opened(), 0);
}

TEST(LoadTest, FailedSessionsAreCountedWithTheFirstError) {
  FakeAttentionService::Options fake;
  fake.fail_at_sequence = 2;
  FakeServer server(fake);
  const LoadOptions options = options_for(server);
  std::ostringstream out;
  const RunSummary summary = run_load(options, out);
  // Each session: segment 0 (warmup) and 1 (measured) pass, segment 2 fails.
  EXPECT_EQ(summary.errors, 6);
  EXPECT_EQ(summary.first_error, "StreamSegments: INVALID_ARGUMENT: features rejected at segment 2");
  EXPECT_EQ(summary.latency_ms.count, 6u);
  EXPECT_EQ(server.service().sessions_closed(), 6);
}

TEST(LoadTest, FailuresDuringWarmupDoNotBlockTheOthers) {
  FakeAttentionService::Options fake;
  fake.fail_at_sequence = 0;
  FakeServer server(fake);
  LoadOptions options = options_for(server);
  options.warmup_segments = 2;
  std::ostringstream out;
  const RunSummary summary = run_load(options, out);
  EXPECT_EQ(summary.errors, 6);
  EXPECT_EQ(summary.latency_ms.count, 0u);
  EXPECT_EQ(summary.seconds, 0);
  EXPECT_EQ(summary.latency_ms.per_second, 0);
}

TEST(LoadTest, UnknownStackFailsEveryOpenSession) {
  FakeServer server;
  LoadOptions options = options_for(server);
  options.stack = "missing";
  options.dim = kFakeDim;  // with the dtype: no ListStacks, the sessions' own calls fail
  options.dtype = hvlm::v1::FLOAT32;
  std::ostringstream out;
  const RunSummary summary = run_load(options, out);
  EXPECT_EQ(summary.errors, 6);
  EXPECT_EQ(summary.first_error, "OpenSession: NOT_FOUND: no stack 'missing'");
}

TEST(LoadTest, TooLargeSegmentsFromTheStacksDimAreAUsageError) {
  FakeServer server;
  LoadOptions options = options_for(server);
  options.sessions = 1024;
  options.segment_frames = 1 << 20;
  std::ostringstream out;
  EXPECT_THROW(run_load(options, out), UsageError);
  EXPECT_EQ(server.service().sessions_opened(), 0);
}

// The load connects every session's channel before it starts, but a server that refuses
// connections is given up on after a retry, not waited for until the (long) timeout; each
// session then fails and is counted.
TEST(LoadTest, AServerThatRefusesConnectionsIsNotWaitedForUntilTheTimeout) {
  std::string address;
  {
    FakeServer gone;  // its port, free again once it has stopped
    address = gone.address();
  }
  LoadOptions options;
  options.connection.server = address;
  options.connection.timeout_seconds = 300;
  options.stack = "echo";
  options.dim = kFakeDim;  // with the dtype: no ListStacks, the sessions' own calls meet the refusal
  options.dtype = hvlm::v1::FLOAT32;
  options.sessions = 4;
  options.segment_frames = 4;
  options.segments_per_session = 1;
  std::ostringstream out;
  const auto start = std::chrono::steady_clock::now();
  const RunSummary summary = run_load(options, out);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(100));
  EXPECT_EQ(summary.errors, 4);
  EXPECT_NE(summary.first_error.find("UNAVAILABLE"), std::string::npos) << summary.first_error;
  EXPECT_EQ(summary.latency_ms.count, 0u);
}

TEST(StartGate, OpensOnTheLastArrivalForEveryWaiter) {
  StartGate gate(4);
  std::atomic<int> passed{0};
  std::vector<std::thread> waiters;
  for (int i = 0; i < 3; ++i) {
    waiters.emplace_back([&] {
      gate.arrive_and_wait();
      ++passed;
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(passed.load(), 0);
  gate.arrive();  // the fourth party, not waiting
  for (std::thread& t : waiters) t.join();
  EXPECT_EQ(passed.load(), 3);
  EXPECT_LE(gate.open_time(), std::chrono::steady_clock::now());
  // Arrivals after opening do not block.
  gate.arrive_and_wait();
}

}  // namespace
}  // namespace hvlm::client
