// Parity with the Python twin: for every case that tests/parity/gen_cases.py wrote (random
// weights exported by the twin, an input, and the twin's outputs), the C++ module loaded from
// the same safetensors file must reproduce the outputs within a max relative error of 1e-5
// (max|cpp - py| / max|py|, float32). The case directory comes from HVLM_PARITY_DIR, set by
// CTest after the generator fixture has run.
#include "attention/attention_stack.h"
#include "attention/safetensors.h"
#include "attention/weights.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace hvlm {
namespace {

using nlohmann::json;

constexpr double kTolerance = 1e-5;

std::string parity_dir() {
  const char* dir = std::getenv("HVLM_PARITY_DIR");
  return dir ? dir : "";
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::stringstream text;
  text << in.rdbuf();
  return json::parse(text.str());
}

double relative_error(const at::Tensor& got, const at::Tensor& want) {
  EXPECT_EQ(got.sizes(), want.sizes());
  if (got.sizes() != want.sizes()) return 1e30;
  const double scale = want.abs().max().item<double>();
  const double diff = (got - want).abs().max().item<double>();
  return scale > 0 ? diff / scale : diff;
}

// Block options from the twin's constructor keyword arguments (dim included).
BlockSpec block_from_options(const std::string& type, json options) {
  const int64_t dim = options.at("dim").get<int64_t>();
  options.erase("dim");
  options["type"] = type;
  return parse_block_spec(options, dim, type);
}

struct Outputs {
  at::Tensor y;
  MambaState state;                 // module and block cases
  std::vector<MambaState> states;   // stack cases
};

Outputs run_module(const std::string& type, const json& options, const json& call,
                   const std::map<std::string, at::Tensor>& io, const std::string& weights) {
  const auto spec = block_from_options(type, options);
  const auto& x = io.at("x");
  Outputs out;
  if (const auto* h = std::get_if<HierarchicalAttentionBlockOptions>(&spec.options)) {
    if (type == "strided") {
      StridedAttention m(StridedAttentionOptions(h->dim(), h->num_heads(), h->stride()));
      load_weights(*m, weights);
      m->eval();
      out.y = m->forward(x);
    } else if (type == "local_global") {
      LocalGlobalAttention m(LocalGlobalAttentionOptions(h->dim(), h->num_heads())
                                 .local_window(h->local_window())
                                 .num_global_tokens(h->num_global_tokens()));
      load_weights(*m, weights);
      m->eval();
      out.y = m->forward(x);
    } else {
      CrossMemoryAttention m(CrossMemoryAttentionOptions(h->dim(), h->num_heads()));
      load_weights(*m, weights);
      m->eval();
      const auto& memory = io.at("memory");
      if (call.at("method") == "fuse_with_memory") {
        out.y = m->fuse_with_memory(x, memory, call.at("fusion_ratio").get<double>());
      } else {
        out.y = m->forward(x, memory, call.value("residual", true));
      }
    }
    return out;
  }
  const auto& l = std::get<LinearAttentionBlockOptions>(spec.options);
  if (type == "performer") {
    PerformerAttention m(PerformerAttentionOptions(l.dim(), l.num_heads())
                             .num_random_features(l.num_random_features())
                             .kernel_type(l.kernel_type()));
    load_weights(*m, weights);
    m->eval();
    out.y = m->forward(x);
    return out;
  }
  MambaLayer m(MambaLayerOptions(l.dim())
                   .state_size(l.state_size())
                   .expand_factor(l.expand_factor())
                   .d_conv(l.d_conv())
                   .dt_rank(l.dt_rank())
                   .dt_init(l.dt_init()));
  load_weights(*m, weights);
  m->eval();
  MambaState state;
  if (io.count("conv_state")) state = {io.at("conv_state"), io.at("ssm_state")};
  std::tie(out.y, out.state) = m->forward_stream(x, state);
  return out;
}

Outputs run_block(const std::string& type, const json& options,
                  const std::map<std::string, at::Tensor>& io, const std::string& weights) {
  const auto spec = block_from_options(type, options);
  const auto& x = io.at("x");
  Outputs out;
  if (const auto* h = std::get_if<HierarchicalAttentionBlockOptions>(&spec.options)) {
    HierarchicalAttentionBlock b(*h);
    load_weights(*b, weights);
    b->eval();
    out.y = b->forward(x, io.count("memory") ? io.at("memory") : at::Tensor());
    return out;
  }
  LinearAttentionBlock b(std::get<LinearAttentionBlockOptions>(spec.options));
  load_weights(*b, weights);
  b->eval();
  MambaState state;
  if (io.count("conv_state")) state = {io.at("conv_state"), io.at("ssm_state")};
  std::tie(out.y, out.state) = b->forward_stream(x, state);
  return out;
}

Outputs run_stack(const json& spec_json, const std::map<std::string, at::Tensor>& io,
                  const std::string& weights) {
  AttentionStack stack(StackSpec::from_json(spec_json));
  load_weights(*stack, weights);
  stack->eval();
  const size_t n = stack->num_blocks();
  std::vector<at::Tensor> memories(n);
  std::vector<MambaState> states(n);
  for (size_t i = 0; i < n; ++i) {
    const auto idx = std::to_string(i);
    if (io.count("memory." + idx)) memories[i] = io.at("memory." + idx);
    if (io.count("conv_state." + idx)) {
      states[i] = {io.at("conv_state." + idx), io.at("ssm_state." + idx)};
    }
  }
  auto result = stack->forward(io.at("x"), memories, states);
  return {result.y, {}, result.states};
}

TEST(Parity, CppMatchesPythonTwinOnEveryCase) {
  const std::string dir = parity_dir();
  ASSERT_FALSE(dir.empty()) << "HVLM_PARITY_DIR is not set; run through ctest";
  const json index = read_json(dir + "/index.json");
  const auto& names = index.is_object() ? index.at("cases") : index;
  ASSERT_GE(names.size(), 20u) << "too few parity cases generated";
  c10::InferenceMode inference;
  for (const auto& name_json : names) {
    const std::string name = name_json.get<std::string>();
    SCOPED_TRACE("case " + name);
    const json c = read_json(dir + "/" + name + ".json");
    const auto io = read_safetensors(dir + "/" + name + ".io.safetensors").tensors;
    const std::string weights = dir + "/" + name + ".weights.safetensors";
    const std::string kind = c.at("kind");
    Outputs out;
    if (kind == "stack") {
      out = run_stack(c.at("spec"), io, weights);
    } else if (kind == "block") {
      out = run_block(c.at("type"), c.at("options"), io, weights);
    } else {
      out = run_module(c.at("type"), c.at("options"), c.value("call", json::object()), io,
                       weights);
    }
    EXPECT_LE(relative_error(out.y, io.at("expected")), kTolerance);
    if (io.count("expected_conv_state")) {
      ASSERT_TRUE(out.state.defined());
      EXPECT_LE(relative_error(out.state.conv_state, io.at("expected_conv_state")), kTolerance);
      EXPECT_LE(relative_error(out.state.ssm_state, io.at("expected_ssm_state")), kTolerance);
    }
    for (size_t i = 0; i < out.states.size(); ++i) {
      const auto idx = std::to_string(i);
      if (!io.count("expected_conv_state." + idx)) continue;
      SCOPED_TRACE("block " + idx);
      ASSERT_TRUE(out.states[i].defined());
      EXPECT_LE(relative_error(out.states[i].conv_state, io.at("expected_conv_state." + idx)),
                kTolerance);
      EXPECT_LE(relative_error(out.states[i].ssm_state, io.at("expected_ssm_state." + idx)),
                kTolerance);
    }
  }
}

}  // namespace
}  // namespace hvlm
