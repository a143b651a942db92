// Weights: module_state paths equal the Python twin's state_dict() keys; save then load
// reproduces a module exactly; load_state checks every name, shape, dtype and value first,
// reports all mismatches in one error and changes nothing when any check fails.
#include "attention/weights.h"

#include "attention/attention_stack.h"
#include "attention/performer_attention.h"
#include "attention/safetensors.h"
#include "attention/strided_attention.h"

#include "tests/cpp/test_util.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace hvlm {
namespace {

using testing::ThrowsWith;

const char* const kThreeBlockSpec = R"({"dim": 8, "blocks": [
    {"type": "strided", "num_heads": 2, "stride": 2, "mlp_ratio": 2.0},
    {"type": "performer", "num_heads": 2, "num_random_features": 4, "mlp_ratio": 2.0},
    {"type": "mamba", "state_size": 2, "expand_factor": 1.0, "mlp_ratio": 2.0}]})";

const char* const kFiveBlockSpec = R"({"dim": 8, "blocks": [
    {"type": "local_global", "num_heads": 2, "local_window": 2, "num_global_tokens": 1},
    {"type": "cross_memory", "num_heads": 2},
    {"type": "mamba", "state_size": 3, "expand_factor": 1.5},
    {"type": "strided", "num_heads": 4, "stride": 3},
    {"type": "performer", "num_heads": 2, "num_random_features": 6, "kernel_type": "softmax"}]})";

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "hvlm_weights_test_" + name + ".safetensors";
}

std::map<std::string, at::Tensor> clone_state(const torch::nn::Module& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, t] : module_state(m)) out[name] = t.detach().clone();
  return out;
}

void expect_state_equal(const std::map<std::string, at::Tensor>& got,
                        const std::map<std::string, at::Tensor>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, w] : want) {
    ASSERT_TRUE(got.count(name)) << name;
    EXPECT_TRUE(at::equal(got.at(name), w)) << name << " changed";
  }
}

std::vector<std::string> block_names(int i, const std::vector<std::string>& attn) {
  const std::string p = "blocks." + std::to_string(i) + ".";
  std::vector<std::string> out;
  for (const char* n : {"norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
                        "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"}) {
    out.push_back(p + n);
  }
  for (const auto& n : attn) out.push_back(p + "attn." + n);
  return out;
}

TEST(Weights, ModuleStateNamesAreParameterAndBufferPaths) {
  AttentionStack stack(StackSpec::parse(kThreeBlockSpec));
  std::set<std::string> got;
  for (const auto& [name, t] : module_state(*stack)) got.insert(name);
  const std::vector<std::string> qkv = {"q_proj.weight", "q_proj.bias", "k_proj.weight",
                                        "k_proj.bias",   "v_proj.weight", "v_proj.bias",
                                        "out_proj.weight", "out_proj.bias"};
  std::set<std::string> want;
  for (const auto& n : block_names(0, qkv)) want.insert(n);
  auto performer = qkv;
  performer.push_back("projection_matrix");
  for (const auto& n : block_names(1, performer)) want.insert(n);
  for (const auto& n : block_names(2, {"in_proj.weight", "conv1d.weight", "conv1d.bias",
                                       "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log",
                                       "D", "out_proj.weight"})) {
    want.insert(n);
  }
  EXPECT_EQ(got, want);
  const auto state = module_state(*stack);
  EXPECT_EQ(state.at("blocks.0.attn.q_proj.weight").sizes(), (std::vector<int64_t>{8, 8}));
  EXPECT_EQ(state.at("blocks.0.mlp.fc1.weight").sizes(), (std::vector<int64_t>{16, 8}));
  EXPECT_EQ(state.at("blocks.1.attn.projection_matrix").sizes(), (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(state.at("blocks.2.attn.in_proj.weight").sizes(), (std::vector<int64_t>{16, 8}));
}

TEST(Weights, ModuleStateSharesStorageWithTheModule) {
  StridedAttention m(StridedAttentionOptions(8, 2, 2));
  auto state = module_state(*m);
  ASSERT_TRUE(state.count("q_proj.weight"));
  EXPECT_TRUE(state.at("q_proj.weight").is_same(m->proj.q_proj->weight));
}

TEST(Weights, SaveThenLoadIntoAFreshModuleReproducesOutputsExactly) {
  at::manual_seed(71);
  AttentionStack saved(StackSpec::parse(kFiveBlockSpec));
  saved->eval();
  const std::string path = temp_path("round_trip");
  save_weights(*saved, path, {{"format", "pt"}});

  at::manual_seed(72);
  AttentionStack loaded(StackSpec::parse(kFiveBlockSpec));
  loaded->eval();
  auto x = testing::randn({2, 7, 8});
  std::vector<at::Tensor> memories(5);
  memories[1] = testing::randn({1, 4, 8});
  {
    c10::InferenceMode guard;
    EXPECT_FALSE(at::allclose(loaded->forward(x, memories).y, saved->forward(x, memories).y));
  }
  load_weights(*loaded, path);
  std::remove(path.c_str());
  expect_state_equal(module_state(*loaded), module_state(*saved));
  c10::InferenceMode guard;
  auto a = saved->forward(x, memories), b = loaded->forward(x, memories);
  EXPECT_TRUE(at::equal(a.y, b.y));
  EXPECT_TRUE(at::equal(a.states[2].ssm_state, b.states[2].ssm_state));
  EXPECT_TRUE(at::equal(a.states[2].conv_state, b.states[2].conv_state));
}

TEST(Weights, SavedFileCarriesMetadataAndEveryTensor) {
  PerformerAttention m(PerformerAttentionOptions(8, 2).num_random_features(5));
  const std::string path = temp_path("metadata");
  save_weights(*m, path, {{"model", "performer"}});
  const auto contents = read_safetensors(path);
  std::remove(path.c_str());
  EXPECT_EQ(contents.metadata, (std::map<std::string, std::string>{{"model", "performer"}}));
  expect_state_equal(contents.tensors, clone_state(*m));
}

TEST(Weights, LoadReportsEveryMismatchInOneError) {
  StridedAttention m(StridedAttentionOptions(8, 2, 2));
  auto state = clone_state(*m);
  state.erase("q_proj.bias");
  state["extra.weight"] = at::zeros({3});
  state["k_proj.weight"] = at::zeros({8, 4});
  state["v_proj.bias"] = state["v_proj.bias"].to(at::kDouble);
  state["out_proj.weight"][2][3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(ThrowsWith([&] { load_state(*m, state, "checkpoint-7"); },
                         {"weights from 'checkpoint-7' do not match the module",
                          "missing (1): q_proj.bias [8]",
                          "unexpected (1): extra.weight [3]",
                          "shape mismatch (1): k_proj.weight expected [8, 8], got [8, 4]",
                          "dtype mismatch (1): v_proj.bias expected Float, got Double",
                          "non-finite values (1): out_proj.weight"}));
}

TEST(Weights, LoadListsEveryMissingName) {
  StridedAttention m(StridedAttentionOptions(8, 2, 2));
  const std::string msg = testing::error_message([&] { load_state(*m, {}, "empty"); });
  EXPECT_NE(msg.find("missing (8)"), std::string::npos) << msg;
  for (const auto& [name, t] : module_state(*m)) {
    EXPECT_NE(msg.find(name), std::string::npos) << name << " not listed in: " << msg;
  }
}

TEST(Weights, FailedLoadLeavesTheModuleUnchanged) {
  at::manual_seed(73);
  StridedAttention m(StridedAttentionOptions(8, 2, 2));
  const auto before = clone_state(*m);
  // New values everywhere, and one problem in a tensor that sorts last.
  std::map<std::string, at::Tensor> state;
  for (const auto& [name, t] : before) state[name] = at::randn_like(t);
  state["v_proj.weight"] = at::zeros({8, 7});
  EXPECT_THROW(load_state(*m, state, "bad shape"), c10::Error);
  expect_state_equal(module_state(*m), before);

  state["v_proj.weight"] = at::randn({8, 8});
  state["v_proj.weight"][7][7] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(load_state(*m, state, "non-finite"), c10::Error);
  expect_state_equal(module_state(*m), before);

  state["v_proj.weight"] = at::randn({8, 8});
  state["zzz_unexpected"] = at::zeros({1});
  EXPECT_THROW(load_state(*m, state, "unexpected"), c10::Error);
  expect_state_equal(module_state(*m), before);
}

TEST(Weights, RejectsNonFiniteWeights) {
  StridedAttention m(StridedAttentionOptions(8, 2, 2));
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    auto state = clone_state(*m);
    state["q_proj.weight"][0][0] = bad;
    EXPECT_TRUE(ThrowsWith([&] { load_state(*m, state, "src"); },
                           {"non-finite values (1): q_proj.weight"}));
  }
}

TEST(Weights, LoadCopiesValuesRatherThanSharingThem) {
  StridedAttention m(StridedAttentionOptions(8, 2, 2));
  auto state = clone_state(*m);
  for (auto& [name, t] : state) t.fill_(0.5);
  load_state(*m, state, "halves");
  for (auto& [name, t] : state) t.fill_(-1.0);
  for (const auto& [name, t] : module_state(*m)) {
    EXPECT_TRUE(at::equal(t, at::full_like(t, 0.5))) << name;
  }
}

TEST(Weights, LoadsInsideInferenceMode) {
  // A server may load weights on a thread that serves requests under InferenceMode.
  StridedAttention m(StridedAttentionOptions(8, 2, 2));
  auto state = clone_state(*m);
  for (auto& [name, t] : state) t.fill_(0.25);
  {
    c10::InferenceMode guard;
    load_state(*m, state, "inference");
  }
  for (const auto& [name, t] : module_state(*m)) {
    EXPECT_TRUE(at::equal(t, at::full_like(t, 0.25))) << name;
  }
  auto x = testing::randn({1, 3, 8});
  c10::InferenceMode guard;
  EXPECT_TRUE(at::isfinite(m->forward(x)).all().item<bool>());
}

TEST(Weights, MissingFileIsAnErrorNamingThePath) {
  StridedAttention m(StridedAttentionOptions(8, 2, 2));
  const std::string path = ::testing::TempDir() + "hvlm_no_such_dir/weights.safetensors";
  EXPECT_TRUE(ThrowsWith([&] { load_weights(*m, path); }, {"'" + path + "'"}));
}

TEST(Weights, LoadingAnotherModulesFileNamesThePath) {
  StridedAttention small(StridedAttentionOptions(8, 2, 2));
  StridedAttention large(StridedAttentionOptions(16, 2, 2));
  const std::string path = temp_path("other_module");
  save_weights(*small, path);
  EXPECT_TRUE(ThrowsWith([&] { load_weights(*large, path); },
                         {path, "shape mismatch (8)", "q_proj.weight expected [16, 16], got [8, 8]"}));
  std::remove(path.c_str());
}

}  // namespace
}  // namespace hvlm
