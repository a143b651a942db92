// Helpers for the server's test suites: small stacks, an in-process hvlm-server on a loopback
// port with a real gRPC channel to it, tensor conversion, and a reference that runs a session's
// segments through the attention library directly (the "by hand" oracle for outputs, memory
// banks and mamba states).
#pragma once

#include "attention/attention_stack.h"
#include "hvlm/v1/attention_service.grpc.pb.h"
#include "server/config.h"
#include "server/server.h"

#include <ATen/ATen.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace hvlm::testing {

// dim 32, every block type; the cross_memory block is block 1, the mamba block is block 2.
StackSpec all_blocks_spec();
// dim 32, two mamba blocks.
StackSpec mamba_only_spec();

// A config serving `stacks` (name -> spec, seed = position) with fifo banks (capacity 12,
// 4 tokens per segment) unless `policy` says merge; listens on 127.0.0.1:0.
ServerConfig test_config(const std::map<std::string, StackSpec>& stacks,
                         MemoryPolicy policy = MemoryPolicy::kFifo);

// An in-process server plus a stub on a real loopback channel.
struct TestServer {
  explicit TestServer(const ServerConfig& config);
  ~TestServer();
  std::unique_ptr<Server> server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::AttentionService::Stub> stub;
};

// Largest absolute difference over want's largest magnitude (a shape mismatch fails the test
// and gives infinity).
double rel_error(const at::Tensor& got, const at::Tensor& want);

// float32 [.., T, D] <-> wire tensors.
v1::Tensor to_wire(const at::Tensor& t, v1::DType dtype = v1::FLOAT32);
at::Tensor from_wire(const v1::Tensor& t);

// The library stack a config's stack builds (same seed, same init).
AttentionStack reference_stack(const StackConfig& config);

// Runs segments through `stack` the way a session does, by hand.
struct ReferenceSession {
  ReferenceSession(AttentionStack stack, std::map<size_t, MemoryBankOptions> memory);
  at::Tensor step(const at::Tensor& x);  // [B, T, D]
  AttentionStack stack;
  std::map<size_t, MemoryBankOptions> memory;
  std::map<size_t, MemoryBank> banks;
  std::vector<MambaState> states;
};

// OpenSession; fails the test on error.
std::string open_session(v1::AttentionService::Stub& stub, const std::string& stack,
                         const std::string& id = "");

// Runs segments over one StreamSegments call; returns their outputs, or the final status.
grpc::Status stream_segments(v1::AttentionService::Stub& stub, const std::string& session,
                             const std::vector<at::Tensor>& segments, uint64_t first_sequence,
                             std::vector<at::Tensor>* outputs);

}  // namespace hvlm::testing
