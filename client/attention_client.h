// AttentionClient: the unary RPCs of hvlm.v1.AttentionService with a deadline on each call and
// failures thrown as RpcError, plus the start of a SegmentStream; and the channel they use.
// Thread-safe: the stub may be shared by any number of threads (load tests do). The channel
// lives as long as any client holding it.
#pragma once

#include "client/segment_stream.h"
#include "hvlm/v1/attention_service.grpc.pb.h"

#include <grpcpp/channel.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace hvlm::client {

// Where and how to reach the server.
struct ConnectionOptions {
  /// host:port of the server.
  std::string server = "127.0.0.1:50051";
  /// Deadline of each unary RPC in seconds; a StreamSegments call gets this per segment.
  double timeout_seconds = 30;
  /// Largest message the channel accepts from the server, in bytes.
  int max_message_bytes = 64 << 20;
};

// An insecure channel to `options.server` whose receive limit is options.max_message_bytes
// (sends are unlimited; the server enforces its own limit). With `own_connection` the channel
// gets a TCP connection of its own instead of sharing one with the process's other channels to
// the same address, which is gRPC's default.
std::shared_ptr<grpc::Channel> make_channel(const ConnectionOptions& options,
                                            bool own_connection = false);

class AttentionClient {
 public:
  AttentionClient(const std::shared_ptr<grpc::ChannelInterface>& channel,
                  double timeout_seconds);

  // ListStacks: every hosted stack, sorted by name.
  std::vector<hvlm::v1::StackInfo> list_stacks() const;

  // The hosted stack called `name`; a std::runtime_error naming the hosted stacks when
  // there is none.
  hvlm::v1::StackInfo find_stack(const std::string& name) const;

  // OpenSession on `stack`; an empty `session_id` lets the server issue one.
  hvlm::v1::SessionInfo open_session(const std::string& stack,
                                     const std::string& session_id) const;

  // CloseSession.
  void close_session(const std::string& session_id) const;

  // Starts StreamSegments for a session whose next segment is `first_sequence`; the call's
  // deadline is `segments` timeouts plus `extra_seconds` from now.
  std::unique_ptr<SegmentStream> stream_segments(const std::string& session_id,
                                                 uint64_t first_sequence, int64_t segments,
                                                 double extra_seconds = 0) const;

  double timeout_seconds() const { return timeout_seconds_; }

  /// now + seconds, saturating far in the future.
  static std::chrono::system_clock::time_point deadline_after(double seconds);

 private:

  std::unique_ptr<hvlm::v1::AttentionService::Stub> stub_;
  double timeout_seconds_;
};

}  // namespace hvlm::client
