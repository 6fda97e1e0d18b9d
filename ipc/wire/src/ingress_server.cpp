#include "shmsched/ipc/ingress_server.h"

#include <charconv>
#include <stdexcept>

namespace shmsched::ipc {

namespace {
std::atomic<std::uint64_t> g_instance{0};

template <typename T>
bool parse_number(std::string_view s, T& out) {
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size() && !s.empty();
}
}  // namespace

Peer parse_peer_address(std::string_view address) {
  // "<anything>:<uid>:<gid>:<pid>": the last three fields.
  Peer p;
  std::string_view fields[3];
  std::string_view rest = address;
  for (int i = 2; i >= 0; --i) {
    const auto colon = rest.rfind(':');
    if (colon == std::string_view::npos) return Peer{};
    fields[i] = rest.substr(colon + 1);
    rest = rest.substr(0, colon);
  }
  // What is left is the host part of a Unix socket ("localhost"); a TCP peer's IPv6 address
  // would leave colons (and an IPv4 one has none to split): never taken for credentials.
  if (rest.find(':') != std::string_view::npos) return Peer{};
  if (!parse_number(fields[0], p.uid) || !parse_number(fields[1], p.gid) ||
      !parse_number(fields[2], p.pid)) {
    return Peer{};
  }
  p.local = true;
  return p;
}

IngressServer::IngressServer(zmq::context_t& context, const std::vector<std::string>& endpoints)
    : context_(context),
      router_(context, zmq::socket_type::router),
      wake_pull_(context, zmq::socket_type::pull),
      wake_push_(context, zmq::socket_type::push),
      wake_endpoint_("inproc://shmsched-ingress-wake-" + std::to_string(g_instance++)) {
  router_.set(zmq::sockopt::linger, 0);
  // A client that vanished must not make us block or grow without bound.
  router_.set(zmq::sockopt::router_mandatory, 0);
  router_.set(zmq::sockopt::sndhwm, 100000);
  router_.set(zmq::sockopt::rcvhwm, 100000);
  for (const auto& ep : endpoints) {
    try {
      router_.bind(ep);
    } catch (const zmq::error_t& e) {
      throw std::runtime_error("cannot bind the ingress to " + ep + ": " + e.what() +
                               " (is another shmschedd running, or the directory missing?)");
    }
  }
  wake_pull_.bind(wake_endpoint_);
  wake_push_.connect(wake_endpoint_);
  wake_push_.set(zmq::sockopt::linger, 0);
  wake_pull_.set(zmq::sockopt::linger, 0);
}

IngressServer::~IngressServer() = default;

void IngressServer::send(const Route& route, const Reply& body) {
  try {
    router_.send(zmq::buffer(route.identity), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    if (route.delimiter)
      router_.send(zmq::message_t(), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    router_.send(zmq::buffer(body.data(), body.size()), zmq::send_flags::dontwait);
  } catch (const zmq::error_t&) {
    // The client is gone or not reading: its reply is dropped, nobody else is affected.
  }
}

void IngressServer::reply(std::uint64_t token, Reply body) {
  std::lock_guard lock(mutex_);
  deferred_.emplace_back(token, std::move(body));
  try {
    wake_push_.send(zmq::message_t(), zmq::send_flags::dontwait);
  } catch (const zmq::error_t&) {
    // The wake-up pipe is full: the server is already due to drain.
  }
}

void IngressServer::drain_deferred() {
  std::deque<std::pair<std::uint64_t, Reply>> ready;
  {
    std::lock_guard lock(mutex_);
    ready.swap(deferred_);
  }
  for (auto& [token, body] : ready) {
    auto it = routes_.find(token);
    if (it == routes_.end()) continue;
    send(it->second, body);
    routes_.erase(it);
  }
}

void IngressServer::run(const Handler& handler, const std::atomic<bool>& stop) {
  std::vector<zmq::pollitem_t> items = {{router_.handle(), 0, ZMQ_POLLIN, 0},
                                        {wake_pull_.handle(), 0, ZMQ_POLLIN, 0}};
  std::vector<zmq::message_t> frames;
  while (!stop.load(std::memory_order_relaxed)) {
    zmq::poll(items, std::chrono::milliseconds(100));
    if (items[1].revents & ZMQ_POLLIN) {
      zmq::message_t m;
      while (wake_pull_.recv(m, zmq::recv_flags::dontwait)) {
      }
      drain_deferred();
    }
    if (!(items[0].revents & ZMQ_POLLIN)) continue;
    // Take everything that is ready, one multipart message at a time.
    for (int batch = 0; batch < 256; ++batch) {
      frames.clear();
      zmq::message_t frame;
      if (!router_.recv(frame, zmq::recv_flags::dontwait)) break;
      frames.push_back(std::move(frame));
      while (frames.back().more()) {
        zmq::message_t next;
        if (!router_.recv(next, zmq::recv_flags::none)) break;
        frames.push_back(std::move(next));
      }
      requests_.fetch_add(1, std::memory_order_relaxed);
      Route route{frames[0].to_string(), false};
      std::size_t body_index = 1;
      if (frames.size() >= 2 && frames[1].size() == 0) {
        route.delimiter = true;
        body_index = 2;
      }
      if (frames.size() != body_index + 1) {
        invalid_.fetch_add(1, std::memory_order_relaxed);
        send(route, protocol::error_reply("invalid",
                                          "a request is exactly one frame (after the "
                                          "empty delimiter of REQ/DEALER)"));
        continue;
      }
      const auto& body = frames[body_index];
      auto decoded = protocol::decode_request(
          std::span<const std::byte>(static_cast<const std::byte*>(body.data()), body.size()));
      if (auto* err = std::get_if<protocol::DecodeError>(&decoded)) {
        invalid_.fetch_add(1, std::memory_order_relaxed);
        send(route, protocol::error_reply("invalid", err->message));
        continue;
      }
      const std::uint64_t token = next_token_++;
      // Local sockets carry the sender's credentials; a TCP endpoint's address has too few
      // fields and parses as not local.
      const char* address = zmq_msg_gets(body.handle(), "Peer-Address");
      const Peer peer = address ? parse_peer_address(address) : Peer{};
      std::optional<Reply> out;
      try {
        out = handler(std::get<protocol::Request>(decoded), token, peer);
      } catch (const std::exception& e) {
        out = protocol::error_reply("internal", std::string("the server failed: ") + e.what());
      }
      if (out) {
        send(route, *out);
      } else {
        routes_.emplace(token, std::move(route));
      }
    }
  }
  // Answers given before the stop still go out (a stopping supervisor answers what it carried
  // out), and get a moment to leave when the socket closes.
  drain_deferred();
  router_.set(zmq::sockopt::linger, 1000);
}

}  // namespace shmsched::ipc
