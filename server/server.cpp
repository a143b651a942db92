#include "server/server.h"

#include "server/dial_address.h"
#include "server/log.h"
#include "server/process_metrics.h"
#include "server/thread_name.h"

#include <ATen/Parallel.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <torch/version.h>
#if defined(HVLM_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <algorithm>
#include <stdexcept>
#include <thread>

namespace hvlm {

std::unique_ptr<Server> Server::start(const ServerConfig& config) {
  std::unique_ptr<Server> s(new Server());
  s->config_ = config;
  const int threads = resolved_intra_op_threads(config);
  at::set_num_threads(threads);
  const c10::Device device = resolve_device(config.device);

  // Metrics first, so /readyz can say "not ready" while the stacks load.
  s->registry_ = std::make_unique<metrics::Registry>();
  register_process_metrics(*s->registry_);
  s->metrics_ = std::make_unique<ServiceMetrics>(*s->registry_, BuildInfo{HVLM_VERSION, TORCH_VERSION, device.str()});
  if (config.metrics.enabled) {
    MetricsHttpServer::Options http;
    http.listen = config.metrics.listen;
    Server* raw = s.get();
    s->http_ = MetricsHttpServer::start(
        http, {[raw] { return raw->registry_->render(); }, [raw](std::string* reason) { return raw->ready(reason); }});
    log::info("metrics listening", {{"address", s->http_->address()}, {"paths", "/metrics /healthz /readyz"}});
  }

  s->stacks_ = StackRegistry::create(config);
  for (const HostedStack* stack : s->stacks_->list()) {
    s->metrics_->add_stack(stack->name);
    log::info("stack ready", {{"stack", stack->name},
                              {"blocks", std::to_string(stack->spec().blocks.size())},
                              {"dim", std::to_string(stack->dim())},
                              {"device", stack->device.str()},
                              {"weights", stack->weights_loaded ? stack->weights_source
                                                                : stack->weights_source + ", no weights file"},
                              {"fingerprint", stack->fingerprint}});
    if (!stack->weights_loaded) {
      log::warn("stack has no weights file: serving a seeded random init", {{"stack", stack->name}});
    }
  }

  SessionStore::Options store;
  store.max_sessions = config.limits.max_sessions;
  store.idle_ttl_seconds = config.limits.session_idle_ttl_seconds;
  store.max_memory_bytes = config.limits.max_session_memory_bytes;
  store.evict_lru = config.limits.evict_lru;
  s->sessions_ = std::make_unique<SessionStore>(store);

  WorkerPool::Options pool;
  pool.threads = config.workers;
  pool.max_queued = config.limits.max_queued_requests;
  pool.thread_init = [threads] { at::set_num_threads(threads); };
  s->workers_ = std::make_unique<WorkerPool>(pool);

  if (config.batching.enabled) {
    SegmentBatcher::Options batching;
    batching.max_batch_size = config.batching.max_batch_size;
    batching.max_queue_delay_seconds = config.batching.max_queue_delay_ms * 1e-3;
    batching.max_queued = config.limits.max_queued_requests;
    batching.thread_init = [threads] { at::set_num_threads(threads); };
    s->batcher_ = std::make_unique<SegmentBatcher>(batching, *s->sessions_, *s->workers_, *s->metrics_);
  }
  s->service_ = std::make_unique<AttentionServiceImpl>(*s->stacks_, *s->sessions_, *s->workers_, config.limits,
                                                       *s->metrics_, s->batcher_.get());

  ServiceMetrics::Sources sources;
  sources.sessions = [raw = s.get()] { return raw->sessions_->stats(); };
  sources.session_memory_limit_bytes = config.limits.max_session_memory_bytes;
  sources.queued_requests = [raw = s.get()] {
    return raw->workers_->queued() + (raw->batcher_ ? raw->batcher_->queued() : 0);
  };
#if defined(HVLM_WITH_CUDA)
  if (device.is_cuda()) {
    sources.device_memory = [device] {
      namespace alloc = c10::cuda::CUDACachingAllocator;
      const auto stats = alloc::getDeviceStats(device.index());
      const size_t aggregate = 0;  // StatType::AGGREGATE, whose namespace moved between versions
      return std::vector<std::pair<std::string, std::pair<double, double>>>{
          {device.str(),
           {static_cast<double>(stats.allocated_bytes[aggregate].current),
            static_cast<double>(stats.reserved_bytes[aggregate].current)}}};
    };
  }
#endif
  s->metrics_->watch(std::move(sources));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.listen, grpc::InsecureServerCredentials(), &s->port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.limits.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config.limits.max_message_bytes));
  grpc::ResourceQuota quota("hvlm-server");
  quota.Resize(static_cast<size_t>(config.limits.max_transport_memory_bytes));
  builder.SetResourceQuota(quota);
  builder.RegisterService(s->service_.get());
  s->grpc_ = builder.BuildAndStart();
  if (!s->grpc_ || s->port_ == 0) {
    s->workers_->shutdown();
    throw std::runtime_error("cannot listen on " + config.listen);
  }
  s->host_ = config.listen.substr(0, config.listen.rfind(':'));
  if (auto* health = s->grpc_->GetHealthCheckService()) {
    health->SetServingStatus(true);
    health->SetServingStatus(v1::AttentionService::service_full_name(), true);
  }
  s->expiry_ = std::thread([raw = s.get()] { raw->expiry_loop(); });
  s->phase_ = Phase::kServing;
  log::info("hvlm-server listening", {{"address", s->address()},
                                      {"workers", std::to_string(config.workers)},
                                      {"batching", config.batching.enabled
                                                       ? "max " + std::to_string(config.batching.max_batch_size) +
                                                             " segments, " +
                                                             std::to_string(config.batching.max_queue_delay_ms) + " ms"
                                                       : "off"},
                                      {"intra_op_threads", std::to_string(threads)}});
  return s;
}

Server::~Server() { shutdown(0); }

std::string Server::metrics_address() const { return http_ ? http_->address() : ""; }

bool Server::ready(std::string* reason) const {
  switch (phase_.load()) {
    case Phase::kServing: return true;
    case Phase::kStarting: *reason = "loading and warming up the stacks"; break;
    case Phase::kDraining: *reason = "shutting down"; break;
  }
  return false;
}

std::string Server::address() const { return dial_address(host_, port_); }

void Server::expiry_loop() {
  name_this_thread("hvlm-expiry");
  const double ttl = config_.limits.session_idle_ttl_seconds;
  const auto period = std::chrono::duration<double>(std::clamp(ttl / 4, 0.05, 1.0));
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, period, [this] { return stopping_; })) {
    lock.unlock();
    sessions_->expire_idle();  // logs each expired session
    lock.lock();
  }
}

void Server::shutdown(double grace_seconds) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (stopping_) {  // another caller is shutting down: wait until it is done
      cv_.wait(lock, [this] { return stopped_; });
      return;
    }
    stopping_ = true;
  }
  phase_ = Phase::kDraining;
  cv_.notify_all();
  if (grpc_) {
    log::info("shutting down", {{"grace_seconds", std::to_string(grace_seconds)}});
    if (auto* health = grpc_->GetHealthCheckService()) health->Shutdown();
    const auto deadline = std::chrono::system_clock::now() +
                          std::chrono::duration_cast<std::chrono::system_clock::duration>(
                              std::chrono::duration<double>(grace_seconds));
    grpc_->Shutdown(deadline);
  }
  if (batcher_) batcher_->shutdown();  // runs what is queued; completions go to the workers
  if (workers_) workers_->shutdown();
  if (expiry_.joinable()) expiry_.join();
  if (http_) http_->stop();  // last, so /readyz says "shutting down" throughout the drain
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
  }
  cv_.notify_all();
  if (grpc_) log::info("stopped");
}

void Server::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return stopped_; });
}

}  // namespace hvlm
