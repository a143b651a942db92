#include "server/attention_service.h"

#include "server/log.h"
#include "server/segment_runner.h"
#include "server/service_error.h"
#include "server/session_state.h"
#include "server/tensor_codec.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>

#include <chrono>

namespace hvlm {
namespace {

using Clock = std::chrono::steady_clock;

grpc::StatusCode grpc_code(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return grpc::StatusCode::INVALID_ARGUMENT;
    case ErrorCode::kNotFound: return grpc::StatusCode::NOT_FOUND;
    case ErrorCode::kAlreadyExists: return grpc::StatusCode::ALREADY_EXISTS;
    case ErrorCode::kFailedPrecondition: return grpc::StatusCode::FAILED_PRECONDITION;
    case ErrorCode::kAborted: return grpc::StatusCode::ABORTED;
    case ErrorCode::kResourceExhausted: return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case ErrorCode::kDeadlineExceeded: return grpc::StatusCode::DEADLINE_EXCEEDED;
    case ErrorCode::kCancelled: return grpc::StatusCode::CANCELLED;
    case ErrorCode::kUnavailable: return grpc::StatusCode::UNAVAILABLE;
    case ErrorCode::kInternal: return grpc::StatusCode::INTERNAL;
  }
  return grpc::StatusCode::UNKNOWN;
}

// Runs `work`, returning OK or the status of what it threw.
template <typename Work>
grpc::Status guarded(Work&& work) {
  try {
    work();
    return grpc::Status::OK;
  } catch (...) {
    return to_status(std::current_exception());
  }
}

// A request that waited past its deadline, or whose client gave up, is not worth computing.
void check_still_wanted(grpc::CallbackServerContext* ctx) {
  if (ctx->IsCancelled()) fail(ErrorCode::kCancelled, "the client cancelled the call");
  if (ctx->deadline() <= std::chrono::system_clock::now()) {
    fail(ErrorCode::kDeadlineExceeded, "the deadline passed before the request could run");
  }
}

// A session id as it may appear in logs: the id when it is well-formed, else empty (a
// malformed one is client input of any length and content).
std::string loggable_id(const std::string& id) {
  try {
    check_session_id(id);
    return id;
  } catch (const ServiceError&) {
    return "";
  }
}

void fill_timings(const StageTimings& t, v1::StageTimings* out) {
  out->set_queue_micros(t.queue_micros);
  out->set_decode_micros(t.decode_micros);
  out->set_compute_micros(t.compute_micros);
  out->set_memory_update_micros(t.memory_update_micros);
  out->set_encode_micros(t.encode_micros);
}

}  // namespace

grpc::Status to_status(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const ServiceError& e) {
    return grpc::Status(grpc_code(e.code()), e.what());
  } catch (const c10::OutOfMemoryError& e) {
    // The caching allocator has already freed what it could; the next request may fit.
    std::string m = std::string("out of device memory: ") + e.what_without_backtrace();
    if (m.size() > kMaxErrorMessageChars) m.resize(kMaxErrorMessageChars);
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, m);
  } catch (const c10::Error& e) {
    std::string m = e.what_without_backtrace();
    if (m.size() > kMaxErrorMessageChars) m.resize(kMaxErrorMessageChars);
    return grpc::Status(grpc::StatusCode::INTERNAL, m);
  } catch (const std::bad_alloc&) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "out of memory");
  } catch (const std::exception& e) {
    std::string m = e.what();
    if (m.size() > kMaxErrorMessageChars) m.resize(kMaxErrorMessageChars);
    return grpc::Status(grpc::StatusCode::INTERNAL, m);
  } catch (...) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "unknown error");
  }
}

AttentionServiceImpl::AttentionServiceImpl(const StackRegistry& stacks, SessionStore& sessions,
                                           WorkerPool& workers, const LimitsConfig& limits,
                                           ServiceMetrics& metrics, SegmentBatcher* batcher)
    : stacks_(stacks),
      sessions_(sessions),
      workers_(workers),
      limits_(limits),
      metrics_(metrics),
      batcher_(batcher),
      pinned_(stacks.device().is_cuda()) {}

void AttentionServiceImpl::report(const char* rpc, const CallInfo& info, const grpc::Status& status,
                                  Clock::time_point start) {
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const int code = static_cast<int>(status.error_code());
  metrics_.request_done(rpc, info.stack, code, seconds);
  const bool server_side = code == grpc::StatusCode::INTERNAL || code == grpc::StatusCode::UNKNOWN ||
                           code == grpc::StatusCode::DATA_LOSS;
  const bool pressure = code == grpc::StatusCode::RESOURCE_EXHAUSTED || code == grpc::StatusCode::UNAVAILABLE;
  if (!log::enabled(log::Level::kDebug) && !server_side && !pressure) return;
  log::Fields fields{{"rpc", rpc}, {"code", grpc_code_name(code)}};
  if (!info.stack.empty()) fields.emplace_back("stack", info.stack);
  if (!info.session_id.empty()) fields.emplace_back("session_id", info.session_id);
  fields.emplace_back("duration_ms", std::to_string(seconds * 1e3));
  if (!status.ok()) fields.emplace_back("error", status.error_message());
  log::debug("request", fields);
  if (server_side || pressure) {
    // Keyed without the message: messages carry per-request numbers (sizes, byte counts), and
    // a flood must not become one line per request.
    log::write_limited(server_side ? log::Level::kError : log::Level::kWarn,
                       std::string(rpc) + '|' + grpc_code_name(code) + '|' + info.stack, "request failed", fields);
  }
}

template <typename Work>
grpc::ServerUnaryReactor* AttentionServiceImpl::inline_call(grpc::CallbackServerContext* ctx,
                                                            const char* rpc, Work work) {
  const auto start = Clock::now();
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  CallInfo info;
  const grpc::Status status = guarded([&] { work(info); });
  report(rpc, info, status, start);
  reactor->Finish(status);
  return reactor;
}

template <typename Work>
grpc::ServerUnaryReactor* AttentionServiceImpl::on_worker(grpc::CallbackServerContext* ctx,
                                                          const char* rpc, Work work) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  const auto arrival = Clock::now();
  const bool queued = workers_.try_submit([this, ctx, reactor, rpc, arrival, work]() mutable {
    CallInfo info;
    const grpc::Status status = guarded([&] {
      check_still_wanted(ctx);
      work(micros_between(arrival, Clock::now()), info);
    });
    report(rpc, info, status, arrival);
    reactor->Finish(status);
  });
  if (!queued) {
    const grpc::Status busy(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            "server busy: the request queue is full or the server is stopping");
    report(rpc, CallInfo{}, busy, arrival);
    reactor->Finish(busy);
  }
  return reactor;
}

const HostedStack& AttentionServiceImpl::stack_or_throw(const std::string& name) const {
  const HostedStack* stack = stacks_.find(name);
  if (stack == nullptr) {
    std::string names;
    for (const HostedStack* s : stacks_.list()) names += (names.empty() ? "" : ", ") + s->name;
    fail(ErrorCode::kNotFound, "no stack named '", name, "' (stacks: ", names, ")");
  }
  return *stack;
}

void AttentionServiceImpl::fill_session(const SessionInfo& info, v1::SessionInfo* out) const {
  out->set_session_id(info.session_id);
  out->set_stack(info.stack);
  out->set_segments_seen(info.segments_seen);
  for (const auto& bank : info.banks) {
    auto* b = out->add_memory_banks();
    b->set_block_index(static_cast<int32_t>(bank.block_index));
    b->set_length(bank.length);
    b->set_bytes(bank.bytes);
  }
  out->set_state_bytes(info.state_bytes);
  out->set_total_bytes(info.total_bytes);
  out->set_batch_size(info.batch);
  out->set_created_unix_micros(info.created_unix_micros);
  out->set_last_used_unix_micros(info.last_used_unix_micros);
  out->set_streaming(info.streaming);
}

grpc::ServerUnaryReactor* AttentionServiceImpl::ListStacks(grpc::CallbackServerContext* ctx,
                                                           const v1::ListStacksRequest*,
                                                           v1::ListStacksResponse* resp) {
  return inline_call(ctx, "ListStacks", [&](CallInfo&) {
    for (const HostedStack* s : stacks_.list()) {
      auto* info = resp->add_stacks();
      info->set_name(s->name);
      info->set_dim(s->dim());
      info->set_weights_loaded(s->weights_loaded);
      info->set_weights_source(s->weights_source);
      info->set_dtype(dtype_name(s->dtype));
      info->set_device(s->device.str());
      info->set_fingerprint(s->fingerprint);
      const nlohmann::json spec = s->spec().to_json();
      for (size_t i = 0; i < spec["blocks"].size(); ++i) {
        auto* block = info->add_blocks();
        block->set_index(static_cast<int32_t>(i));
        block->set_type(s->spec().blocks[i].type);
        block->set_options_json(spec["blocks"][i].dump());
        const auto it = s->memory.find(i);
        if (it != s->memory.end()) {
          auto* m = block->mutable_memory();
          m->set_policy(it->second.policy == MemoryPolicy::kFifo ? v1::FIFO : v1::MERGE);
          m->set_capacity(it->second.capacity);
          m->set_tokens_per_segment(it->second.tokens_per_segment);
        }
      }
    }
  });
}

grpc::ServerUnaryReactor* AttentionServiceImpl::Forward(grpc::CallbackServerContext* ctx,
                                                        const v1::ForwardRequest* req,
                                                        v1::ForwardResponse* resp) {
  return on_worker(ctx, "Forward", [this, req, resp](int64_t queue_micros, CallInfo& info) {
    StageTimings t;
    t.queue_micros = queue_micros;
    auto start = Clock::now();
    const DecodedTokens in =
        decode_tokens(req->features(), "features", limits_.max_tokens_per_segment, false, pinned_);
    at::Tensor y;
    const HostedStack* stack = nullptr;
    std::vector<int64_t> bank_lengths;
    info.session_id = loggable_id(req->session_id());
    if (!req->session_id().empty()) {
      if (req->memories_size() > 0) {
        fail(ErrorCode::kInvalidArgument, "memories cannot be given with a session_id: the session's "
             "memory banks are used");
      }
      if (!req->stack().empty()) {
        const std::string bound = sessions_.info(req->session_id()).stack;
        if (req->stack() != bound) {
          fail(ErrorCode::kInvalidArgument, "session '", req->session_id(), "' is bound to stack '",
               bound, "', not '", req->stack(), "'");
        }
      }
      std::optional<uint64_t> sequence;
      if (req->has_sequence()) sequence = req->sequence();
      t.decode_micros = micros_between(start, Clock::now());
      SegmentResult r = run_segment(sessions_, req->session_id(), sequence, in.tokens, nullptr, &t);
      info.stack = r.stack->name;
      stack = r.stack;
      bank_lengths = std::move(r.bank_lengths);
      y = r.output;
      resp->set_session_id(req->session_id());
      resp->set_sequence(r.sequence);
    } else {
      if (req->has_sequence()) fail(ErrorCode::kInvalidArgument, "sequence needs a session_id");
      stack = &stack_or_throw(req->stack());
      info.stack = stack->name;
      std::map<size_t, at::Tensor> memories;
      for (int i = 0; i < req->memories_size(); ++i) {
        const auto& m = req->memories(i);
        const std::string field = "memories[" + std::to_string(i) + "]";
        if (m.block_index() < 0 || !stack->memory.count(static_cast<size_t>(m.block_index()))) {
          std::string blocks;
          for (size_t b : stack->memory_blocks) blocks += (blocks.empty() ? "" : ", ") + std::to_string(b);
          fail(ErrorCode::kInvalidArgument, field, ".block_index ", m.block_index(),
               " is not a cross_memory block of stack '", stack->name, "' (cross_memory blocks: ",
               blocks.empty() ? "none" : blocks, ")");
        }
        if (memories.count(static_cast<size_t>(m.block_index()))) {
          fail(ErrorCode::kInvalidArgument, field, ".block_index ", m.block_index(), " is given twice");
        }
        memories[static_cast<size_t>(m.block_index())] =
            decode_tokens(m.tokens(), field + ".tokens", limits_.max_memory_tokens, true, pinned_).tokens;
      }
      t.decode_micros = micros_between(start, Clock::now());
      y = forward_stateless(*stack, in.tokens, memories, &t);
    }
    start = Clock::now();
    encode_tokens(y, in.unbatched, in.dtype, resp->mutable_output());
    t.encode_micros = micros_between(start, Clock::now());
    fill_timings(t, resp->mutable_timings());
    metrics_.batch_done(stack->name, 1);
    metrics_.segment_done(stack->name, in.tokens.size(0) * in.tokens.size(1), t,
                          req->session_id().empty() ? nullptr : &bank_lengths);
  });
}

grpc::ServerUnaryReactor* AttentionServiceImpl::OpenSession(grpc::CallbackServerContext* ctx,
                                                            const v1::OpenSessionRequest* req,
                                                            v1::OpenSessionResponse* resp) {
  return inline_call(ctx, "OpenSession", [&](CallInfo& call) {
    const HostedStack& stack = stack_or_throw(req->stack());
    call.stack = stack.name;
    call.session_id = loggable_id(req->session_id());
    const SessionInfo info = sessions_.open(stack, req->session_id());
    call.session_id = info.session_id;
    fill_session(info, resp->mutable_session());
  });
}

grpc::ServerUnaryReactor* AttentionServiceImpl::CloseSession(grpc::CallbackServerContext* ctx,
                                                             const v1::CloseSessionRequest* req,
                                                             v1::CloseSessionResponse*) {
  return inline_call(ctx, "CloseSession", [&](CallInfo& call) {
    call.session_id = loggable_id(req->session_id());
    sessions_.close(req->session_id());
  });
}

grpc::ServerUnaryReactor* AttentionServiceImpl::GetSession(grpc::CallbackServerContext* ctx,
                                                           const v1::GetSessionRequest* req,
                                                           v1::GetSessionResponse* resp) {
  return inline_call(ctx, "GetSession", [&](CallInfo& call) {
    call.session_id = loggable_id(req->session_id());
    const SessionInfo info = sessions_.info(req->session_id());
    call.stack = info.stack;
    fill_session(info, resp->mutable_session());
  });
}

grpc::ServerUnaryReactor* AttentionServiceImpl::ExportSession(grpc::CallbackServerContext* ctx,
                                                              const v1::ExportSessionRequest* req,
                                                              v1::ExportSessionResponse* resp) {
  return on_worker(ctx, "ExportSession", [this, req, resp](int64_t, CallInfo& info) {
    info.session_id = loggable_id(req->session_id());
    const auto [stack, state] = sessions_.snapshot(req->session_id());
    info.stack = stack->name;
    std::string bytes = export_session(req->session_id(), *stack, state);
    if (static_cast<int64_t>(bytes.size()) > limits_.max_message_bytes - 1024) {
      fail(ErrorCode::kResourceExhausted, "session '", req->session_id(), "' exports to ", bytes.size(),
           " bytes, more than max_message_bytes allows");
    }
    resp->set_state(std::move(bytes));
  });
}

grpc::ServerUnaryReactor* AttentionServiceImpl::ImportSession(grpc::CallbackServerContext* ctx,
                                                              const v1::ImportSessionRequest* req,
                                                              v1::ImportSessionResponse* resp) {
  return on_worker(ctx, "ImportSession", [this, req, resp](int64_t, CallInfo& call) {
    c10::InferenceMode guard;
    ExportedSession imported = import_session(req->state(), stacks_, limits_.max_tokens_per_segment);
    const std::string id = req->session_id().empty() ? imported.session_id : req->session_id();
    const HostedStack& stack = stack_or_throw(imported.stack);
    call.stack = stack.name;
    call.session_id = loggable_id(id);
    const SessionInfo info = sessions_.import(stack, id, std::move(imported.state));
    call.session_id = info.session_id;
    fill_session(info, resp->mutable_session());
  });
}

// --- StreamSegments ------------------------------------------------------------------------

// One stream: read a segment, run it on a worker, write its output, read the next. The first
// message binds the stream to its session; OnDone unbinds it.
class SegmentStreamReactor final : public grpc::ServerBidiReactor<v1::SegmentRequest, v1::SegmentResponse> {
 public:
  SegmentStreamReactor(AttentionServiceImpl* service, grpc::CallbackServerContext* ctx)
      : service_(service), ctx_(ctx) {
    service_->metrics_.stream_opened();
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client finished sending (or went away); nothing is in flight
      finish(grpc::Status::OK);
      return;
    }
    arrival_ = Clock::now();
    if (!service_->workers_.try_submit([this] { process(); })) {
      const grpc::Status busy(grpc::StatusCode::RESOURCE_EXHAUSTED,
                              "server busy: the request queue is full or the server is stopping");
      service_->report("StreamSegments", info_, busy, arrival_);
      finish(busy);
    }
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      finish(grpc::Status(grpc::StatusCode::CANCELLED, "the response could not be sent"));
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override {
    service_->metrics_.stream_closed();
    delete this;
  }

 private:
  // Every Finish goes through here: the session is free for a new stream as soon as the
  // client can see this stream's status.
  void finish(const grpc::Status& status) {
    if (binding_) {
      service_->sessions_.detach_stream(binding_);
      log::debug("stream detached", {{"session_id", info_.session_id}});
      binding_.reset();
    }
    Finish(status);
  }

  // Runs on a worker: checks and decodes the segment, then runs it (alone, or handed to the
  // batcher, which completes it later through complete()).
  void process() {
    bool handed_off = false;
    const grpc::Status status = guarded([this, &handed_off] {
      check_still_wanted(ctx_);
      StageTimings& t = timings_;
      t = StageTimings{};
      auto start = Clock::now();
      t.queue_micros = micros_between(arrival_, start);
      if (!binding_) {
        if (request_.session_id().empty()) {
          fail(ErrorCode::kInvalidArgument, "the first message of a stream must name its session_id");
        }
        info_.session_id = loggable_id(request_.session_id());
        binding_ = service_->sessions_.attach_stream(request_.session_id());
        log::debug("stream attached", {{"session_id", info_.session_id}});
        session_id_ = request_.session_id();
        info_.stack = service_->sessions_.info(session_id_).stack;
        stack_dtype_ = service_->stack_or_throw(info_.stack).dtype;
      } else if (!request_.session_id().empty() && request_.session_id() != session_id_) {
        fail(ErrorCode::kInvalidArgument, "this stream serves session '", session_id_,
             "'; a message named session '", request_.session_id(), "'");
      }
      // Straight into the stack's dtype: prepare_segment then has nothing to convert.
      DecodedTokens in = decode_tokens(request_.features(), "features", service_->limits_.max_tokens_per_segment,
                                       false, service_->pinned_, stack_dtype_);
      t.decode_micros = micros_between(start, Clock::now());
      unbatched_ = in.unbatched;
      wire_dtype_ = in.dtype;
      tokens_ = in.tokens.size(0) * in.tokens.size(1);
      if (SegmentBatcher* batcher = service_->batcher_) {
        PreparedSegment prepared = prepare_segment(service_->sessions_, session_id_, request_.sequence(),
                                                   in.tokens, binding_.get());
        t.decode_micros = micros_between(start, Clock::now());  // preparing it for its batch included
        auto done = [this](SegmentOutcome outcome, StageTimings batch) {
          timings_.queue_micros += batch.queue_micros;
          timings_.compute_micros = batch.compute_micros;
          timings_.memory_update_micros = batch.memory_update_micros;
          complete(std::move(outcome));
        };
        if (!batcher->submit(std::move(prepared), std::move(done), [ctx = ctx_] { check_still_wanted(ctx); })) {
          fail(ErrorCode::kResourceExhausted, "server busy: the batch queue is full or the server is stopping");
        }
        handed_off = true;
        return;
      }
      SegmentOutcome alone;
      alone.result = run_segment(service_->sessions_, session_id_, request_.sequence(), in.tokens,
                                 binding_.get(), &t);
      handed_off = true;
      complete(std::move(alone));
    });
    if (!handed_off) {  // failed before the segment ran
      service_->report("StreamSegments", info_, status, arrival_);
      finish(status);
    }
  }

  // Encodes a segment's outcome and answers it (write, or finish with its error). Runs on a
  // worker, or on the batcher's thread when the pool is full.
  void complete(SegmentOutcome outcome) {
    const grpc::Status status = guarded([&] {
      if (outcome.error) std::rethrow_exception(outcome.error);
      const SegmentResult& r = outcome.result;
      info_.stack = r.stack->name;
      const auto start = Clock::now();
      response_.Clear();
      response_.set_session_id(session_id_);
      response_.set_sequence(r.sequence);
      encode_tokens(r.output, unbatched_, wire_dtype_, response_.mutable_output());
      timings_.encode_micros = micros_between(start, Clock::now());
      fill_timings(timings_, response_.mutable_timings());
      if (service_->batcher_ == nullptr) service_->metrics_.batch_done(info_.stack, 1);
      service_->metrics_.segment_done(info_.stack, tokens_, timings_, &r.bank_lengths);
    });
    service_->report("StreamSegments", info_, status, arrival_);
    if (!status.ok()) {
      finish(status);
      return;
    }
    StartWrite(&response_);
  }

  AttentionServiceImpl* service_;
  grpc::CallbackServerContext* ctx_;
  v1::SegmentRequest request_;
  v1::SegmentResponse response_;
  Clock::time_point arrival_;
  std::string session_id_;                           // set by the first message
  AttentionServiceImpl::CallInfo info_;              // the stream's stack and session, once known
  c10::ScalarType stack_dtype_ = at::kFloat;         // that stack's dtype, once known
  // The segment in flight (one at a time): its timings and how to encode its output.
  StageTimings timings_;
  bool unbatched_ = false;
  v1::DType wire_dtype_ = v1::FLOAT32;
  int64_t tokens_ = 0;
  std::shared_ptr<SessionStore::Session> binding_;  // while attached
};

grpc::ServerBidiReactor<v1::SegmentRequest, v1::SegmentResponse>* AttentionServiceImpl::StreamSegments(
    grpc::CallbackServerContext* ctx) {
  return new SegmentStreamReactor(this, ctx);
}

}  // namespace hvlm
