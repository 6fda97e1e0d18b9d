// Who may do what through the local ingress socket. The kernel names every local client (its
// uid, gid and pid, through libzmq's Peer-Address); a client acts for itself only, unless it is
// trusted: root, shmschedd's own user, or a member of the trusted group. Worker operations need
// the worker group. TCP clients carry no credentials: a TCP ingress is for a trusted network
// (docs/operations.md). Not thread-safe: one instance per thread (the ingress, the HTTP endpoint).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "shmsched/ipc/ingress_server.h"
#include "shmsched/ipc/protocol.h"

namespace shmsched::daemon {

class AccessPolicy {
 public:
  struct Settings {
    bool check_identity = true;
    gid_t trusted_gid = 0;
    std::string trusted_group;
    gid_t worker_gid = 0;
    std::string worker_group;
  };

  // A refused request's answer: the error code of docs/protocol.md (`unauthorized`, or
  // `not_owner` for complete and fail) and why.
  struct Refusal {
    std::string code;
    std::string message;
  };

  explicit AccessPolicy(Settings settings) : settings_(std::move(settings)) {}

  // nullopt if `peer` may make `request` (submit and register_worker are decided here).
  std::optional<Refusal> refusal(const ipc::Peer& peer, const ipc::protocol::Request& request);
  // The user `peer` acts for when it may not act for others (cancel, complete and fail are
  // checked by the loop against the execution's owner); nullopt: it may act for anyone.
  std::optional<std::string> acting_for(const ipc::Peer& peer);
  bool checks_identity() const { return settings_.check_identity; }
  // Why `peer` could not connect to the local socket at `path` (search permission on every
  // directory above it, write permission on it, by its uid and groups), or nullopt if it could.
  // The dashboard's cancel reaches no further than the ingress does.
  std::optional<std::string> cannot_reach(const ipc::Peer& peer, const std::string& path);

 private:
  struct Who {
    std::string name;  // the user name, or the uid in decimal when it has none
    bool trusted = false;
    bool worker = false;
    std::vector<gid_t> groups;
    std::chrono::steady_clock::time_point looked_up;
  };
  const Who& who(const ipc::Peer& peer);
  std::string describe(const ipc::Peer& peer, const Who& w) const;

  Settings settings_;
  // User and group look-ups go through NSS (files, LDAP, ...): kept for a while per uid.
  std::unordered_map<uid_t, Who> cache_;
};

}  // namespace shmsched::daemon
