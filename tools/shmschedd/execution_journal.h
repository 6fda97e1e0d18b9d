// The supervisor's write-ahead journal of executions (docs/operations.md, "Durability"): every
// execution it learns of (with its payload), each dispatch (with its attempt) and each end, in
// shmsched::journal records, so that the queue can be rebuilt after a reboot wiped /dev/shm.
//
// Records (msgpack arrays, types of the journal's owner range):
//   accepted   [id, user, priority, enqueued_at_ns, attempt, timeout_seconds, payload, extras]
//   dispatched [id, attempt]
//   finished   [id]
// Replaying them in order gives the live executions: accepted and not finished, in the order
// they were accepted (queue order within a priority), dispatched or not. A snapshot restates the
// live set as accepted (+ dispatched) records; the journal then deletes what came before.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "shmsched/core/priority.h"
#include "shmsched/ipc/execution.h"
#include "shmsched/ipc/queue.h"
#include "shmsched/journal/writer.h"

namespace shmsched::daemon {

// One live execution as the journal knows it.
struct JournaledExecution {
  std::string execution_id;
  std::string user_id;
  Priority priority = Priority::kNormal;
  std::int64_t enqueued_at_ns = 0;
  std::uint32_t attempt = 1;
  std::uint32_t timeout_seconds = 0;
  std::vector<std::byte> payload;
  std::vector<std::byte> extras;  // capabilities and metadata as the segment stores them
  bool dispatched = false;        // some attempt was dispatched and it has not finished
  journal::Lsn accepted_lsn = 0;  // order of acceptance
};

class ExecutionJournal {
 public:
  enum RecordType : std::uint8_t { kAccepted = 1, kDispatched = 2, kFinished = 3 };

  struct Options {
    std::string dir;
    bool salvage = false;
    std::uint32_t max_record_bytes = 1u << 20;
    // What may wait for the disk, at most: beyond, the journal is failed (records are never
    // dropped and the loop never waits for the disk).
    std::size_t max_pending_bytes = 1ull << 30;
    // Journal written since the last snapshot before the next one, at least (the next one is
    // due at twice the last snapshot's size when that is more).
    std::uint64_t snapshot_min_bytes = 64ull << 20;
    // Called on the writer thread when it fails (the error is sticky until a restart).
    std::function<void(const journal::Error&)> on_error;
  };

  // Opens the journal in options.dir (recovering it: a torn tail is cut) and returns, in `live`,
  // the executions it holds live, in the order they were accepted. Throws std::runtime_error
  // with a message that names the file, the offset and the way out on damage.
  static std::unique_ptr<ExecutionJournal> open(const Options& options,
                                                std::vector<JournaledExecution>& live);

  // Appends a record (loop thread only). Returns its LSN, or the writer's error.
  journal::Result<journal::Lsn> accepted(const ipc::ExecutionView& v);
  journal::Result<journal::Lsn> accepted(const JournaledExecution& e);
  journal::Result<journal::Lsn> dispatched(std::string_view execution_id, std::uint32_t attempt);
  journal::Result<journal::Lsn> finished(std::string_view execution_id);

  // The snapshot records of one live execution (see write_snapshot).
  static void snapshot_records(const JournaledExecution& e,
                               std::vector<journal::SnapshotRecord>& out);
  // Replaces the journal's history by `records`, which must restate every live execution.
  journal::Result<journal::Lsn> write_snapshot(std::span<const journal::SnapshotRecord> records);
  // True when the journal has grown well past its last snapshot: time for a new one.
  bool snapshot_due() const;
  void set_snapshot_min_bytes(std::uint64_t bytes) { snapshot_min_bytes_ = bytes; }

  // The last LSN appended (everything the loop has recorded so far), and the durable one.
  journal::Lsn appended() const { return appended_; }
  journal::Lsn durable() const { return writer_->durable_lsn(); }
  // Calls `done` once `lsn` is on disk, or can no longer be (see journal::Writer::when_durable).
  void when_durable(journal::Lsn lsn, std::function<void(const journal::Status&)> done) {
    writer_->when_durable(lsn, std::move(done));
  }
  journal::Status wait_durable(journal::Lsn lsn, std::chrono::milliseconds timeout) {
    return writer_->wait_durable(lsn, timeout);
  }
  // Not ok once any append failed (sticky, like the writer's own errors): a record left out
  // would break the promise of every later acknowledgement.
  journal::Health health() const;
  // Marks the journal failed (sticky): for what cannot be written around it (its directory).
  void fail(journal::Error error);
  journal::WriterStats stats() const { return writer_->stats(); }
  const std::string& dir() const { return dir_; }
  const journal::RecoveryReport& open_report() const { return writer_->open_report(); }

 private:
  ExecutionJournal(std::string dir, std::unique_ptr<journal::Writer> writer)
      : dir_(std::move(dir)), writer_(std::move(writer)) {}
  journal::Result<journal::Lsn> append(std::uint8_t type, const std::vector<std::byte>& body);

  std::string dir_;
  std::unique_ptr<journal::Writer> writer_;
  journal::Lsn appended_ = 0;
  // The first append that failed (sticky). Written by the loop, read by the ingress thread too
  // (health()): under the mutex; the flag spares the loop's appends the lock.
  mutable std::mutex failed_mutex_;
  journal::Error failed_;
  std::atomic<bool> has_failed_{false};
  std::uint64_t bytes_since_snapshot_ = 0;
  std::uint64_t snapshot_min_bytes_ = 64ull << 20;
  std::uint64_t last_snapshot_bytes_ = 0;
};

}  // namespace shmsched::daemon
