#include "shmsched/core/worker_registry.h"

#include <algorithm>

#include "shmsched/core/stable_hash.h"

namespace shmsched::core {

std::uint32_t worker_number(std::string_view id) {
  const auto n = static_cast<std::uint32_t>(stable_hash(id) >> 32);
  return n == 0 ? 1 : n;
}

std::vector<std::string> normalized(std::vector<std::string> capabilities) {
  std::sort(capabilities.begin(), capabilities.end());
  capabilities.erase(std::unique(capabilities.begin(), capabilities.end()), capabilities.end());
  return capabilities;
}

bool covers(const std::vector<std::string>& have, const std::vector<std::string>& need) {
  return std::includes(have.begin(), have.end(), need.begin(), need.end());
}

WorkerRegistry::Registration WorkerRegistry::add(Worker w) {
  w.capabilities = normalized(std::move(w.capabilities));
  if (w.capacity == 0) w.capacity = 1;
  w.number = worker_number(w.id);
  auto it = workers_.find(w.id);
  if (it == workers_.end()) {
    if (numbers_.count(w.number)) return Registration::kNumberTaken;
    ++room_epoch_;
    w.serial = next_serial_++;
    numbers_[w.number] = w.id;
    workers_.emplace(w.id, std::move(w));
    return Registration::kNew;
  }
  ++room_epoch_;
  Worker& old = it->second;
  // A live worker tied to a process stays that process's (a connection without one, over TCP,
  // cannot take it over either).
  if (!old.session.empty() && old.session != w.session) {
    return Registration::kTakenByAnotherSession;
  }
  w.load = old.load;
  w.registered_at_ns = old.registered_at_ns;
  w.serial = old.serial;
  old = std::move(w);
  return Registration::kUpdated;
}

std::optional<Worker> WorkerRegistry::remove(std::string_view id) {
  auto it = workers_.find(id);
  if (it == workers_.end()) return std::nullopt;
  Worker w = std::move(it->second);
  workers_.erase(it);
  numbers_.erase(w.number);
  return w;
}

Worker* WorkerRegistry::find(std::string_view id) {
  auto it = workers_.find(id);
  return it == workers_.end() ? nullptr : &it->second;
}

Worker* WorkerRegistry::find_number(std::uint32_t number) {
  auto it = numbers_.find(number);
  return it == numbers_.end() ? nullptr : find(it->second);
}

const Worker* WorkerRegistry::find(std::string_view id) const {
  auto it = workers_.find(id);
  return it == workers_.end() ? nullptr : &it->second;
}

Worker* WorkerRegistry::pick(const std::vector<std::string>& need, std::string_view avoid) {
  Worker* best = nullptr;
  Worker* avoided = nullptr;
  auto better = [](const Worker* a, const Worker* b) {
    if (!b) return true;
    // Least loaded relative to capacity: a/ca < b/cb  <=>  a*cb < b*ca.
    const std::uint64_t l = std::uint64_t{a->load} * b->capacity;
    const std::uint64_t r = std::uint64_t{b->load} * a->capacity;
    if (l != r) return l < r;
    if (a->registered_at_ns != b->registered_at_ns)
      return a->registered_at_ns < b->registered_at_ns;
    return a->id < b->id;
  };
  for (auto& [id, w] : workers_) {
    if (w.load >= w.capacity || !covers(w.capabilities, need)) continue;
    if (!avoid.empty() && id == avoid) {
      avoided = &w;
      continue;
    }
    if (better(&w, best)) best = &w;
  }
  return best ? best : avoided;
}

std::vector<std::string> WorkerRegistry::covering(const std::vector<std::string>& need,
                                                  std::string_view except) const {
  std::vector<std::string> out;
  for (const auto& [id, w] : workers_) {
    if (id != except && covers(w.capabilities, need)) out.push_back(id);
  }
  return out;
}

std::vector<std::string> WorkerRegistry::of_session(std::string_view session) const {
  std::vector<std::string> out;
  if (session.empty()) return out;
  for (const auto& [id, w] : workers_) {
    if (w.session == session) out.push_back(id);
  }
  return out;
}

std::vector<std::string> WorkerRegistry::silent_since(std::int64_t cutoff_mono) const {
  std::vector<std::string> out;
  for (const auto& [id, w] : workers_) {
    if (w.last_heartbeat_mono < cutoff_mono) out.push_back(id);
  }
  return out;
}

std::optional<std::int64_t> WorkerRegistry::oldest_heartbeat() const {
  std::optional<std::int64_t> at;
  for (const auto& [id, w] : workers_) {
    if (!at || w.last_heartbeat_mono < *at) at = w.last_heartbeat_mono;
  }
  return at;
}

}  // namespace shmsched::core
