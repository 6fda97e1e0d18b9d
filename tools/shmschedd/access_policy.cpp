#include "access_policy.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
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
    int n = 64;
    std::vector<gid_t> list(static_cast<std::size_t>(n));
    if (::getgrouplist(found->pw_name, found->pw_gid, list.data(), &n) < 0 && n > 64) {
      list.resize(static_cast<std::size_t>(n));
      ::getgrouplist(found->pw_name, found->pw_gid, list.data(), &n);
    }
    list.resize(static_cast<std::size_t>(std::max(n, 0)));
    groups.insert(groups.end(), list.begin(), list.end());
  }
  auto member = [&](gid_t g) { return std::find(groups.begin(), groups.end(), g) != groups.end(); };
  w.trusted = peer.uid == 0 || peer.uid == ::geteuid() || member(settings_.trusted_gid);
  w.worker = w.trusted || member(settings_.worker_gid);
  return cache_[peer.uid] = std::move(w);
}

std::string AccessPolicy::describe(const ipc::Peer& peer, const Who& w) const {
  return "local user '" + w.name + "' (uid " + std::to_string(peer.uid) + ", pid " +
         std::to_string(peer.pid) + ")";
}

std::optional<AccessPolicy::Refusal> AccessPolicy::refusal(const ipc::Peer& peer,
                                                           const protocol::Request& request,
                                                           const OwnerOf& owner_of) {
  if (!peer.local || !settings_.check_identity) return std::nullopt;
  const Who& w = who(peer);
  if (w.trusted) return std::nullopt;
  const std::string others = "; only root, shmschedd's own user and members of group '" +
                             settings_.trusted_group + "' act for other users";
  if (const auto* s = std::get_if<protocol::SubmitOp>(&request)) {
    if (s->user_id == w.name) return std::nullopt;
    return Refusal{"unauthorized",
                   describe(peer, w) + " may not submit as user '" + s->user_id + "'" + others};
  }
  auto own = [&](const std::string& id, const char* code,
                 const char* what) -> std::optional<Refusal> {
    const auto owner = owner_of(id);
    if (!owner || *owner == w.name) return std::nullopt;  // not queued: the loop answers
    return Refusal{code, describe(peer, w) + " may not " + what + " execution " + id +
                             " of user '" + *owner + "'" + others};
  };
  if (const auto* c = std::get_if<protocol::CancelOp>(&request)) {
    return own(c->execution_id, "unauthorized", "cancel");
  }
  if (const auto* c = std::get_if<protocol::CompleteOp>(&request)) {
    return own(c->execution_id, "not_owner", "complete");
  }
  if (const auto* f = std::get_if<protocol::FailOp>(&request)) {
    return own(f->execution_id, "not_owner", "fail");
  }
  if (const auto* op = std::get_if<protocol::WorkerOp>(&request);
      op && op->op == "register_worker" && !w.worker) {
    return Refusal{"unauthorized", describe(peer, w) +
                                       " may not register a worker: workers "
                                       "need group '" +
                                       settings_.worker_group + "'"};
  }
  return std::nullopt;  // status, list, stats: reads
}

}  // namespace shmsched::daemon
