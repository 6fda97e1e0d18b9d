// The ZeroMQ ingress: a ROUTER socket that takes one-frame msgpack requests from REQ (or DEALER
// with an empty delimiter) clients and answers each with one frame. Decoding happens here; a
// malformed request of any kind is answered `invalid` and never reaches the handler.
//
// The handler runs on the server's thread. It answers at once (returns the reply) or later
// (returns nullopt and calls reply(token, ...) from any thread), so slow operations can be
// handed to another thread without blocking other clients.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>
#include <zmq.hpp>

#include "shmsched/ipc/protocol.h"

namespace shmsched::ipc {

// Who sent a request. Over a local (ipc://) socket the kernel says (SO_PEERCRED, which libzmq
// hands on as the message's "Peer-Address": "<host>:<uid>:<gid>:<pid>"); over TCP nobody does.
struct Peer {
  bool local = false;  // uid, gid and pid are the kernel's word
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
  std::int32_t pid = 0;
};

// Parses libzmq's Peer-Address of an ipc:// connection; a TCP address (or none) is not local.
Peer parse_peer_address(std::string_view address);

class IngressServer {
 public:
  using Reply = std::vector<std::byte>;
  using Handler = std::function<std::optional<Reply>(const protocol::Request&, std::uint64_t token,
                                                     const Peer& peer)>;

  // Binds every endpoint (e.g. "ipc:///run/shmsched/ingress.sock"); throws std::runtime_error
  // naming the endpoint that failed.
  IngressServer(zmq::context_t& context, const std::vector<std::string>& endpoints);
  ~IngressServer();

  // Serves until `stop` is set (checked at least every 100 ms).
  void run(const Handler& handler, const std::atomic<bool>& stop);

  // Sends a deferred reply; thread-safe.
  void reply(std::uint64_t token, Reply body);

  std::uint64_t requests() const { return requests_.load(std::memory_order_relaxed); }
  std::uint64_t invalid_requests() const { return invalid_.load(std::memory_order_relaxed); }

 private:
  struct Route {
    std::string identity;
    bool delimiter;
  };
  void send(const Route& route, const Reply& body);
  void drain_deferred();

  zmq::context_t& context_;
  zmq::socket_t router_;
  zmq::socket_t wake_pull_;
  zmq::socket_t wake_push_;  // used under mutex_ by reply()
  std::string wake_endpoint_;
  std::mutex mutex_;
  std::deque<std::pair<std::uint64_t, Reply>> deferred_;
  std::unordered_map<std::uint64_t, Route> routes_;
  std::uint64_t next_token_ = 1;
  std::atomic<std::uint64_t> requests_{0};
  std::atomic<std::uint64_t> invalid_{0};
};

}  // namespace shmsched::ipc
