#include "client/attention_client.h"

#include "client/rpc_error.h"

#include <grpc/grpc.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <algorithm>
#include <stdexcept>

namespace hvlm::client {

std::shared_ptr<grpc::Channel> make_channel(const ConnectionOptions& options,
                                            bool own_connection) {
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(options.max_message_bytes);
  arguments.SetMaxSendMessageSize(-1);
  if (own_connection) arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(options.server, grpc::InsecureChannelCredentials(), arguments);
}

AttentionClient::AttentionClient(const std::shared_ptr<grpc::ChannelInterface>& channel,
                                 double timeout_seconds)
    : stub_(hvlm::v1::AttentionService::NewStub(channel)), timeout_seconds_(timeout_seconds) {}

std::chrono::system_clock::time_point AttentionClient::deadline_after(double seconds) {
  // Ten years is "no deadline" for every purpose here and stays far from overflow.
  constexpr double kMaxSeconds = 10.0 * 365 * 24 * 3600;
  const auto span = std::chrono::duration<double>(std::clamp(seconds, 0.0, kMaxSeconds));
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(span);
}

std::vector<hvlm::v1::StackInfo> AttentionClient::list_stacks() const {
  grpc::ClientContext context;
  context.set_deadline(deadline_after(timeout_seconds_));
  hvlm::v1::ListStacksResponse response;
  const grpc::Status status = stub_->ListStacks(&context, {}, &response);
  if (!status.ok()) throw RpcError("ListStacks", status);
  return {response.stacks().begin(), response.stacks().end()};
}

hvlm::v1::StackInfo AttentionClient::find_stack(const std::string& name) const {
  const std::vector<hvlm::v1::StackInfo> stacks = list_stacks();
  std::string names;
  for (const hvlm::v1::StackInfo& stack : stacks) {
    if (stack.name() == name) return stack;
    names += (names.empty() ? "" : ", ") + stack.name();
  }
  throw std::runtime_error("the server hosts no stack '" + name + "' (it hosts: " +
                           (names.empty() ? "none" : names) + ")");
}

hvlm::v1::SessionInfo AttentionClient::open_session(const std::string& stack,
                                                    const std::string& session_id) const {
  grpc::ClientContext context;
  context.set_deadline(deadline_after(timeout_seconds_));
  hvlm::v1::OpenSessionRequest request;
  request.set_stack(stack);
  request.set_session_id(session_id);
  hvlm::v1::OpenSessionResponse response;
  const grpc::Status status = stub_->OpenSession(&context, request, &response);
  if (!status.ok()) throw RpcError("OpenSession", status);
  if (response.session().session_id().empty()) {
    throw RpcError("OpenSession", grpc::Status(grpc::StatusCode::UNKNOWN,
                                               "the response carries no session id"));
  }
  return response.session();
}

void AttentionClient::close_session(const std::string& session_id) const {
  grpc::ClientContext context;
  context.set_deadline(deadline_after(timeout_seconds_));
  hvlm::v1::CloseSessionRequest request;
  request.set_session_id(session_id);
  hvlm::v1::CloseSessionResponse response;
  const grpc::Status status = stub_->CloseSession(&context, request, &response);
  if (!status.ok()) throw RpcError("CloseSession", status);
}

std::unique_ptr<SegmentStream> AttentionClient::stream_segments(const std::string& session_id,
                                                                uint64_t first_sequence,
                                                                int64_t segments,
                                                                double extra_seconds) const {
  const double seconds = timeout_seconds_ * static_cast<double>(std::max<int64_t>(segments, 1)) +
                         extra_seconds;
  return std::make_unique<SegmentStream>(*stub_, session_id, first_sequence,
                                         deadline_after(seconds));
}

}  // namespace hvlm::client
