// A small HTTP/1.1 server on Boost.Beast for the metrics and the dashboard: its own thread and
// io_context, so that a slow or hostile client never touches the scheduling loop. Requests are
// answered by one handler; one path streams server-sent events. Bounded: connections, request
// size, and an idle timeout.
#pragma once

#include <netinet/in.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace shmsched::daemon {

struct HttpRequest {
  std::string method;  // GET, POST, ...
  std::string target;  // path and query
  std::string body;
  std::string content_type;
  std::string origin;  // the Origin header, when sent (browsers send it on POST)
  std::string host;    // the Host header
  // The TCP connection, as the kernel names it: what the peer's identity is looked up by.
  sockaddr_storage peer{};
  sockaddr_storage local{};
};

struct HttpResponse {
  unsigned status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

class HttpServer {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;
  // A server-sent-event stream: `next` gives the data of the next event (one line of JSON).
  struct Stream {
    std::string path;
    std::chrono::milliseconds interval{1000};
    std::function<std::string()> next;
  };
  struct Limits {
    std::size_t max_connections = 128;
    std::size_t max_streams = 16;  // of the connections: the rest stay for scrapes and probes
    std::size_t max_body_bytes = 64 * 1024;
    std::chrono::seconds idle_timeout{10};  // for a request to arrive, a response to be read
  };

  // Binds `listen` ("host:port"; port 0 picks one) at once: throws with the address and the
  // cause when it cannot. Serving starts with start().
  HttpServer(const std::string& listen, Handler handler, Stream stream, Limits limits);
  HttpServer(const std::string& listen, Handler handler, Stream stream)
      : HttpServer(listen, std::move(handler), std::move(stream), Limits{}) {}
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  void start();
  void stop();  // closes every connection; idempotent
  std::uint16_t port() const;
  std::string address() const;  // "host:port" as bound

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
  std::thread thread_;
};

// "host:port" -> (host, port); throws with the text and the expected form. The host must be an
// IP address ("[::1]" for IPv6) or localhost (which stands for 127.0.0.1).
std::pair<std::string, std::uint16_t> split_host_port(const std::string& listen);

// Whether a Host header names this server by an IP address or as localhost (with or without a
// port): anything else is a name that a web page pointed here (DNS rebinding).
bool addressed_by_ip_or_localhost(std::string_view host);

}  // namespace shmsched::daemon
