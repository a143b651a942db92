// ServerConfig: everything hvlm-server reads from its YAML file (docs/configuration.md),
// validated at start-up. Every problem is a ConfigError whose message names the offending key
// ("stacks.video.memory.capacity: must be an integer >= 1, got 'x'"). Command-line flags
// override listen, device and log settings after loading. Value type; thread-compatible.
#pragma once

#include "attention/memory_bank.h"
#include "attention/stack_spec.h"

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace hvlm {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Request and session limits. Every allocation a request can cause is bounded by these.
struct LimitsConfig {
  /// Largest request or response message, bytes (gRPC's receive and send limits).
  int64_t max_message_bytes = 64LL << 20;
  /// Most tokens (B * T) in one segment or Forward request.
  int64_t max_tokens_per_segment = 4096;
  /// Most tokens (B * m) in one explicit memory of a Forward request.
  int64_t max_memory_tokens = 4096;
  /// Most requests waiting for a worker; beyond it requests get RESOURCE_EXHAUSTED.
  int64_t max_queued_requests = 1024;
  /// Memory gRPC may use for all connections' buffers and messages in flight, bytes (its
  /// resource quota); under pressure it slows reads and refuses new calls.
  int64_t max_transport_memory_bytes = 2LL << 30;
  /// Most open sessions.
  int64_t max_sessions = 1024;
  /// A session unused for this long is closed, seconds (at most a year).
  double session_idle_ttl_seconds = 600;
  /// Most bytes all sessions' memory banks and states hold together.
  int64_t max_session_memory_bytes = 4LL << 30;
  /// When max_sessions or max_session_memory_bytes is reached: false rejects with
  /// RESOURCE_EXHAUSTED, true evicts the least recently used idle session.
  bool evict_lru = false;
};

// The operator's HTTP port: /metrics (Prometheus), /healthz, /readyz.
struct MetricsConfig {
  /// Serve the port at all.
  bool enabled = true;
  /// host:port; port 0 picks a free port.
  std::string listen = "127.0.0.1:9464";
};

// Cross-session dynamic batching of stream segments (server/segment_batcher.h).
struct BatchingConfig {
  /// Run segments of different sessions with the same stack and shape as one forward pass.
  bool enabled = false;
  /// Most segments in one forward pass.
  int64_t max_batch_size = 32;
  /// Longest a segment waits for others to join its batch, milliseconds.
  double max_queue_delay_ms = 2;
};

struct StackConfig {
  /// The name requests use.
  std::string name;
  /// The stack's blocks (from `spec:` inline or `spec_file:`).
  StackSpec spec;
  /// Optional safetensors file with every parameter; empty: seeded random init.
  std::string weights_path;
  /// Seed of the random init when there are no weights.
  uint64_t seed = 0;
  /// Memory settings per cross_memory block index.
  std::map<size_t, MemoryBankOptions> memory;
};

struct ServerConfig {
  /// host:port to listen on; port 0 picks a free port.
  std::string listen = "127.0.0.1:50051";
  /// cpu, cuda or auto (cuda when available).
  std::string device = "cpu";
  /// Compute dtype: float32 (CPU), or bfloat16 / float16 (CUDA only).
  std::string dtype = "float32";
  /// Threads per forward pass (LibTorch intra-op); 0: one per core.
  int64_t intra_op_threads = 0;
  /// Forward passes run concurrently (worker threads).
  int64_t workers = 1;
  /// trace, debug, info, warn, error, off.
  std::string log_level = "info";
  /// text or json.
  std::string log_format = "text";
  /// On SIGTERM/SIGINT, in-flight requests get this long to finish, seconds (at most 3600).
  double shutdown_grace_seconds = 10;
  LimitsConfig limits;
  MetricsConfig metrics;
  BatchingConfig batching;
  /// At least one; names unique.
  std::vector<StackConfig> stacks;

  /// Parses YAML text; relative paths (spec_file, weights) resolve against base_dir.
  static ServerConfig parse(const std::string& yaml_text, const std::string& base_dir);
  /// Reads and parses a file; relative paths resolve against its directory.
  static ServerConfig load(const std::string& path);
};

// config.intra_op_threads, or one per core when it is 0.
int resolved_intra_op_threads(const ServerConfig& config);

// Checks a listen address: host:port with a non-empty host and a decimal port 0..65535 (0
// picks a free port). Throws ConfigError naming `key` ("listen" or "--listen").
void check_listen_address(const std::string& address, const std::string& key);

}  // namespace hvlm
