// The etcd transport's options (etcd.<key> in shmschedd's configuration), parsed and checked once
// in create(): a wrong value is refused there with a message that names the key and the fix.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "shmsched/transport.h"

namespace shmsched::etcd {

// One client endpoint: "host:port" for gRPC, and whether it was given as https://.
struct Endpoint {
  std::string address;
  bool tls = false;
};

struct Options {
  std::vector<Endpoint> endpoints;   // required; tried in order, the next one on failure
  std::string prefix = "/shmsched";  // every key lives under "<prefix>/"
  std::chrono::milliseconds dial_timeout{5000};          // start(): reaching a first endpoint
  std::chrono::milliseconds request_timeout{5000};       // one transaction, one read
  std::string tls_ca_file, tls_cert_file, tls_key_file;  // any set (or https://): TLS
  std::string user, password;                            // both or neither
  // Keys of a finished execution stay this long (under a lease), then etcd removes them.
  std::chrono::seconds retention{3600};
  // An etcd worker's registration counts as a heartbeat this often (shmschedd's
  // worker_timeout_ms must be longer).
  std::chrono::milliseconds worker_heartbeat{5000};
  std::size_t batch_size = 64;     // executions per transaction (etcd allows 128 operations)
  std::size_t max_in_flight = 8;   // transactions awaiting etcd's answer
  std::size_t max_queued = 65536;  // messages taken but not yet sent: beyond, publish is BUSY
  bool write_events = true;        // lifecycle events under events/<execution_id>/<type>

  bool tls() const;
};

// Parses the key/value configuration. Returns the options, or nullopt with `error` set.
std::optional<Options> parse_options(const shmsched_kv* kv, std::size_t n, std::string& error);

}  // namespace shmsched::etcd
