// Server: one running hvlm-server — stacks built and warmed up, the session store with its
// idle-expiry thread, the worker pool, and the gRPC server (AttentionService, the standard
// grpc.health.v1.Health service and server reflection). Used by main() and, in-process, by
// tests. start() either returns a serving server or throws (ConfigError for the config, a
// std::runtime_error when the address cannot be bound). Thread-safe; shutdown() may be called
// from any thread, once or more.
#pragma once

#include "server/attention_service.h"
#include "server/config.h"
#include "server/session_store.h"
#include "server/stack_registry.h"
#include "server/worker_pool.h"

#include <grpcpp/grpcpp.h>

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

  /// Stops accepting calls and marks the health service NOT_SERVING, lets in-flight calls
  /// finish for up to grace_seconds (then cancels them), drains the workers. Idempotent.
  void shutdown(double grace_seconds);
  /// Blocks until shutdown() has completed.
  void wait();

  SessionStore& sessions() { return *sessions_; }
  const StackRegistry& stacks() const { return *stacks_; }
  AttentionServiceImpl& service() { return *service_; }

 private:
  Server() = default;
  void expiry_loop();

  ServerConfig config_;
  std::unique_ptr<StackRegistry> stacks_;
  std::unique_ptr<SessionStore> sessions_;
  std::unique_ptr<WorkerPool> workers_;
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
