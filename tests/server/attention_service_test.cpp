// AttentionService over a real loopback channel to an in-process server: results against the
// attention library, session behaviour, export/import, concurrency, and the error table of
// docs/api.md (each case: its status code, and the session left unchanged).
#include "server/session_state.h"
#include "tests/server/server_test_util.h"

#include "attention/safetensors.h"

#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <atomic>
#include <thread>

namespace hvlm::testing {
namespace {

class AttentionServiceTest : public ::testing::Test {
 protected:
  AttentionServiceTest()
      : config_(test_config({{"all", all_blocks_spec()}, {"mamba", mamba_only_spec()}})), ts_(config_) {}

  const StackConfig& stack_config(const std::string& name) {
    for (const auto& s : config_.stacks) {
      if (s.name == name) return s;
    }
    throw std::runtime_error("no stack " + name);
  }

  grpc::Status forward(const v1::ForwardRequest& req, v1::ForwardResponse* resp) {
    grpc::ClientContext ctx;
    return ts_.stub->Forward(&ctx, req, resp);
  }

  v1::SessionInfo get(const std::string& id) {
    grpc::ClientContext ctx;
    v1::GetSessionRequest req;
    req.set_session_id(id);
    v1::GetSessionResponse resp;
    EXPECT_TRUE(ts_.stub->GetSession(&ctx, req, &resp).ok());
    return resp.session();
  }

  std::string export_state(const std::string& id, grpc::Status* status = nullptr) {
    grpc::ClientContext ctx;
    v1::ExportSessionRequest req;
    req.set_session_id(id);
    v1::ExportSessionResponse resp;
    const grpc::Status s = ts_.stub->ExportSession(&ctx, req, &resp);
    if (status) *status = s;
    else EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.state();
  }

  // Expects `status` to carry `code`, and the session to be exactly as before.
  void expect_unchanged(const std::string& id, const std::string& before) {
    EXPECT_TRUE(export_state(id) == before) << "session " << id << " changed";
  }

  ServerConfig config_;
  TestServer ts_;
};

TEST_F(AttentionServiceTest, ListStacksDescribesBlocksMemoryAndWeights) {
  grpc::ClientContext ctx;
  v1::ListStacksResponse resp;
  ASSERT_TRUE(ts_.stub->ListStacks(&ctx, v1::ListStacksRequest(), &resp).ok());
  ASSERT_EQ(resp.stacks_size(), 2);
  const auto& all = resp.stacks(0);
  EXPECT_EQ(all.name(), "all");
  EXPECT_EQ(all.dim(), 32);
  EXPECT_FALSE(all.weights_loaded());
  EXPECT_EQ(all.weights_source(), "random init (seed 0)");
  EXPECT_EQ(all.dtype(), "float32");
  EXPECT_EQ(all.device(), "cpu");
  EXPECT_EQ(all.fingerprint().size(), 16u);
  ASSERT_EQ(all.blocks_size(), 5);
  EXPECT_EQ(all.blocks(3).type(), "strided");
  EXPECT_NE(all.blocks(3).options_json().find("\"stride\":3"), std::string::npos);
  EXPECT_FALSE(all.blocks(0).has_memory());
  ASSERT_TRUE(all.blocks(1).has_memory());
  EXPECT_EQ(all.blocks(1).memory().policy(), v1::FIFO);
  EXPECT_EQ(all.blocks(1).memory().capacity(), 12);
  EXPECT_EQ(all.blocks(1).memory().tokens_per_segment(), 4);
  EXPECT_EQ(resp.stacks(1).name(), "mamba");
}

TEST_F(AttentionServiceTest, StatelessForwardEqualsLibraryForward) {
  AttentionStack ref = reference_stack(stack_config("all"));
  const at::Tensor x = at::randn({2, 20, 32});
  const at::Tensor memory = at::randn({1, 7, 32});
  v1::ForwardRequest req;
  req.set_stack("all");
  *req.mutable_features() = to_wire(x);
  auto* m = req.add_memories();
  m->set_block_index(1);
  *m->mutable_tokens() = to_wire(memory);
  v1::ForwardResponse resp;
  ASSERT_TRUE(forward(req, &resp).ok());
  std::vector<at::Tensor> memories(5);
  memories[1] = memory;
  const at::Tensor want = ref->forward(x, memories).y;
  EXPECT_LE(rel_error(from_wire(resp.output()), want), 1e-5);
  EXPECT_GT(resp.timings().compute_micros(), 0);

  // [T, D] in, [T, D] out; float16 on the wire comes back as float16.
  v1::ForwardRequest unbatched;
  unbatched.set_stack("all");
  *unbatched.mutable_features() = to_wire(x[0], v1::FLOAT16);
  ASSERT_TRUE(forward(unbatched, &resp).ok());
  EXPECT_EQ(resp.output().dtype(), v1::FLOAT16);
  ASSERT_EQ(resp.output().shape_size(), 2);
  EXPECT_LE(rel_error(from_wire(resp.output()), ref->forward(x[0].unsqueeze(0).to(at::kHalf).to(at::kFloat)).y[0]),
            2e-3);
}

TEST_F(AttentionServiceTest, StreamedSegmentsEqualLibraryWithSessionStateAndBanksFollowPolicy) {
  const StackConfig& sc = stack_config("all");
  ReferenceSession ref(reference_stack(sc), sc.memory);
  const std::string id = open_session(*ts_.stub, "all");
  std::vector<at::Tensor> segments;
  for (int64_t t : {9, 16, 5, 12}) segments.push_back(at::randn({1, t, 32}));
  std::vector<at::Tensor> outputs;
  ASSERT_TRUE(stream_segments(*ts_.stub, id, segments, 0, &outputs).ok());
  ASSERT_EQ(outputs.size(), segments.size());
  for (size_t i = 0; i < segments.size(); ++i) {
    EXPECT_LE(rel_error(outputs[i], ref.step(segments[i])), 1e-5) << "segment " << i;
  }
  // Banks and states after 4 segments equal the policy applied by hand.
  const v1::SessionInfo info = get(id);
  EXPECT_EQ(info.segments_seen(), 4u);
  ASSERT_EQ(info.memory_banks_size(), 1);
  EXPECT_EQ(info.memory_banks(0).length(), 12);  // 4 + 4 + 4 + 4 pooled tokens, capacity 12
  const std::string bytes = export_state(id);
  const auto contents = parse_safetensors(bytes.data(), bytes.size(), "export");
  EXPECT_LE(rel_error(contents.tensors.at("banks.1.tokens"), ref.banks.at(1).tokens), 1e-5);
  EXPECT_TRUE(at::equal(contents.tensors.at("banks.1.counts"), ref.banks.at(1).counts));
  EXPECT_LE(rel_error(contents.tensors.at("states.2.ssm_state"), ref.states[2].ssm_state), 1e-5);
  EXPECT_LE(rel_error(contents.tensors.at("states.2.conv_state"), ref.states[2].conv_state), 1e-5);

  // A unary Forward with the session continues the same video.
  const at::Tensor next = at::randn({1, 6, 32});
  v1::ForwardRequest req;
  req.set_session_id(id);
  req.set_sequence(4);
  *req.mutable_features() = to_wire(next);
  v1::ForwardResponse resp;
  ASSERT_TRUE(forward(req, &resp).ok());
  EXPECT_EQ(resp.sequence(), 4u);
  EXPECT_LE(rel_error(from_wire(resp.output()), ref.step(next)), 1e-5);
}

TEST(AttentionServiceMerge, MergeBanksEqualPolicyAppliedByHand) {
  const ServerConfig config = test_config({{"all", all_blocks_spec()}}, MemoryPolicy::kMerge);
  TestServer ts(config);
  ReferenceSession ref(reference_stack(config.stacks[0]), config.stacks[0].memory);
  const std::string id = open_session(*ts.stub, "all");
  std::vector<at::Tensor> segments{at::randn({2, 7, 32}), at::randn({2, 6, 32}), at::randn({2, 8, 32})};
  std::vector<at::Tensor> outputs;
  ASSERT_TRUE(stream_segments(*ts.stub, id, segments, 0, &outputs).ok());
  for (size_t i = 0; i < segments.size(); ++i) EXPECT_LE(rel_error(outputs[i], ref.step(segments[i])), 1e-5);
  grpc::ClientContext ctx;
  v1::ExportSessionRequest req;
  req.set_session_id(id);
  v1::ExportSessionResponse resp;
  ASSERT_TRUE(ts.stub->ExportSession(&ctx, req, &resp).ok());
  const auto contents = parse_safetensors(resp.state().data(), resp.state().size(), "export");
  EXPECT_EQ(contents.tensors.at("banks.1.tokens").size(1), 10);  // 21 tokens merged down to 10
  EXPECT_LE(rel_error(contents.tensors.at("banks.1.tokens"), ref.banks.at(1).tokens), 1e-5);
  EXPECT_TRUE(at::equal(contents.tensors.at("banks.1.counts"), ref.banks.at(1).counts));
  EXPECT_EQ(contents.tensors.at("banks.1.counts").sum().item<double>(), 2 * 21.0);
}

TEST_F(AttentionServiceTest, MambaOnlyStreamEqualsOneFullSequenceForward) {
  const at::Tensor video = at::randn({1, 50, 32});
  v1::ForwardRequest req;
  req.set_stack("mamba");
  *req.mutable_features() = to_wire(video);
  v1::ForwardResponse resp;
  ASSERT_TRUE(forward(req, &resp).ok());
  const at::Tensor full = from_wire(resp.output());

  const std::string id = open_session(*ts_.stub, "mamba");
  std::vector<at::Tensor> segments;
  for (auto [start, len] : std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {1, 13}, {14, 20}, {34, 16}}) {
    segments.push_back(video.narrow(1, start, len));
  }
  std::vector<at::Tensor> outputs;
  ASSERT_TRUE(stream_segments(*ts_.stub, id, segments, 0, &outputs).ok());
  EXPECT_LE(rel_error(at::cat(outputs, 1), full), 1e-5);
}

TEST_F(AttentionServiceTest, ExportImportIntoSecondServerContinuesIdentically) {
  const std::string id = open_session(*ts_.stub, "all", "video-42");
  ASSERT_TRUE(stream_segments(*ts_.stub, id, {at::randn({1, 10, 32}), at::randn({1, 10, 32})}, 0, nullptr).ok());
  const std::string state = export_state(id);

  TestServer second(config_);
  grpc::ClientContext ctx;
  v1::ImportSessionRequest ireq;
  ireq.set_state(state);
  v1::ImportSessionResponse iresp;
  ASSERT_TRUE(second.stub->ImportSession(&ctx, ireq, &iresp).ok());
  EXPECT_EQ(iresp.session().session_id(), "video-42");
  EXPECT_EQ(iresp.session().segments_seen(), 2u);
  EXPECT_EQ(iresp.session().total_bytes(), get(id).total_bytes());

  const std::vector<at::Tensor> next{at::randn({1, 8, 32}), at::randn({1, 11, 32})};
  std::vector<at::Tensor> a, b;
  ASSERT_TRUE(stream_segments(*ts_.stub, id, next, 2, &a).ok());
  ASSERT_TRUE(stream_segments(*second.stub, "video-42", next, 2, &b).ok());
  for (size_t i = 0; i < next.size(); ++i) EXPECT_TRUE(at::equal(a[i], b[i])) << "segment " << i;

  // A server whose stack has other weights refuses the state.
  ServerConfig other = config_;
  for (auto& s : other.stacks) s.seed += 100;
  TestServer third(other);
  grpc::ClientContext ctx3;
  const grpc::Status st = third.stub->ImportSession(&ctx3, ireq, &iresp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("fingerprint"), std::string::npos) << st.error_message();
}

TEST_F(AttentionServiceTest, SixtyFourConcurrentSessionsGetTheirOwnResults) {
  constexpr int kSessions = 64;
  constexpr int kSegments = 3;
  const StackConfig& sc = stack_config("all");
  std::vector<std::vector<at::Tensor>> inputs(kSessions);
  std::vector<std::vector<at::Tensor>> want(kSessions);
  for (int s = 0; s < kSessions; ++s) {
    ReferenceSession ref(reference_stack(sc), sc.memory);
    for (int k = 0; k < kSegments; ++k) {
      inputs[s].push_back(at::randn({1, 4 + (s + k) % 5, 32}));
      want[s].push_back(ref.step(inputs[s].back()));
    }
  }
  std::vector<std::string> ids(kSessions);
  for (int s = 0; s < kSessions; ++s) ids[s] = open_session(*ts_.stub, "all");
  std::vector<std::vector<at::Tensor>> got(kSessions);
  std::vector<grpc::Status> statuses(kSessions);
  std::vector<std::thread> threads;
  for (int s = 0; s < kSessions; ++s) {
    threads.emplace_back([&, s] { statuses[s] = stream_segments(*ts_.stub, ids[s], inputs[s], 0, &got[s]); });
  }
  for (auto& t : threads) t.join();
  for (int s = 0; s < kSessions; ++s) {
    ASSERT_TRUE(statuses[s].ok()) << statuses[s].error_message();
    ASSERT_EQ(got[s].size(), static_cast<size_t>(kSegments));
    for (int k = 0; k < kSegments; ++k) EXPECT_LE(rel_error(got[s][k], want[s][k]), 1e-5) << s << "/" << k;
    EXPECT_EQ(get(ids[s]).segments_seen(), static_cast<uint64_t>(kSegments));
  }
}

// --- the error table (docs/api.md) -----------------------------------------------------------

TEST_F(AttentionServiceTest, BadFeaturesAreInvalidArgumentAndChangeNothing) {
  const std::string id = open_session(*ts_.stub, "all");
  ASSERT_TRUE(stream_segments(*ts_.stub, id, {at::randn({1, 5, 32})}, 0, nullptr).ok());
  const std::string before = export_state(id);

  struct Case {
    const char* name;
    std::function<void(v1::Tensor*)> mutate;
    grpc::StatusCode code;
    const char* message;
  };
  const std::vector<Case> cases{
      {"unset dtype", [](v1::Tensor* t) { t->set_dtype(v1::DTYPE_UNSPECIFIED); }, grpc::StatusCode::INVALID_ARGUMENT, "dtype"},
      {"rank 1", [](v1::Tensor* t) { t->clear_shape(); t->add_shape(160); }, grpc::StatusCode::INVALID_ARGUMENT, "[B, T, D]"},
      {"rank 4", [](v1::Tensor* t) { t->add_shape(1); }, grpc::StatusCode::INVALID_ARGUMENT, "[B, T, D]"},
      {"zero T", [](v1::Tensor* t) { t->set_shape(1, 0); }, grpc::StatusCode::INVALID_ARGUMENT, "T must be >= 1"},
      {"negative D", [](v1::Tensor* t) { t->set_shape(2, -32); }, grpc::StatusCode::INVALID_ARGUMENT, "D must be >= 1"},
      {"short bytes", [](v1::Tensor* t) { t->mutable_raw_data()->resize(t->raw_data().size() - 1); }, grpc::StatusCode::INVALID_ARGUMENT, "raw_data"},
      {"long bytes", [](v1::Tensor* t) { t->mutable_raw_data()->append(4, '\0'); }, grpc::StatusCode::INVALID_ARGUMENT, "raw_data"},
      {"wrong D", [](v1::Tensor* t) { t->set_shape(1, 10); t->set_shape(2, 16); }, grpc::StatusCode::INVALID_ARGUMENT, "[T, 32]"},
      {"NaN", [](v1::Tensor* t) { float nan = NAN; t->mutable_raw_data()->replace(8, 4, reinterpret_cast<char*>(&nan), 4); }, grpc::StatusCode::INVALID_ARGUMENT, "non-finite"},
      {"huge shape", [](v1::Tensor* t) { t->set_shape(1, int64_t{1} << 40); }, grpc::StatusCode::INVALID_ARGUMENT, "out of range"},
      {"too many tokens", [](v1::Tensor* t) { t->set_shape(0, 1000); t->set_shape(1, 1000); }, grpc::StatusCode::RESOURCE_EXHAUSTED, "limit"},
      {"batch changes", [](v1::Tensor* t) { *t = to_wire(at::randn({2, 5, 32})); }, grpc::StatusCode::INVALID_ARGUMENT, "batch"},
  };
  for (const auto& c : cases) {
    v1::Tensor features = to_wire(at::randn({1, 5, 32}));
    c.mutate(&features);
    // As a stream segment...
    {
      grpc::ClientContext ctx;
      auto stream = ts_.stub->StreamSegments(&ctx);
      v1::SegmentRequest req;
      req.set_session_id(id);
      req.set_sequence(1);
      *req.mutable_features() = features;
      stream->Write(req);
      v1::SegmentResponse resp;
      EXPECT_FALSE(stream->Read(&resp)) << c.name;
      const grpc::Status st = stream->Finish();
      EXPECT_EQ(st.error_code(), c.code) << c.name << ": " << st.error_message();
      EXPECT_NE(st.error_message().find(c.message), std::string::npos) << c.name << ": " << st.error_message();
    }
    // ...and as a session Forward.
    v1::ForwardRequest req;
    req.set_session_id(id);
    *req.mutable_features() = features;
    v1::ForwardResponse resp;
    const grpc::Status st = forward(req, &resp);
    EXPECT_EQ(st.error_code(), c.code) << c.name << ": " << st.error_message();
    expect_unchanged(id, before);
  }
  EXPECT_EQ(get(id).segments_seen(), 1u);
}

TEST_F(AttentionServiceTest, ASegmentThatOverflowsTheStackFailsAloneAndChangesNothing) {
  // Finite inputs near float32's maximum: sums inside the stack (normalisation, the memory
  // bank's pooling) overflow. The segment is INTERNAL, the session keeps its state and goes on.
  const std::string id = open_session(*ts_.stub, "all");
  ASSERT_TRUE(stream_segments(*ts_.stub, id, {at::randn({1, 5, 32})}, 0, nullptr).ok());
  const std::string before = export_state(id);
  const at::Tensor huge = at::full({1, 5, 32}, 3.0e38f) * (at::randint(0, 2, {1, 5, 32}) * 2 - 1);
  std::vector<at::Tensor> out;
  const grpc::Status st = stream_segments(*ts_.stub, id, {huge}, 1, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INTERNAL) << st.error_message();
  EXPECT_NE(st.error_message().find("non-finite"), std::string::npos) << st.error_message();
  EXPECT_TRUE(out.empty());
  expect_unchanged(id, before);
  // The session goes on from where it was, with finite outputs.
  ASSERT_TRUE(stream_segments(*ts_.stub, id, {at::randn({1, 5, 32})}, 1, &out).ok());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(at::isfinite(out.front()).all().item<bool>());
  EXPECT_EQ(get(id).segments_seen(), 2u);
}

TEST_F(AttentionServiceTest, OrderingErrorsAreFailedPreconditionAndChangeNothing) {
  const std::string id = open_session(*ts_.stub, "all");
  ASSERT_TRUE(stream_segments(*ts_.stub, id, {at::randn({1, 5, 32}), at::randn({1, 5, 32})}, 0, nullptr).ok());
  const std::string before = export_state(id);
  for (uint64_t seq : {0u, 1u, 3u, 100u}) {  // duplicate, replayed, skipped ahead
    std::vector<at::Tensor> out;
    const grpc::Status st = stream_segments(*ts_.stub, id, {at::randn({1, 5, 32})}, seq, &out);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << seq;
    EXPECT_NE(st.error_message().find("expects sequence 2"), std::string::npos) << st.error_message();
    EXPECT_TRUE(out.empty());
    v1::ForwardRequest req;
    req.set_session_id(id);
    req.set_sequence(seq);
    *req.mutable_features() = to_wire(at::randn({1, 5, 32}));
    v1::ForwardResponse resp;
    EXPECT_EQ(forward(req, &resp).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    expect_unchanged(id, before);
  }
  // The right sequence still works afterwards.
  EXPECT_TRUE(stream_segments(*ts_.stub, id, {at::randn({1, 5, 32})}, 2, nullptr).ok());
}

TEST_F(AttentionServiceTest, SecondStreamAndUnaryForwardOnAStreamingSessionAreRefused) {
  const std::string id = open_session(*ts_.stub, "all");
  grpc::ClientContext ctx1;
  auto first = ts_.stub->StreamSegments(&ctx1);
  v1::SegmentRequest req;
  req.set_session_id(id);
  req.set_sequence(0);
  *req.mutable_features() = to_wire(at::randn({1, 5, 32}));
  ASSERT_TRUE(first->Write(req));
  v1::SegmentResponse resp;
  ASSERT_TRUE(first->Read(&resp));  // the first stream is attached now
  EXPECT_TRUE(get(id).streaming());

  std::vector<at::Tensor> out;
  const grpc::Status second = stream_segments(*ts_.stub, id, {at::randn({1, 5, 32})}, 1, &out);
  EXPECT_EQ(second.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(second.error_message().find("already has a stream"), std::string::npos);

  v1::ForwardRequest freq;
  freq.set_session_id(id);
  *freq.mutable_features() = to_wire(at::randn({1, 5, 32}));
  v1::ForwardResponse fresp;
  EXPECT_EQ(forward(freq, &fresp).error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  // A message for another session on the same stream ends it with INVALID_ARGUMENT.
  req.set_session_id("someone-else");
  req.set_sequence(1);
  ASSERT_TRUE(first->Write(req));
  EXPECT_FALSE(first->Read(&resp));
  first->WritesDone();
  EXPECT_EQ(first->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_FALSE(get(id).streaming());
  EXPECT_EQ(get(id).segments_seen(), 1u);
}

TEST_F(AttentionServiceTest, UnknownNamesAreNotFoundAndBadIdsInvalid) {
  v1::ForwardRequest req;
  req.set_stack("nope");
  *req.mutable_features() = to_wire(at::randn({5, 32}));
  v1::ForwardResponse resp;
  grpc::Status st = forward(req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(st.error_message().find("stacks: all, mamba"), std::string::npos) << st.error_message();

  req.set_stack("");
  req.set_session_id("missing");
  EXPECT_EQ(forward(req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(stream_segments(*ts_.stub, "missing", {at::randn({1, 5, 32})}, 0, nullptr).error_code(),
            grpc::StatusCode::NOT_FOUND);
  grpc::Status export_status;
  export_state("missing", &export_status);
  EXPECT_EQ(export_status.error_code(), grpc::StatusCode::NOT_FOUND);
  {
    grpc::ClientContext ctx;
    v1::CloseSessionRequest close;
    close.set_session_id("missing");
    v1::CloseSessionResponse cresp;
    EXPECT_EQ(ts_.stub->CloseSession(&ctx, close, &cresp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    v1::OpenSessionRequest open;
    open.set_stack("nope");
    v1::OpenSessionResponse oresp;
    EXPECT_EQ(ts_.stub->OpenSession(&ctx, open, &oresp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  for (const std::string& bad : std::vector<std::string>{"has space", "slash/", std::string(129, 'a')}) {
    grpc::ClientContext ctx;
    v1::OpenSessionRequest open;
    open.set_stack("all");
    open.set_session_id(bad);
    v1::OpenSessionResponse oresp;
    EXPECT_EQ(ts_.stub->OpenSession(&ctx, open, &oresp).error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad;
  }
  open_session(*ts_.stub, "all", "taken");
  grpc::ClientContext ctx;
  v1::OpenSessionRequest open;
  open.set_stack("all");
  open.set_session_id("taken");
  v1::OpenSessionResponse oresp;
  EXPECT_EQ(ts_.stub->OpenSession(&ctx, open, &oresp).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  // A stream whose first message names no session.
  EXPECT_EQ(stream_segments(*ts_.stub, "", {at::randn({1, 5, 32})}, 0, nullptr).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(AttentionServiceTest, BadMemoriesAndMisusedFieldsAreInvalidArgument) {
  const std::string id = open_session(*ts_.stub, "all");
  auto request = [&](int block, const at::Tensor& tokens) {
    v1::ForwardRequest req;
    req.set_stack("all");
    *req.mutable_features() = to_wire(at::randn({2, 5, 32}));
    auto* m = req.add_memories();
    m->set_block_index(block);
    *m->mutable_tokens() = to_wire(tokens);
    return req;
  };
  v1::ForwardResponse resp;
  grpc::Status st = forward(request(0, at::randn({3, 32})), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("not a cross_memory block"), std::string::npos);
  EXPECT_EQ(forward(request(-1, at::randn({3, 32})), &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(forward(request(1, at::randn({3, 16})), &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(forward(request(1, at::randn({3, 3, 32})), &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(forward(request(1, at::randn({1, 5000, 32})), &resp).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  v1::ForwardRequest twice = request(1, at::randn({3, 32}));
  *twice.add_memories() = twice.memories(0);
  EXPECT_EQ(forward(twice, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // An empty memory is allowed and equals no memory.
  ASSERT_TRUE(forward(request(1, at::zeros({1, 0, 32})), &resp).ok());

  v1::ForwardRequest with_session = request(1, at::randn({3, 32}));
  with_session.set_session_id(id);
  EXPECT_EQ(forward(with_session, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::ForwardRequest seq_without_session;
  seq_without_session.set_stack("all");
  seq_without_session.set_sequence(0);
  *seq_without_session.mutable_features() = to_wire(at::randn({5, 32}));
  EXPECT_EQ(forward(seq_without_session, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::ForwardRequest other_stack;
  other_stack.set_stack("mamba");
  other_stack.set_session_id(id);
  *other_stack.mutable_features() = to_wire(at::randn({5, 32}));
  EXPECT_EQ(forward(other_stack, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(get(id).segments_seen(), 0u);
}

TEST_F(AttentionServiceTest, BadImportsAreRejectedWithoutSideEffects) {
  const std::string id = open_session(*ts_.stub, "all", "source");
  ASSERT_TRUE(stream_segments(*ts_.stub, id, {at::randn({1, 5, 32})}, 0, nullptr).ok());
  const std::string good = export_state(id);
  auto import = [&](const std::string& state, const std::string& new_id) {
    grpc::ClientContext ctx;
    v1::ImportSessionRequest req;
    req.set_state(state);
    req.set_session_id(new_id);
    v1::ImportSessionResponse resp;
    return ts_.stub->ImportSession(&ctx, req, &resp);
  };
  EXPECT_EQ(import("not safetensors", "x").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(import(good.substr(0, good.size() / 2), "x").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(import(good, "").error_code(), grpc::StatusCode::ALREADY_EXISTS);  // "source" is open
  // A bank longer than the capacity, and a NaN in a state, are refused.
  auto contents = parse_safetensors(good.data(), good.size(), "good");
  auto tampered = contents.tensors;
  tampered["banks.1.tokens"] = at::randn({1, 13, 32});
  tampered["banks.1.counts"] = at::ones({1, 13});
  grpc::Status st = import(serialize_safetensors(tampered, contents.metadata), "x");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("capacity"), std::string::npos) << st.error_message();
  tampered = contents.tensors;
  tampered["states.2.ssm_state"] = tampered["states.2.ssm_state"].clone();
  tampered["states.2.ssm_state"].view(-1)[0] = NAN;
  EXPECT_EQ(import(serialize_safetensors(tampered, contents.metadata), "x").error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  tampered = contents.tensors;
  tampered["banks.1.counts"] = at::zeros_like(tampered["banks.1.counts"]);
  st = import(serialize_safetensors(tampered, contents.metadata), "x");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("must be positive"), std::string::npos) << st.error_message();
  std::string huge_header(8 + (2 << 20), ' ');
  huge_header.replace(0, 8, std::string("\x00\x00\x20\x00\x00\x00\x00\x00", 8));  // 2 MiB
  st = import(huge_header, "x");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("exceeds the limit of 1048576 bytes"), std::string::npos) << st.error_message();
  const std::string deep = "{\"a\":{\"dtype\":" + std::string(100000, '[') + std::string(100000, ']') + "}}";
  std::string nested(8, '\0');
  for (int i = 0; i < 8; ++i) nested[i] = static_cast<char>((deep.size() >> (8 * i)) & 0xff);
  EXPECT_EQ(import(nested + deep, "x").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  tampered = contents.tensors;
  tampered.erase("states.2.conv_state");
  EXPECT_EQ(import(serialize_safetensors(tampered, contents.metadata), "x").error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  auto meta = contents.metadata;
  meta["stack"] = "unknown";
  EXPECT_EQ(import(serialize_safetensors(contents.tensors, meta), "x").error_code(), grpc::StatusCode::NOT_FOUND);
  // None of these created a session; the good one imports under a new id.
  grpc::Status missing;
  export_state("x", &missing);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(import(good, "x").ok());
  EXPECT_EQ(get("x").segments_seen(), 1u);
}

TEST(AttentionServiceLimits, SessionCountAndMemoryBudgetAreResourceExhausted) {
  ServerConfig config = test_config({{"all", all_blocks_spec()}});
  config.limits.max_sessions = 2;
  TestServer ts(config);
  const std::string a = open_session(*ts.stub, "all");
  open_session(*ts.stub, "all");
  grpc::ClientContext ctx;
  v1::OpenSessionRequest open;
  open.set_stack("all");
  v1::OpenSessionResponse resp;
  const grpc::Status st = ts.stub->OpenSession(&ctx, open, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("session limit"), std::string::npos);

  // A budget that holds one session's first segment but not its second.
  ServerConfig small = test_config({{"all", all_blocks_spec()}});
  small.limits.max_session_memory_bytes = 3600;  // 2816 of mamba state, 132 per bank token
  TestServer tb(small);
  const std::string id = open_session(*tb.stub, "all");
  ASSERT_TRUE(stream_segments(*tb.stub, id, {at::randn({1, 4, 32})}, 0, nullptr).ok());
  grpc::ClientContext ectx;
  v1::ExportSessionRequest ereq;
  ereq.set_session_id(id);
  v1::ExportSessionResponse before;
  ASSERT_TRUE(tb.stub->ExportSession(&ectx, ereq, &before).ok());
  const grpc::Status over = stream_segments(*tb.stub, id, {at::randn({1, 4, 32})}, 1, nullptr);
  EXPECT_EQ(over.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << over.error_message();
  EXPECT_NE(over.error_message().find("budget"), std::string::npos) << over.error_message();
  grpc::ClientContext ectx2;
  v1::ExportSessionResponse after;
  ASSERT_TRUE(tb.stub->ExportSession(&ectx2, ereq, &after).ok());
  EXPECT_TRUE(before.state() == after.state());
}

TEST(AttentionServiceLimits, AnExportOverTheMessageLimitIsResourceExhausted) {
  ServerConfig config = test_config({{"all", all_blocks_spec()}});
  config.limits.max_message_bytes = 4096;  // the session below exports about 3.5 KB + 1 KB slack
  TestServer ts(config);
  const std::string id = open_session(*ts.stub, "all");
  ASSERT_TRUE(stream_segments(*ts.stub, id, {at::randn({1, 5, 32})}, 0, nullptr).ok());
  grpc::ClientContext ctx;
  v1::ExportSessionRequest req;
  req.set_session_id(id);
  v1::ExportSessionResponse resp;
  const grpc::Status st = ts.stub->ExportSession(&ctx, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_NE(st.error_message().find("max_message_bytes"), std::string::npos) << st.error_message();
}

TEST_F(AttentionServiceTest, DeadlinesAndCancellationAreHonoured) {
  v1::ForwardRequest req;
  req.set_stack("all");
  *req.mutable_features() = to_wire(at::randn({1, 64, 32}));
  v1::ForwardResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() - std::chrono::seconds(1));
  EXPECT_EQ(ts_.stub->Forward(&ctx, req, &resp).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);

  // A client that cancels mid-stream leaves the session consistent and free for a new stream.
  const std::string id = open_session(*ts_.stub, "all");
  {
    grpc::ClientContext sctx;
    auto stream = ts_.stub->StreamSegments(&sctx);
    v1::SegmentRequest sreq;
    sreq.set_session_id(id);
    *sreq.mutable_features() = to_wire(at::randn({1, 5, 32}));
    ASSERT_TRUE(stream->Write(sreq));
    v1::SegmentResponse sresp;
    ASSERT_TRUE(stream->Read(&sresp));
    sctx.TryCancel();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  for (int i = 0; i < 100 && get(id).streaming(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_FALSE(get(id).streaming());
  EXPECT_EQ(get(id).segments_seen(), 1u);
  EXPECT_TRUE(stream_segments(*ts_.stub, id, {at::randn({1, 5, 32})}, 1, nullptr).ok());
}

TEST_F(AttentionServiceTest, CloseSessionFreesItAndGetReportsBytes) {
  const std::string id = open_session(*ts_.stub, "all");
  EXPECT_EQ(get(id).batch_size(), 0);
  ASSERT_TRUE(stream_segments(*ts_.stub, id, {at::randn({3, 5, 32})}, 0, nullptr).ok());
  const v1::SessionInfo info = get(id);
  EXPECT_EQ(info.batch_size(), 3);
  EXPECT_EQ(info.memory_banks(0).length(), 4);
  EXPECT_EQ(info.memory_banks(0).bytes(), 3 * 4 * 32 * 4 + 3 * 4 * 4);
  EXPECT_EQ(info.total_bytes(), info.memory_banks(0).bytes() + info.state_bytes());
  EXPECT_GT(info.last_used_unix_micros(), info.created_unix_micros());
  grpc::ClientContext ctx;
  v1::CloseSessionRequest req;
  req.set_session_id(id);
  v1::CloseSessionResponse resp;
  ASSERT_TRUE(ts_.stub->CloseSession(&ctx, req, &resp).ok());
  grpc::Status st;
  export_state(id, &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(ts_.server->sessions().stats().memory_bytes, 0);
}

// On a GPU stack in bfloat16, float32 features are decoded straight into the stack's dtype in
// pinned memory (no second conversion), with and without cross-session batching: the streamed
// outputs equal the library's on the CPU in float32 within the GPU issue's 2e-2 and come back as
// float32; a value past bfloat16's range fails its segment with INVALID_ARGUMENT naming the
// dtype, and the session goes on from there. Skipped where LibTorch sees no CUDA device.
TEST(AttentionServiceGpuTest, Float32FeaturesIntoABFloat16StackMatchTheCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device visible";
  for (const bool batching : {false, true}) {
    ServerConfig config = test_config({{"all", all_blocks_spec()}});
    config.device = "cuda";
    config.dtype = "bfloat16";
    config.batching.enabled = batching;
    TestServer ts(config);
    const StackConfig& sc = config.stacks.front();
    ReferenceSession ref(reference_stack(sc), sc.memory);
    const std::string id = open_session(*ts.stub, "all");
    std::vector<at::Tensor> segments;
    for (int64_t t : {9, 16, 5, 12}) segments.push_back(at::randn({1, t, 32}));
    std::vector<at::Tensor> outputs;
    ASSERT_TRUE(stream_segments(*ts.stub, id, segments, 0, &outputs).ok()) << "batching " << batching;
    ASSERT_EQ(outputs.size(), segments.size());
    for (size_t i = 0; i < segments.size(); ++i) {
      EXPECT_LE(rel_error(outputs[i], ref.step(segments[i])), 2e-2) << "segment " << i << ", batching " << batching;
    }
    at::Tensor too_large = at::randn({1, 6, 32});
    too_large[0][2][7] = 3.4e38f;  // finite in float32, infinite in bfloat16
    const grpc::Status st = stream_segments(*ts.stub, id, {too_large}, 4, nullptr);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("outside the range of the stack's BFloat16"), std::string::npos)
        << st.error_message();
    const at::Tensor next = at::randn({1, 6, 32});
    outputs.clear();
    ASSERT_TRUE(stream_segments(*ts.stub, id, {next}, 4, &outputs).ok()) << "batching " << batching;
    EXPECT_LE(rel_error(outputs.at(0), ref.step(next)), 2e-2) << "batching " << batching;
  }
}

}  // namespace
}  // namespace hvlm::testing
