// Stands in for journald's native socket (/run/systemd/journal/socket): each datagram is one
// entry of "FIELD=value\n" lines, or "FIELD\n<64-bit little-endian length><value>\n" for values
// with newlines.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace shmsched::test {

struct JournalEntry {
  std::map<std::string, std::string> fields;
  bool has(const std::string& k) const { return fields.count(k) != 0; }
  std::string field(const std::string& k) const {
    auto it = fields.find(k);
    return it == fields.end() ? std::string() : it->second;
  }
};

inline JournalEntry parse_journal_entry(const std::string& d) {
  JournalEntry e;
  std::size_t at = 0;
  while (at < d.size()) {
    const std::size_t nl = d.find('\n', at);
    if (nl == std::string::npos) break;
    const std::string line = d.substr(at, nl - at);
    const std::size_t eq = line.find('=');
    if (eq != std::string::npos) {
      e.fields[line.substr(0, eq)] = line.substr(eq + 1);
      at = nl + 1;
      continue;
    }
    // Binary form.
    if (nl + 1 + 8 > d.size()) break;
    std::uint64_t len = 0;
    std::memcpy(&len, d.data() + nl + 1, 8);
    const std::size_t value_at = nl + 1 + 8;
    if (value_at + len > d.size()) break;
    e.fields[line] = d.substr(value_at, len);
    at = value_at + len + 1;
  }
  return e;
}

class JournalListener {
 public:
  explicit JournalListener(std::string path) : path_(std::move(path)) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path_.size() >= sizeof addr.sun_path) throw std::runtime_error("journal path too long");
    std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
    ::unlink(path_.c_str());
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      throw std::runtime_error("cannot bind " + path_);
    }
    const int size = 4 << 20;
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  }
  ~JournalListener() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }

  // The first entry (of those not yet seen) that satisfies `match`, within `timeout`.
  std::optional<JournalEntry> wait_for(
      const std::function<bool(const JournalEntry&)>& match,
      std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      for (; seen_ < entries_.size(); ++seen_) {
        if (match(entries_[seen_])) return entries_[seen_++];
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      std::string buf(1 << 16, '\0');
      const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
      if (n > 0)
        entries_.push_back(parse_journal_entry(buf.substr(0, static_cast<std::size_t>(n))));
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  std::vector<JournalEntry> entries_;
  std::size_t seen_ = 0;
};

}  // namespace shmsched::test
