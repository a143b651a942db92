#include "server/log.h"

#include "server/rate_limiter.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <stdexcept>

namespace hvlm::log {
namespace {

std::atomic<Level> g_level{Level::kInfo};
std::atomic<bool> g_json{false};

spdlog::logger& logger() {
  static auto instance = [] {
    auto l = spdlog::stderr_logger_mt("hvlm");
    l->set_level(spdlog::level::trace);  // filtering happens in write()
    return l;
  }();
  return *instance;
}

spdlog::level::level_enum to_spdlog(Level level) {
  switch (level) {
    case Level::kTrace: return spdlog::level::trace;
    case Level::kDebug: return spdlog::level::debug;
    case Level::kInfo: return spdlog::level::info;
    case Level::kWarn: return spdlog::level::warn;
    case Level::kError: return spdlog::level::err;
    case Level::kOff: return spdlog::level::off;
  }
  return spdlog::level::info;
}

const char* level_name(Level level) {
  switch (level) {
    case Level::kTrace: return "trace";
    case Level::kDebug: return "debug";
    case Level::kInfo: return "info";
    case Level::kWarn: return "warn";
    case Level::kError: return "error";
    case Level::kOff: return "off";
  }
  return "info";
}

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

std::string utc_timestamp() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t secs = std::chrono::system_clock::to_time_t(now);
  const auto micros =
      std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() %
      1000000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[80];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<long long>(micros));
  return buf;
}

}  // namespace

Level parse_level(const std::string& level) {
  for (Level l : {Level::kTrace, Level::kDebug, Level::kInfo, Level::kWarn, Level::kError,
                  Level::kOff}) {
    if (level == level_name(l)) return l;
  }
  throw std::invalid_argument("log level must be one of trace, debug, info, warn, error, off; got '" +
                              level + "'");
}

void configure(const std::string& level, const std::string& format) {
  if (format != "text" && format != "json") {
    throw std::invalid_argument("log format must be text or json, got '" + format + "'");
  }
  g_level = parse_level(level);
  g_json = format == "json";
  logger().set_pattern(g_json ? "%v" : "%Y-%m-%dT%H:%M:%S.%fZ %^%l%$ %v", spdlog::pattern_time_type::utc);
}

bool enabled(Level level) { return level != Level::kOff && level >= g_level.load(); }

void write(Level level, std::string_view message, const Fields& fields) {
  if (!enabled(level)) return;
  std::string line;
  if (g_json) {
    line = "{\"ts\":\"" + utc_timestamp() + "\",\"level\":\"" + level_name(level) + "\",\"msg\":";
    append_json_string(line, message);
    for (const auto& [key, value] : fields) {
      line += ',';
      append_json_string(line, key);
      line += ':';
      append_json_string(line, value);
    }
    line += '}';
  } else {
    line.assign(message);
    for (const auto& [key, value] : fields) {
      line += ' ';
      line += key;
      line += '=';
      line += value;
    }
  }
  logger().log(to_spdlog(level), "{}", line);
}

void write_limited(Level level, const std::string& key, std::string_view message, const Fields& fields) {
  if (!enabled(level)) return;
  static RateLimiter limiter(std::chrono::seconds(10));
  int64_t suppressed = 0;
  if (!limiter.admit(key, RateLimiter::Clock::now(), &suppressed)) return;
  if (suppressed == 0) {
    write(level, message, fields);
    return;
  }
  Fields with_count = fields;
  with_count.emplace_back("suppressed", std::to_string(suppressed));
  write(level, message, with_count);
}

}  // namespace hvlm::log
