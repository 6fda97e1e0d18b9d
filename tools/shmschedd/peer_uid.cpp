#include "peer_uid.h"

#include <arpa/inet.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

namespace shmsched::daemon {

namespace {

bool is_loopback(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(a);
    return (ntohl(in.sin_addr.s_addr) >> 24) == 127;
  }
  if (a.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a);
    if (IN6_IS_ADDR_LOOPBACK(&in6.sin6_addr)) return true;
    // ::ffff:127.x.y.z, as a dual-stack socket sees an IPv4 loopback peer.
    return IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr) && in6.sin6_addr.s6_addr[12] == 127;
  }
  return false;
}

// Fills a sock_diag address (network byte order, 4 words) and port.
void put(const sockaddr_storage& a, __be32 (&addr)[4], __be16& port) {
  if (a.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(a);
    addr[0] = in.sin_addr.s_addr;
    port = in.sin_port;
  } else {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a);
    std::memcpy(addr, &in6.sin6_addr, 16);
    port = in6.sin6_port;
  }
}

// TCP states of a socket a process holds (the kernel's numbering, include/net/tcp_states.h).
constexpr unsigned kTcpEstablished = 1, kTcpFinWait1 = 4, kTcpFinWait2 = 5, kTcpCloseWait = 8,
                   kTcpLastAck = 9, kTcpClosing = 11;
constexpr std::uint32_t kOwnedStates = 1u << kTcpEstablished | 1u << kTcpFinWait1 |
                                       1u << kTcpFinWait2 | 1u << kTcpCloseWait |
                                       1u << kTcpLastAck | 1u << kTcpClosing;

// ::ffff:a.b.c.d -> a.b.c.d: a dual-stack listener sees IPv4 clients so, while their own sockets
// are IPv4 ones in the kernel's table.
sockaddr_storage unmapped(const sockaddr_storage& a) {
  if (a.ss_family != AF_INET6) return a;
  const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a);
  if (!IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) return a;
  sockaddr_storage out{};
  auto& in = reinterpret_cast<sockaddr_in&>(out);
  in.sin_family = AF_INET;
  in.sin_port = in6.sin6_port;
  std::memcpy(&in.sin_addr, &in6.sin6_addr.s6_addr[12], 4);
  return out;
}

struct Closer {
  int fd;
  ~Closer() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

std::optional<uid_t> loopback_peer_uid(const sockaddr_storage& peer_address,
                                       const sockaddr_storage& local_address, std::string& why) {
  const sockaddr_storage peer = unmapped(peer_address);
  const sockaddr_storage local = unmapped(local_address);
  if (!is_loopback(peer) || peer.ss_family != local.ss_family) {
    why = "the client is not on this host's loopback";
    return std::nullopt;
  }
  const int fd = ::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (fd < 0) {
    why = std::string("sock_diag socket: ") + std::strerror(errno);
    return std::nullopt;
  }
  Closer closer{fd};
  struct {
    nlmsghdr header;
    inet_diag_req_v2 request;
  } message{};
  message.header.nlmsg_len = sizeof message;
  message.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  message.header.nlmsg_flags = NLM_F_REQUEST;
  message.request.sdiag_family = static_cast<__u8>(peer.ss_family);
  message.request.sdiag_protocol = IPPROTO_TCP;
  // Only sockets a process still owns. A client that closed at once leaves a time-wait socket,
  // which the kernel reports as uid 0: it must never pass for root.
  message.request.idiag_states = kOwnedStates;
  // The peer's own socket: its source is the peer's address, its destination ours.
  put(peer, message.request.id.idiag_src, message.request.id.idiag_sport);
  put(local, message.request.id.idiag_dst, message.request.id.idiag_dport);
  message.request.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  message.request.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(fd, &message, sizeof message, 0, reinterpret_cast<sockaddr*>(&kernel),
               sizeof kernel) < 0) {
    why = std::string("sock_diag query: ") + std::strerror(errno);
    return std::nullopt;
  }
  alignas(nlmsghdr) char buffer[8192];
  const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
  if (n < 0) {
    why = std::string("sock_diag answer: ") + std::strerror(errno);
    return std::nullopt;
  }
  auto* h = reinterpret_cast<nlmsghdr*>(buffer);
  int left = static_cast<int>(n);
  for (; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
    if (h->nlmsg_type == NLMSG_ERROR) {
      const auto* e = static_cast<const nlmsgerr*>(NLMSG_DATA(h));
      why =
          std::string("the kernel does not know the client's socket: ") + std::strerror(-e->error);
      return std::nullopt;
    }
    if (h->nlmsg_type == SOCK_DIAG_BY_FAMILY &&
        h->nlmsg_len >= NLMSG_LENGTH(sizeof(inet_diag_msg))) {
      const auto* m = static_cast<const inet_diag_msg*>(NLMSG_DATA(h));
      // Exactly the peer's socket, alive and owned by a process (an inode): not a listener the
      // lookup fell back to, not a time-wait remnant.
      const bool owned = m->idiag_state < 32 && ((1u << m->idiag_state) & kOwnedStates) != 0;
      if (!owned || m->idiag_inode == 0 || m->id.idiag_sport != message.request.id.idiag_sport ||
          m->id.idiag_dport != message.request.id.idiag_dport) {
        why = "the client's connection is gone or not owned by a process (closed already?)";
        return std::nullopt;
      }
      return m->idiag_uid;
    }
  }
  why = "no answer from sock_diag";
  return std::nullopt;
}

}  // namespace shmsched::daemon
