#include "client/run_summary.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace hvlm::client {
namespace {

// Fixed notation with 4 decimals (no exponents, stable for diffs); null when not finite.
std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  char text[64];
  std::snprintf(text, sizeof text, "%.4f", value);
  return text;
}

std::string json_stats(const LatencySummary& stats) {
  return "{\"p50\": " + json_number(stats.p50) + ", \"p90\": " + json_number(stats.p90) +
         ", \"p99\": " + json_number(stats.p99) + ", \"mean\": " + json_number(stats.mean) + "}";
}

// The length of the valid UTF-8 sequence starting at text[i], or 0 when it is not valid.
size_t utf8_sequence_length(const std::string& text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  size_t length;
  uint32_t code_point;
  if (lead < 0x80) return 1;
  if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2;
    code_point = lead & 0x1fu;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3;
    code_point = lead & 0x0fu;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4;
    code_point = lead & 0x07u;
  } else {
    return 0;
  }
  if (i + length > text.size()) return 0;
  for (size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xc0u) != 0x80u) return 0;
    code_point = (code_point << 6) | (byte(i + k) & 0x3fu);
  }
  // Reject overlong forms, surrogates and code points past U+10FFFF.
  if ((length == 3 && code_point < 0x800) || (length == 4 && code_point < 0x10000) ||
      (code_point >= 0xd800 && code_point <= 0xdfff) || code_point > 0x10ffff) {
    return 0;
  }
  return length;
}

// "1.234" with 3 decimals, or "-" for a statistic without samples.
std::string ms(double value) {
  if (!std::isfinite(value)) return "-";
  char text[64];
  std::snprintf(text, sizeof text, "%.3f", value);
  return text;
}

}  // namespace

std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
      ++i;
    } else if (c == '\n') {
      out += "\\n";
      ++i;
    } else if (c == '\t') {
      out += "\\t";
      ++i;
    } else if (c < 0x20 || c == 0x7f) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
      out += escaped;
      ++i;
    } else if (const size_t length = utf8_sequence_length(text, i); length > 0) {
      out.append(text, i, length);
      i += length;
    } else {
      out += "\\ufffd";
      ++i;
    }
  }
  return out + "\"";
}

std::string summary_json(const RunSummary& s) {
  std::string json = "{";
  json += "\"mode\": " + json_string(s.mode);
  json += ", \"stack\": " + json_string(s.stack);
  json += ", \"sessions\": " + std::to_string(s.sessions);
  json += ", \"segment_tokens\": " + std::to_string(s.segment_tokens);
  json += ", \"batch\": " + std::to_string(s.batch);
  json += ", \"dim\": " + std::to_string(s.dim);
  json += ", \"dtype\": " + json_string(s.dtype);
  json += ", \"warmup_segments\": " + std::to_string(s.warmup_segments);
  json += ", \"segments\": " + std::to_string(s.latency_ms.count);
  json += ", \"seconds\": " + json_number(s.seconds);
  json += ", \"segments_per_second\": " + json_number(s.latency_ms.per_second);
  json += ", \"latency_ms\": " + json_stats(s.latency_ms);
  json += ", \"server_compute_ms\": " + json_stats(s.server_compute_ms);
  json += ", \"server_total_ms\": " + json_stats(s.server_total_ms);
  json += ", \"outside_server_ms\": " + json_stats(s.outside_server_ms);
  const ServerStages& st = s.server_stages_ms;
  json += ", \"server_stages_ms\": {\"queue\": " + json_stats(st.queue) + ", \"decode\": " + json_stats(st.decode) +
          ", \"compute\": " + json_stats(st.compute) + ", \"memory_update\": " + json_stats(st.memory_update) +
          ", \"encode\": " + json_stats(st.encode) + "}";
  json += ", \"errors\": " + std::to_string(s.errors);
  json += ", \"first_error\": " + json_string(s.first_error);
  return json + "}\n";
}

void write_summary_json(const RunSummary& summary, const std::string& path) {
  std::ofstream out(path, std::ios::trunc);
  if (!out) throw std::runtime_error(path + ": cannot create: " + std::strerror(errno));
  out << summary_json(summary);
  out.close();
  if (!out) throw std::runtime_error(path + ": write failed: " + std::strerror(errno));
}

void print_summary(const RunSummary& s, std::ostream& out) {
  out << "summary: " << s.latency_ms.count << (s.latency_ms.count == 1 ? " segment" : " segments");
  if (s.mode == "load") out << " from " << s.sessions << " sessions";
  out << " in " << ms(s.seconds) << " s (" << s.warmup_segments << " warmup segments"
      << (s.mode == "load" ? " per session" : "") << " excluded)\n";
  auto line = [&](const char* label, const LatencySummary& l) {
    out << label << "p50 " << ms(l.p50) << "  p90 " << ms(l.p90) << "  p99 " << ms(l.p99) << "  mean "
        << ms(l.mean) << "\n";
  };
  line("  latency ms:         ", s.latency_ms);
  line("  server compute ms:  ", s.server_compute_ms);
  line("  server total ms:    ", s.server_total_ms);
  line("  outside server ms:  ", s.outside_server_ms);
  const ServerStages& st = s.server_stages_ms;
  out << "  server stages ms:   p99 queue " << ms(st.queue.p99) << "  decode " << ms(st.decode.p99)
      << "  compute " << ms(st.compute.p99) << "  memory update " << ms(st.memory_update.p99) << "  encode "
      << ms(st.encode.p99) << "\n";
  out << "  segments/s:         " << ms(s.latency_ms.per_second) << "\n";
  if (s.mode == "load" || s.errors > 0) {
    out << "  errors:             " << s.errors;
    if (s.errors > 0) out << " (first: " << s.first_error << ")";
    out << "\n";
  }
}

}  // namespace hvlm::client
