// A small logging facade over spdlog, so translation units that include LibTorch never
// include spdlog (PyTorch 2.x bundles its own fmt, which breaks spdlog's). Lines go to stderr;
// `fields` are appended as key=value pairs in text format, or as JSON members in json format.
// Thread-safe; configure() once at start-up, before other threads log.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hvlm::log {

enum class Level { kTrace, kDebug, kInfo, kWarn, kError, kOff };

using Fields = std::vector<std::pair<std::string, std::string>>;

// level: trace|debug|info|warn|error|off; format: text|json. Throws std::invalid_argument
// naming the bad value.
void configure(const std::string& level, const std::string& format);
Level parse_level(const std::string& level);
bool enabled(Level level);
void write(Level level, std::string_view message, const Fields& fields = {});

// Like write(), but lines with the same `key` are rate-limited: the first is written, then at
// most one per 10 seconds; a written line that follows held-back ones carries a "suppressed"
// field with their count. For errors a client can repeat at will.
void write_limited(Level level, const std::string& key, std::string_view message, const Fields& fields = {});

inline void debug(std::string_view m, const Fields& f = {}) { write(Level::kDebug, m, f); }
inline void info(std::string_view m, const Fields& f = {}) { write(Level::kInfo, m, f); }
inline void warn(std::string_view m, const Fields& f = {}) { write(Level::kWarn, m, f); }
inline void error(std::string_view m, const Fields& f = {}) { write(Level::kError, m, f); }

}  // namespace hvlm::log
