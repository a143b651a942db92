// The hvlm-client command line: the usage text, and parsing of argv into the options of one
// subcommand (list, stream, load). Every problem is a UsageError whose message names the
// flag ("--segment: expected an integer from 1 to 1048576, got 'abc'"); main exits 2 on it.
// Flags take their value as the next argument or after '=' (--segment=64). Global flags may
// come before or after the subcommand. Pure functions; thread-safe.
#pragma once

#include "client/attention_client.h"
#include "hvlm/v1/attention_service.pb.h"

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace hvlm::client {

// A command line that cannot be run as given.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bounds of the command line's numbers.
constexpr int64_t kMaxSegmentFrames = 1 << 20;
constexpr int64_t kMaxFrames = int64_t{1} << 30;
constexpr int64_t kMaxDim = 1 << 20;
constexpr int64_t kMaxBatch = 1 << 12;
constexpr int64_t kMaxSessions = 1024;
constexpr double kMaxDurationSeconds = 3600;
constexpr int64_t kMaxSegmentsPerSession = 1000000;
constexpr int64_t kMaxWarmupSegments = 1000000;
constexpr int64_t kMaxChannels = kMaxSessions;
// Most float elements of synthetic stream features ([B, N, D]): 4 GiB as float32.
constexpr int64_t kMaxSyntheticElements = int64_t{1} << 30;
// Most elements of one synthetic load segment ([B, T, D]).
constexpr int64_t kMaxSegmentElements = int64_t{1} << 24;
// Most wire bytes of all load sessions' segments in flight at once (one per session).
constexpr int64_t kMaxLoadInFlightBytes = int64_t{1} << 31;

// Options of `stream`.
struct StreamOptions {
  ConnectionOptions connection;
  /// --stack: the stack to stream through.
  std::string stack;
  /// --input: a .npy file of [N, D] or [B, N, D] features; empty for synthetic features.
  std::string input_path;
  /// --frames: frames N of synthetic features (0 with --input).
  int64_t frames = 0;
  /// --dim: feature dimension D; 0 for the stack's dim (synthetic) or the file's.
  int64_t dim = 0;
  /// --batch: B of [B, N, D] features; 0 for [N, D] synthetic features or the file's rank.
  int64_t batch = 0;
  /// --seed: seed of the synthetic features.
  uint64_t seed = 0;
  /// --segment: frames T per segment.
  int64_t segment_frames = 0;
  /// --output: where to write the concatenated outputs as float32 .npy; empty for nowhere.
  std::string output_path;
  /// --session: the id to open the session with; empty for a server-issued one.
  std::string session_id;
  /// --dtype: the features' wire dtype; unset for the stack's own (ListStacks' StackInfo.dtype).
  std::optional<hvlm::v1::DType> dtype;
  /// --warmup: leading segments left out of the statistics.
  int64_t warmup_segments = 2;
  /// --json: where to write the JSON summary; empty for nowhere.
  std::string json_path;
};

// Options of `load`.
struct LoadOptions {
  ConnectionOptions connection;
  /// --stack: the stack every session uses.
  std::string stack;
  /// --sessions: concurrent sessions, 1..1024.
  int64_t sessions = 0;
  /// --segment: frames T per segment.
  int64_t segment_frames = 0;
  /// --duration: seconds of measurement after warmup; 0 when segments_per_session is set.
  double duration_seconds = 0;
  /// --segments-per-session: measured segments per session; 0 when duration_seconds is set.
  int64_t segments_per_session = 0;
  /// --dim: feature dimension; 0 for the stack's dim.
  int64_t dim = 0;
  /// --batch: B of [B, T, D] segments; 0 for [T, D] segments.
  int64_t batch = 0;
  /// --dtype: the features' wire dtype; unset for the stack's own (ListStacks' StackInfo.dtype).
  std::optional<hvlm::v1::DType> dtype;
  /// --seed: seed of the synthetic features.
  uint64_t seed = 0;
  /// --warmup: segments per session before measurement starts.
  int64_t warmup_segments = 2;
  /// --channels: gRPC channels (each its own connection) the sessions spread over; 0 for
  /// one per session.
  int64_t channels = 0;
  /// --json: where to write the JSON summary; empty for nowhere.
  std::string json_path;
};

enum class CommandKind { kHelp, kList, kStream, kLoad };

// A parsed command line: the subcommand and its options.
struct Command {
  CommandKind kind = CommandKind::kHelp;
  /// kHelp: the text to print.
  std::string help_text;
  /// kList: where to connect.
  ConnectionOptions connection;
  /// kStream.
  StreamOptions stream;
  /// kLoad.
  LoadOptions load;
};

// Parses the arguments after the program name; throws UsageError.
Command parse_command_line(const std::vector<std::string>& args);

// The full usage text (every command).
std::string usage_text();

// Throws UsageError (naming --segment or --sessions) when a load run of `options` with
// features of dimension `dim` in `dtype` breaks kMaxSegmentElements or kMaxLoadInFlightBytes.
void check_load_size(const LoadOptions& options, int64_t dim, hvlm::v1::DType dtype);

// Throws UsageError naming `flag` when `path` cannot be created: its directory is missing or
// not a directory, or `path` itself is a directory. Run before the work whose result it holds.
void check_output_path(const std::string& flag, const std::string& path);

// True for an id OpenSession accepts: 1 to 128 characters of [A-Za-z0-9._-].
bool valid_session_id(const std::string& id);

}  // namespace hvlm::client
