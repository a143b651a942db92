// The address a client on this host dials to reach a server that listens on host:port: a
// wildcard host (empty, 0.0.0.0, [::]) becomes 127.0.0.1. Used for the gRPC and the metrics
// port (ready file, logs, the metrics server's own wake-up connection).
#pragma once

#include <string>

namespace hvlm {

inline std::string dial_address(const std::string& listen_host, int port) {
  const bool wildcard = listen_host.empty() || listen_host == "0.0.0.0" || listen_host == "[::]";
  return (wildcard ? std::string("127.0.0.1") : listen_host) + ":" + std::to_string(port);
}

}  // namespace hvlm
