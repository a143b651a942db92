#include "server/config.h"

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

namespace hvlm {
namespace {

[[noreturn]] void bad(const std::string& key, const std::string& what) {
  throw ConfigError(key + ": " + what);
}

std::string scalar_text(const YAML::Node& node) {
  return node.IsScalar() ? "'" + node.Scalar() + "'" : std::string("a non-scalar value");
}

// A YAML mapping whose keys are checked: reading marks a key used; finish() rejects the rest.
class Mapping {
 public:
  Mapping(const YAML::Node& node, std::string path) : node_(node), path_(std::move(path)) {
    if (!node_.IsMap()) bad(path_.empty() ? "config" : path_, "must be a mapping");
  }

  std::string key(const std::string& name) const { return path_.empty() ? name : path_ + "." + name; }

  YAML::Node get(const std::string& name) {
    used_.insert(name);
    return node_[name];
  }

  bool has(const std::string& name) const { return static_cast<bool>(node_[name]); }

  std::string string(const std::string& name, const std::string& fallback) {
    const YAML::Node n = get(name);
    if (!n) return fallback;
    if (!n.IsScalar()) bad(key(name), "must be a string");
    return n.Scalar();
  }

  std::string choice(const std::string& name, const std::string& fallback,
                     const std::vector<std::string>& allowed) {
    const std::string value = string(name, fallback);
    for (const auto& a : allowed) {
      if (value == a) return value;
    }
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    bad(key(name), "must be one of " + list + ", got '" + value + "'");
  }

  // `true` or `false` (exactly; other YAML spellings are refused with the choices named).
  bool flag(const std::string& name, bool fallback) {
    return choice(name, fallback ? "true" : "false", {"true", "false"}) == "true";
  }

  int64_t integer(const std::string& name, int64_t fallback, int64_t min_value) {
    const YAML::Node n = get(name);
    if (!n) return fallback;
    int64_t value = 0;
    if (!n.IsScalar() || !YAML::convert<int64_t>::decode(n, value) || value < min_value) {
      bad(key(name), "must be an integer >= " + std::to_string(min_value) + ", got " +
                         scalar_text(n));
    }
    return value;
  }

  // A number in (min, max], or in [min, max] when `min_inclusive`.
  double number(const std::string& name, double fallback, double min, double max_value,
                bool min_inclusive = false) {
    const YAML::Node n = get(name);
    if (!n) return fallback;
    double value = 0;
    if (!n.IsScalar() || !YAML::convert<double>::decode(n, value) ||
        !(min_inclusive ? value >= min : value > min) || !(value <= max_value)) {
      std::ostringstream m;
      m << "must be a number " << (min_inclusive ? ">= " : "> ") << min << " and <= " << max_value << ", got "
        << scalar_text(n);
      bad(key(name), m.str());
    }
    return value;
  }

  void finish() const {
    for (const auto& kv : node_) {
      const std::string k = kv.first.Scalar();
      if (!used_.count(k)) bad(key(k), "unknown key");
    }
  }

 private:
  YAML::Node node_;
  std::string path_;
  std::set<std::string> used_;
};

// YAML -> JSON for inline stack specs: integers, then numbers, then booleans, else strings.
nlohmann::json to_json(const YAML::Node& node, const std::string& key) {
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      nlohmann::json out = nlohmann::json::object();
      for (const auto& kv : node) out[kv.first.Scalar()] = to_json(kv.second, key + "." + kv.first.Scalar());
      return out;
    }
    case YAML::NodeType::Sequence: {
      nlohmann::json out = nlohmann::json::array();
      for (size_t i = 0; i < node.size(); ++i) {
        out.push_back(to_json(node[i], key + "[" + std::to_string(i) + "]"));
      }
      return out;
    }
    case YAML::NodeType::Scalar: {
      if (node.Tag() == "!") return node.Scalar();  // quoted: always a string
      int64_t i = 0;
      if (YAML::convert<int64_t>::decode(node, i)) return i;
      double d = 0;
      if (YAML::convert<double>::decode(node, d)) return d;
      bool b = false;
      if (YAML::convert<bool>::decode(node, b)) return b;
      return node.Scalar();
    }
    default:
      bad(key, "must not be empty");
  }
}

std::string resolve(const std::string& path, const std::string& base_dir) {
  const std::filesystem::path p(path);
  return p.is_absolute() || base_dir.empty() ? p.string() : (std::filesystem::path(base_dir) / p).string();
}

std::string read_file(const std::string& path, const std::string& key) {
  std::ifstream in(path, std::ios::binary);
  if (!in) bad(key, "cannot read '" + path + "'");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

MemoryBankOptions parse_memory(const YAML::Node& node, const std::string& path,
                               const MemoryBankOptions& base) {
  Mapping m(node, path);
  MemoryBankOptions out = base;
  out.policy = m.choice("policy", memory_policy_name(base.policy), {"fifo", "merge"}) == "fifo"
                   ? MemoryPolicy::kFifo
                   : MemoryPolicy::kMerge;
  out.capacity = m.integer("capacity", base.capacity, 1);
  out.tokens_per_segment = m.integer("tokens_per_segment", base.tokens_per_segment, 1);
  m.finish();
  return out;
}

StackConfig parse_stack(const std::string& name, const YAML::Node& node, const std::string& base_dir) {
  const std::string path = "stacks." + name;
  Mapping m(node, path);
  StackConfig stack;
  stack.name = name;

  nlohmann::json spec_json;
  const bool inline_spec = m.has("spec");
  const bool file_spec = m.has("spec_file");
  if (inline_spec == file_spec) bad(path, "needs exactly one of spec (inline) or spec_file");
  std::string spec_key;
  if (inline_spec) {
    spec_key = m.key("spec");
    spec_json = to_json(m.get("spec"), spec_key);
  } else {
    spec_key = m.key("spec_file");
    const std::string file = resolve(m.string("spec_file", ""), base_dir);
    try {
      spec_json = nlohmann::json::parse(read_file(file, spec_key));
    } catch (const nlohmann::json::exception& e) {
      bad(spec_key, "'" + file + "' is not valid JSON: " + e.what());
    }
  }
  try {
    stack.spec = StackSpec::from_json(spec_json);
  } catch (const c10::Error& e) {
    bad(spec_key, e.what_without_backtrace());
  }

  const std::string weights = m.string("weights", "");
  if (!weights.empty()) {
    stack.weights_path = resolve(weights, base_dir);
    if (!std::filesystem::is_regular_file(stack.weights_path)) {
      bad(m.key("weights"), "no such file '" + stack.weights_path + "'");
    }
  }
  stack.seed = static_cast<uint64_t>(m.integer("seed", 0, 0));

  MemoryBankOptions defaults;
  if (m.has("memory")) defaults = parse_memory(m.get("memory"), m.key("memory"), defaults);
  std::map<size_t, MemoryBankOptions> overrides;
  if (m.has("memory_blocks")) {
    const YAML::Node per_block = m.get("memory_blocks");
    Mapping blocks(per_block, m.key("memory_blocks"));
    for (const auto& kv : per_block) {
      const std::string k = kv.first.Scalar();
      int64_t index = -1;
      if (!YAML::convert<int64_t>::decode(kv.first, index) || index < 0 ||
          index >= static_cast<int64_t>(stack.spec.blocks.size()) ||
          stack.spec.blocks[index].type != "cross_memory") {
        bad(blocks.key(k), "must be the index of a cross_memory block of the stack");
      }
      overrides[static_cast<size_t>(index)] = parse_memory(blocks.get(k), blocks.key(k), defaults);
    }
    blocks.finish();
  }
  for (size_t i = 0; i < stack.spec.blocks.size(); ++i) {
    if (stack.spec.blocks[i].type != "cross_memory") continue;
    stack.memory[i] = overrides.count(i) ? overrides[i] : defaults;
  }
  m.finish();
  return stack;
}

}  // namespace

int resolved_intra_op_threads(const ServerConfig& config) {
  if (config.intra_op_threads > 0) return static_cast<int>(config.intra_op_threads);
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

void check_listen_address(const std::string& address, const std::string& key) {
  const size_t colon = address.rfind(':');
  const std::string host = colon == std::string::npos ? "" : address.substr(0, colon);
  const std::string port = colon == std::string::npos ? "" : address.substr(colon + 1);
  const bool port_ok = !port.empty() && port.size() <= 5 &&
                       port.find_first_not_of("0123456789") == std::string::npos &&
                       std::stoi(port) <= 65535;
  if (host.empty() || !port_ok) {
    bad(key, "must be host:port with a port from 0 to 65535, got '" + address + "'");
  }
}

ServerConfig ServerConfig::parse(const std::string& yaml_text, const std::string& base_dir) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(std::string("config: not valid YAML: ") + e.what());
  }
  Mapping m(root, "");
  ServerConfig c;
  c.listen = m.string("listen", c.listen);
  check_listen_address(c.listen, "listen");
  c.device = m.choice("device", c.device, {"cpu", "cuda", "auto"});
  c.dtype = m.choice("dtype", c.dtype, {"float32", "bfloat16", "float16"});
  c.intra_op_threads = m.integer("intra_op_threads", c.intra_op_threads, 0);
  c.workers = m.integer("workers", c.workers, 1);
  c.log_level = m.choice("log_level", c.log_level, {"trace", "debug", "info", "warn", "error", "off"});
  c.log_format = m.choice("log_format", c.log_format, {"text", "json"});
  c.shutdown_grace_seconds = m.number("shutdown_grace_seconds", c.shutdown_grace_seconds, 0, 3600);

  if (m.has("limits")) {
    Mapping l(m.get("limits"), "limits");
    LimitsConfig& x = c.limits;
    x.max_message_bytes = l.integer("max_message_bytes", x.max_message_bytes, 1024);
    if (x.max_message_bytes > (2LL << 30) - 1) bad("limits.max_message_bytes", "must be < 2 GiB");
    x.max_tokens_per_segment = l.integer("max_tokens_per_segment", x.max_tokens_per_segment, 1);
    x.max_memory_tokens = l.integer("max_memory_tokens", x.max_memory_tokens, 1);
    x.max_queued_requests = l.integer("max_queued_requests", x.max_queued_requests, 1);
    x.max_transport_memory_bytes = l.integer("max_transport_memory_bytes", x.max_transport_memory_bytes, 1 << 20);
    x.max_sessions = l.integer("max_sessions", x.max_sessions, 1);
    x.session_idle_ttl_seconds = l.number("session_idle_ttl_seconds", x.session_idle_ttl_seconds, 0, 31536000);
    x.max_session_memory_bytes = l.integer("max_session_memory_bytes", x.max_session_memory_bytes, 1);
    x.evict_lru = l.choice("on_full", x.evict_lru ? "evict_lru" : "reject", {"reject", "evict_lru"}) ==
                  "evict_lru";
    l.finish();
  }

  if (m.has("metrics")) {
    Mapping x(m.get("metrics"), "metrics");
    c.metrics.enabled = x.flag("enabled", c.metrics.enabled);
    c.metrics.listen = x.string("listen", c.metrics.listen);
    check_listen_address(c.metrics.listen, "metrics.listen");
    x.finish();
  }

  if (m.has("batching")) {
    Mapping x(m.get("batching"), "batching");
    c.batching.enabled = x.flag("enabled", c.batching.enabled);
    c.batching.max_batch_size = x.integer("max_batch_size", c.batching.max_batch_size, 1);
    if (c.batching.max_batch_size > 4096) bad("batching.max_batch_size", "must be <= 4096");
    c.batching.max_queue_delay_ms =
        x.number("max_queue_delay_ms", c.batching.max_queue_delay_ms, 0, 10000, /*min_inclusive=*/true);
    x.finish();
  }

  const YAML::Node stacks = m.get("stacks");
  if (!stacks || !stacks.IsMap() || stacks.size() == 0) {
    bad("stacks", "must map at least one stack name to its spec");
  }
  for (const auto& kv : stacks) {
    const std::string name = kv.first.Scalar();
    if (name.empty() || name.size() > 128) bad("stacks", "stack names must be 1 to 128 characters");
    c.stacks.push_back(parse_stack(name, kv.second, base_dir));
  }
  m.finish();
  return c;
}

ServerConfig ServerConfig::load(const std::string& path) {
  const std::string text = read_file(path, "--config");
  return parse(text, std::filesystem::path(path).parent_path().string());
}

}  // namespace hvlm
