// The command line: every subcommand's flags parse into its options, global flags go before
// or after the command, and every mistake is a UsageError that names the flag.
#include "client/command_line.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace hvlm::client {
namespace {

Command parse(const std::vector<std::string>& args) { return parse_command_line(args); }

// Passes iff parsing `args` throws a UsageError whose message contains `part`.
::testing::AssertionResult RejectsWith(const std::vector<std::string>& args,
                                       const std::string& part) {
  try {
    parse(args);
  } catch (const UsageError& e) {
    if (std::string(e.what()).find(part) != std::string::npos) {
      return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure() << "message '" << e.what() << "' lacks '" << part << "'";
  }
  return ::testing::AssertionFailure() << "no UsageError";
}

TEST(CommandLine, ListTakesGlobalFlagsBeforeOrAfterTheCommand) {
  const Command before = parse({"--server", "host:1", "list", "--timeout=2.5"});
  EXPECT_EQ(before.kind, CommandKind::kList);
  EXPECT_EQ(before.connection.server, "host:1");
  EXPECT_DOUBLE_EQ(before.connection.timeout_seconds, 2.5);
  const Command defaults = parse({"list"});
  EXPECT_EQ(defaults.connection.server, "127.0.0.1:50051");
  EXPECT_DOUBLE_EQ(defaults.connection.timeout_seconds, 30);
  EXPECT_EQ(defaults.connection.max_message_bytes, 64 << 20);
}

TEST(CommandLine, StreamWithSyntheticFeatures) {
  const Command c = parse({"stream", "--stack", "video", "--frames", "100", "--dim", "16",
                           "--seed", "18446744073709551615", "--segment", "32", "--batch", "2",
                           "--dtype", "bfloat16", "--output", "out.npy", "--session", "s-1.a_b",
                           "--warmup", "0", "--json", "s.json", "--max-message-bytes", "8192"});
  ASSERT_EQ(c.kind, CommandKind::kStream);
  const StreamOptions& o = c.stream;
  EXPECT_EQ(o.stack, "video");
  EXPECT_EQ(o.frames, 100);
  EXPECT_EQ(o.dim, 16);
  EXPECT_EQ(o.seed, 18446744073709551615ull);
  EXPECT_EQ(o.segment_frames, 32);
  EXPECT_EQ(o.batch, 2);
  EXPECT_EQ(o.dtype, hvlm::v1::BFLOAT16);
  EXPECT_EQ(o.output_path, "out.npy");
  EXPECT_EQ(o.session_id, "s-1.a_b");
  EXPECT_EQ(o.warmup_segments, 0);
  EXPECT_EQ(o.json_path, "s.json");
  EXPECT_EQ(o.connection.max_message_bytes, 8192);
}

TEST(CommandLine, StreamDefaults) {
  const StreamOptions o =
      parse({"stream", "--stack", "v", "--input", "in.npy", "--segment", "8"}).stream;
  EXPECT_EQ(o.input_path, "in.npy");
  EXPECT_EQ(o.dim, 0);
  EXPECT_EQ(o.batch, 0);
  EXPECT_FALSE(o.dtype.has_value());  // the stack's own, found out at run time
  EXPECT_EQ(o.warmup_segments, 2);
  EXPECT_TRUE(o.session_id.empty());
  EXPECT_TRUE(o.output_path.empty());
}

TEST(CommandLine, StreamMistakesNameTheFlag) {
  const std::vector<std::string> base = {"stream", "--stack", "v", "--segment", "8"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  EXPECT_TRUE(RejectsWith(with({}), "--input or --frames"));
  EXPECT_TRUE(RejectsWith(with({"--input", "a.npy", "--frames", "3"}), "exclude each other"));
  EXPECT_TRUE(RejectsWith(with({"--input", "a.npy", "--seed", "3"}), "--seed"));
  EXPECT_TRUE(RejectsWith({"stream", "--frames", "3", "--segment", "8"}, "--stack: required"));
  EXPECT_TRUE(RejectsWith({"stream", "--stack", "v", "--frames", "3"}, "--segment: required"));
  EXPECT_TRUE(RejectsWith(with({"--frames", "0"}), "--frames: expected an integer from 1"));
  EXPECT_TRUE(RejectsWith(with({"--frames", "12x"}), "--frames"));
  EXPECT_TRUE(RejectsWith(with({"--frames", "3", "--segment", "9"}), "--segment: given twice"));
  EXPECT_TRUE(RejectsWith(with({"--frames", "3", "--dtype", "float64"}),
                          "--dtype: expected float32, float16 or bfloat16, got 'float64'"));
  EXPECT_TRUE(RejectsWith(with({"--frames", "3", "--session", "bad id"}), "--session"));
  EXPECT_TRUE(RejectsWith(with({"--frames", "3", "--session", std::string(129, 'a')}),
                          "--session"));
  EXPECT_TRUE(RejectsWith(with({"--frames", "3", "--seed", "-1"}), "--seed"));
  EXPECT_TRUE(RejectsWith(with({"--frames", "3", "--output"}), "--output: needs a value"));
  EXPECT_TRUE(RejectsWith(with({"--frames", "3", "--output", "--json", "x"}),
                          "--output: needs a value"));
  EXPECT_TRUE(RejectsWith(with({"--frames", "3", "--output="}), "--output: needs a file name"));
  EXPECT_TRUE(RejectsWith(with({"--frames", "3", "--sessions", "2"}),
                          "unknown flag --sessions for 'stream'"));
  EXPECT_TRUE(RejectsWith(with({"--frames", "3", "extra"}), "unexpected argument 'extra'"));
  EXPECT_TRUE(RejectsWith(with({"--frames", "1073741824", "--dim", "1024"}), "--frames"));
  EXPECT_TRUE(RejectsWith(with({"--frames", "3", "--timeout", "0"}), "--timeout"));
  EXPECT_TRUE(RejectsWith(with({"--frames", "3", "--timeout", "nan"}), "--timeout"));
  EXPECT_TRUE(RejectsWith(with({"--frames", "3", "--max-message-bytes", "3000000000"}),
                          "--max-message-bytes"));
}

TEST(CommandLine, LoadOptionsAndDefaults) {
  const LoadOptions o = parse({"load", "--stack", "v", "--sessions", "1024", "--segment", "64",
                               "--duration", "0.5", "--channels", "4", "--dim", "768"})
                            .load;
  EXPECT_EQ(o.sessions, 1024);
  EXPECT_EQ(o.segment_frames, 64);
  EXPECT_DOUBLE_EQ(o.duration_seconds, 0.5);
  EXPECT_EQ(o.segments_per_session, 0);
  EXPECT_EQ(o.channels, 4);
  EXPECT_EQ(o.warmup_segments, 2);
  const LoadOptions d = parse({"load", "--stack", "v", "--sessions", "3", "--segment", "8"}).load;
  EXPECT_EQ(d.segments_per_session, 10);
  EXPECT_EQ(d.duration_seconds, 0);
  EXPECT_EQ(d.channels, 0);
  EXPECT_FALSE(d.dtype.has_value());  // the stack's own, found out at run time
  EXPECT_EQ(parse({"load", "--stack", "v", "--sessions", "3", "--segment", "8", "--dtype", "float16"}).load.dtype,
            hvlm::v1::FLOAT16);
}

TEST(CommandLine, LoadMistakesNameTheFlag) {
  const std::vector<std::string> base = {"load", "--stack", "v", "--segment", "8"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  EXPECT_TRUE(RejectsWith(with({}), "--sessions: required"));
  EXPECT_TRUE(RejectsWith(with({"--sessions", "1025"}), "--sessions: expected an integer"));
  EXPECT_TRUE(RejectsWith(with({"--sessions", "0"}), "--sessions"));
  EXPECT_TRUE(RejectsWith(with({"--sessions", "2", "--duration", "3601"}), "--duration"));
  EXPECT_TRUE(RejectsWith(with({"--sessions", "2", "--duration", "-1"}), "--duration"));
  EXPECT_TRUE(RejectsWith(with({"--sessions", "2", "--duration", "1", "--segments-per-session",
                                "3"}),
                          "exclude each other"));
  EXPECT_TRUE(RejectsWith(with({"--sessions", "2", "--channels", "3"}), "--channels"));
  EXPECT_TRUE(RejectsWith(with({"--sessions", "2", "--input", "x.npy"}),
                          "unknown flag --input for 'load'"));
  EXPECT_TRUE(RejectsWith({"load", "--stack", "v", "--sessions", "1024", "--segment", "8192",
                           "--dim", "4096"},
                          "--segment"));
  // 1024 sessions of 1024 x 1024 features: 4 GiB in flight in float32, 2 GiB (the limit) in a
  // 2-byte dtype; 8 GiB and 4 GiB at 2048 frames.
  EXPECT_TRUE(RejectsWith({"load", "--stack", "v", "--sessions", "1024", "--segment", "1024",
                           "--dim", "1024", "--dtype", "float32"},
                          "--sessions"));
  EXPECT_TRUE(RejectsWith({"load", "--stack", "v", "--sessions", "1024", "--segment", "2048",
                           "--dim", "1024"},
                          "--sessions"));
  // The stack's dtype may take 2 bytes: run_load decides.
  EXPECT_NO_THROW(parse({"load", "--stack", "v", "--sessions", "1024", "--segment", "1024", "--dim", "1024"}));
}

TEST(CommandLine, HelpAndCommandMistakes) {
  EXPECT_EQ(parse({"--help"}).kind, CommandKind::kHelp);
  EXPECT_EQ(parse({"help"}).help_text, usage_text());
  const Command stream_help = parse({"stream", "--stack", "v", "-h"});
  EXPECT_EQ(stream_help.kind, CommandKind::kHelp);
  EXPECT_NE(stream_help.help_text.find("hvlm-client stream --stack NAME"), std::string::npos);
  EXPECT_EQ(stream_help.help_text.find("hvlm-client load"), std::string::npos);
  EXPECT_NE(parse({"help", "load"}).help_text.find("--sessions N"), std::string::npos);
  EXPECT_TRUE(RejectsWith({}, "no command given"));
  EXPECT_TRUE(RejectsWith({"serve"}, "unknown command 'serve'"));
  EXPECT_TRUE(RejectsWith({"--server"}, "--server: needs a value"));
  EXPECT_TRUE(RejectsWith({"--stack", "v", "list"}, "unknown flag --stack before the command"));
  EXPECT_TRUE(RejectsWith({"--server", "a:1", "list", "--server", "b:2"}, "--server: given twice"));
}

TEST(CommandLine, OutputPathsMustBeCreatable) {
  EXPECT_NO_THROW(check_output_path("--output", "out.npy"));
  EXPECT_NO_THROW(check_output_path("--output", ::testing::TempDir() + "/x.npy"));
  try {
    check_output_path("--json", "/nonexistent/dir/s.json");
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_STREQ(e.what(), "--json: directory /nonexistent/dir does not exist");
  }
  EXPECT_THROW(check_output_path("--output", ::testing::TempDir()), UsageError);
}

TEST(CommandLine, SessionIds) {
  EXPECT_TRUE(valid_session_id("abc-DEF_0.9"));
  EXPECT_TRUE(valid_session_id(std::string(128, 'x')));
  EXPECT_FALSE(valid_session_id(""));
  EXPECT_FALSE(valid_session_id(std::string(129, 'x')));
  EXPECT_FALSE(valid_session_id("a/b"));
  EXPECT_FALSE(valid_session_id("a b"));
}

}  // namespace
}  // namespace hvlm::client
