// MetricsHttpServer on a loopback port, with endpoint functions the test controls, spoken to by
// a plain socket HTTP client: status codes, Content-Type and bodies of /metrics, /healthz and
// /readyz, HEAD, other methods and paths, a failing metrics function, bind failures, stop().
#include "server/metrics_http.h"

#include "server/metrics.h"
#include "tests/server/observability_test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

namespace hvlm {
namespace {

using testing::accepts_connections;
using testing::http_request;
using testing::HttpResponse;

class MetricsHttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MetricsHttpServer::Options options;
    options.listen = "127.0.0.1:0";
    options.threads = 2;
    server_ = MetricsHttpServer::start(options, endpoints());
    address_ = server_->address();
  }

  MetricsHttpServer::Endpoints endpoints() {
    return {[this] {
              ++metrics_calls_;
              if (throw_.load()) throw std::runtime_error("collector exploded");
              std::lock_guard<std::mutex> lock(mu_);
              return body_;
            },
            [this](std::string* reason) {
              std::lock_guard<std::mutex> lock(mu_);
              if (!ready_) *reason = reason_;
              return ready_;
            }};
  }

  void set_ready(bool ready, const std::string& reason = "") {
    std::lock_guard<std::mutex> lock(mu_);
    ready_ = ready;
    reason_ = reason;
  }

  HttpResponse get(const std::string& path) { return http_request(address_, "GET", path); }

  std::mutex mu_;
  std::string body_ = "# HELP demo_total Demo.\n# TYPE demo_total counter\ndemo_total 7\n";  // guarded by mu_
  bool ready_ = true;                                                                      // guarded by mu_
  std::string reason_;                                                                     // guarded by mu_
  std::atomic<bool> throw_{false};
  std::atomic<int> metrics_calls_{0};
  std::unique_ptr<MetricsHttpServer> server_;
  std::string address_;
};

TEST_F(MetricsHttpServerTest, MetricsAnswersTheFunctionsTextWithTheExpositionContentType) {
  ASSERT_GT(server_->port(), 0);
  EXPECT_EQ(address_, "127.0.0.1:" + std::to_string(server_->port()));
  const HttpResponse r = get("/metrics");
  EXPECT_EQ(r.status, 200) << r.status_line;
  EXPECT_EQ(r.headers.at("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(r.headers.at("content-type"), metrics::kTextContentType);
  EXPECT_EQ(r.body, body_);
  EXPECT_EQ(r.headers.at("content-length"), std::to_string(body_.size()));
  EXPECT_EQ(metrics_calls_.load(), 1);

  // Each scrape calls the function again; a large body arrives whole; a query string is ignored.
  {
    std::lock_guard<std::mutex> lock(mu_);
    body_.clear();
    for (int i = 0; i < 20000; ++i) body_ += "demo_series{i=\"" + std::to_string(i) + "\"} " + std::to_string(i) + "\n";
  }
  const HttpResponse big = get("/metrics?name[]=demo_series");
  EXPECT_EQ(big.status, 200);
  EXPECT_GT(big.body.size(), 400000u);
  EXPECT_TRUE(big.body == body_) << "got " << big.body.size() << " bytes of " << body_.size();
  EXPECT_EQ(metrics_calls_.load(), 2);
}

TEST_F(MetricsHttpServerTest, HealthzIsOkEvenWhenNotReady) {
  set_ready(false, "warming up");
  const HttpResponse r = get("/healthz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "ok\n");
  EXPECT_EQ(r.headers.at("content-type"), "text/plain; charset=utf-8");
  EXPECT_EQ(metrics_calls_.load(), 0);
}

TEST_F(MetricsHttpServerTest, ReadyzFollowsTheReadyFunctionWithItsReason) {
  HttpResponse r = get("/readyz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "ready\n");
  set_ready(false, "loading and warming up the stacks");
  r = get("/readyz");
  EXPECT_EQ(r.status, 503) << r.status_line;
  EXPECT_EQ(r.body, "not ready: loading and warming up the stacks\n");
  set_ready(false, "shutting down");
  EXPECT_EQ(get("/readyz").body, "not ready: shutting down\n");
  set_ready(true);
  EXPECT_EQ(get("/readyz").status, 200);
}

TEST_F(MetricsHttpServerTest, HeadAnswersLikeGetWithoutABody) {
  HttpResponse r = http_request(address_, "HEAD", "/metrics");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.headers.at("content-type"), metrics::kTextContentType);
  EXPECT_EQ(r.headers.at("content-length"), std::to_string(body_.size()));
  EXPECT_EQ(r.body, "");
  set_ready(false, "draining");
  r = http_request(address_, "HEAD", "/readyz");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, "");
  r = http_request(address_, "HEAD", "/healthz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "");
}

TEST_F(MetricsHttpServerTest, OtherMethodsAreNotAllowedAndSayWhatIs) {
  for (const char* method : {"POST", "PUT", "DELETE"}) {
    for (const char* path : {"/metrics", "/readyz"}) {
      const HttpResponse r = http_request(address_, method, path);
      EXPECT_EQ(r.status, 405) << method << " " << path << ": " << r.status_line;
      ASSERT_TRUE(r.headers.count("allow")) << method << " " << path;
      EXPECT_EQ(r.headers.at("allow"), "GET, HEAD");
    }
  }
  EXPECT_EQ(metrics_calls_.load(), 0);
}

TEST_F(MetricsHttpServerTest, UnknownPathsAreNotFound) {
  for (const char* path : {"/", "/metricsx", "/metrics/extra", "/favicon.ico", "/healthz/", "/READYZ"}) {
    const HttpResponse r = get(path);
    EXPECT_EQ(r.status, 404) << path << ": " << r.status_line;
    EXPECT_NE(r.body.find("/metrics, /healthz and /readyz"), std::string::npos) << r.body;
  }
  EXPECT_EQ(http_request(address_, "POST", "/nowhere").status, 404);
  EXPECT_EQ(metrics_calls_.load(), 0);
}

TEST_F(MetricsHttpServerTest, ThrowingMetricsFunctionIsAServerErrorAndServingContinues) {
  throw_ = true;
  HttpResponse r = get("/metrics");
  EXPECT_EQ(r.status, 500) << r.status_line;
  EXPECT_NE(r.body.find("collector exploded"), std::string::npos) << r.body;
  EXPECT_EQ(http_request(address_, "HEAD", "/metrics").status, 500);
  EXPECT_EQ(get("/healthz").status, 200);
  throw_ = false;
  r = get("/metrics");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, body_);
}

TEST_F(MetricsHttpServerTest, ConcurrentScrapersAllGetWholeAnswers) {
  constexpr int kClients = 8;
  constexpr int kRequests = 25;
  std::string metrics_body;
  {
    std::lock_guard<std::mutex> lock(mu_);
    metrics_body = body_;
  }
  std::atomic<int> good{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; i < kRequests; ++i) {
        const char* path = (c + i) % 3 == 0 ? "/metrics" : (c + i) % 3 == 1 ? "/healthz" : "/readyz";
        const HttpResponse r = http_request(address_, "GET", path);
        const std::string want = (c + i) % 3 == 0 ? metrics_body : (c + i) % 3 == 1 ? "ok\n" : "ready\n";
        if (r.status == 200 && r.body == want) ++good;
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(good.load(), kClients * kRequests);
}

TEST_F(MetricsHttpServerTest, ListeningOnABusyPortThrowsNamingTheAddress) {
  // The fixture's server holds its port; a second one on the same port cannot bind.
  const std::string busy = "127.0.0.1:" + std::to_string(server_->port());
  try {
    MetricsHttpServer::start({busy, 1}, endpoints());
    FAIL() << "started on a port already in use";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(busy), std::string::npos) << e.what();
  }
  // So does a port held by a plain listening socket.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string taken = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  EXPECT_THROW(
      {
        try {
          MetricsHttpServer::start({taken, 1}, endpoints());
        } catch (const std::runtime_error& e) {
          EXPECT_NE(std::string(e.what()).find(taken), std::string::npos) << e.what();
          throw;
        }
      },
      std::runtime_error);
  close(fd);
  // The first server is unaffected.
  EXPECT_EQ(get("/healthz").status, 200);
}

TEST_F(MetricsHttpServerTest, StopIsIdempotentAndThePortStopsAccepting) {
  ASSERT_TRUE(accepts_connections(address_));
  server_->stop();
  EXPECT_FALSE(accepts_connections(address_));
  EXPECT_THROW(get("/healthz"), std::runtime_error);
  server_->stop();
  EXPECT_FALSE(accepts_connections(address_));
  server_.reset();  // the destructor stops once more
}

TEST_F(MetricsHttpServerTest, WildcardHostIsScrapedThroughLoopback) {
  MetricsHttpServer::Options options;
  options.listen = "0.0.0.0:0";
  options.threads = 1;
  auto wildcard = MetricsHttpServer::start(options, endpoints());
  EXPECT_EQ(wildcard->address(), "127.0.0.1:" + std::to_string(wildcard->port()));
  EXPECT_EQ(http_request(wildcard->address(), "GET", "/healthz").status, 200);
}

TEST_F(MetricsHttpServerTest, StartRejectsMissingEndpointsAndZeroThreads) {
  MetricsHttpServer::Endpoints no_ready = endpoints();
  no_ready.ready = nullptr;
  EXPECT_THROW(MetricsHttpServer::start({"127.0.0.1:0", 1}, no_ready), std::invalid_argument);
  MetricsHttpServer::Endpoints no_metrics = endpoints();
  no_metrics.metrics = nullptr;
  EXPECT_THROW(MetricsHttpServer::start({"127.0.0.1:0", 1}, no_metrics), std::invalid_argument);
  EXPECT_THROW(MetricsHttpServer::start({"127.0.0.1:0", 0}, endpoints()), std::invalid_argument);
}

}  // namespace
}  // namespace hvlm
