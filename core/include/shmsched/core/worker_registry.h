// The live workers the scheduler pushes tasks to: who they are, what they can do, how many
// executions each holds, and when each was last heard from. Part of the scheduler's state (no
// clock, no I/O): the scheduler decides when a worker is gone and what happens to its work.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shmsched::core {

// A worker's number: what it writes into an execution's claim word in shared memory (nonzero, the
// same in every process and across restarts, derived from its id).
std::uint32_t worker_number(std::string_view id);

struct Worker {
  std::string id;
  std::uint32_t number = 0;               // worker_number(id)
  std::vector<std::string> capabilities;  // sorted, without duplicates
  std::uint32_t capacity = 1;             // executions it takes at once
  std::uint32_t load = 0;                 // pushed to it or claimed by it, unfinished
  std::vector<std::pair<std::string, std::string>> metadata;
  // Who registered it: the process behind a local connection ("" when unknown, e.g. over TCP).
  // Another session cannot take a live worker's id.
  std::string session;
  std::int64_t registered_at_ns = 0;  // wall clock
  std::uint64_t serial = 0;  // one per registration of a new worker: a new incarnation of an id
  std::int64_t last_heartbeat_mono = 0;
  std::int64_t last_heartbeat_ns = 0;  // wall clock, for people
};

// Sorted and without duplicates, as Worker::capabilities and the coverage test expect.
std::vector<std::string> normalized(std::vector<std::string> capabilities);

// Whether `have` (normalized) includes every capability of `need` (normalized).
bool covers(const std::vector<std::string>& have, const std::vector<std::string>& need);

class WorkerRegistry {
 public:
  enum class Registration : std::uint8_t {
    kNew,
    kUpdated,
    kTakenByAnotherSession,
    kNumberTaken,  // another live worker's id has the same number (choose another id)
  };

  // Registers or updates `w` (capabilities normalized here); an update keeps the load.
  Registration add(Worker w);
  // Removes it; its load is the caller's to settle first.
  std::optional<Worker> remove(std::string_view id);
  Worker* find(std::string_view id);
  Worker* find_number(std::uint32_t number);
  const Worker* find(std::string_view id) const;

  // The least loaded worker that covers `need` and has room, preferring one other than `avoid`
  // (the worker an execution failed on); ties go to the longest registered (then by id).
  Worker* pick(const std::vector<std::string>& need, std::string_view avoid = {});
  // Every worker other than `except` that covers `need`, by id.
  std::vector<std::string> covering(const std::vector<std::string>& need,
                                    std::string_view except) const;
  // Workers of `session`, and workers not heard from since `cutoff_mono` (by id).
  std::vector<std::string> of_session(std::string_view session) const;
  std::vector<std::string> silent_since(std::int64_t cutoff_mono) const;
  std::optional<std::int64_t> oldest_heartbeat() const;

  std::size_t size() const { return workers_.size(); }
  const std::map<std::string, Worker, std::less<>>& all() const { return workers_; }
  // Changes whenever a worker may have room it did not have (a registration, a load that went
  // down): executions waiting for a worker are looked at again only then.
  std::uint64_t room_epoch() const { return room_epoch_; }
  void room_changed() { ++room_epoch_; }

 private:
  std::map<std::string, Worker, std::less<>> workers_;
  std::map<std::uint32_t, std::string> numbers_;
  std::uint64_t room_epoch_ = 0;
  std::uint64_t next_serial_ = 1;
};

}  // namespace shmsched::core
