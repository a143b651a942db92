// MetricsHttpServer: the operator's HTTP port (civetweb), separate from gRPC:
//   GET /metrics  the Prometheus text exposition (200)
//   GET /healthz  200 "ok" while the process is alive and serving HTTP
//   GET /readyz   200 "ready", or 503 with the reason (still loading, draining)
// HEAD is answered like GET without a body; other methods get 405, other paths 404.
// Connections are closed after each response, so a few threads serve any number of scrapers.
// Thread-safety: the endpoint functions run on civetweb's threads, concurrently; they must be
// thread-safe and must outlive the server. stop() (or the destructor) returns once no handler
// runs any more.
#pragma once

#include <functional>
#include <memory>
#include <string>

struct mg_context;
struct mg_connection;

namespace hvlm {

class MetricsHttpServer {
 public:
  struct Options {
    /// host:port; port 0 picks a free port.
    std::string listen = "127.0.0.1:9464";
    /// Threads answering requests.
    int threads = 4;
  };
  struct Endpoints {
    /// The body of /metrics.
    std::function<std::string()> metrics;
    /// Whether /readyz is 200; when not, sets *reason (the 503 body).
    std::function<bool(std::string* reason)> ready;
  };

  /// Starts serving. Throws std::runtime_error naming the address and civetweb's reason when
  /// it cannot listen.
  static std::unique_ptr<MetricsHttpServer> start(const Options& options, Endpoints endpoints);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  /// The bound port.
  int port() const { return port_; }
  /// host:port to scrape (127.0.0.1 for a wildcard host).
  std::string address() const;
  /// Stops serving. Idempotent.
  void stop();

 private:
  MetricsHttpServer() = default;
  static int handle(mg_connection* conn, void* self);

  Endpoints endpoints_;
  std::string host_;
  int port_ = 0;
  mg_context* context_ = nullptr;
};

}  // namespace hvlm
