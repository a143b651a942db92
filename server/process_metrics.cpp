#include "server/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

namespace hvlm {
namespace {

using metrics::MetricType;
using metrics::Sample;

// Fields of /proc/self/stat after the command name (which may contain spaces), 1-based as in
// proc(5): utime is field 14, stime 15, starttime 22, vsize 23, rss 24 (pages).
std::optional<std::vector<std::string>> stat_fields() {
  std::ifstream in("/proc/self/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 1));
  std::vector<std::string> fields = {"", "pid", "comm"};  // so fields[i] is field i
  for (std::string f; rest >> f;) fields.push_back(f);
  if (fields.size() < 25) return std::nullopt;
  return fields;
}

std::optional<double> boot_time_seconds() {
  std::ifstream in("/proc/stat");
  for (std::string key; in >> key;) {
    if (key == "btime") {
      double value = 0;
      if (in >> value) return value;
      return std::nullopt;
    }
    in.ignore(1 << 20, '\n');
  }
  return std::nullopt;
}

std::vector<Sample> one(std::optional<double> value) {
  if (!value) return {};
  return {Sample{{}, *value}};
}

std::optional<double> stat_value(int field, double scale) {
  const auto fields = stat_fields();
  if (!fields) return std::nullopt;
  return std::stod((*fields)[field]) * scale;
}

std::optional<double> open_fds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return std::nullopt;
  double n = 0;
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n - 1;  // the descriptor opendir itself holds
}

}  // namespace

void register_process_metrics(metrics::Registry& registry) {
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  registry.callback(MetricType::kCounter, "process_cpu_seconds_total", "User and system CPU time spent, seconds.", {},
                    [ticks] {
                      const auto fields = stat_fields();
                      if (!fields) return std::vector<Sample>{};
                      return one((std::stod((*fields)[14]) + std::stod((*fields)[15])) / ticks);
                    });
  registry.callback(MetricType::kGauge, "process_resident_memory_bytes", "Resident memory size, bytes.", {},
                    [page] { return one(stat_value(24, page)); });
  registry.callback(MetricType::kGauge, "process_virtual_memory_bytes", "Virtual memory size, bytes.", {},
                    [] { return one(stat_value(23, 1.0)); });
  registry.callback(MetricType::kGauge, "process_open_fds", "Open file descriptors.", {},
                    [] { return one(open_fds()); });
  registry.callback(MetricType::kGauge, "process_max_fds", "Most open file descriptors allowed (soft limit).", {}, [] {
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return std::vector<Sample>{};
    return one(static_cast<double>(limit.rlim_cur));
  });
  // The start time does not change: compute it once.
  std::optional<double> start;
  if (const auto boot = boot_time_seconds()) {
    if (const auto since_boot = stat_value(22, 1.0 / ticks)) start = *boot + *since_boot;
  }
  registry.callback(MetricType::kGauge, "process_start_time_seconds", "Start time since the Unix epoch, seconds.",
                    {}, [start] { return one(start); });
}

}  // namespace hvlm
