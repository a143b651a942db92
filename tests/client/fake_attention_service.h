// FakeAttentionService: an in-process stand-in for the hvlm server, for the client's tests.
// It hosts one stack ("echo", dim kFakeDim, one cross_memory block), keeps sessions in a map,
// and answers every segment with 2 * features in the request's dtype, checking sequence
// numbers like the real service. Knobs make it fail a given segment or answer with a wrong
// shape. FakeServer runs it on 127.0.0.1 on a free port.
// Thread-safe (the sync server calls it from many threads); counters guarded by mu_.
#pragma once

#include "hvlm/v1/attention_service.grpc.pb.h"

#include <grpcpp/server.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace hvlm::client::testing {

constexpr int64_t kFakeDim = 8;

class FakeAttentionService final : public hvlm::v1::AttentionService::Service {
 public:
  struct Options {
    /// The sequence number answered with INVALID_ARGUMENT; -1 for none.
    int64_t fail_at_sequence = -1;
    /// The sequence number answered with an output of the wrong shape; -1 for none.
    int64_t bad_shape_at_sequence = -1;
    /// compute_micros reported for every segment.
    int64_t compute_micros = 1500;
    /// The dtype ListStacks reports for the stack.
    std::string stack_dtype = "float32";
  };

  FakeAttentionService() = default;
  explicit FakeAttentionService(Options options) : options_(options) {}

  grpc::Status ListStacks(grpc::ServerContext* context, const hvlm::v1::ListStacksRequest* request,
                          hvlm::v1::ListStacksResponse* response) override;
  grpc::Status OpenSession(grpc::ServerContext* context,
                           const hvlm::v1::OpenSessionRequest* request,
                           hvlm::v1::OpenSessionResponse* response) override;
  grpc::Status CloseSession(grpc::ServerContext* context,
                            const hvlm::v1::CloseSessionRequest* request,
                            hvlm::v1::CloseSessionResponse* response) override;
  grpc::Status StreamSegments(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<hvlm::v1::SegmentResponse, hvlm::v1::SegmentRequest>* stream)
      override;

  // Ids passed to OpenSession (empty for server-issued), in call order.
  std::vector<std::string> requested_ids() const;
  int64_t sessions_opened() const;
  int64_t sessions_closed() const;
  int64_t segments_served() const;
  // Segments served by the wire dtype of their features.
  std::map<hvlm::v1::DType, int64_t> served_by_dtype() const;
  // Sessions open now.
  int64_t sessions_open() const;

 private:
  const Options options_;
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> segments_seen_;  // guarded by mu_, by session id
  std::vector<std::string> requested_ids_;         // guarded by mu_
  int64_t next_id_ = 0;                            // guarded by mu_
  int64_t opened_ = 0, closed_ = 0, served_ = 0;   // guarded by mu_
  std::map<hvlm::v1::DType, int64_t> served_by_dtype_;  // guarded by mu_
};

// A FakeAttentionService serving on 127.0.0.1:<free port> until destroyed.
class FakeServer {
 public:
  explicit FakeServer(FakeAttentionService::Options options = {});
  ~FakeServer();

  // "127.0.0.1:<port>".
  const std::string& address() const { return address_; }
  FakeAttentionService& service() { return service_; }

 private:
  FakeAttentionService service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

}  // namespace hvlm::client::testing
