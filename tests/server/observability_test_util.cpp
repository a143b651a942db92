#include "tests/server/observability_test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>

namespace hvlm::testing {
namespace {

// A connected socket to `address`, or -1 (errno set) when nothing accepts there.
int connect_to(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) throw std::invalid_argument("address without a port: " + address);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
  if (inet_pton(AF_INET, address.substr(0, colon).c_str(), &addr.sin_addr) != 1) {
    throw std::invalid_argument("not an IPv4 address: " + address);
  }
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  // A bound on a hung server, so a broken server fails the test instead of hanging it.
  timeval timeout{30, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int saved = errno;
    close(fd);
    errno = saved;
    return -1;
  }
  return fd;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string trim(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t") - begin + 1);
}

std::optional<std::string> find_on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + program;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return std::nullopt;
}

}  // namespace

HttpResponse http_request(const std::string& address, const std::string& method, const std::string& path) {
  const int fd = connect_to(address);
  if (fd < 0) throw std::runtime_error("cannot connect to " + address + ": " + std::strerror(errno));
  std::string request = method + " " + path + " HTTP/1.1\r\nHost: " + address + "\r\nConnection: close\r\n";
  if (method == "POST" || method == "PUT") request += "Content-Length: 0\r\n";
  request += "\r\n";
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  std::string raw;
  char buf[4096];
  for (ssize_t n; (n = recv(fd, buf, sizeof(buf), 0)) > 0;) raw.append(buf, static_cast<size_t>(n));
  close(fd);

  HttpResponse response;
  const size_t end_of_head = raw.find("\r\n\r\n");
  if (end_of_head == std::string::npos) return response;
  std::istringstream head(raw.substr(0, end_of_head));
  std::getline(head, response.status_line);
  if (!response.status_line.empty() && response.status_line.back() == '\r') response.status_line.pop_back();
  // "HTTP/1.1 200 OK"
  const size_t space = response.status_line.find(' ');
  if (space != std::string::npos) response.status = std::atoi(response.status_line.c_str() + space + 1);
  for (std::string line; std::getline(head, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    response.headers[lower(trim(line.substr(0, colon)))] = trim(line.substr(colon + 1));
  }
  response.body = raw.substr(end_of_head + 4);
  return response;
}

bool accepts_connections(const std::string& address) {
  const int fd = connect_to(address);
  if (fd < 0) return false;
  close(fd);
  return true;
}

std::optional<double> sample_value(const std::string& exposition, const std::string& series) {
  std::istringstream lines(exposition);
  for (std::string line; std::getline(lines, line);) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 && line[series.size()] == ' ') {
      const std::string value = line.substr(series.size() + 1);
      char* end = nullptr;
      const double v = std::strtod(value.c_str(), &end);  // also reads +Inf, -Inf and NaN
      if (end == value.c_str()) return std::nullopt;
      return v;
    }
  }
  return std::nullopt;
}

std::optional<int> promtool_check(const std::string& exposition, std::string* output) {
  const auto promtool = find_on_path("promtool");
  if (!promtool) return std::nullopt;
  char file[] = "/tmp/hvlm-exposition-XXXXXX";
  const int fd = mkstemp(file);
  if (fd < 0) throw std::runtime_error(std::string("mkstemp: ") + std::strerror(errno));
  for (size_t written = 0; written < exposition.size();) {
    const ssize_t n = write(fd, exposition.data() + written, exposition.size() - written);
    if (n <= 0) break;
    written += static_cast<size_t>(n);
  }
  close(fd);
  const std::string command = *promtool + " check metrics < " + file + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    unlink(file);
    throw std::runtime_error("cannot run " + command);
  }
  output->clear();
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), pipe)) > 0;) output->append(buf, n);
  const int status = pclose(pipe);
  unlink(file);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace hvlm::testing
