// Helpers for the observability suites, without LibTorch: a minimal HTTP/1.1 client over a
// POSIX socket (so the tests need no curl), reading one sample's value out of the Prometheus
// text exposition, and running `promtool check metrics` over a rendered exposition.
// Every function is self-contained and thread-safe.
#pragma once

#include <map>
#include <optional>
#include <string>

namespace hvlm::testing {

struct HttpResponse {
  int status = 0;          // 0 when no complete status line came back
  std::string status_line;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
};

/// Sends one `method path` HTTP/1.1 request to `address` (IPv4 "host:port") with
/// `Connection: close` and reads the response until the server closes the connection. Throws
/// std::runtime_error when it cannot connect.
HttpResponse http_request(const std::string& address, const std::string& method, const std::string& path);

/// Whether something accepts TCP connections on `address` (IPv4 "host:port").
bool accepts_connections(const std::string& address);

/// The value of the sample whose name and labels are exactly `series` as rendered
/// (`hvlm_segments_total{stack="all"}`, labels in registration order), or nullopt when the
/// exposition has no such line.
std::optional<double> sample_value(const std::string& exposition, const std::string& series);

/// Pipes `exposition` through `promtool check metrics`: its exit status, with what it printed
/// in *output. nullopt when promtool is not on PATH.
std::optional<int> promtool_check(const std::string& exposition, std::string* output);

}  // namespace hvlm::testing
