// The `stream` command against an in-process fake server that doubles its input: outputs land
// in input order (including a short last segment and batched features), wire dtypes round
// their values, statistics skip the warmup, the session is always closed, and failures come
// out as "StreamSegments: <CODE>: <message>" errors.
#include "client/stream_session.h"

#include "client/half_precision.h"
#include "client/npy.h"
#include "client/rpc_error.h"
#include "client/synthetic_features.h"
#include "client/tensor_codec.h"
#include "tests/client/fake_attention_service.h"
#include "tests/client/temp_path.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace hvlm::client {
namespace {

using testing::FakeAttentionService;
using testing::FakeServer;
using testing::kFakeDim;

class StreamSession : public ::testing::Test {
 protected:
  StreamOptions options_for(const FakeServer& server) {
    StreamOptions options;
    options.connection.server = server.address();
    options.connection.timeout_seconds = 10;
    options.stack = "echo";
    options.frames = 10;
    options.segment_frames = 4;
    options.seed = 5;
    options.output_path = temp("out.npy");
    return options;
  }

  std::string temp(const std::string& name) {
    const std::string path = testing::unique_temp_path(name);
    paths_.push_back(path);
    return path;
  }

  void TearDown() override {
    for (const std::string& path : paths_) std::remove(path.c_str());
  }

  std::vector<std::string> paths_;
};

std::vector<float> doubled(std::vector<float> values) {
  for (float& v : values) v *= 2;
  return values;
}

// The fake's answer to `count` synthetic features of `seed` sent as bfloat16: each rounded to
// bfloat16, then doubled.
std::vector<float> doubled_as_bfloat16(uint64_t seed, size_t count) {
  std::vector<float> values(count);
  SyntheticFeatures(seed).fill(values.data(), values.size());
  for (float& v : values) v = bfloat16_bits_to_float(float_to_bfloat16_bits(v));
  return doubled(std::move(values));
}

TEST_F(StreamSession, OutputsAreTheServersAnswersInFrameOrder) {
  FakeServer server;
  StreamOptions options = options_for(server);
  std::ostringstream out;
  const RunSummary summary = run_stream(options, out);

  // The dim came from ListStacks; 10 frames in segments of 4, 4 and 2.
  std::vector<float> input(10 * kFakeDim);
  SyntheticFeatures(5).fill(input.data(), input.size());
  const NpyArray output = read_npy(options.output_path);
  EXPECT_EQ(output.shape, (std::vector<int64_t>{10, kFakeDim}));
  EXPECT_EQ(output.values, doubled(input));

  EXPECT_EQ(server.service().segments_served(), 3);
  EXPECT_EQ(summary.latency_ms.count, 1u);  // 3 segments less 2 warmup
  EXPECT_EQ(summary.segment_tokens, 4);
  EXPECT_EQ(summary.dim, kFakeDim);
  EXPECT_DOUBLE_EQ(summary.server_compute_ms.p50, 1.5);
  EXPECT_DOUBLE_EQ(summary.server_total_ms.p50, 1.51);  // the fake's 10 us queue + 1500 compute
  EXPECT_DOUBLE_EQ(summary.outside_server_ms.p50, summary.latency_ms.p50 - 1.51);  // one sample
  EXPECT_EQ(server.service().sessions_closed(), 1);
  EXPECT_EQ(server.service().sessions_open(), 0);
  const std::string text = out.str();
  EXPECT_NE(text.find("segment 2  frames 8..9"), std::string::npos) << text;
  EXPECT_NE(text.find("segment 0  frames 0..3"), std::string::npos) << text;
  EXPECT_NE(text.find("(warmup)"), std::string::npos) << text;
}

TEST_F(StreamSession, BatchedFloat16InputFileRoundTrips) {
  FakeServer server;
  StreamOptions options = options_for(server);
  // [2, 5, 8] half-precision features: every value (and its double) is exact in float16.
  std::vector<float> input(2 * 5 * kFakeDim);
  for (size_t i = 0; i < input.size(); ++i) input[i] = static_cast<float>(i) * 0.25f - 8.0f;
  options.input_path = temp("in.npy");
  write_npy(options.input_path, {2, 5, kFakeDim}, input.data(), NpyDtype::kFloat16);
  options.frames = 0;
  options.segment_frames = 2;
  options.dtype = hvlm::v1::FLOAT16;
  options.warmup_segments = 0;
  std::ostringstream out;
  const RunSummary summary = run_stream(options, out);

  const NpyArray output = read_npy(options.output_path);
  EXPECT_EQ(output.dtype, NpyDtype::kFloat32);
  EXPECT_EQ(output.shape, (std::vector<int64_t>{2, 5, kFakeDim}));
  EXPECT_EQ(output.values, doubled(input));
  EXPECT_EQ(summary.batch, 2);
  EXPECT_EQ(summary.latency_ms.count, 3u);
  EXPECT_EQ(summary.dtype, "float16");
}

TEST_F(StreamSession, NarrowWireDtypesRoundTheFeatures) {
  FakeServer server;
  StreamOptions options = options_for(server);
  options.dtype = hvlm::v1::BFLOAT16;
  options.batch = 3;
  std::ostringstream out;
  run_stream(options, out);

  const NpyArray output = read_npy(options.output_path);
  EXPECT_EQ(output.shape, (std::vector<int64_t>{3, 10, kFakeDim}));
  EXPECT_EQ(output.values, doubled_as_bfloat16(5, 3 * 10 * kFakeDim));
}

// Without --dtype the features go in the stack's own dtype, and the outputs are written as
// float32 all the same.
TEST_F(StreamSession, WithoutDtypeTheFeaturesGoInTheStacksOwn) {
  FakeAttentionService::Options fake;
  fake.stack_dtype = "bfloat16";
  FakeServer server(fake);
  StreamOptions options = options_for(server);
  std::ostringstream out;
  EXPECT_EQ(run_stream(options, out).dtype, "bfloat16");
  EXPECT_EQ(server.service().served_by_dtype(), (std::map<hvlm::v1::DType, int64_t>{{hvlm::v1::BFLOAT16, 3}}));

  const NpyArray output = read_npy(options.output_path);
  EXPECT_EQ(output.dtype, NpyDtype::kFloat32);
  EXPECT_EQ(output.values, doubled_as_bfloat16(5, 10 * kFakeDim));
}

// A value the wire dtype cannot hold is refused before a session opens, naming it; the message
// says whether the dtype was asked for or is the stack's.
TEST_F(StreamSession, FeaturesBeyondTheWireDtypesRangeAreRefusedUpFront) {
  FakeAttentionService::Options fake;
  fake.stack_dtype = "float16";
  FakeServer server(fake);
  StreamOptions options = options_for(server);
  std::vector<float> input(3 * kFakeDim, 1.0f);
  input[kFakeDim + 2] = 70000.0f;
  options.input_path = temp("big.npy");
  write_npy(options.input_path, {3, kFakeDim}, input.data());
  options.frames = 0;
  std::ostringstream out;
  try {
    run_stream(options, out);
    ADD_FAILURE() << "70000 sent as float16";
  } catch (const TensorCodecError& e) {
    EXPECT_STREQ(e.what(), "the features hold 70000 (element 10 in row-major order), beyond the range of float16, "
                           "the stack's dtype and so the wire's: the stack cannot take it");
  }
  options.dtype = hvlm::v1::FLOAT16;
  try {
    run_stream(options, out);
    ADD_FAILURE() << "70000 sent as float16";
  } catch (const TensorCodecError& e) {
    EXPECT_NE(std::string(e.what()).find("float16, the wire dtype; --dtype float32 sends it unchanged (the stack's dtype must still "
                        "hold it)"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(server.service().sessions_opened(), 0);
  options.dtype = hvlm::v1::FLOAT32;  // the fake takes any value
  EXPECT_EQ(run_stream(options, out).dtype, "float32");
}

TEST_F(StreamSession, UsesTheGivenSessionIdAndWritesJson) {
  FakeServer server;
  StreamOptions options = options_for(server);
  options.session_id = "my-video.1";
  options.json_path = temp("summary.json");
  options.dim = kFakeDim;
  std::ostringstream out;
  run_stream(options, out);
  EXPECT_EQ(server.service().requested_ids(), std::vector<std::string>{"my-video.1"});
  EXPECT_NE(out.str().find("session my-video.1 on stack echo"), std::string::npos);

  std::ifstream in(options.json_path);
  const nlohmann::json json = nlohmann::json::parse(in);
  EXPECT_EQ(json["mode"], "stream");
  EXPECT_EQ(json["stack"], "echo");
  EXPECT_EQ(json["sessions"], 1);
  EXPECT_EQ(json["segment_tokens"], 4);
  EXPECT_EQ(json["batch"], 1);
  EXPECT_EQ(json["segments"], 1);
  EXPECT_EQ(json["errors"], 0);
  EXPECT_EQ(json["first_error"], "");
  EXPECT_DOUBLE_EQ(json["server_compute_ms"]["p50"].get<double>(), 1.5);
  EXPECT_DOUBLE_EQ(json["server_total_ms"]["p50"].get<double>(), 1.51);
  EXPECT_TRUE(json["outside_server_ms"]["p99"].is_number());
  EXPECT_DOUBLE_EQ(json["server_stages_ms"]["queue"]["p50"].get<double>(), 0.01);
  EXPECT_DOUBLE_EQ(json["server_stages_ms"]["compute"]["p50"].get<double>(), 1.5);
}

TEST_F(StreamSession, ServerErrorIsReportedAndTheSessionStillClosed) {
  FakeAttentionService::Options fake;
  fake.fail_at_sequence = 1;
  FakeServer server(fake);
  std::ostringstream out;
  try {
    run_stream(options_for(server), out);
    FAIL() << "no error";
  } catch (const RpcError& e) {
    EXPECT_EQ(e.rpc(), "StreamSegments");
    EXPECT_EQ(e.code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_STREQ(e.what(), "StreamSegments: INVALID_ARGUMENT: features rejected at segment 1");
  }
  EXPECT_EQ(server.service().sessions_closed(), 1);
}

TEST_F(StreamSession, AnswerOfTheWrongShapeIsAContractError) {
  FakeAttentionService::Options fake;
  fake.bad_shape_at_sequence = 2;
  FakeServer server(fake);
  std::ostringstream out;
  try {
    run_stream(options_for(server), out);
    FAIL() << "no error";
  } catch (const RpcError& e) {
    EXPECT_EQ(e.code(), grpc::StatusCode::UNKNOWN);
    EXPECT_NE(std::string(e.what()).find("the output of segment 2 is float32 [2, 1], expected "
                                         "float32 [2, 8]"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(server.service().sessions_closed(), 1);
}

TEST_F(StreamSession, OpenSessionFailureNamesTheRpc) {
  FakeServer server;
  StreamOptions options = options_for(server);
  options.stack = "missing";
  options.dim = kFakeDim;  // with the dtype: no ListStacks, so OpenSession is the first call
  options.dtype = hvlm::v1::FLOAT32;
  std::ostringstream out;
  try {
    run_stream(options, out);
    FAIL() << "no error";
  } catch (const RpcError& e) {
    EXPECT_STREQ(e.what(), "OpenSession: NOT_FOUND: no stack 'missing'");
  }
}

TEST_F(StreamSession, UnknownStackWithoutDimListsTheHostedStacks) {
  FakeServer server;
  StreamOptions options = options_for(server);
  options.stack = "missing";
  std::ostringstream out;
  try {
    run_stream(options, out);
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "the server hosts no stack 'missing' (it hosts: echo)");
  }
}

TEST_F(StreamSession, InputThatContradictsAFlagIsAUsageError) {
  FakeServer server;
  StreamOptions options = options_for(server);
  const std::vector<float> input(4 * kFakeDim, 1.0f);
  options.input_path = temp("flat.npy");
  write_npy(options.input_path, {4, kFakeDim}, input.data());
  options.frames = 0;
  options.dim = 16;
  std::ostringstream out;
  EXPECT_THROW(run_stream(options, out), UsageError);
  options.dim = 0;
  options.batch = 2;
  EXPECT_THROW(run_stream(options, out), UsageError);
  write_npy(options.input_path, {4 * kFakeDim}, input.data());
  options.batch = 0;
  EXPECT_THROW(run_stream(options, out), UsageError);
  EXPECT_EQ(server.service().sessions_opened(), 0);
}

TEST_F(StreamSession, UnreachableServerIsUnavailable) {
  StreamOptions options;
  options.connection.server = "127.0.0.1:1";
  options.connection.timeout_seconds = 5;
  options.stack = "echo";
  options.frames = 4;
  options.dim = 4;  // with the dtype: no ListStacks, so OpenSession is the first call
  options.dtype = hvlm::v1::FLOAT32;
  options.segment_frames = 4;
  std::ostringstream out;
  try {
    run_stream(options, out);
    FAIL() << "no error";
  } catch (const RpcError& e) {
    EXPECT_EQ(e.rpc(), "OpenSession");
    EXPECT_EQ(e.code(), grpc::StatusCode::UNAVAILABLE);
  }
}

TEST(FeatureArray, SlicesAndStoresFramesOfEveryBatchItem) {
  FeatureArray features;
  features.rank = 3;
  features.batch = 2;
  features.frames = 3;
  features.dim = 2;
  features.values = {0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15};
  EXPECT_EQ(features.slice_frames(1, 2), (std::vector<float>{2, 3, 4, 5, 12, 13, 14, 15}));
  features.store_frames(2, 1, {-1, -2, -3, -4});
  EXPECT_EQ(features.values, (std::vector<float>{0, 1, 2, 3, -1, -2, 10, 11, 12, 13, -3, -4}));
  EXPECT_EQ(features.shape(), (std::vector<int64_t>{2, 3, 2}));
}

}  // namespace
}  // namespace hvlm::client
