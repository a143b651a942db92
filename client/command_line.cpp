#include "client/command_line.h"

#include "client/tensor_codec.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>

namespace hvlm::client {
namespace {

const char kOverview[] = R"(usage: hvlm-client [global flags] <command> [flags]

Client of an hvlm server (gRPC service hvlm.v1.AttentionService).

commands:
  list      print the hosted stacks and their blocks
  stream    stream one video's features through a stack as one session, segment by segment
  load      run N concurrent sessions of synthetic features; report latency and throughput
  help      print this text, or one command's (hvlm-client help stream)
)";

const char kGlobalFlags[] = R"(
global flags (before or after the command):
  --server ADDR             server address (default 127.0.0.1:50051)
  --timeout SECONDS         deadline of each RPC; a StreamSegments call gets SECONDS per
                            segment it sends (default 30)
  --max-message-bytes N     largest response accepted, in bytes (default 67108864, 64 MiB)
  -h, --help                print help
)";

const char kListUsage[] = R"(
hvlm-client list [--server ADDR]
  Prints every hosted stack: name, dim, dtype, device, weights source, fingerprint, and each
  block's type and options (plus the memory settings of cross_memory blocks).
)";

const char kStreamUsage[] = R"(
hvlm-client stream --stack NAME (--input FILE.npy | --frames N [--dim D] [--batch B] [--seed S])
                   --segment T [--output FILE.npy] [--session ID]
                   [--dtype float32|float16|bfloat16] [--warmup K] [--json FILE]
  Opens a session, sends the features [N, D] (or [B, N, D]) in segments of T frames (the last
  may be shorter) over one StreamSegments call, each once the previous one is answered, prints
  every segment's round trip and server timings and a summary, and closes the session.
  --stack NAME          the stack
  --input FILE.npy      features from a '<f4' or '<f2' .npy file of shape [N, D] or [B, N, D]
  --frames N            synthetic standard-normal features of N frames instead
  --dim D               synthetic features' dimension (default: the stack's dim)
  --batch B             synthetic features of shape [B, N, D] (default: [N, D])
  --seed S              synthetic features' seed (default 0)
  --segment T           frames per segment
  --output FILE.npy     write the outputs, concatenated, as float32 .npy of the input's shape
  --session ID          open the session with this id (1 to 128 of [A-Za-z0-9._-];
                        default: the server issues one)
  --dtype DTYPE         features' wire dtype: float32, float16 or bfloat16 (default: the
                        stack's dtype, which gives the same outputs in the fewest bytes:
                        the server rounds features to it and widens outputs from it)
  --warmup K            leave the first K segments out of the statistics (default 2)
  --json FILE           write the summary as JSON
)";

const char kLoadUsage[] = R"(
hvlm-client load --stack NAME --sessions N --segment T
                 [--duration SECONDS | --segments-per-session K] [--dim D] [--batch B]
                 [--dtype float32|float16|bfloat16] [--seed S] [--warmup K] [--channels C]
                 [--json FILE]
  Opens N sessions, each streaming synthetic segments of T frames over its own
  StreamSegments call from its own thread; after every session's warmup, measures for
  SECONDS or K segments per session, then closes the sessions and prints the summary.
  --stack NAME                the stack
  --sessions N                concurrent sessions, 1 to 1024
  --segment T                 frames per segment
  --duration SECONDS          measure for this long, at most 3600
  --segments-per-session K    measure K segments per session (default 10)
  --dim D                     features' dimension (default: the stack's dim)
  --batch B                   segments of shape [B, T, D] (default: [T, D])
  --dtype DTYPE               features' wire dtype: float32, float16 or bfloat16 (default:
                              the stack's dtype, as for stream)
  --seed S                    synthetic features' seed (default 0)
  --warmup K                  unmeasured segments per session first (default 2)
  --channels C                spread the sessions over C channels, each its own connection
                              (default: one per session, as independent clients have)
  --json FILE                 write the summary as JSON
)";

const char kExitStatus[] = R"(
exit status: 0 success; 1 a failed RPC ("error: <RPC>: <STATUS_CODE_NAME>: <message>"), an
unusable file, or a load run with errors; 2 a bad command line.
)";

std::string command_help(CommandKind kind) {
  std::string text = "usage:";
  switch (kind) {
    case CommandKind::kList:
      text += kListUsage;
      break;
    case CommandKind::kStream:
      text += kStreamUsage;
      break;
    case CommandKind::kLoad:
      text += kLoadUsage;
      break;
    case CommandKind::kHelp:
      return usage_text();
  }
  return text + kGlobalFlags + kExitStatus;
}

[[noreturn]] void bad_value(const std::string& flag, const std::string& expected,
                            const std::string& text) {
  throw UsageError(flag + ": expected " + expected + ", got '" + text + "'");
}

int64_t parse_int(const std::string& flag, const std::string& text, int64_t min, int64_t max) {
  const std::string expected =
      "an integer from " + std::to_string(min) + " to " + std::to_string(max);
  if (text.empty() || text[0] == ' ') bad_value(flag, expected, text);
  errno = 0;
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || value < min || value > max) bad_value(flag, expected, text);
  return value;
}

uint64_t parse_u64(const std::string& flag, const std::string& text) {
  const std::string expected = "an integer from 0 to 18446744073709551615";
  if (text.empty() || text[0] < '0' || text[0] > '9') bad_value(flag, expected, text);
  errno = 0;
  char* end = nullptr;
  const unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') bad_value(flag, expected, text);
  return value;
}

// A number of seconds in (0, max].
double parse_seconds(const std::string& flag, const std::string& text, double max) {
  char bound[32];
  std::snprintf(bound, sizeof bound, "%g", max);
  const std::string expected = std::string("seconds above 0 and at most ") + bound;
  if (text.empty() || text[0] == ' ') bad_value(flag, expected, text);
  errno = 0;
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (errno != 0 || *end != '\0' || !std::isfinite(value) || value <= 0 || value > max) {
    bad_value(flag, expected, text);
  }
  return value;
}

hvlm::v1::DType parse_dtype_flag(const std::string& flag, const std::string& text) {
  const std::optional<hvlm::v1::DType> dtype = parse_dtype(text);
  if (!dtype) bad_value(flag, "float32, float16 or bfloat16", text);
  return *dtype;
}

std::string parse_path(const std::string& flag, const std::string& text) {
  if (text.empty()) throw UsageError(flag + ": needs a file name");
  return text;
}

// The flags one command accepts, each with what to do with its value.
class FlagTable {
 public:
  using Setter = std::function<void(const std::string& flag, const std::string& value)>;

  void add(const std::string& name, Setter setter) { setters_[name] = std::move(setter); }
  bool has(const std::string& name) const { return setters_.count(name) > 0; }

  // Applies args[i] (and its value); returns the index of the next unread argument.
  size_t apply(const std::vector<std::string>& args, size_t i, const std::string& command) {
    const std::string& arg = args[i];
    const size_t equals = arg.find('=');
    const std::string name = arg.substr(0, equals);
    if (!has(name)) {
      throw UsageError("unknown flag " + name +
                       (command.empty() ? std::string(" before the command")
                                        : " for '" + command + "'"));
    }
    if (!given_.insert(name).second) throw UsageError(name + ": given twice");
    std::string value;
    if (equals != std::string::npos) {
      value = arg.substr(equals + 1);
    } else {
      if (i + 1 >= args.size() || args[i + 1].rfind("--", 0) == 0) {
        throw UsageError(name + ": needs a value");
      }
      value = args[++i];
    }
    setters_.at(name)(name, value);
    return i + 1;
  }

  bool given(const std::string& name) const { return given_.count(name) > 0; }

 private:
  std::map<std::string, Setter> setters_;
  std::set<std::string> given_;
};

void add_global_flags(FlagTable& table, ConnectionOptions& connection) {
  table.add("--server", [&](const std::string& flag, const std::string& value) {
    if (value.empty()) throw UsageError(flag + ": needs an address such as 127.0.0.1:50051");
    connection.server = value;
  });
  table.add("--timeout", [&](const std::string& flag, const std::string& value) {
    connection.timeout_seconds = parse_seconds(flag, value, 86400);
  });
  table.add("--max-message-bytes", [&](const std::string& flag, const std::string& value) {
    connection.max_message_bytes = static_cast<int>(parse_int(flag, value, 4096, INT_MAX));
  });
}

void add_stream_flags(FlagTable& table, StreamOptions& o) {
  table.add("--stack", [&](const std::string& flag, const std::string& value) {
    if (value.empty()) throw UsageError(flag + ": needs a stack name");
    o.stack = value;
  });
  table.add("--input", [&](const std::string& f, const std::string& v) {
    o.input_path = parse_path(f, v);
  });
  table.add("--frames", [&](const std::string& f, const std::string& v) {
    o.frames = parse_int(f, v, 1, kMaxFrames);
  });
  table.add("--dim", [&](const std::string& f, const std::string& v) {
    o.dim = parse_int(f, v, 1, kMaxDim);
  });
  table.add("--batch", [&](const std::string& f, const std::string& v) {
    o.batch = parse_int(f, v, 1, kMaxBatch);
  });
  table.add("--seed", [&](const std::string& f, const std::string& v) { o.seed = parse_u64(f, v); });
  table.add("--segment", [&](const std::string& f, const std::string& v) {
    o.segment_frames = parse_int(f, v, 1, kMaxSegmentFrames);
  });
  table.add("--output", [&](const std::string& f, const std::string& v) {
    o.output_path = parse_path(f, v);
  });
  table.add("--session", [&](const std::string& f, const std::string& v) {
    if (!valid_session_id(v)) bad_value(f, "1 to 128 characters of [A-Za-z0-9._-]", v);
    o.session_id = v;
  });
  table.add("--dtype", [&](const std::string& f, const std::string& v) {
    o.dtype = parse_dtype_flag(f, v);
  });
  table.add("--warmup", [&](const std::string& f, const std::string& v) {
    o.warmup_segments = parse_int(f, v, 0, kMaxWarmupSegments);
  });
  table.add("--json", [&](const std::string& f, const std::string& v) {
    o.json_path = parse_path(f, v);
  });
}

void check_stream(const FlagTable& table, const StreamOptions& o) {
  if (!table.given("--stack")) throw UsageError("--stack: required");
  if (!table.given("--segment")) throw UsageError("--segment: required");
  const bool input = table.given("--input"), frames = table.given("--frames");
  if (input && frames) throw UsageError("--input and --frames exclude each other");
  if (!input && !frames) throw UsageError("--input or --frames: one is required");
  if (input && table.given("--seed")) {
    throw UsageError("--seed: applies only to synthetic features (--frames)");
  }
  if (frames && o.dim > 0) {
    const int64_t batch = std::max<int64_t>(o.batch, 1);
    if (o.frames > kMaxSyntheticElements / o.dim / batch) {
      throw UsageError("--frames: " + std::to_string(o.frames) + " frames of dim " +
                       std::to_string(o.dim) + " exceed " +
                       std::to_string(kMaxSyntheticElements) + " synthetic elements");
    }
  }
}

void add_load_flags(FlagTable& table, LoadOptions& o) {
  table.add("--stack", [&](const std::string& flag, const std::string& value) {
    if (value.empty()) throw UsageError(flag + ": needs a stack name");
    o.stack = value;
  });
  table.add("--sessions", [&](const std::string& f, const std::string& v) {
    o.sessions = parse_int(f, v, 1, kMaxSessions);
  });
  table.add("--segment", [&](const std::string& f, const std::string& v) {
    o.segment_frames = parse_int(f, v, 1, kMaxSegmentFrames);
  });
  table.add("--duration", [&](const std::string& f, const std::string& v) {
    o.duration_seconds = parse_seconds(f, v, kMaxDurationSeconds);
  });
  table.add("--segments-per-session", [&](const std::string& f, const std::string& v) {
    o.segments_per_session = parse_int(f, v, 1, kMaxSegmentsPerSession);
  });
  table.add("--dim", [&](const std::string& f, const std::string& v) {
    o.dim = parse_int(f, v, 1, kMaxDim);
  });
  table.add("--batch", [&](const std::string& f, const std::string& v) {
    o.batch = parse_int(f, v, 1, kMaxBatch);
  });
  table.add("--dtype", [&](const std::string& f, const std::string& v) {
    o.dtype = parse_dtype_flag(f, v);
  });
  table.add("--seed", [&](const std::string& f, const std::string& v) { o.seed = parse_u64(f, v); });
  table.add("--warmup", [&](const std::string& f, const std::string& v) {
    o.warmup_segments = parse_int(f, v, 0, kMaxWarmupSegments);
  });
  table.add("--channels", [&](const std::string& f, const std::string& v) {
    o.channels = parse_int(f, v, 1, kMaxChannels);
  });
  table.add("--json", [&](const std::string& f, const std::string& v) {
    o.json_path = parse_path(f, v);
  });
}

void check_load(const FlagTable& table, LoadOptions& o) {
  if (!table.given("--stack")) throw UsageError("--stack: required");
  if (!table.given("--sessions")) throw UsageError("--sessions: required");
  if (!table.given("--segment")) throw UsageError("--segment: required");
  if (table.given("--duration") && table.given("--segments-per-session")) {
    throw UsageError("--duration and --segments-per-session exclude each other");
  }
  if (!table.given("--duration") && !table.given("--segments-per-session")) {
    o.segments_per_session = 10;
  }
  if (o.channels > o.sessions) {
    throw UsageError("--channels: " + std::to_string(o.channels) + " is more than --sessions (" +
                     std::to_string(o.sessions) + ")");
  }
  // Without --dtype, the smallest wire dtype (2 bytes): what no dtype could run is refused now,
  // the rest by run_load once it knows the stack's (and, without --dim, the dim).
  if (o.dim > 0) check_load_size(o, o.dim, o.dtype.value_or(hvlm::v1::BFLOAT16));
}

bool is_help(const std::string& arg) { return arg == "-h" || arg == "--help"; }

CommandKind command_kind(const std::string& name) {
  if (name == "list") return CommandKind::kList;
  if (name == "stream") return CommandKind::kStream;
  if (name == "load") return CommandKind::kLoad;
  if (name == "help") return CommandKind::kHelp;
  throw UsageError("unknown command '" + name + "' (expected list, stream, load or help)");
}

}  // namespace

std::string usage_text() {
  return std::string(kOverview) + kGlobalFlags + kListUsage + kStreamUsage + kLoadUsage +
         kExitStatus;
}

void check_load_size(const LoadOptions& options, int64_t dim, hvlm::v1::DType dtype) {
  // Every factor is at most 2^20, so these products cannot overflow int64.
  const int64_t elements = std::max<int64_t>(options.batch, 1) * options.segment_frames * dim;
  if (elements > kMaxSegmentElements) {
    throw UsageError("--segment: segments of " + std::to_string(options.segment_frames) +
                     " frames of dim " + std::to_string(dim) + " exceed " +
                     std::to_string(kMaxSegmentElements) + " elements");
  }
  const int64_t bytes = elements * static_cast<int64_t>(dtype_size(dtype));
  if (bytes * options.sessions > kMaxLoadInFlightBytes) {
    throw UsageError("--sessions: " + std::to_string(options.sessions) + " sessions with " +
                     std::to_string(bytes) + "-byte segments (" + dtype_name(dtype) + ") exceed " +
                     std::to_string(kMaxLoadInFlightBytes) + " bytes in flight");
  }
}

void check_output_path(const std::string& flag, const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (fs::is_directory(fs::path(path), error)) {
    throw UsageError(flag + ": " + path + " is a directory");
  }
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty() && !fs::is_directory(parent, error)) {
    throw UsageError(flag + ": directory " + parent.string() + " does not exist");
  }
}

bool valid_session_id(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

Command parse_command_line(const std::vector<std::string>& args) {
  Command command;
  FlagTable table;
  add_global_flags(table, command.connection);

  // Global flags, then the command name.
  size_t i = 0;
  while (i < args.size() && args[i].rfind("-", 0) == 0) {
    if (is_help(args[i])) {
      command.help_text = usage_text();
      return command;
    }
    i = table.apply(args, i, "");
  }
  if (i == args.size()) throw UsageError("no command given (list, stream, load or help)");
  const std::string name = args[i++];
  command.kind = command_kind(name);

  if (command.kind == CommandKind::kHelp) {
    if (i == args.size()) {
      command.help_text = usage_text();
    } else if (i + 1 == args.size() && args[i] != "help") {
      command.help_text = command_help(command_kind(args[i]));
    } else {
      throw UsageError("help takes at most one command name");
    }
    return command;
  }
  if (command.kind == CommandKind::kStream) add_stream_flags(table, command.stream);
  if (command.kind == CommandKind::kLoad) add_load_flags(table, command.load);

  for (; i < args.size();) {
    if (is_help(args[i])) {
      command.help_text = command_help(command.kind);
      command.kind = CommandKind::kHelp;
      return command;
    }
    if (args[i].rfind("--", 0) != 0) {
      throw UsageError("unexpected argument '" + args[i] + "' for '" + name + "'");
    }
    i = table.apply(args, i, name);
  }

  if (command.kind == CommandKind::kStream) {
    check_stream(table, command.stream);
    command.stream.connection = command.connection;
  } else if (command.kind == CommandKind::kLoad) {
    check_load(table, command.load);
    command.load.connection = command.connection;
  }
  return command;
}

}  // namespace hvlm::client
