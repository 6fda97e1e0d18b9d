#include "access_policy.h"

#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <vector>

namespace shmsched::daemon {

namespace protocol = ipc::protocol;

namespace {
constexpr auto kCacheFor = std::chrono::seconds(10);
}

const AccessPolicy::Who& AccessPolicy::who(const ipc::Peer& peer) {
  const auto now = std::chrono::steady_clock::now();
  auto it = cache_.find(peer.uid);
  if (it != cache_.end() && now - it->second.looked_up < kCacheFor) return it->second;
  Who w;
  w.looked_up = now;
  w.name = std::to_string(peer.uid);
  std::vector<gid_t> groups = {static_cast<gid_t>(peer.gid)};
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  if (::getpwuid_r(peer.uid, &pw, buf.data(), buf.size(), &found) == 0 && found) {
    w.name = found->pw_name;
    // getgrouplist says how many there are when the list is too short; the count may grow in
    // between: ask again until it fits, and keep only what it returned.
    std::vector<gid_t> list(64);
    for (int attempt = 0; attempt < 8; ++attempt) {
      int n = static_cast<int>(list.size());
      if (::getgrouplist(found->pw_name, found->pw_gid, list.data(), &n) >= 0) {
        groups.insert(groups.end(), list.begin(), list.begin() + n);
        break;
      }
      list.resize(static_cast<std::size_t>(std::max(n, static_cast<int>(list.size()) * 2)));
    }
  }
  auto member = [&](gid_t g) { return std::find(groups.begin(), groups.end(), g) != groups.end(); };
  w.trusted = peer.uid == 0 || peer.uid == ::geteuid() || member(settings_.trusted_gid);
  w.worker = w.trusted || member(settings_.worker_gid);
  w.groups = std::move(groups);
  return cache_[peer.uid] = std::move(w);
}

std::optional<std::string> AccessPolicy::cannot_reach(const ipc::Peer& peer,
                                                      const std::string& path) {
  if (peer.uid == 0) return std::nullopt;
  const Who& w = who(peer);
  // May `peer` do `want` (S_IXOTH-style bits: 1 search, 2 write) to what `st` describes?
  auto allowed = [&](const struct stat& st, unsigned want) {
    unsigned bits = st.st_mode & 07;
    if (st.st_uid == peer.uid) {
      bits = (st.st_mode >> 6) & 07;
    } else if (std::find(w.groups.begin(), w.groups.end(), st.st_gid) != w.groups.end()) {
      bits = (st.st_mode >> 3) & 07;
    }
    return (bits & want) == want;
  };
  const std::filesystem::path target(path);
  std::filesystem::path at = target.root_path();
  for (const auto& part : target.relative_path()) {
    struct stat st {};
    if (::stat(at.c_str(), &st) != 0) return "cannot look at " + at.string();
    if (!allowed(st, 1)) return describe(peer, w) + " may not enter " + at.string();
    at /= part;
  }
  struct stat st {};
  if (::stat(target.c_str(), &st) != 0) return "cannot look at " + path;
  if (!allowed(st, 2)) return describe(peer, w) + " may not connect to " + path;
  return std::nullopt;
}

std::string AccessPolicy::describe(const ipc::Peer& peer, const Who& w) const {
  return "local user '" + w.name + "' (uid " + std::to_string(peer.uid) + ", pid " +
         std::to_string(peer.pid) + ")";
}

std::optional<std::string> AccessPolicy::acting_for(const ipc::Peer& peer) {
  if (!peer.local || !settings_.check_identity) return std::nullopt;
  const Who& w = who(peer);
  if (w.trusted) return std::nullopt;
  return w.name;
}

std::optional<AccessPolicy::Refusal> AccessPolicy::refusal(const ipc::Peer& peer,
                                                           const protocol::Request& request) {
  if (!peer.local || !settings_.check_identity) return std::nullopt;
  const Who& w = who(peer);
  if (w.trusted) return std::nullopt;
  if (const auto* s = std::get_if<protocol::SubmitOp>(&request)) {
    if (s->user_id == w.name) return std::nullopt;
    return Refusal{"unauthorized", describe(peer, w) + " may not submit as user '" + s->user_id +
                                       "'; only root, shmschedd's own user and members of "
                                       "group '" +
                                       settings_.trusted_group + "' act for other users"};
  }
  const bool worker_op = std::holds_alternative<protocol::RegisterWorkerOp>(request) ||
                         std::holds_alternative<protocol::HeartbeatOp>(request) ||
                         std::holds_alternative<protocol::UnregisterWorkerOp>(request) ||
                         std::holds_alternative<protocol::ClaimOp>(request) ||
                         std::holds_alternative<protocol::ReportBlockerOp>(request);
  if (worker_op && !w.worker) {
    return Refusal{"unauthorized", describe(peer, w) +
                                       " may not act as a worker (register, heartbeat, claim, "
                                       "report a blocker): workers need group '" +
                                       settings_.worker_group + "'"};
  }
  return std::nullopt;  // reads; cancel, complete and fail are the loop's to check (acting_for)
}

}  // namespace shmsched::daemon
