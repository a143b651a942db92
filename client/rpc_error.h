// RpcError: a failed gRPC call as the client reports it, "<RPC>: <STATUS_CODE_NAME>:
// <message>" (e.g. "StreamSegments: INVALID_ARGUMENT: features must be [T, 768]").
// Also the failure of a call whose status was OK but whose answer broke the API's contract
// (a missing or misshapen response); those carry an explanatory message and code UNKNOWN.
// Value type; thread-compatible.
#pragma once

#include <grpcpp/support/status.h>

#include <stdexcept>
#include <string>

namespace hvlm::client {

// The canonical name of a status code: "OK", "INVALID_ARGUMENT", ...; "CODE_<n>" when unknown.
std::string status_code_name(grpc::StatusCode code);

class RpcError : public std::runtime_error {
 public:
  // `rpc` is the method name ("OpenSession"); `status` must not be OK.
  RpcError(const std::string& rpc, const grpc::Status& status);

  const std::string& rpc() const { return rpc_; }
  grpc::StatusCode code() const { return code_; }

 private:
  std::string rpc_;
  grpc::StatusCode code_;
};

}  // namespace hvlm::client
