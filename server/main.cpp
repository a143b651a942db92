// hvlm-server: serves the attention stacks of a YAML config over gRPC.
//   hvlm-server --config configs/default.yaml [--listen HOST:PORT] [--device cpu|cuda|auto]
//               [--log-level LEVEL] [--log-format text|json] [--metrics-listen HOST:PORT]
//               [--ready-file PATH]
// Exits 0 after a graceful shutdown on SIGTERM or SIGINT, 2 on a bad flag or config, 1 when it
// cannot start.
#include "attention/openmp_wait_policy.h"
#include "server/config.h"
#include "server/log.h"
#include "server/server.h"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <unistd.h>
#include <string>

namespace {

constexpr const char* kUsage =
    "usage: hvlm-server --config FILE [--listen HOST:PORT] [--device cpu|cuda|auto]\n"
    "                   [--log-level trace|debug|info|warn|error|off] [--log-format text|json]\n"
    "                   [--metrics-listen HOST:PORT] [--ready-file PATH]\n"
    "  --config      YAML configuration (see docs/configuration.md)\n"
    "  --listen      overrides `listen`; port 0 picks a free port\n"
    "  --device      overrides `device`\n"
    "  --log-level   overrides `log_level`\n"
    "  --log-format  overrides `log_format`\n"
    "  --metrics-listen  overrides `metrics.listen` (/metrics, /healthz, /readyz); port 0 picks\n"
    "                a free port\n"
    "  --ready-file  once serving, write the bound gRPC host:port to PATH (first line) and the\n"
    "                metrics host:port (second line, when metrics are enabled)\n";

int g_signal_pipe[2] = {-1, -1};

void on_signal(int signal_number) {
  const unsigned char byte = static_cast<unsigned char>(signal_number);
  [[maybe_unused]] const ssize_t n = write(g_signal_pipe[1], &byte, 1);
}

struct Flags {
  std::string config, listen, device, log_level, log_format, metrics_listen, ready_file;
};

bool parse_flags(int argc, char** argv, Flags* flags) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    std::string* target = arg == "--config"       ? &flags->config
                          : arg == "--listen"     ? &flags->listen
                          : arg == "--device"     ? &flags->device
                          : arg == "--log-level"  ? &flags->log_level
                          : arg == "--log-format" ? &flags->log_format
                          : arg == "--metrics-listen" ? &flags->metrics_listen
                          : arg == "--ready-file" ? &flags->ready_file
                                                  : nullptr;
    if (target == nullptr) {
      std::cerr << "hvlm-server: unknown flag '" << arg << "'\n" << kUsage;
      return false;
    }
    if (i + 1 >= argc || argv[i + 1][0] == '\0') {
      std::cerr << "hvlm-server: " << arg << " needs a value\n";
      return false;
    }
    *target = argv[++i];
  }
  if (flags->config.empty()) {
    std::cerr << "hvlm-server: --config is required\n" << kUsage;
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  hvlm::use_passive_openmp_wait(argv);
  Flags flags;
  if (!parse_flags(argc, argv, &flags)) return 2;

  hvlm::ServerConfig config;
  try {
    config = hvlm::ServerConfig::load(flags.config);
    if (!flags.listen.empty()) {
      hvlm::check_listen_address(flags.listen, "--listen");
      config.listen = flags.listen;
    }
    if (!flags.metrics_listen.empty()) {
      hvlm::check_listen_address(flags.metrics_listen, "--metrics-listen");
      config.metrics.listen = flags.metrics_listen;
    }
    if (!flags.device.empty()) {
      if (flags.device != "cpu" && flags.device != "cuda" && flags.device != "auto") {
        throw hvlm::ConfigError("--device must be cpu, cuda or auto, got '" + flags.device + "'");
      }
      config.device = flags.device;
    }
    if (!flags.log_level.empty()) {
      try {
        hvlm::log::parse_level(flags.log_level);
      } catch (const std::invalid_argument& e) {
        throw hvlm::ConfigError(std::string("--log-level: ") + e.what());
      }
      config.log_level = flags.log_level;
    }
    if (!flags.log_format.empty()) {
      if (flags.log_format != "text" && flags.log_format != "json") {
        throw hvlm::ConfigError("--log-format must be text or json, got '" + flags.log_format + "'");
      }
      config.log_format = flags.log_format;
    }
    hvlm::log::configure(config.log_level, config.log_format);
  } catch (const std::exception& e) {
    std::cerr << "hvlm-server: " << e.what() << "\n";
    return 2;
  }

  // Libraries start threads before main() (OpenBLAS does), so a signal may land on any thread:
  // the handler only writes the signal number to a pipe that main() waits on.
  if (pipe(g_signal_pipe) != 0) {
    std::perror("hvlm-server: pipe");
    return 1;
  }
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);

  std::unique_ptr<hvlm::Server> server;
  try {
    server = hvlm::Server::start(config);
  } catch (const hvlm::ConfigError& e) {
    hvlm::log::error(std::string("invalid configuration: ") + e.what());
    return 2;
  } catch (const std::exception& e) {
    hvlm::log::error(std::string("cannot start: ") + e.what());
    return 1;
  }
  if (!flags.ready_file.empty()) {
    const std::string tmp = flags.ready_file + ".tmp";
    std::ofstream out(tmp);
    out << server->address() << "\n";
    if (!server->metrics_address().empty()) out << server->metrics_address() << "\n";
    out.close();
    std::rename(tmp.c_str(), flags.ready_file.c_str());
  }

  unsigned char signal_number = 0;
  while (read(g_signal_pipe[0], &signal_number, 1) != 1) {
    if (errno != EINTR) break;
  }
  hvlm::log::info(std::string("received ") + (signal_number == SIGTERM ? "SIGTERM" : "SIGINT"));
  server->shutdown(config.shutdown_grace_seconds);
  return 0;
}
