// Server: one running hvlm-server — stacks built and warmed up, the session store with its
// idle-expiry thread, the worker pool, the gRPC server (AttentionService, the standard
// grpc.health.v1.Health service and server reflection), and the metrics HTTP port (/metrics,
// /healthz, /readyz). The metrics port starts first, so /readyz answers 503 while the stacks
// load and warm up; it turns 200 once gRPC serves, and 503 again as soon as shutdown() begins.
// Used by main() and, in-process, by tests. start() either returns a serving server or throws
// (ConfigError for the config, a std::runtime_error when an address cannot be bound).
// Thread-safe; shutdown() may be called from any thread, once or more.
#pragma once

#include "server/attention_service.h"
#include "server/config.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "server/segment_batcher.h"
#include "server/service_metrics.h"
#include "server/session_store.h"
#include "server/stack_registry.h"
#include "server/worker_pool.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace hvlm {

class Server {
 public:
  static std::unique_ptr<Server> start(const ServerConfig& config);
  ~Server();

  /// The bound port (the configured one, or the one picked for port 0).
  int port() const { return port_; }
  /// host:port clients can dial.
  std::string address() const;
  /// host:port of the metrics HTTP port; empty when metrics.enabled is false.
  std::string metrics_address() const;

  /// Stops accepting calls and marks the health service NOT_SERVING and /readyz 503, lets in-flight calls
  /// finish for up to grace_seconds (then cancels them), drains the workers. Idempotent.
  void shutdown(double grace_seconds);
  /// Blocks until shutdown() has completed.
  void wait();

  SessionStore& sessions() { return *sessions_; }
  const StackRegistry& stacks() const { return *stacks_; }
  AttentionServiceImpl& service() { return *service_; }
  /// Every series the server exports (what /metrics renders).
  const metrics::Registry& metrics() const { return *registry_; }

 private:
  Server() = default;
  void expiry_loop();
  bool ready(std::string* reason) const;

  enum class Phase { kStarting, kServing, kDraining };
  std::atomic<Phase> phase_{Phase::kStarting};

  ServerConfig config_;
  std::unique_ptr<metrics::Registry> registry_;
  std::unique_ptr<ServiceMetrics> metrics_;
  std::unique_ptr<MetricsHttpServer> http_;
  std::unique_ptr<StackRegistry> stacks_;
  std::unique_ptr<SessionStore> sessions_;
  std::unique_ptr<WorkerPool> workers_;
  std::unique_ptr<SegmentBatcher> batcher_;  // when batching is enabled
  std::unique_ptr<AttentionServiceImpl> service_;
  std::unique_ptr<grpc::Server> grpc_;
  int port_ = 0;
  std::string host_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  bool stopped_ = false;   // guarded by mu_
  std::thread expiry_;
};

}  // namespace hvlm
