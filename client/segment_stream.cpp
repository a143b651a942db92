#include "client/segment_stream.h"

#include "client/rpc_error.h"
#include "client/tensor_codec.h"

#include <utility>
#include <vector>

namespace hvlm::client {
namespace {

constexpr char kRpc[] = "StreamSegments";

double milliseconds_between(std::chrono::steady_clock::time_point start,
                            std::chrono::steady_clock::time_point end) {
  return std::chrono::duration<double, std::milli>(end - start).count();
}

}  // namespace

SegmentStream::SegmentStream(hvlm::v1::AttentionService::StubInterface& stub,
                             std::string session_id, uint64_t first_sequence,
                             std::chrono::system_clock::time_point deadline)
    : session_id_(std::move(session_id)), next_sequence_(first_sequence) {
  context_.set_deadline(deadline);
  stream_ = stub.StreamSegments(&context_);
}

SegmentStream::~SegmentStream() {
  if (!finished_) {
    context_.TryCancel();
    stream_->Finish();
  }
}

void SegmentStream::fail_from_status(const std::string& if_ok_message) {
  finished_ = true;
  const grpc::Status status = stream_->Finish();
  if (!status.ok()) throw RpcError(kRpc, status);
  throw RpcError(kRpc, grpc::Status(grpc::StatusCode::UNKNOWN, if_ok_message));
}

void SegmentStream::fail_contract(const std::string& message) {
  context_.TryCancel();
  finished_ = true;
  stream_->Finish();
  throw RpcError(kRpc, grpc::Status(grpc::StatusCode::UNKNOWN, message));
}

SegmentStream::Exchange SegmentStream::exchange(const hvlm::v1::Tensor& features) {
  if (finished_) {
    throw RpcError(kRpc, grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                      "the stream is already finished"));
  }
  hvlm::v1::SegmentRequest request;
  request.set_session_id(session_id_);
  request.set_sequence(next_sequence_);
  const std::string segment = "segment " + std::to_string(next_sequence_);

  Exchange result;
  const auto start = std::chrono::steady_clock::now();
  // The request borrows the caller's features for the write, which serializes them, instead of
  // copying them into itself (~100 KB a segment); the guard hands them back however the write
  // ends, so the request never frees them.
  bool written = false;
  {
    struct Borrow {
      hvlm::v1::SegmentRequest& request;
      ~Borrow() { request.unsafe_arena_release_features(); }
    } borrow{request};
    request.unsafe_arena_set_allocated_features(const_cast<hvlm::v1::Tensor*>(&features));
    written = stream_->Write(request);
  }
  if (!written) {
    fail_from_status("the stream broke while sending " + segment);
  }
  if (!stream_->Read(&result.response)) {
    fail_from_status("the server ended the stream without answering " + segment);
  }
  result.round_trip_ms = milliseconds_between(start, std::chrono::steady_clock::now());
  const hvlm::v1::StageTimings& t = result.response.timings();
  result.server_ms = static_cast<double>(t.queue_micros() + t.decode_micros() + t.compute_micros() +
                                         t.memory_update_micros() + t.encode_micros()) /
                     1e3;

  const hvlm::v1::Tensor& output = result.response.output();
  if (result.response.sequence() != next_sequence_) {
    fail_contract("the response to " + segment + " carries sequence " +
                  std::to_string(result.response.sequence()));
  }
  const std::vector<int64_t> sent(features.shape().begin(), features.shape().end());
  const std::vector<int64_t> got(output.shape().begin(), output.shape().end());
  if (got != sent || output.dtype() != features.dtype()) {
    fail_contract("the output of " + segment + " is " + dtype_name(output.dtype()) + " " +
                  shape_string(got) + ", expected " + dtype_name(features.dtype()) + " " +
                  shape_string(sent));
  }
  ++next_sequence_;
  return result;
}

void SegmentStream::finish() {
  if (finished_) return;
  stream_->WritesDone();
  finished_ = true;
  const grpc::Status status = stream_->Finish();
  if (!status.ok()) throw RpcError(kRpc, status);
}

}  // namespace hvlm::client
