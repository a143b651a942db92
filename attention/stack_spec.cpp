#include "attention/stack_spec.h"

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <set>

namespace hvlm {
namespace {

using nlohmann::json;

// Reads typed values out of one JSON object and remembers which keys it consumed, so that
// leftovers can be reported as unknown.
class KeyReader {
 public:
  KeyReader(const json& obj, std::string where) : obj_(obj), where_(std::move(where)) {}

  bool has(const char* key) const { return obj_.contains(key); }

  int64_t integer(const char* key, int64_t fallback) {
    if (!take(key)) return fallback;
    const auto& v = obj_.at(key);
    TORCH_CHECK(v.is_number_integer(), where_, ".", key, " must be an integer, got ", v.dump());
    return v.get<int64_t>();
  }

  double number(const char* key, double fallback) {
    if (!take(key)) return fallback;
    const auto& v = obj_.at(key);
    TORCH_CHECK(v.is_number(), where_, ".", key, " must be a number, got ", v.dump());
    return v.get<double>();
  }

  std::string string(const char* key, const std::string& fallback) {
    if (!take(key)) return fallback;
    const auto& v = obj_.at(key);
    TORCH_CHECK(v.is_string(), where_, ".", key, " must be a string, got ", v.dump());
    return v.get<std::string>();
  }

  // dt_rank: a positive integer, or "auto" (stored as 0).
  int64_t integer_or_auto(const char* key, int64_t fallback) {
    if (has(key) && obj_.at(key).is_string()) {
      TORCH_CHECK(obj_.at(key).get<std::string>() == "auto", where_, ".", key,
                  " must be an integer or \"auto\", got ", obj_.at(key).dump());
      take(key);
      return 0;
    }
    return integer(key, fallback);
  }

  void reject_unknown(const std::string& type) const {
    std::string unknown;
    for (const auto& item : obj_.items()) {
      if (!seen_.count(item.key())) {
        unknown += (unknown.empty() ? "" : ", ") + where_ + "." + item.key();
      }
    }
    TORCH_CHECK(unknown.empty(), where_, ": unknown option(s) for a ", type, " block: ", unknown);
  }

 private:
  bool take(const char* key) {
    seen_.insert(key);
    return obj_.contains(key);
  }

  const json& obj_;
  std::string where_;
  std::set<std::string> seen_{"type"};
};

json block_to_json(const BlockSpec& b) {
  json j;
  j["type"] = b.type;
  if (const auto* h = std::get_if<HierarchicalAttentionBlockOptions>(&b.options)) {
    j["num_heads"] = h->num_heads();
    if (b.type == "strided") j["stride"] = h->stride();
    if (b.type == "local_global") {
      j["local_window"] = h->local_window();
      j["num_global_tokens"] = h->num_global_tokens();
    }
    j["mlp_ratio"] = h->mlp_ratio();
    j["dropout"] = h->dropout();
  } else {
    const auto& l = std::get<LinearAttentionBlockOptions>(b.options);
    if (b.type == "performer") {
      j["num_heads"] = l.num_heads();
      j["num_random_features"] = l.num_random_features();
      j["kernel_type"] = l.kernel_type();
    } else {
      j["state_size"] = l.state_size();
      j["expand_factor"] = l.expand_factor();
      j["d_conv"] = l.d_conv();
      j["dt_rank"] = l.dt_rank() > 0 ? json(l.dt_rank()) : json("auto");
      j["dt_init"] = l.dt_init();
      j["dt_min"] = l.dt_min();
      j["dt_max"] = l.dt_max();
      j["dt_init_floor"] = l.dt_init_floor();
    }
    j["mlp_ratio"] = l.mlp_ratio();
    j["dropout"] = l.dropout();
  }
  return j;
}

}  // namespace

const std::vector<std::string>& block_types() {
  static const std::vector<std::string> types{"strided", "local_global", "cross_memory",
                                              "performer", "mamba"};
  return types;
}

BlockSpec parse_block_spec(const json& block, int64_t dim, const std::string& where) {
  TORCH_CHECK(block.is_object(), where, " must be an object, got ", block.dump());
  TORCH_CHECK(block.contains("type") && block.at("type").is_string(), where,
              ".type must be one of strided, local_global, cross_memory, performer, mamba");
  const auto type = block.at("type").get<std::string>();
  KeyReader r(block, where);
  BlockSpec spec;
  spec.type = type;
  if (type == "strided" || type == "local_global" || type == "cross_memory") {
    HierarchicalAttentionBlockOptions o(dim, 12);
    o.attention_type(type).num_heads(r.integer("num_heads", o.num_heads()));
    if (type == "strided") o.stride(r.integer("stride", o.stride()));
    if (type == "local_global") {
      o.local_window(r.integer("local_window", o.local_window()));
      o.num_global_tokens(r.integer("num_global_tokens", o.num_global_tokens()));
    }
    o.mlp_ratio(r.number("mlp_ratio", o.mlp_ratio())).dropout(r.number("dropout", o.dropout()));
    spec.options = o;
  } else if (type == "performer" || type == "mamba") {
    LinearAttentionBlockOptions o(dim);
    o.attention_type(type);
    if (type == "performer") {
      o.num_heads(r.integer("num_heads", o.num_heads()))
          .num_random_features(r.integer("num_random_features", o.num_random_features()))
          .kernel_type(r.string("kernel_type", o.kernel_type()));
    } else {
      o.state_size(r.integer("state_size", o.state_size()))
          .expand_factor(r.number("expand_factor", o.expand_factor()))
          .d_conv(r.integer("d_conv", o.d_conv()))
          .dt_rank(r.integer_or_auto("dt_rank", o.dt_rank()))
          .dt_init(r.string("dt_init", o.dt_init()))
          .dt_min(r.number("dt_min", o.dt_min()))
          .dt_max(r.number("dt_max", o.dt_max()))
          .dt_init_floor(r.number("dt_init_floor", o.dt_init_floor()));
    }
    o.mlp_ratio(r.number("mlp_ratio", o.mlp_ratio())).dropout(r.number("dropout", o.dropout()));
    spec.options = o;
  } else {
    TORCH_CHECK(false, where, ".type must be one of strided, local_global, cross_memory, "
                "performer, mamba, got '", type, "'");
  }
  r.reject_unknown(type);
  return spec;
}

StackSpec StackSpec::from_json(const json& spec) {
  TORCH_CHECK(spec.is_object(), "stack spec must be an object with dim and blocks");
  std::string unknown;
  for (const auto& item : spec.items()) {
    if (item.key() != "dim" && item.key() != "blocks") {
      unknown += (unknown.empty() ? "" : ", ") + item.key();
    }
  }
  TORCH_CHECK(unknown.empty(), "stack spec: unknown key(s): ", unknown);
  TORCH_CHECK(spec.contains("dim") && spec.at("dim").is_number_integer() &&
                  spec.at("dim").get<int64_t>() > 0,
              "dim must be a positive integer");
  TORCH_CHECK(spec.contains("blocks") && spec.at("blocks").is_array() &&
                  !spec.at("blocks").empty(),
              "blocks must be a non-empty list");
  StackSpec out;
  out.dim = spec.at("dim").get<int64_t>();
  const auto& blocks = spec.at("blocks");
  for (size_t i = 0; i < blocks.size(); ++i) {
    out.blocks.push_back(
        parse_block_spec(blocks[i], out.dim, "blocks[" + std::to_string(i) + "]"));
  }
  return out;
}

StackSpec StackSpec::parse(const std::string& json_text) {
  json parsed;
  try {
    parsed = json::parse(json_text);
  } catch (const json::exception& e) {
    TORCH_CHECK(false, "stack spec is not valid JSON: ", e.what());
  }
  return from_json(parsed);
}

json StackSpec::to_json() const {
  json blocks_json = json::array();
  for (const auto& b : blocks) blocks_json.push_back(block_to_json(b));
  return json{{"dim", dim}, {"blocks", blocks_json}};
}

}  // namespace hvlm
