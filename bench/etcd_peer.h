// An etcd peer for the claim benchmark: a real local etcd (Debian's etcd-server, 3.4) and a client
// that claims a task the way the project's seeds did (shared/seeds/004: the owner key starts as
// "unclaimed"; a claim is one v3 transaction, compare value(owner) == "unclaimed", then put
// owner = <worker id>; exactly one claimant wins).
//
// The client talks to etcd's v3 JSON gateway (POST <client-url>/v3/kv/...) with libcurl, one
// persistent (keep-alive) connection per client; keys and values travel base64-encoded. The
// header names neither libcurl nor nlohmann-json: link the `etcd_peer` library.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>

namespace shmsched::bench {

// A single-member etcd on free loopback ports with its own temporary data directory (and its log,
// etcd.log, beside the data). The constructor returns once etcd answers /health; the destructor
// stops it (SIGTERM, SIGKILL after a timeout) and removes the directory. Throws std::runtime_error
// naming the binary and the fix when etcd is not installed, or with the log's tail when it does
// not come up.
class LocalEtcd {
 public:
  explicit LocalEtcd(std::string binary = "/usr/bin/etcd",
                     std::chrono::milliseconds start_timeout = std::chrono::seconds(30));
  ~LocalEtcd();
  LocalEtcd(const LocalEtcd&) = delete;
  LocalEtcd& operator=(const LocalEtcd&) = delete;

  // "http://127.0.0.1:<port>": what EtcdClaimClient takes.
  const std::string& client_url() const { return client_url_; }
  // The server's version as its /version endpoint reports it, e.g. "3.4.23".
  const std::string& server_version() const { return server_version_; }
  const std::string& dir() const { return dir_; }
  std::string log_path() const { return dir_ + "/etcd.log"; }
  pid_t pid() const { return pid_; }

 private:
  bool start_once(std::chrono::milliseconds timeout, std::string& failure);
  void stop() noexcept;

  std::string binary_;
  std::string dir_;
  std::string client_url_;
  std::string server_version_;
  pid_t pid_ = -1;
};

// One client with one persistent curl handle (keep-alive connection). Not thread-safe: use one per
// thread. Errors (transport, HTTP status, etcd's error replies, malformed replies) are
// std::runtime_error with the request's path and etcd's message.
class EtcdClaimClient {
 public:
  explicit EtcdClaimClient(std::string client_url,
                           std::chrono::milliseconds timeout = std::chrono::seconds(5));
  ~EtcdClaimClient();
  EtcdClaimClient(EtcdClaimClient&&) noexcept;
  EtcdClaimClient& operator=(EtcdClaimClient&&) noexcept;

  // Puts owner = "unclaimed".
  void reset(const std::string& key);
  // The transaction: if value(key) == "unclaimed" then put key = worker. True when this call won
  // (its compare held and its put applied); false when the key holds anything else or is missing.
  bool claim(const std::string& key, const std::string& worker);
  // The key's current value, or nullopt when it does not exist.
  std::optional<std::string> get(const std::string& key);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmsched::bench
