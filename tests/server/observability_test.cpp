// The server's observability end to end: an in-process server driven over a real gRPC channel,
// then its registry (what /metrics renders) read back series by series against what the test
// sent; /metrics and /readyz over HTTP while serving and while draining.
#include "tests/server/observability_test_util.h"
#include "tests/server/server_test_util.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <thread>

namespace hvlm::testing {
namespace {

// The value of `series` in `text`; fails the test (and returns NaN) when there is none.
double value_of(const std::string& text, const std::string& series) {
  const std::optional<double> v = sample_value(text, series);
  EXPECT_TRUE(v.has_value()) << "no sample " << series;
  return v.value_or(NAN);
}

// Polls `condition` until it holds or 10 s pass. For effects that happen just after the
// client sees an answer (a stream's reactor is destroyed after its status is sent; shutdown()
// begins on another thread): the bound only keeps a broken server from hanging the test.
template <typename Condition>
bool eventually(Condition condition) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

class ObservabilityTest : public ::testing::Test {
 protected:
  ObservabilityTest() : config_(test_config({{"all", all_blocks_spec()}})), ts_(config_) {}

  std::string render() { return ts_.server->metrics().render(); }
  double value(const std::string& series) { return value_of(render(), series); }

  grpc::Status forward(const std::string& session, const at::Tensor& x, int64_t sequence = -1) {
    v1::ForwardRequest req;
    if (session.empty()) req.set_stack("all");
    req.set_session_id(session);
    if (sequence >= 0) req.set_sequence(static_cast<uint64_t>(sequence));
    *req.mutable_features() = to_wire(x);
    v1::ForwardResponse resp;
    grpc::ClientContext ctx;
    return ts_.stub->Forward(&ctx, req, &resp);
  }

  ServerConfig config_;
  TestServer ts_;
};

TEST_F(ObservabilityTest, SeriesCountWhatClientsSent) {
  // Session a: 3 streamed segments of batch 2; session b: 2 of batch 1.
  const std::string a = open_session(*ts_.stub, "all");
  const std::string b = open_session(*ts_.stub, "all");
  ASSERT_TRUE(stream_segments(*ts_.stub, a, {at::randn({2, 5, 32}), at::randn({2, 7, 32}), at::randn({2, 3, 32})}, 0,
                              nullptr)
                  .ok());
  ASSERT_TRUE(stream_segments(*ts_.stub, b, {at::randn({1, 4, 32}), at::randn({1, 6, 32})}, 0, nullptr).ok());
  // Forward: two stateless ([B, T, D] and [T, D]) and one continuing session a.
  ASSERT_TRUE(forward("", at::randn({3, 4, 32})).ok());
  ASSERT_TRUE(forward("", at::randn({5, 32})).ok());
  ASSERT_TRUE(forward(a, at::randn({2, 2, 32}), 3).ok());
  // A wrong feature dimension, as a Forward and as a stream segment.
  EXPECT_EQ(forward("", at::randn({1, 5, 16})).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(stream_segments(*ts_.stub, b, {at::randn({1, 5, 16})}, 2, nullptr).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  {
    grpc::ClientContext ctx;
    v1::CloseSessionRequest req;
    req.set_session_id(b);
    v1::CloseSessionResponse resp;
    ASSERT_TRUE(ts_.stub->CloseSession(&ctx, req, &resp).ok());
  }
  ASSERT_TRUE(eventually([&] { return sample_value(render(), "hvlm_active_streams") == 0.0; }))
      << "hvlm_active_streams stayed at " << value("hvlm_active_streams");

  const std::string text = render();
  // 5 streamed + 3 Forward segments; tokens = sum of B * T over the successful ones.
  EXPECT_EQ(value_of(text, "hvlm_segments_total{stack=\"all\"}"), 8);
  EXPECT_EQ(value_of(text, "hvlm_tokens_total{stack=\"all\"}"), 2 * (5 + 7 + 3) + (4 + 6) + 3 * 4 + 5 + 2 * 2);
  // Requests by method and code; StreamSegments counts each segment message.
  EXPECT_EQ(value_of(text, "hvlm_requests_total{rpc=\"StreamSegments\",code=\"OK\"}"), 5);
  EXPECT_EQ(value_of(text, "hvlm_requests_total{rpc=\"StreamSegments\",code=\"INVALID_ARGUMENT\"}"), 1);
  EXPECT_EQ(value_of(text, "hvlm_requests_total{rpc=\"Forward\",code=\"OK\"}"), 3);
  EXPECT_EQ(value_of(text, "hvlm_requests_total{rpc=\"Forward\",code=\"INVALID_ARGUMENT\"}"), 1);
  EXPECT_EQ(value_of(text, "hvlm_requests_total{rpc=\"OpenSession\",code=\"OK\"}"), 2);
  EXPECT_EQ(value_of(text, "hvlm_requests_total{rpc=\"CloseSession\",code=\"OK\"}"), 1);
  // A method nobody called counts nothing (its series may or may not be rendered at 0).
  EXPECT_EQ(sample_value(text, "hvlm_requests_total{rpc=\"ExportSession\",code=\"OK\"}").value_or(0), 0);
  EXPECT_EQ(value_of(text, "hvlm_request_duration_seconds_count{rpc=\"Forward\",stack=\"all\"}"), 4);
  EXPECT_EQ(value_of(text, "hvlm_request_duration_seconds_count{rpc=\"StreamSegments\",stack=\"all\"}"), 6);
  // Sessions.
  EXPECT_EQ(value_of(text, "hvlm_sessions_created_total"), 2);
  EXPECT_EQ(value_of(text, "hvlm_sessions_closed_total"), 1);
  EXPECT_EQ(value_of(text, "hvlm_sessions_active"), 1);
  EXPECT_EQ(value_of(text, "hvlm_sessions_rejected_total"), 0);
  EXPECT_EQ(value_of(text, "hvlm_session_memory_bytes"),
            static_cast<double>(ts_.server->sessions().stats().memory_bytes));
  EXPECT_GT(value_of(text, "hvlm_session_memory_bytes"), 0);
  EXPECT_EQ(value_of(text, "hvlm_session_memory_limit_bytes"),
            static_cast<double>(config_.limits.max_session_memory_bytes));
  EXPECT_EQ(value_of(text, "hvlm_active_streams"), 0);
  EXPECT_EQ(value_of(text, "hvlm_queued_requests"), 0);
  // One bank per session segment (fifo, min(T, 4) pooled tokens per segment, capacity 12): a's
  // bank after its segments of T = 5, 7, 3, 2 holds 4, 8, 11, 12 tokens; b's after T = 4, 6
  // holds 4, 8.
  EXPECT_EQ(value_of(text, "hvlm_memory_bank_length_tokens_count{stack=\"all\"}"), 6);
  EXPECT_EQ(value_of(text, "hvlm_memory_bank_length_tokens_sum{stack=\"all\"}"), 4 + 8 + 11 + 12 + 4 + 8);
  EXPECT_EQ(value_of(text, "hvlm_memory_bank_length_tokens_bucket{stack=\"all\",le=\"4\"}"), 2);
  EXPECT_EQ(value_of(text, "hvlm_memory_bank_length_tokens_bucket{stack=\"all\",le=\"8\"}"), 4);
  EXPECT_EQ(value_of(text, "hvlm_memory_bank_length_tokens_bucket{stack=\"all\",le=\"16\"}"), 6);
  // Every successful segment passes every stage but memory_update, which session segments only have.
  for (const char* stage : {"queue", "decode", "compute", "encode"}) {
    EXPECT_EQ(value_of(text, std::string("hvlm_stage_duration_seconds_count{stack=\"all\",stage=\"") + stage + "\"}"),
              8)
        << stage;
  }
  EXPECT_EQ(value_of(text, "hvlm_stage_duration_seconds_count{stack=\"all\",stage=\"memory_update\"}"), 6);
  EXPECT_GT(value_of(text, "hvlm_stage_duration_seconds_sum{stack=\"all\",stage=\"compute\"}"), 0);
  EXPECT_EQ(value_of(text, "hvlm_batch_size_count{stack=\"all\"}"), 8);
  EXPECT_EQ(value_of(text, "hvlm_batch_size_bucket{stack=\"all\",le=\"1\"}"), 8);
  // Build info and the process series.
  EXPECT_NE(text.find("hvlm_build_info{version=\""), std::string::npos);
  EXPECT_NE(text.find("device=\"cpu\"} 1\n"), std::string::npos);
  EXPECT_GT(value_of(text, "process_open_fds"), 0);
  EXPECT_GE(value_of(text, "process_max_fds"), value_of(text, "process_open_fds"));
  EXPECT_GT(value_of(text, "process_resident_memory_bytes"), 0);
  EXPECT_GE(value_of(text, "process_virtual_memory_bytes"), value_of(text, "process_resident_memory_bytes"));
  EXPECT_GT(value_of(text, "process_cpu_seconds_total"), 0);
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_GT(value_of(text, "process_start_time_seconds"), now - 24 * 3600);
  EXPECT_LE(value_of(text, "process_start_time_seconds"), now + 5);
}

TEST_F(ObservabilityTest, MetricsOverHttpIsTheRegistryAndPromtoolAcceptsIt) {
  const std::string id = open_session(*ts_.stub, "all");
  ASSERT_TRUE(stream_segments(*ts_.stub, id, {at::randn({1, 5, 32}), at::randn({1, 5, 32})}, 0, nullptr).ok());
  ASSERT_FALSE(ts_.server->metrics_address().empty());
  const HttpResponse r = http_request(ts_.server->metrics_address(), "GET", "/metrics");
  ASSERT_EQ(r.status, 200) << r.status_line;
  EXPECT_EQ(r.headers.at("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(value_of(r.body, "hvlm_segments_total{stack=\"all\"}"), 2);
  EXPECT_EQ(value_of(r.body, "hvlm_tokens_total{stack=\"all\"}"), 10);
  EXPECT_EQ(value_of(r.body, "hvlm_requests_total{rpc=\"StreamSegments\",code=\"OK\"}"), 2);

  std::string output;
  const auto status = promtool_check(render(), &output);
  if (!status) GTEST_SKIP() << "promtool is not on PATH (Debian package prometheus)";
  EXPECT_EQ(*status, 0) << output;
}

TEST_F(ObservabilityTest, ActiveStreamsCountsOpenStreams) {
  const std::string id = open_session(*ts_.stub, "all");
  EXPECT_EQ(value("hvlm_active_streams"), 0);
  grpc::ClientContext ctx;
  auto stream = ts_.stub->StreamSegments(&ctx);
  v1::SegmentRequest req;
  req.set_session_id(id);
  *req.mutable_features() = to_wire(at::randn({1, 5, 32}));
  ASSERT_TRUE(stream->Write(req));
  v1::SegmentResponse resp;
  ASSERT_TRUE(stream->Read(&resp));  // the server's reactor exists: the stream is open
  EXPECT_EQ(value("hvlm_active_streams"), 1);
  EXPECT_EQ(value("hvlm_requests_total{rpc=\"StreamSegments\",code=\"OK\"}"), 1);
  stream->WritesDone();
  ASSERT_TRUE(stream->Finish().ok());
  EXPECT_TRUE(eventually([&] { return sample_value(render(), "hvlm_active_streams") == 0.0; }))
      << "hvlm_active_streams stayed at " << value("hvlm_active_streams");
}

TEST_F(ObservabilityTest, ReadyzIsOkWhileServingAndUnavailableOnceShutdownBegins) {
  const std::string address = ts_.server->metrics_address();
  HttpResponse r = http_request(address, "GET", "/readyz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "ready\n");

  // An open stream keeps the server draining after shutdown() begins.
  const std::string id = open_session(*ts_.stub, "all");
  grpc::ClientContext ctx;
  auto stream = ts_.stub->StreamSegments(&ctx);
  v1::SegmentRequest req;
  req.set_session_id(id);
  req.set_sequence(0);
  *req.mutable_features() = to_wire(at::randn({1, 5, 32}));
  ASSERT_TRUE(stream->Write(req));
  v1::SegmentResponse resp;
  ASSERT_TRUE(stream->Read(&resp));

  std::thread stopper([&] { ts_.server->shutdown(60); });
  // Should an assertion below fail: end the stream so the drain ends, and wait for it.
  struct EndDrain {
    grpc::ClientContext& ctx;
    std::thread& stopper;
    ~EndDrain() {
      ctx.TryCancel();
      if (stopper.joinable()) stopper.join();
    }
  } end_drain{ctx, stopper};
  // shutdown() marks the server draining before it waits for the stream; watch for it.
  ASSERT_TRUE(eventually([&] { return http_request(address, "GET", "/readyz").status != 200; }))
      << "/readyz stayed 200 after shutdown() began";
  r = http_request(address, "GET", "/readyz");
  EXPECT_EQ(r.status, 503) << r.status_line;
  EXPECT_EQ(r.body, "not ready: shutting down\n");
  // Alive, and still scrapeable, throughout the drain.
  EXPECT_EQ(http_request(address, "GET", "/healthz").status, 200);
  EXPECT_EQ(http_request(address, "GET", "/metrics").status, 200);

  // The in-flight stream still gets its next segment answered and counted.
  req.set_sequence(1);
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.sequence(), 1u);
  EXPECT_EQ(value("hvlm_requests_total{rpc=\"StreamSegments\",code=\"OK\"}"), 2);
  EXPECT_EQ(value("hvlm_active_streams"), 1);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  stopper.join();
  // Once shutdown() returns, the metrics port is closed too.
  EXPECT_FALSE(accepts_connections(address));
  EXPECT_TRUE(eventually([&] { return sample_value(render(), "hvlm_active_streams") == 0.0; }));
}

}  // namespace
}  // namespace hvlm::testing
