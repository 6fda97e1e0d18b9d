#include "http_server.h"

#include <spdlog/spdlog.h>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <stdexcept>

namespace shmsched::daemon {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

std::pair<std::string, std::uint16_t> split_host_port(const std::string& listen) {
  const auto colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == listen.size()) {
    throw std::invalid_argument("'" + listen + "' is not host:port, such as 127.0.0.1:9464");
  }
  std::string host = listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);  // [::1]:9464
  }
  std::size_t used = 0;
  unsigned long port = 0;
  try {
    port = std::stoul(listen.substr(colon + 1), &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != listen.size() - colon - 1 || port > 65535) {
    throw std::invalid_argument("'" + listen + "' has no valid port (0 .. 65535)");
  }
  if (host == "localhost") host = "127.0.0.1";
  beast::error_code ec;
  asio::ip::make_address(host, ec);
  if (ec) {
    throw std::invalid_argument(
        "'" + host + "' is not an IP address (use 127.0.0.1, ::1, 0.0.0.0 or localhost)");
  }
  return {host, static_cast<std::uint16_t>(port)};
}

bool addressed_by_ip_or_localhost(std::string_view host) {
  if (!host.empty() && host.front() == '[') {
    const auto close = host.find(']');
    if (close == std::string_view::npos) return false;
    beast::error_code ec;
    asio::ip::make_address_v6(std::string(host.substr(1, close - 1)), ec);
    return !ec && (close + 1 == host.size() || host[close + 1] == ':');
  }
  const auto name = host.substr(0, host.find(':'));
  if (beast::iequals(beast::string_view(name.data(), name.size()), "localhost")) return true;
  beast::error_code ec;
  asio::ip::make_address_v4(std::string(name), ec);
  return !ec;
}

struct HttpServer::Impl {
  // Declared before the io_context: sessions still pending when it is destroyed count down here.
  std::size_t connections = 0;  // io thread only
  std::size_t streams = 0;      // io thread only
  Handler handler;
  Stream stream;
  Limits limits;
  // Actions (POST) run on threads of their own; stop() waits for them, as they use the handler.
  std::mutex actions_mutex;
  std::condition_variable actions_done;
  std::size_t actions = 0;
  bool stopping = false;
  static constexpr std::size_t kMaxActions = 4;
  bool begin_action() {
    std::lock_guard lock(actions_mutex);
    if (stopping || actions >= kMaxActions) return false;
    ++actions;
    return true;
  }
  void end_action() {
    std::lock_guard lock(actions_mutex);
    --actions;
    actions_done.notify_all();
  }

  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  asio::steady_timer accept_pause{io};
  std::chrono::steady_clock::time_point next_accept_log{};

  void accept();
};

namespace {

void copy_endpoint(const tcp::endpoint& e, sockaddr_storage& out) {
  std::memset(&out, 0, sizeof out);
  std::memcpy(&out, e.data(), std::min<std::size_t>(e.size(), sizeof out));
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, HttpServer::Impl& server)
      : stream_(std::move(socket)), server_(server), timer_(server.io) {
    ++server_.connections;
  }
  ~Session() {
    --server_.connections;
    if (stream_counted_) --server_.streams;
  }

  void run() { read(); }

 private:
  void read() {
    parser_.emplace();
    parser_->body_limit(server_.limits.max_body_bytes);
    parser_->header_limit(16 * 1024);
    stream_.expires_after(server_.limits.idle_timeout);
    http::async_read(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    if (ec == http::error::body_limit || ec == http::error::header_limit) {
      respond(HttpResponse{413, "text/plain; charset=utf-8", "request too large\n", {}}, false);
      return;
    }
    if (ec) return close();  // end of stream, timeout, garbage: the connection ends
    const auto& req = parser_->get();
    head_ = req.method() == http::verb::head;
    // DNS rebinding: a web page whose name was pointed at 127.0.0.1 reaches this port with its
    // own name as Host. Only an address or localhost is this server's name.
    const auto host_it = req.find(http::field::host);
    if (host_it == req.end() || !addressed_by_ip_or_localhost(std::string_view(
                                    host_it->value().data(), host_it->value().size()))) {
      respond(HttpResponse{421,
                           "text/plain; charset=utf-8",
                           "misdirected: address this server by its IP address or localhost\n",
                           {}},
              false);
      return;
    }
    HttpRequest r;
    r.method = std::string(req.method_string());
    r.target = std::string(req.target());
    r.body = req.body();
    if (auto it = req.find(http::field::content_type); it != req.end()) {
      r.content_type = std::string(it->value());
    }
    if (auto it = req.find(http::field::origin); it != req.end()) {
      r.origin = std::string(it->value());
    }
    r.host = std::string(host_it->value());
    beast::error_code ignored;
    copy_endpoint(stream_.socket().remote_endpoint(ignored), r.peer);
    copy_endpoint(stream_.socket().local_endpoint(ignored), r.local);
    const auto path = r.target.substr(0, r.target.find('?'));
    if (req.method() == http::verb::get && path == server_.stream.path && server_.stream.next) {
      // Streams never end: they get a share of the connections, so that scrapes and health
      // probes always find room.
      if (server_.streams >= server_.limits.max_streams) {
        respond(
            HttpResponse{503,
                         "text/plain; charset=utf-8",
                         "too many live streams open (" +
                             std::to_string(server_.limits.max_streams) + "): close a dashboard\n",
                         {{"Retry-After", "5"}}},
            false);
        return;
      }
      start_stream();
      return;
    }
    const bool keep_alive = req.keep_alive();
    if (req.method() == http::verb::post) {
      // An action waits for the scheduling loop's answer: on a thread of its own, so that the
      // io thread (scrapes, health probes, streams) never waits for the loop.
      if (!server_.begin_action()) {
        respond(HttpResponse{503,
                             "text/plain; charset=utf-8",
                             "too many actions in progress: try again\n",
                             {{"Retry-After", "1"}}},
                false);
        return;
      }
      std::thread([self = shared_from_this(), r = std::move(r), keep_alive]() mutable {
        auto out = self->serve(r);
        // The session goes back to the io thread whole: its last reference must not drop here.
        HttpServer::Impl& server = self->server_;
        asio::post(server.io, [self = std::move(self), out = std::move(out), keep_alive]() mutable {
          self->respond(std::move(out), keep_alive);
        });
        server.end_action();
      }).detach();
      return;
    }
    respond(serve(r), keep_alive);
  }

  HttpResponse serve(const HttpRequest& r) {
    try {
      return server_.handler(r);
    } catch (const std::exception& e) {
      return HttpResponse{500, "text/plain; charset=utf-8", std::string(e.what()) + "\n", {}};
    }
  }

  void respond(HttpResponse out, bool keep_alive) {
    res_ = {};
    res_.version(11);
    res_.result(out.status);
    res_.set(http::field::server, "shmschedd");
    res_.set(http::field::content_type, out.content_type);
    res_.set(http::field::cache_control, "no-store");
    for (auto& [k, v] : out.headers) res_.set(k, v);
    res_.body() = std::move(out.body);
    res_.keep_alive(keep_alive);
    res_.prepare_payload();
    if (head_) {
      // HEAD: the GET's headers, no body (a body would be read as the next response).
      const auto length = res_.body().size();
      res_.body().clear();
      res_.content_length(length);
    }
    stream_.expires_after(server_.limits.idle_timeout);
    http::async_write(stream_, res_,
                      [self = shared_from_this()](beast::error_code ec, std::size_t) {
                        if (ec || !self->res_.keep_alive()) return self->close();
                        self->read();
                      });
  }

  // Server-sent events: the header once, then one event per interval until the client goes.
  void start_stream() {
    stream_counted_ = true;
    ++server_.streams;
    sse_ =
        "HTTP/1.1 200 OK\r\nServer: shmschedd\r\nContent-Type: text/event-stream\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\n\r\n";
    append_event();
    write_event();
  }

  void append_event() {
    std::string data;
    try {
      data = server_.stream.next();
    } catch (const std::exception& e) {
      sse_ += "event: error\n";
      data = e.what();
    }
    // One data line per line of text: a newline inside would end the field.
    std::size_t from = 0;
    for (;;) {
      const auto nl = data.find('\n', from);
      sse_ += "data: ";
      sse_.append(data, from, nl == std::string::npos ? std::string::npos : nl - from);
      sse_ += '\n';
      if (nl == std::string::npos) break;
      from = nl + 1;
    }
    sse_ += '\n';
  }

  void write_event() {
    // A client that stops reading is dropped after the idle timeout, not buffered for.
    stream_.expires_after(server_.limits.idle_timeout);
    asio::async_write(stream_, asio::buffer(sse_),
                      [self = shared_from_this()](beast::error_code ec, std::size_t) {
                        if (ec) return self->close();
                        self->timer_.expires_after(self->server_.stream.interval);
                        self->timer_.async_wait([self](beast::error_code ec2) {
                          if (ec2) return;
                          self->sse_.clear();
                          self->append_event();
                          self->write_event();
                        });
                      });
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }

  beast::tcp_stream stream_;
  HttpServer::Impl& server_;
  asio::steady_timer timer_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> res_;
  std::string sse_;
  bool head_ = false;
  bool stream_counted_ = false;
};

}  // namespace

void HttpServer::Impl::accept() {
  acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted) return;  // stopping
    if (ec) {
      // Out of descriptors (EMFILE), say: the connection stays in the backlog and accepting
      // again at once would fail again at once. Pause, so as not to spin a core.
      const auto now = std::chrono::steady_clock::now();
      if (now >= next_accept_log) {
        next_accept_log = now + std::chrono::seconds(10);
        spdlog::warn("metrics: cannot accept a connection: {} (pausing 100 ms)", ec.message());
      }
      accept_pause.expires_after(std::chrono::milliseconds(100));
      accept_pause.async_wait([this](beast::error_code e) {
        if (!e) accept();
      });
      return;
    }
    if (connections >= limits.max_connections) {
      // Over the limit: refused at once, so that the limit holds and the client learns why.
      static const std::string busy =
          "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
      beast::error_code ignored;
      asio::write(socket, asio::buffer(busy), ignored);
      socket.close(ignored);
    } else {
      std::make_shared<Session>(std::move(socket), *this)->run();
    }
    accept();
  });
}

HttpServer::HttpServer(const std::string& listen, Handler handler, Stream stream, Limits limits)
    : impl_(std::make_shared<Impl>()) {
  impl_->handler = std::move(handler);
  impl_->stream = std::move(stream);
  impl_->limits = limits;
  const auto [host, port] = split_host_port(listen);
  beast::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (ec) {
    throw std::runtime_error("metrics_listen = " + listen + ": '" + host +
                             "' is not an IP address (use 127.0.0.1, ::1 or 0.0.0.0)");
  }
  const tcp::endpoint endpoint(address, port);
  auto& a = impl_->acceptor;
  a.open(endpoint.protocol(), ec);
  if (!ec) a.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(endpoint, ec);
  if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    throw std::runtime_error("metrics_listen = " + listen + ": cannot listen: " + ec.message() +
                             " (choose another address, or metrics_listen = off to turn the HTTP "
                             "endpoint off)");
  }
}

HttpServer::~HttpServer() {
  stop();
}

void HttpServer::start() {
  impl_->accept();
  thread_ = std::thread([impl = impl_] { impl->io.run(); });
}

void HttpServer::stop() {
  if (!thread_.joinable()) return;
  {
    std::unique_lock lock(impl_->actions_mutex);
    impl_->stopping = true;
    impl_->actions_done.wait(lock, [&] { return impl_->actions == 0; });
  }
  asio::post(impl_->io, [impl = impl_.get()] {
    beast::error_code ignored;
    impl->acceptor.close(ignored);
    impl->accept_pause.cancel();
    impl->io.stop();
  });
  thread_.join();
}

std::uint16_t HttpServer::port() const {
  beast::error_code ec;
  return impl_->acceptor.local_endpoint(ec).port();
}

std::string HttpServer::address() const {
  beast::error_code ec;
  const auto e = impl_->acceptor.local_endpoint(ec);
  const auto host = e.address().to_string();
  return (e.address().is_v6() ? "[" + host + "]" : host) + ":" + std::to_string(e.port());
}

}  // namespace shmsched::daemon
