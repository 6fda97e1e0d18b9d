// The etcd key layout of docs/protocol.md (etcd), under the configured prefix:
//   commands/<execution_id>                   a CreatePodCommand body
//   workers/<worker_id>/inbox/<execution_id>  a TaskPush body
//   workers/<worker_id>/registration          msgpack {capabilities, capacity}, under a lease
//   tasks/<execution_id>/owner                "unclaimed", a worker id, "completed:<worker_id>"
//                                             or "failed:<worker_id>"
//   tasks/<execution_id>/dispatched           "<attempt>" or "<attempt>:<worker_id>": what was
//                                             written last (a repeated publish writes nothing)
//   events/<execution_id>/<type>              lifecycle events, under the retention lease
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace shmsched::etcd {

class Keys {
 public:
  explicit Keys(std::string prefix) : root_(std::move(prefix) + "/") {}

  const std::string& root() const { return root_; }
  std::string command(std::string_view execution_id) const;
  std::string inbox(std::string_view worker_id, std::string_view execution_id) const;
  std::string registration(std::string_view worker_id) const;
  std::string owner(std::string_view execution_id) const;
  std::string dispatched(std::string_view execution_id) const;
  std::string event(std::string_view execution_id, std::string_view type) const;
  std::string tasks() const { return root_ + "tasks/"; }
  std::string workers() const { return root_ + "workers/"; }

  // What a key under tasks/ or workers/ is, for the watcher.
  struct Parsed {
    enum Kind { kOwner, kRegistration, kOther } kind = kOther;
    std::string id;  // the execution id (kOwner) or the worker id (kRegistration)
  };
  Parsed parse(std::string_view key) const;

 private:
  std::string root_;
};

// The end of the range of every key that starts with `prefix` (etcd's range_end).
std::string prefix_end(std::string prefix);

}  // namespace shmsched::etcd
