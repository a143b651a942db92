// StackSpec: parsing the declarative stack description of docs/attention.md, errors that name
// the offending key, and the normalised to_json form.
#include "attention/stack_spec.h"

#include "tests/cpp/test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <string>

namespace hvlm {
namespace {

using nlohmann::json;
using testing::ThrowsWith;

// The example of docs/attention.md, verbatim.
const char* const kDocsExample = R"({"dim": 768,
 "blocks": [
   {"type": "local_global", "num_heads": 12, "local_window": 64, "num_global_tokens": 4},
   {"type": "cross_memory", "num_heads": 12},
   {"type": "mamba", "state_size": 16, "expand_factor": 2.0},
   {"type": "strided", "num_heads": 12, "stride": 8},
   {"type": "performer", "num_heads": 12, "num_random_features": 256, "kernel_type": "softmax"}
 ]})";

const HierarchicalAttentionBlockOptions& hier(const BlockSpec& b) {
  return std::get<HierarchicalAttentionBlockOptions>(b.options);
}
const LinearAttentionBlockOptions& lin(const BlockSpec& b) {
  return std::get<LinearAttentionBlockOptions>(b.options);
}

// One block spec inside {"dim": 16, "blocks": [...]}.
std::string with_blocks(const std::string& blocks) {
  return R"({"dim": 16, "blocks": [)" + blocks + "]}";
}

TEST(StackSpec, ParsesTheDocumentedExample) {
  const auto spec = StackSpec::parse(kDocsExample);
  EXPECT_EQ(spec.dim, 768);
  ASSERT_EQ(spec.blocks.size(), 5u);
  const auto& b = spec.blocks;
  EXPECT_EQ(b[0].type, "local_global");
  EXPECT_EQ(hier(b[0]).attention_type(), "local_global");
  EXPECT_EQ(hier(b[0]).dim(), 768);
  EXPECT_EQ(hier(b[0]).num_heads(), 12);
  EXPECT_EQ(hier(b[0]).local_window(), 64);
  EXPECT_EQ(hier(b[0]).num_global_tokens(), 4);
  EXPECT_EQ(b[1].type, "cross_memory");
  EXPECT_EQ(hier(b[1]).attention_type(), "cross_memory");
  EXPECT_EQ(hier(b[1]).num_heads(), 12);
  EXPECT_EQ(b[2].type, "mamba");
  EXPECT_EQ(lin(b[2]).attention_type(), "mamba");
  EXPECT_EQ(lin(b[2]).dim(), 768);
  EXPECT_EQ(lin(b[2]).state_size(), 16);
  EXPECT_EQ(lin(b[2]).expand_factor(), 2.0);
  EXPECT_EQ(b[3].type, "strided");
  EXPECT_EQ(hier(b[3]).stride(), 8);
  EXPECT_EQ(b[4].type, "performer");
  EXPECT_EQ(lin(b[4]).attention_type(), "performer");
  EXPECT_EQ(lin(b[4]).num_heads(), 12);
  EXPECT_EQ(lin(b[4]).num_random_features(), 256);
  EXPECT_EQ(lin(b[4]).kernel_type(), "softmax");
  for (const auto& block : b) {
    const double ratio = block.type == "mamba" || block.type == "performer"
                             ? lin(block).mlp_ratio()
                             : hier(block).mlp_ratio();
    EXPECT_EQ(ratio, 4.0) << block.type;
  }
}

TEST(StackSpec, OmittedOptionsTakeTheDocumentedDefaults) {
  const auto spec = StackSpec::parse(with_blocks(
      R"({"type": "strided"}, {"type": "local_global"}, {"type": "mamba"}, {"type": "performer"})"));
  EXPECT_EQ(hier(spec.blocks[0]).num_heads(), 12);
  EXPECT_EQ(hier(spec.blocks[1]).local_window(), 64);
  EXPECT_EQ(hier(spec.blocks[1]).num_global_tokens(), 4);
  const auto& m = lin(spec.blocks[2]);
  EXPECT_EQ(m.state_size(), 16);
  EXPECT_EQ(m.expand_factor(), 2.0);
  EXPECT_EQ(m.d_conv(), 4);
  EXPECT_EQ(m.dt_rank(), 0);
  EXPECT_EQ(m.dt_init(), "random");
  EXPECT_EQ(m.dt_min(), 1e-3);
  EXPECT_EQ(m.dt_max(), 0.1);
  EXPECT_EQ(m.dt_init_floor(), 1e-4);
  EXPECT_EQ(m.dropout(), 0.0);
  EXPECT_EQ(lin(spec.blocks[3]).num_random_features(), 256);
  EXPECT_EQ(lin(spec.blocks[3]).kernel_type(), "softmax");
}

TEST(StackSpec, CommonOptionsApplyToEveryBlockType) {
  const auto spec = StackSpec::parse(with_blocks(
      R"({"type": "cross_memory", "mlp_ratio": 2.5, "dropout": 0.25},
         {"type": "mamba", "mlp_ratio": 3, "dropout": 0.5})"));
  EXPECT_EQ(hier(spec.blocks[0]).mlp_ratio(), 2.5);
  EXPECT_EQ(hier(spec.blocks[0]).dropout(), 0.25);
  EXPECT_EQ(lin(spec.blocks[1]).mlp_ratio(), 3.0);  // an integer where a number is expected
  EXPECT_EQ(lin(spec.blocks[1]).dropout(), 0.5);
}

TEST(StackSpec, DtRankAcceptsAutoOrAnInteger) {
  const auto spec = StackSpec::parse(
      with_blocks(R"({"type": "mamba", "dt_rank": "auto"}, {"type": "mamba", "dt_rank": 5})"));
  EXPECT_EQ(lin(spec.blocks[0]).dt_rank(), 0);
  EXPECT_EQ(lin(spec.blocks[1]).dt_rank(), 5);
  EXPECT_TRUE(ThrowsWith(
      [] { StackSpec::parse(with_blocks(R"({"type": "mamba", "dt_rank": "big"})")); },
      {"blocks[0].dt_rank must be an integer or \"auto\"", "\"big\""}));
  EXPECT_TRUE(ThrowsWith(
      [] { StackSpec::parse(with_blocks(R"({"type": "mamba", "dt_rank": 1.5})")); },
      {"blocks[0].dt_rank must be an integer"}));
}

// Unknown keys are named as blocks[i].key, as in the Python twin.
TEST(StackSpec, RejectsUnknownOptionNamingTheKey) {
  EXPECT_TRUE(ThrowsWith(
      [] { StackSpec::parse(with_blocks(R"({"type": "strided"}, {"type": "mamba", "foo": 1})")); },
      {"blocks[1].foo"}));
  // An option of another block type is unknown here.
  EXPECT_TRUE(ThrowsWith(
      [] { StackSpec::parse(with_blocks(R"({"type": "local_global", "stride": 2})")); },
      {"blocks[0].stride"}));
  EXPECT_TRUE(ThrowsWith(
      [] { StackSpec::parse(with_blocks(R"({"type": "performer", "state_size": 2})")); },
      {"blocks[0].state_size"}));
}

TEST(StackSpec, RejectsUnknownOptionListingEveryUnknownKey) {
  const std::string msg = testing::error_message([] {
    StackSpec::parse(with_blocks(R"({"type": "strided", "foo": 1, "bar": 2, "stride": 3})"));
  });
  EXPECT_NE(msg.find("blocks[0]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("foo"), std::string::npos) << msg;
  EXPECT_NE(msg.find("bar"), std::string::npos) << msg;
}

TEST(StackSpec, RejectsValueOfTheWrongTypeNamingTheKey) {
  EXPECT_TRUE(ThrowsWith(
      [] { StackSpec::parse(with_blocks(R"({"type": "strided", "stride": "x"})")); },
      {"blocks[0].stride must be an integer", "\"x\""}));
  EXPECT_TRUE(ThrowsWith(
      [] { StackSpec::parse(with_blocks(R"({"type": "strided"}, {"type": "strided", "stride": 2.5})")); },
      {"blocks[1].stride must be an integer"}));
  EXPECT_TRUE(ThrowsWith(
      [] { StackSpec::parse(with_blocks(R"({"type": "local_global", "local_window": true})")); },
      {"blocks[0].local_window must be an integer"}));
  EXPECT_TRUE(ThrowsWith(
      [] { StackSpec::parse(with_blocks(R"({"type": "mamba", "expand_factor": "2"})")); },
      {"blocks[0].expand_factor must be a number"}));
  EXPECT_TRUE(ThrowsWith(
      [] { StackSpec::parse(with_blocks(R"({"type": "performer", "kernel_type": 1})")); },
      {"blocks[0].kernel_type must be a string"}));
  EXPECT_TRUE(ThrowsWith(
      [] { StackSpec::parse(with_blocks(R"({"type": "cross_memory", "mlp_ratio": null})")); },
      {"blocks[0].mlp_ratio must be a number"}));
}

TEST(StackSpec, RejectsUnknownBlockType) {
  EXPECT_TRUE(ThrowsWith([] { StackSpec::parse(with_blocks(R"({"type": "conv"})")); },
                         {"blocks[0].type must be one of", "'conv'"}));
  EXPECT_TRUE(ThrowsWith([] { StackSpec::parse(with_blocks(R"({"stride": 2})")); },
                         {"blocks[0].type"}));
  EXPECT_TRUE(ThrowsWith([] { StackSpec::parse(with_blocks(R"({"type": 3})")); },
                         {"blocks[0].type"}));
  EXPECT_TRUE(ThrowsWith([] { StackSpec::parse(with_blocks(R"("strided")")); },
                         {"blocks[0] must be an object"}));
}

TEST(StackSpec, RejectsMissingOrInvalidDim) {
  EXPECT_TRUE(ThrowsWith([] { StackSpec::parse(R"({"blocks": [{"type": "strided"}]})"); },
                         {"dim must be a positive integer"}));
  EXPECT_TRUE(ThrowsWith(
      [] { StackSpec::parse(R"({"dim": 0, "blocks": [{"type": "strided"}]})"); },
      {"dim must be a positive integer"}));
  EXPECT_TRUE(ThrowsWith(
      [] { StackSpec::parse(R"({"dim": "768", "blocks": [{"type": "strided"}]})"); },
      {"dim must be a positive integer"}));
}

TEST(StackSpec, RejectsEmptyOrMissingBlocks) {
  EXPECT_TRUE(ThrowsWith([] { StackSpec::parse(R"({"dim": 16, "blocks": []})"); },
                         {"blocks must be a non-empty list"}));
  EXPECT_TRUE(ThrowsWith([] { StackSpec::parse(R"({"dim": 16})"); },
                         {"blocks must be a non-empty list"}));
  EXPECT_TRUE(ThrowsWith([] { StackSpec::parse(R"({"dim": 16, "blocks": {}})"); },
                         {"blocks must be a non-empty list"}));
}

TEST(StackSpec, RejectsUnknownTopLevelKey) {
  EXPECT_TRUE(ThrowsWith(
      [] { StackSpec::parse(R"({"dim": 16, "blocks": [{"type": "strided"}], "depth": 3})"); },
      {"unknown key(s): depth"}));
}

TEST(StackSpec, RejectsInvalidJsonText) {
  EXPECT_TRUE(ThrowsWith([] { StackSpec::parse(R"({"dim": 16, "blocks": [)"); },
                         {"stack spec is not valid JSON"}));
  EXPECT_TRUE(ThrowsWith([] { StackSpec::parse(""); }, {"stack spec is not valid JSON"}));
  EXPECT_TRUE(ThrowsWith([] { StackSpec::parse("[1, 2]"); }, {"stack spec must be an object"}));
}

TEST(StackSpec, ToJsonWritesEveryOptionWithDefaults) {
  const auto j = StackSpec::parse(with_blocks(R"({"type": "strided"}, {"type": "mamba"})")).to_json();
  EXPECT_EQ(j.at("dim"), 16);
  const auto& strided = j.at("blocks").at(0);
  EXPECT_EQ(strided.at("type"), "strided");
  EXPECT_EQ(strided.at("stride"), 4);
  EXPECT_EQ(strided.at("num_heads"), 12);
  EXPECT_EQ(strided.at("mlp_ratio"), 4.0);
  const auto& mamba = j.at("blocks").at(1);
  EXPECT_EQ(mamba.at("dt_rank"), "auto");
  EXPECT_EQ(mamba.at("state_size"), 16);
  EXPECT_EQ(mamba.at("dt_init"), "random");
  EXPECT_FALSE(mamba.contains("num_heads"));
}

TEST(StackSpec, ToJsonRoundTripsThroughParse) {
  for (const std::string& text :
       {std::string(kDocsExample),
        with_blocks(R"({"type": "mamba", "dt_rank": 3, "dt_init": "constant", "d_conv": 2,
                        "dt_min": 0.002, "dt_max": 0.2, "dt_init_floor": 0.001, "dropout": 0.1},
                       {"type": "performer", "kernel_type": "elu", "num_heads": 4},
                       {"type": "local_global", "local_window": 8, "num_global_tokens": 0},
                       {"type": "cross_memory", "mlp_ratio": 1.5})")}) {
    const auto first = StackSpec::parse(text).to_json();
    const auto second = StackSpec::parse(first.dump()).to_json();
    EXPECT_EQ(second, first);
    EXPECT_EQ(second.dump(), first.dump());
    EXPECT_EQ(StackSpec::from_json(first).to_json(), first);
  }
}

TEST(StackSpec, ParseBlockSpecPrefixesErrorsWithWhere) {
  EXPECT_TRUE(ThrowsWith(
      [] { parse_block_spec(json{{"type", "strided"}, {"stride", "two"}}, 16, "layer 3"); },
      {"layer 3.stride must be an integer"}));
  const auto b = parse_block_spec(json{{"type", "performer"}, {"num_heads", 4}}, 32, "x");
  EXPECT_EQ(lin(b).dim(), 32);
  EXPECT_EQ(lin(b).num_heads(), 4);
}

TEST(StackSpec, BlockTypesAreTheFiveDocumentedOnes) {
  EXPECT_EQ(block_types(), (std::vector<std::string>{"strided", "local_global", "cross_memory",
                                                     "performer", "mamba"}));
}

}  // namespace
}  // namespace hvlm
