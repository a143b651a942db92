#include "server/metrics_http.h"

#include "server/dial_address.h"

#include "server/metrics.h"

#include <civetweb.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace hvlm {
namespace {

void respond(mg_connection* conn, int status, const char* reason, const char* content_type, const std::string& body,
             bool head, const char* extra_header = "") {
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nCache-Control: no-store\r\n%s"
            "Connection: close\r\n\r\n",
            status, reason, content_type, body.size(), extra_header);
  if (!head && !body.empty()) mg_write(conn, body.data(), body.size());
}

// Opens and closes a TCP connection to host:port (best effort, no waiting on a refusal).
void poke(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  std::string bare = host;
  if (bare.size() > 2 && bare.front() == '[' && bare.back() == ']') bare = bare.substr(1, bare.size() - 2);
  if (getaddrinfo(bare.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) return;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    const bool connected = connect(fd, a->ai_addr, a->ai_addrlen) == 0;
    close(fd);
    if (connected) break;
  }
  freeaddrinfo(found);
}

}  // namespace

std::unique_ptr<MetricsHttpServer> MetricsHttpServer::start(const Options& options, Endpoints endpoints) {
  static std::once_flag library;
  std::call_once(library, [] { mg_init_library(0); });
  if (!endpoints.metrics || !endpoints.ready) throw std::invalid_argument("MetricsHttpServer needs both endpoints");
  if (options.threads < 1) throw std::invalid_argument("MetricsHttpServer needs at least one thread");

  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer());
  server->endpoints_ = std::move(endpoints);
  server->host_ = options.listen.substr(0, options.listen.rfind(':'));
  const std::string threads = std::to_string(options.threads);
  const char* config[] = {"listening_ports", options.listen.c_str(),
                          "num_threads", threads.c_str(),
                          "request_timeout_ms", "10000",
                          "enable_keep_alive", "no",
                          nullptr};
  char error_text[256] = {0};
  unsigned error_code = 0;
  mg_error_data error{&error_code, error_text, sizeof(error_text)};
  mg_callbacks callbacks{};
  // civetweb prints its own failures to stderr unless a logger is installed; ours come back
  // through error_text, and request-level messages are not worth a log line.
  callbacks.log_message = [](const mg_connection*, const char*) { return 1; };
  mg_init_data init{&callbacks, server.get(), config};
  server->context_ = mg_start2(&init, &error);
  if (server->context_ == nullptr) {
    throw std::runtime_error("cannot serve metrics on " + options.listen + ": " +
                             (error_text[0] != '\0' ? error_text : "civetweb failed to start"));
  }
  mg_server_port ports[4];
  const int n = mg_get_server_ports(server->context_, 4, ports);
  if (n < 1) throw std::runtime_error("cannot serve metrics on " + options.listen + ": no listening port");
  server->port_ = ports[0].port;
  mg_set_request_handler(server->context_, "/", &MetricsHttpServer::handle, server.get());
  return server;
}

MetricsHttpServer::~MetricsHttpServer() { stop(); }

void MetricsHttpServer::stop() {
  if (context_ == nullptr) return;
  // civetweb's listening thread sees the stop flag only when its poll() returns, which on an
  // idle port takes up to 2 s; a connection to our own port wakes it (0.1 s instead).
  std::atomic<bool> stopped{false};
  std::thread stopper([this, &stopped] {
    mg_stop(context_);
    stopped = true;
  });
  const std::string dial = address();
  const std::string host = dial.substr(0, dial.rfind(':'));
  while (!stopped) {
    poke(host, port_);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  stopper.join();
  context_ = nullptr;
}

std::string MetricsHttpServer::address() const { return dial_address(host_, port_); }

int MetricsHttpServer::handle(mg_connection* conn, void* self_ptr) {
  auto* self = static_cast<MetricsHttpServer*>(self_ptr);
  const mg_request_info* request = mg_get_request_info(conn);
  const char* method = request->request_method != nullptr ? request->request_method : "";
  const std::string path = request->local_uri != nullptr ? request->local_uri : "";
  const bool head = std::strcmp(method, "HEAD") == 0;
  const bool known = path == "/metrics" || path == "/healthz" || path == "/readyz";
  if (!known) {
    respond(conn, 404, "Not Found", "text/plain; charset=utf-8",
            "not found: this port serves /metrics, /healthz and /readyz\n", head);
    return 404;
  }
  if (!head && std::strcmp(method, "GET") != 0) {
    respond(conn, 405, "Method Not Allowed", "text/plain; charset=utf-8", "only GET and HEAD\n", false,
            "Allow: GET, HEAD\r\n");
    return 405;
  }
  if (path == "/metrics") {
    std::string body;
    try {
      body = self->endpoints_.metrics();
    } catch (const std::exception& e) {
      respond(conn, 500, "Internal Server Error", "text/plain; charset=utf-8",
              std::string("cannot render metrics: ") + e.what() + "\n", head);
      return 500;
    } catch (...) {  // nothing may escape into civetweb's C code
      respond(conn, 500, "Internal Server Error", "text/plain; charset=utf-8", "cannot render metrics\n", head);
      return 500;
    }
    respond(conn, 200, "OK", metrics::kTextContentType, body, head);
    return 200;
  }
  if (path == "/healthz") {
    respond(conn, 200, "OK", "text/plain; charset=utf-8", "ok\n", head);
    return 200;
  }
  std::string reason;
  bool ready = false;
  try {
    ready = self->endpoints_.ready(&reason);
  } catch (...) {
    reason = "readiness check failed";
  }
  if (ready) {
    respond(conn, 200, "OK", "text/plain; charset=utf-8", "ready\n", head);
    return 200;
  }
  respond(conn, 503, "Service Unavailable", "text/plain; charset=utf-8", "not ready: " + reason + "\n", head);
  return 503;
}

}  // namespace hvlm
