// ServiceError: the one exception type the server's layers below the gRPC edge throw for a
// request that cannot be served. It carries a transport-neutral code; the service edge
// (attention_service.cpp) converts it to a grpc::Status exactly once. Messages name the
// problem and are bounded in length. Value type; thread-compatible.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace hvlm {

enum class ErrorCode {
  kInvalidArgument,
  kNotFound,
  kAlreadyExists,
  kFailedPrecondition,
  kAborted,
  kResourceExhausted,
  kDeadlineExceeded,
  kCancelled,
  kUnavailable,
  kInternal,
};

// The most characters of a message that reach a client.
constexpr size_t kMaxErrorMessageChars = 1024;

class ServiceError : public std::runtime_error {
 public:
  ServiceError(ErrorCode code, const std::string& message)
      : std::runtime_error(message.size() <= kMaxErrorMessageChars
                               ? message
                               : message.substr(0, kMaxErrorMessageChars - 3) + "..."),
        code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

// Streams its arguments into a message: fail(ErrorCode::kNotFound, "no stack '", name, "'").
template <typename... Args>
[[noreturn]] void fail(ErrorCode code, Args&&... args) {
  std::ostringstream message;
  (message << ... << std::forward<Args>(args));
  throw ServiceError(code, message.str());
}

}  // namespace hvlm
