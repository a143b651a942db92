#include "tests/client/fake_attention_service.h"

#include "client/tensor_codec.h"

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <stdexcept>

namespace hvlm::client::testing {

grpc::Status FakeAttentionService::ListStacks(grpc::ServerContext*,
                                              const hvlm::v1::ListStacksRequest*,
                                              hvlm::v1::ListStacksResponse* response) {
  hvlm::v1::StackInfo* stack = response->add_stacks();
  stack->set_name("echo");
  stack->set_dim(kFakeDim);
  stack->set_dtype(options_.stack_dtype);
  stack->set_device("cpu");
  stack->set_weights_source("random init (seed 0)");
  stack->set_fingerprint("f00d");
  hvlm::v1::BlockInfo* local = stack->add_blocks();
  local->set_index(0);
  local->set_type("local_global");
  local->set_options_json("{\"local_window\": 4}");
  hvlm::v1::BlockInfo* memory = stack->add_blocks();
  memory->set_index(1);
  memory->set_type("cross_memory");
  memory->set_options_json("{\"num_heads\": 2}");
  memory->mutable_memory()->set_policy(hvlm::v1::FIFO);
  memory->mutable_memory()->set_capacity(16);
  memory->mutable_memory()->set_tokens_per_segment(4);
  return grpc::Status::OK;
}

grpc::Status FakeAttentionService::OpenSession(grpc::ServerContext*,
                                               const hvlm::v1::OpenSessionRequest* request,
                                               hvlm::v1::OpenSessionResponse* response) {
  if (request->stack() != "echo") {
    return {grpc::StatusCode::NOT_FOUND, "no stack '" + request->stack() + "'"};
  }
  std::lock_guard<std::mutex> lock(mu_);
  requested_ids_.push_back(request->session_id());
  const std::string id = request->session_id().empty()
                             ? "fake-" + std::to_string(next_id_++)
                             : request->session_id();
  if (!segments_seen_.emplace(id, 0).second) {
    return {grpc::StatusCode::ALREADY_EXISTS, "session '" + id + "' exists"};
  }
  ++opened_;
  response->mutable_session()->set_session_id(id);
  response->mutable_session()->set_stack("echo");
  return grpc::Status::OK;
}

grpc::Status FakeAttentionService::CloseSession(grpc::ServerContext*,
                                                const hvlm::v1::CloseSessionRequest* request,
                                                hvlm::v1::CloseSessionResponse*) {
  std::lock_guard<std::mutex> lock(mu_);
  if (segments_seen_.erase(request->session_id()) == 0) {
    return {grpc::StatusCode::NOT_FOUND, "no session '" + request->session_id() + "'"};
  }
  ++closed_;
  return grpc::Status::OK;
}

grpc::Status FakeAttentionService::StreamSegments(
    grpc::ServerContext*,
    grpc::ServerReaderWriter<hvlm::v1::SegmentResponse, hvlm::v1::SegmentRequest>* stream) {
  hvlm::v1::SegmentRequest request;
  std::string session_id;
  while (stream->Read(&request)) {
    if (session_id.empty()) session_id = request.session_id();
    if (!request.session_id().empty() && request.session_id() != session_id) {
      return {grpc::StatusCode::INVALID_ARGUMENT, "a stream serves one session"};
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto it = segments_seen_.find(session_id);
      if (it == segments_seen_.end()) {
        return {grpc::StatusCode::NOT_FOUND, "no session '" + session_id + "'"};
      }
      if (request.sequence() != it->second) {
        return {grpc::StatusCode::FAILED_PRECONDITION,
                "sequence " + std::to_string(request.sequence()) + ", expected " +
                    std::to_string(it->second)};
      }
    }
    if (static_cast<int64_t>(request.sequence()) == options_.fail_at_sequence) {
      return {grpc::StatusCode::INVALID_ARGUMENT, "features rejected at segment " +
                                                      std::to_string(request.sequence())};
    }
    DecodedTensor features;
    try {
      features = decode_tensor(request.features());
    } catch (const std::exception& e) {
      return {grpc::StatusCode::INVALID_ARGUMENT, e.what()};
    }
    if (features.shape.back() != kFakeDim) {
      return {grpc::StatusCode::INVALID_ARGUMENT, "features must be [T, 8]"};
    }
    for (float& value : features.values) value *= 2;
    std::vector<int64_t> shape = features.shape;
    if (static_cast<int64_t>(request.sequence()) == options_.bad_shape_at_sequence) {
      shape.back() = 1;
      features.values.resize(features.values.size() / kFakeDim);
    }

    hvlm::v1::SegmentResponse response;
    response.set_session_id(session_id);
    response.set_sequence(request.sequence());
    encode_tensor(features.values.data(), shape, features.dtype, response.mutable_output());
    response.mutable_timings()->set_compute_micros(options_.compute_micros);
    response.mutable_timings()->set_queue_micros(10);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++segments_seen_[session_id];
      ++served_;
      ++served_by_dtype_[features.dtype];
    }
    if (!stream->Write(response)) break;
  }
  return grpc::Status::OK;
}

std::map<hvlm::v1::DType, int64_t> FakeAttentionService::served_by_dtype() const {
  std::lock_guard<std::mutex> lock(mu_);
  return served_by_dtype_;
}

std::vector<std::string> FakeAttentionService::requested_ids() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requested_ids_;
}

int64_t FakeAttentionService::sessions_opened() const {
  std::lock_guard<std::mutex> lock(mu_);
  return opened_;
}

int64_t FakeAttentionService::sessions_closed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

int64_t FakeAttentionService::segments_served() const {
  std::lock_guard<std::mutex> lock(mu_);
  return served_;
}

int64_t FakeAttentionService::sessions_open() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(segments_seen_.size());
}

FakeServer::FakeServer(FakeAttentionService::Options options) : service_(options) {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service_);
  server_ = builder.BuildAndStart();
  if (!server_ || port == 0) throw std::runtime_error("cannot start the fake server");
  address_ = "127.0.0.1:" + std::to_string(port);
}

FakeServer::~FakeServer() { server_->Shutdown(); }

}  // namespace hvlm::client::testing
