// RunSummary: the JSON layout (keys, order, number format, null for missing statistics),
// string escaping including invalid UTF-8, and the printed summary.
#include "client/run_summary.h"

#include "tests/client/temp_path.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

namespace hvlm::client {
namespace {

RunSummary example() {
  RunSummary s;
  s.mode = "load";
  s.stack = "video";
  s.sessions = 4;
  s.segment_tokens = 64;
  s.batch = 2;
  s.dim = 768;
  s.dtype = "bfloat16";
  s.warmup_segments = 2;
  s.seconds = 1.5;
  s.latency_ms = {12, 1.25, 2.5, 3.75, 1.5, 8};
  s.server_compute_ms = {12, 0.5, 0.75, 1, 0.625, 8};
  s.server_total_ms = {12, 0.75, 1, 1.25, 0.875, 8};
  s.outside_server_ms = {12, 0.5, 1.5, 2.5, 0.625, 8};
  s.server_stages_ms.queue = {12, 0.125, 0.25, 0.5, 0.25, 8};
  s.server_stages_ms.decode = {12, 0.0625, 0.0625, 0.0625, 0.0625, 8};
  s.server_stages_ms.compute = s.server_compute_ms;
  s.server_stages_ms.memory_update = {12, 0.25, 0.5, 0.75, 0.375, 8};
  s.server_stages_ms.encode = {12, 0.0625, 0.125, 0.125, 0.0625, 8};
  s.errors = 1;
  s.first_error = "StreamSegments: INVALID_ARGUMENT: features must be [T, 768], got [64, 512]";
  return s;
}

TEST(RunSummary, JsonHasTheDocumentedLayout) {
  EXPECT_EQ(summary_json(example()),
            "{\"mode\": \"load\", \"stack\": \"video\", \"sessions\": 4, \"segment_tokens\": 64, "
            "\"batch\": 2, \"dim\": 768, \"dtype\": \"bfloat16\", \"warmup_segments\": 2, "
            "\"segments\": 12, \"seconds\": 1.5000, \"segments_per_second\": 8.0000, "
            "\"latency_ms\": {\"p50\": 1.2500, \"p90\": 2.5000, \"p99\": 3.7500, "
            "\"mean\": 1.5000}, "
            "\"server_compute_ms\": {\"p50\": 0.5000, \"p90\": 0.7500, \"p99\": 1.0000, "
            "\"mean\": 0.6250}, "
            "\"server_total_ms\": {\"p50\": 0.7500, \"p90\": 1.0000, \"p99\": 1.2500, "
            "\"mean\": 0.8750}, "
            "\"outside_server_ms\": {\"p50\": 0.5000, \"p90\": 1.5000, \"p99\": 2.5000, "
            "\"mean\": 0.6250}, "
            "\"server_stages_ms\": {"
            "\"queue\": {\"p50\": 0.1250, \"p90\": 0.2500, \"p99\": 0.5000, \"mean\": 0.2500}, "
            "\"decode\": {\"p50\": 0.0625, \"p90\": 0.0625, \"p99\": 0.0625, \"mean\": 0.0625}, "
            "\"compute\": {\"p50\": 0.5000, \"p90\": 0.7500, \"p99\": 1.0000, \"mean\": 0.6250}, "
            "\"memory_update\": {\"p50\": 0.2500, \"p90\": 0.5000, \"p99\": 0.7500, \"mean\": 0.3750}, "
            "\"encode\": {\"p50\": 0.0625, \"p90\": 0.1250, \"p99\": 0.1250, \"mean\": 0.0625}}, "
            "\"errors\": 1, \"first_error\": \"StreamSegments: INVALID_ARGUMENT: features must be "
            "[T, 768], got [64, 512]\"}\n");
}

TEST(RunSummary, JsonParsesAndMissingStatisticsAreNull) {
  RunSummary s = example();
  s.latency_ms = LatencyStats().summarize(0);
  s.first_error = "quote \" backslash \\ newline \n tab \t bell \x07 \xc3\xa9 bad \xff\xc3";
  const nlohmann::json json = nlohmann::json::parse(summary_json(s));
  EXPECT_EQ(json["segments"], 0);
  EXPECT_TRUE(json["latency_ms"]["p50"].is_null());
  EXPECT_TRUE(json["latency_ms"]["mean"].is_null());
  EXPECT_EQ(json["segments_per_second"], 0.0);
  EXPECT_EQ(json["first_error"],
            "quote \" backslash \\ newline \n tab \t bell \x07 \xc3\xa9 bad \xef\xbf\xbd\xef\xbf\xbd");
}

TEST(RunSummary, JsonStringsEscapeControlCharactersAndInvalidUtf8) {
  EXPECT_EQ(json_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(json_string(std::string("\x01\x1f\x7f", 3)), "\"\\u0001\\u001f\\u007f\"");
  EXPECT_EQ(json_string("\xe2\x82\xac"), "\"\xe2\x82\xac\"");      // the euro sign, kept
  EXPECT_EQ(json_string("\xc0\xaf"), "\"\\ufffd\\ufffd\"");        // overlong
  EXPECT_EQ(json_string("\xed\xa0\x80"), "\"\\ufffd\\ufffd\\ufffd\"");  // a surrogate
  EXPECT_EQ(json_string("\xe2\x82"), "\"\\ufffd\\ufffd\"");        // truncated
}

TEST(RunSummary, WritesTheJsonFile) {
  const std::string path = testing::unique_temp_path("summary.json");
  write_summary_json(example(), path);
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_EQ(text.str(), summary_json(example()));
  std::remove(path.c_str());
  EXPECT_THROW(write_summary_json(example(), "/nonexistent/dir/x.json"), std::runtime_error);
}

TEST(RunSummary, PrintedSummaryNamesTheFigures) {
  std::ostringstream out;
  print_summary(example(), out);
  const std::string text = out.str();
  EXPECT_NE(text.find("12 segments from 4 sessions in 1.500 s"), std::string::npos) << text;
  EXPECT_NE(text.find("p50 1.250  p90 2.500  p99 3.750  mean 1.500"), std::string::npos) << text;
  EXPECT_NE(text.find("segments/s:         8.000"), std::string::npos) << text;
  EXPECT_NE(text.find("errors:             1 (first: StreamSegments: INVALID_ARGUMENT"),
            std::string::npos)
      << text;
}

}  // namespace
}  // namespace hvlm::client
