// StackSpec: the declarative description of an AttentionStack, a model dimension plus an
// ordered list of blocks, each a type and that type's options (docs/attention.md). Parsed
// from JSON here; the server maps its YAML onto the same JSON shape. Every problem is reported
// as a c10::Error naming the offending key, e.g. "blocks[2].stride must be an integer".
// Value type; thread-compatible.
#pragma once

#include "attention/hierarchical_attention_block.h"
#include "attention/linear_attention_block.h"

#include <nlohmann/json_fwd.hpp>

#include <string>
#include <variant>
#include <vector>

namespace hvlm {

// The block types, as spelled in specs: strided, local_global, cross_memory, performer, mamba.
const std::vector<std::string>& block_types();

struct BlockSpec {
  /// One of block_types().
  std::string type;
  /// HierarchicalAttentionBlock for strided / local_global / cross_memory, else
  /// LinearAttentionBlock; attention_type equals `type` and dim the stack's dim.
  std::variant<HierarchicalAttentionBlockOptions, LinearAttentionBlockOptions> options;
};

struct StackSpec {
  /// Model dimension D shared by all blocks.
  int64_t dim = 0;
  std::vector<BlockSpec> blocks;

  /// Parses {"dim": D, "blocks": [{"type": ..., options...}, ...]}; unknown keys are errors.
  static StackSpec from_json(const nlohmann::json& spec);
  /// Same, from JSON text.
  static StackSpec parse(const std::string& json_text);
  /// The normalised spec: every option of every block written out, defaults included.
  nlohmann::json to_json() const;
};

// Parses one block object; `where` prefixes error messages (e.g. "blocks[2]").
BlockSpec parse_block_spec(const nlohmann::json& block, int64_t dim, const std::string& where);

}  // namespace hvlm
