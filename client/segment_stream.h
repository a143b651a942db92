// SegmentStream: one StreamSegments call of one session on the synchronous gRPC API, used
// lock-step: send a segment, wait for its response, send the next. Sequence numbers count up
// from the session's segments_seen. Every response is checked against its request (same
// sequence, shape and dtype) before the caller sees it.
// Not thread-safe: one thread drives a stream. The stub must outlive the stream. Destroying a
// stream that was not finished cancels the call.
#pragma once

#include "hvlm/v1/attention_service.grpc.pb.h"

#include <grpcpp/client_context.h>
#include <grpcpp/support/sync_stream.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace hvlm::client {

class SegmentStream {
 public:
  // Starts the call; its deadline covers the whole stream.
  SegmentStream(hvlm::v1::AttentionService::StubInterface& stub, std::string session_id,
                uint64_t first_sequence, std::chrono::system_clock::time_point deadline);
  ~SegmentStream();
  SegmentStream(const SegmentStream&) = delete;
  SegmentStream& operator=(const SegmentStream&) = delete;

  // One segment's response and the client-side round trip (write to response read).
  struct Exchange {
    hvlm::v1::SegmentResponse response;
    double round_trip_ms = 0;
    // The server's stages of this segment as its response reports them (queue, decode,
    // compute, memory update, encode), summed: its time from receiving the request to
    // answering, less its bookkeeping. round_trip_ms - server_ms is the rest: gRPC both ways,
    // this client, and that bookkeeping (metrics and logs, microseconds).
    double server_ms = 0;
  };

  // Sends `features` as the next segment and waits for its response. Throws RpcError
  // ("StreamSegments: ...") when the call fails, and, with code UNKNOWN, when the server ends
  // the stream without answering or answers with another sequence, shape or dtype; the call
  // is over after any throw.
  Exchange exchange(const hvlm::v1::Tensor& features);

  // Half-closes the stream and waits for the server's final status; throws RpcError unless OK.
  void finish();

  // The sequence number the next segment will carry.
  uint64_t next_sequence() const { return next_sequence_; }

 private:
  // Collects the final status after a failed read or write and throws it.
  [[noreturn]] void fail_from_status(const std::string& if_ok_message);
  // Cancels the call and throws an UNKNOWN RpcError with `message`.
  [[noreturn]] void fail_contract(const std::string& message);

  // Declared before stream_, which must be destroyed first.
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriterInterface<hvlm::v1::SegmentRequest,
                                                    hvlm::v1::SegmentResponse>>
      stream_;
  std::string session_id_;
  uint64_t next_sequence_;
  // True once Finish has been called; the call is then over.
  bool finished_ = false;
};

}  // namespace hvlm::client
