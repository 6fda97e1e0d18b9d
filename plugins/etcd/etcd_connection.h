// The plugin's way to etcd: one gRPC channel per configured endpoint, the one in use, and the move
// to the next when a call fails for want of a server (etcd killed, a member partitioned). gRPC
// reconnects each channel by itself with backoff; this class only chooses which one to use.
// With user/password, calls carry etcd's auth token, fetched again when etcd says it expired.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"
#include "etcd_options.h"

namespace shmsched::etcd {

class Connection {
 public:
  explicit Connection(const Options& options);

  // Waits up to the dial timeout for a first endpoint to connect (trying each in turn) and
  // authenticates when a user is configured. False with `error` naming the endpoints and the
  // cause otherwise.
  bool connect(std::string& error);

  // The stubs of the endpoint in use.
  struct Stubs {
    std::size_t index = 0;  // which endpoint
    std::shared_ptr<etcdserverpb::KV::Stub> kv;
    std::shared_ptr<etcdserverpb::Watch::Stub> watch;
    std::shared_ptr<etcdserverpb::Lease::Stub> lease;
    std::shared_ptr<etcdserverpb::Maintenance::Stub> maintenance;
  };
  Stubs current();
  const std::string& address(std::size_t index) const { return endpoints_[index].address; }

  // A call on endpoint `index` failed with `status`: moves on to the next endpoint when the
  // server was unreachable or had no leader, fetches a new token when it expired. True when the
  // call is worth repeating (not a refusal of the request itself).
  bool failed(std::size_t index, const grpc::Status& status);

  // A context with the request deadline (or none, for a watch stream) and the auth token (fetched
  // again first when a call found it expired). Not from a gRPC callback: it may block.
  std::unique_ptr<grpc::ClientContext> context(bool deadline = true);

  std::chrono::milliseconds request_timeout() const { return request_timeout_; }

 private:
  struct Endpoint {
    std::string address;
    std::shared_ptr<grpc::Channel> channel;
    Stubs stubs;
  };
  bool authenticate(std::string& error);

  bool tls_;
  std::vector<Endpoint> endpoints_;
  std::atomic<std::size_t> current_{0};
  std::chrono::milliseconds dial_timeout_;
  std::chrono::milliseconds request_timeout_;
  std::string user_, password_;
  std::mutex token_mu_;
  std::string token_;
  std::atomic<bool> reauthenticate_{false};
};

// True for the status codes that mean "etcd was not there or could not answer now" (worth a
// retry elsewhere or later), as opposed to a refusal of the request.
bool unreachable(const grpc::Status& status);

// "code 14 (UNAVAILABLE): <message>"
std::string describe(const grpc::Status& status);

}  // namespace shmsched::etcd
