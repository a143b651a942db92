// AttentionServiceImpl: hvlm.v1.AttentionService on gRPC's callback API. The only place that
// knows gRPC: it decodes requests, calls the stack registry, session store and segment runner,
// encodes responses, and turns every exception into a grpc::Status exactly once (to_status).
// Tensor work (Forward, segments, export, import) runs on the WorkerPool; cheap calls
// (ListStacks, sessions' bookkeeping) answer inline. Every finished call (every segment of a
// stream) is counted in ServiceMetrics and logged at debug level; server-side failures
// (INTERNAL, RESOURCE_EXHAUSTED, ...) are also logged at error or warn, rate-limited. One reactor per stream, at most one read
// and one write in flight; the reactor deletes itself in OnDone.
// Thread-safe; must outlive the grpc::Server it is registered with.
#pragma once

#include "hvlm/v1/attention_service.grpc.pb.h"
#include "server/config.h"
#include "server/segment_batcher.h"
#include "server/service_metrics.h"
#include "server/session_store.h"
#include "server/stack_registry.h"
#include "server/worker_pool.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <exception>
#include <string>

namespace hvlm {

class AttentionServiceImpl final : public v1::AttentionService::CallbackService {
 public:
  /// `batcher`, when not null, runs stream segments batched across sessions (it must outlive
  /// every stream); Forward always runs alone.
  AttentionServiceImpl(const StackRegistry& stacks, SessionStore& sessions, WorkerPool& workers,
                       const LimitsConfig& limits, ServiceMetrics& metrics, SegmentBatcher* batcher = nullptr);

  grpc::ServerUnaryReactor* ListStacks(grpc::CallbackServerContext* ctx, const v1::ListStacksRequest* req,
                                       v1::ListStacksResponse* resp) override;
  grpc::ServerUnaryReactor* Forward(grpc::CallbackServerContext* ctx, const v1::ForwardRequest* req,
                                    v1::ForwardResponse* resp) override;
  grpc::ServerBidiReactor<v1::SegmentRequest, v1::SegmentResponse>* StreamSegments(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* OpenSession(grpc::CallbackServerContext* ctx, const v1::OpenSessionRequest* req,
                                        v1::OpenSessionResponse* resp) override;
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* ctx, const v1::CloseSessionRequest* req,
                                         v1::CloseSessionResponse* resp) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* ctx, const v1::GetSessionRequest* req,
                                       v1::GetSessionResponse* resp) override;
  grpc::ServerUnaryReactor* ExportSession(grpc::CallbackServerContext* ctx,
                                          const v1::ExportSessionRequest* req,
                                          v1::ExportSessionResponse* resp) override;
  grpc::ServerUnaryReactor* ImportSession(grpc::CallbackServerContext* ctx,
                                          const v1::ImportSessionRequest* req,
                                          v1::ImportSessionResponse* resp) override;

 private:
  friend class SegmentStreamReactor;
  // What the edge learns about a call while serving it, for its metrics and log line.
  struct CallInfo {
    std::string stack;       // a hosted stack's name, once resolved (never raw client input)
    std::string session_id;  // once it passed check_session_id
  };
  using Clock = std::chrono::steady_clock;
  // Counts, times and logs a finished call (or stream segment).
  void report(const char* rpc, const CallInfo& info, const grpc::Status& status, Clock::time_point start);
  template <typename Work>
  grpc::ServerUnaryReactor* on_worker(grpc::CallbackServerContext* ctx, const char* rpc, Work work);
  template <typename Work>
  grpc::ServerUnaryReactor* inline_call(grpc::CallbackServerContext* ctx, const char* rpc, Work work);
  const HostedStack& stack_or_throw(const std::string& name) const;
  void fill_session(const SessionInfo& info, v1::SessionInfo* out) const;

  const StackRegistry& stacks_;
  SessionStore& sessions_;
  WorkerPool& workers_;
  const LimitsConfig limits_;
  ServiceMetrics& metrics_;
  SegmentBatcher* batcher_;
  const bool pinned_;  // decode into page-locked memory (the stacks are on a GPU)
};

// The status for an exception thrown below the edge: ServiceError keeps its code; c10::Error
// (a library failure) is INTERNAL; std::bad_alloc and c10::OutOfMemoryError (a CUDA
// allocation that failed) are RESOURCE_EXHAUSTED.
grpc::Status to_status(const std::exception_ptr& error);

}  // namespace hvlm
