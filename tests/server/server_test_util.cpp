#include "tests/server/server_test_util.h"

#include "server/log.h"
#include "server/tensor_codec.h"

#include <c10/core/InferenceMode.h>
#include <torch/utils.h>

#include <cmath>

namespace hvlm::testing {

StackSpec all_blocks_spec() {
  return StackSpec::parse(R"({"dim": 32, "blocks": [
    {"type": "local_global", "num_heads": 4, "local_window": 4, "num_global_tokens": 2},
    {"type": "cross_memory", "num_heads": 4},
    {"type": "mamba", "state_size": 8},
    {"type": "strided", "num_heads": 4, "stride": 3},
    {"type": "performer", "num_heads": 4, "num_random_features": 16}]})");
}

StackSpec mamba_only_spec() {
  return StackSpec::parse(R"({"dim": 32, "blocks": [
    {"type": "mamba", "state_size": 8}, {"type": "mamba", "state_size": 4, "d_conv": 3}]})");
}

ServerConfig test_config(const std::map<std::string, StackSpec>& stacks, MemoryPolicy policy) {
  ServerConfig config;
  config.listen = "127.0.0.1:0";
  config.metrics.listen = "127.0.0.1:0";
  config.workers = 2;
  config.intra_op_threads = 1;
  config.log_level = "error";
  uint64_t seed = 0;
  for (const auto& [name, spec] : stacks) {
    StackConfig sc;
    sc.name = name;
    sc.spec = spec;
    sc.seed = seed++;
    for (size_t i = 0; i < spec.blocks.size(); ++i) {
      if (spec.blocks[i].type == "cross_memory") {
        sc.memory[i] = MemoryBankOptions{policy, policy == MemoryPolicy::kFifo ? 12 : 10, 4};
      }
    }
    config.stacks.push_back(sc);
  }
  return config;
}

TestServer::TestServer(const ServerConfig& config) {
  log::configure(config.log_level, "text");
  server = Server::start(config);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  channel = grpc::CreateCustomChannel(server->address(), grpc::InsecureChannelCredentials(), args);
  stub = v1::AttentionService::NewStub(channel);
}

TestServer::~TestServer() { server->shutdown(5); }

v1::Tensor to_wire(const at::Tensor& t, v1::DType dtype) {
  v1::Tensor out;
  if (t.dim() == 2) {
    encode_tokens(t.unsqueeze(0), true, dtype, &out);
  } else {
    encode_tokens(t, false, dtype, &out);
  }
  return out;
}

at::Tensor from_wire(const v1::Tensor& t) {
  DecodedTokens d = decode_tokens(t, "tensor", int64_t{1} << 40, true);
  at::Tensor x = d.tokens.to(at::kFloat);
  return d.unbatched ? x.squeeze(0) : x;
}

AttentionStack reference_stack(const StackConfig& config) {
  torch::manual_seed(config.seed);
  AttentionStack stack(config.spec);
  stack->eval();
  return stack;
}

ReferenceSession::ReferenceSession(AttentionStack s, std::map<size_t, MemoryBankOptions> m)
    : stack(std::move(s)), memory(std::move(m)) {}

at::Tensor ReferenceSession::step(const at::Tensor& x) {
  c10::InferenceMode guard;
  const size_t n = stack->num_blocks();
  std::vector<at::Tensor> memories(n);
  for (const auto& [i, options] : memory) {
    if (!banks.count(i)) banks[i] = empty_memory_bank(x.size(0), x.size(2), x.options());
    memories[i] = banks[i].tokens;
  }
  StackOutput out = stack->forward(x, memories, states);
  for (auto& [i, bank] : banks) bank = update_memory_bank(bank, out.memory_inputs[i], memory.at(i));
  states = out.states;
  return out.y;
}

std::string open_session(v1::AttentionService::Stub& stub, const std::string& stack, const std::string& id) {
  grpc::ClientContext ctx;
  v1::OpenSessionRequest req;
  req.set_stack(stack);
  req.set_session_id(id);
  v1::OpenSessionResponse resp;
  const grpc::Status status = stub.OpenSession(&ctx, req, &resp);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return resp.session().session_id();
}

grpc::Status stream_segments(v1::AttentionService::Stub& stub, const std::string& session,
                             const std::vector<at::Tensor>& segments, uint64_t first_sequence,
                             std::vector<at::Tensor>* outputs) {
  grpc::ClientContext ctx;
  auto stream = stub.StreamSegments(&ctx);
  for (size_t i = 0; i < segments.size(); ++i) {
    v1::SegmentRequest req;
    req.set_session_id(session);
    req.set_sequence(first_sequence + i);
    *req.mutable_features() = to_wire(segments[i]);
    if (!stream->Write(req)) break;
    v1::SegmentResponse resp;
    if (!stream->Read(&resp)) break;
    EXPECT_EQ(resp.sequence(), first_sequence + i);
    if (outputs) outputs->push_back(from_wire(resp.output()));
  }
  stream->WritesDone();
  return stream->Finish();
}

double rel_error(const at::Tensor& got, const at::Tensor& want) {
  EXPECT_EQ(got.sizes(), want.sizes());
  if (got.sizes() != want.sizes()) return INFINITY;
  const double scale = want.abs().max().item<double>();
  return (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>() / (scale > 0 ? scale : 1);
}

}  // namespace hvlm::testing
