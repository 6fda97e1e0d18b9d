// Who is at the other end of a loopback TCP connection: the kernel's socket table knows the uid
// that owns the peer's socket (as `ss -e` shows it), through a sock_diag query for exactly that
// socket. The HTTP endpoint uses it to apply the ingress's identity rules to a browser's cancel.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <optional>
#include <string>

namespace shmsched::daemon {

// The uid owning the socket at `peer` that is connected to our `local` address, when both are
// loopback addresses and the kernel answers; nullopt otherwise, with `why` saying why.
std::optional<uid_t> loopback_peer_uid(const sockaddr_storage& peer, const sockaddr_storage& local,
                                       std::string& why);

}  // namespace shmsched::daemon
