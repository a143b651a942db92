// ServerConfig: the shipped config parses; every invalid key is reported by name.
#include "server/config.h"

#include <gtest/gtest.h>

namespace hvlm {
namespace {

const char* kStack = R"(
stacks:
  s:
    spec:
      dim: 16
      blocks:
        - {type: cross_memory, num_heads: 2}
        - {type: mamba, state_size: 4}
        - {type: cross_memory, num_heads: 4}
)";

std::string error_of(const std::string& yaml) {
  try {
    ServerConfig::parse(yaml, "");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

TEST(ServerConfig, DefaultYamlServesTheVideoStack) {
  const ServerConfig c = ServerConfig::load(HVLM_SOURCE_DIR "/configs/default.yaml");
  ASSERT_EQ(c.stacks.size(), 1u);
  EXPECT_EQ(c.stacks[0].name, "video");
  EXPECT_EQ(c.stacks[0].spec.dim, 768);
  std::set<std::string> types;
  for (const auto& b : c.stacks[0].spec.blocks) types.insert(b.type);
  EXPECT_EQ(types, (std::set<std::string>{"strided", "local_global", "cross_memory", "performer", "mamba"}));
  EXPECT_EQ(c.device, "cpu");
  EXPECT_EQ(c.stacks[0].memory.at(1).capacity, 256);
  EXPECT_TRUE(c.stacks[0].weights_path.empty());
}

TEST(ServerConfig, InlineSpecDefaultsAndPerBlockMemory) {
  const ServerConfig c = ServerConfig::parse(std::string(kStack) + R"(
    memory: {policy: merge, capacity: 32}
    memory_blocks:
      2: {policy: fifo, tokens_per_segment: 8}
limits:
  max_sessions: 7
  on_full: evict_lru
  session_idle_ttl_seconds: 0.5
)", "");
  EXPECT_EQ(c.listen, "127.0.0.1:50051");
  EXPECT_EQ(c.limits.max_sessions, 7);
  EXPECT_TRUE(c.limits.evict_lru);
  EXPECT_DOUBLE_EQ(c.limits.session_idle_ttl_seconds, 0.5);
  const auto& m = c.stacks[0].memory;
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m.at(0).policy, MemoryPolicy::kMerge);
  EXPECT_EQ(m.at(0).capacity, 32);
  EXPECT_EQ(m.at(2).policy, MemoryPolicy::kFifo);
  EXPECT_EQ(m.at(2).capacity, 32);  // inherited from `memory`
  EXPECT_EQ(m.at(2).tokens_per_segment, 8);
}

TEST(ServerConfig, ErrorsNameTheOffendingKey) {
  const std::string s = kStack;
  const std::vector<std::pair<std::string, std::string>> cases{
      {"bogus: 1\n" + s, "bogus: unknown key"},
      {"device: gpu\n" + s, "device: must be one of cpu, cuda, auto"},
      {"workers: 0\n" + s, "workers: must be an integer >= 1"},
      {"listen: nowhere\n" + s, "listen: must be host:port"},
      {"listen: 127.0.0.1:99999\n" + s, "listen: must be host:port with a port from 0 to 65535"},
      {"listen: ':80'\n" + s, "listen: must be host:port"},
      {"limits: {max_sessions: x}\n" + s, "limits.max_sessions: must be an integer >= 1, got 'x'"},
      {"limits: {on_full: panic}\n" + s, "limits.on_full: must be one of reject, evict_lru"},
      {"limits: {max_tokens: 1}\n" + s, "limits.max_tokens: unknown key"},
      {"limits: {session_idle_ttl_seconds: 0}\n" + s, "limits.session_idle_ttl_seconds: must be a number > 0"},
      {s + "    memory: {capacity: 0}\n", "stacks.s.memory.capacity: must be an integer >= 1, got '0'"},
      {s + "    memory: {policy: lru}\n", "stacks.s.memory.policy: must be one of fifo, merge"},
      {s + "    memory_blocks: {1: {capacity: 3}}\n", "stacks.s.memory_blocks.1: must be the index of a cross_memory block"},
      {s + "    weights: /no/such.safetensors\n", "stacks.s.weights: no such file"},
      {s + "    spec_file: x.json\n", "stacks.s: needs exactly one of spec"},
      {"stacks:\n  s:\n    spec_file: /no/such.json\n", "stacks.s.spec_file: cannot read"},
      {"stacks:\n  s:\n    spec: {dim: 16, blocks: [{type: sparse}]}\n", "stacks.s.spec: blocks[0].type"},
      {"stacks:\n  s:\n    spec: {dim: 16, blocks: [{type: strided, stride: two}]}\n", "stacks.s.spec: blocks[0].stride"},
      {"stacks: {}\n", "stacks: must map at least one stack"},
      {"listen: [1, 2\n", "not valid YAML"},
      {"metrics: {listen: nowhere}\n" + s, "metrics.listen: must be host:port"},
      {"metrics: {enabled: yes}\n" + s, "metrics.enabled: must be one of true, false, got 'yes'"},
      {"metrics: {port: 9464}\n" + s, "metrics.port: unknown key"},
      {"batching: {max_batch_size: 0}\n" + s, "batching.max_batch_size: must be an integer >= 1"},
      {"batching: {max_batch_size: 5000}\n" + s, "batching.max_batch_size: must be <= 4096"},
      {"batching: {max_queue_delay_ms: -1}\n" + s, "batching.max_queue_delay_ms: must be a number >= 0"},
      {"batching: {enabled: on}\n" + s, "batching.enabled: must be one of true, false"},
  };
  for (const auto& [yaml, want] : cases) {
    const std::string got = error_of(yaml);
    EXPECT_NE(got.find(want), std::string::npos) << "config:\n" << yaml << "\nerror: " << got;
  }
}

}  // namespace
}  // namespace hvlm
