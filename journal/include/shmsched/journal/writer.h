// The journal's writer: one thread of its own takes everything appended since its last batch,
// writes it with one write() per segment, calls fdatasync once for the batch (group commit) and
// then publishes the durable LSN. docs/journal.md has the format and the guarantees.
//
//   WriterOptions options;
//   options.dir = "/var/lib/shmsched/journal";
//   auto writer = Writer::open(std::move(options), [&](const Record& r) { state.apply(r); });
//   if (!writer) { log(writer.error().message); return 1; }
//   auto lsn = (*writer)->append(kTypeAccepted, payload);  // at once: an LSN or an error
//   if (!lsn) reply_rejected(lsn.error().message);
//   (*writer)->when_durable(*lsn, [=](const Status& s) { reply(s); });  // or wait_durable(*lsn)
//
// Errors of the disk (ENOSPC, EROFS, EIO, ...) are sticky: the first one stops the writer, every
// record not yet durable is failed with it, and later appends fail at once with the same error
// (health() reports it). To go on after the cause is fixed, destroy the writer and open a new
// one: its recovery cuts whatever the failed write left.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "shmsched/journal/error.h"
#include "shmsched/journal/format.h"
#include "shmsched/journal/reader.h"

namespace shmsched::journal {

// What a fault injector may fail (tests only: a disk that is full, read-only or failing).
enum class IoOp { kWrite, kSync, kCreate };

struct WriterOptions {
  std::string dir;  // created if missing (mode 0750; files 0640)
  // A segment is closed once a record would take it past this size (a snapshot is never split,
  // so a snapshot's segment can be larger).
  std::uint64_t max_segment_bytes = 64ull << 20;
  // Bounds of what was appended and not yet taken by the writer thread. Beyond them append()
  // fails with kQueueFull at once (the disk is slower than the appends).
  std::size_t max_pending_records = 65536;
  std::size_t max_pending_bytes = 64ull << 20;
  std::uint32_t max_record_bytes = 1u << 20;  // payload limit of append(), <= kMaxPayloadBytes
  bool salvage = false;                       // recovery at open: see RecoverOptions::salvage
  // Called by the writer thread after each batch with the new durable LSN, outside the lock.
  std::function<void(Lsn durable)> on_durable;
  // Called once by the writer thread when the writer fails (the error is sticky), and for a
  // failed deletion of old segments after a snapshot (not sticky: the journal is intact).
  std::function<void(const Error& error)> on_error;
  // Tests only: consulted before each write, sync and file creation; a non-zero errno fails it.
  std::function<int(IoOp op, const std::string& path)> fault_injector;
};

// One record of a snapshot (Writer::write_snapshot).
struct SnapshotRecord {
  std::uint8_t type = 0;
  std::vector<std::byte> payload;
};

struct Health {
  bool ok = true;
  Error error;          // the sticky error when !ok
  std::string warning;  // the last failed deletion of old segments (the journal is intact)
};

struct WriterStats {
  Lsn appended_lsn = 0;       // the last LSN handed out
  Lsn durable_lsn = 0;        // everything up to here is on the disk
  std::uint64_t records = 0;  // made durable since the open (snapshot records included)
  std::uint64_t batches = 0;  // = fdatasync calls for batches
  std::uint64_t bytes = 0;    // written, headers included
  std::uint64_t rotations = 0;
  std::uint64_t snapshots = 0;
  std::uint64_t segments_deleted = 0;
  std::uint64_t queue_full = 0;     // appends refused with kQueueFull
  std::uint64_t segments = 0;       // segment files in the directory
  std::uint64_t journal_bytes = 0;  // their total size
};

class Writer {
 public:
  // Recovers options.dir (as recover() with repair, passing each record to `visit` when given),
  // then starts the writer thread; appends continue the LSNs. Fails with the recovery's error, or
  // kLocked if another writer has the directory.
  static Result<std::unique_ptr<Writer>> open(WriterOptions options,
                                              const RecordVisitor& visit = nullptr);
  // Writes and syncs everything appended, calls the waiting callbacks, joins the thread.
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  const RecoveryReport& open_report() const { return report_; }

  // Queues one record and returns its LSN at once. Thread-safe. Fails with the sticky error,
  // kQueueFull, kTooLarge, or kInvalidArgument (type 0 or above kMaxUserType).
  Result<Lsn> append(std::uint8_t type, std::span<const std::byte> payload);
  Result<Lsn> append(std::uint8_t type, std::string_view payload);

  // Waits until `lsn` is durable and the when_durable callbacks up to it have run (what they
  // hand on is there when this returns). Fails with the sticky error if it can no longer become
  // so (after the failed callbacks ran), or kTimeout. From a callback itself, it does not wait
  // for the callbacks.
  Status wait_durable(Lsn lsn,
                      std::chrono::milliseconds timeout = std::chrono::milliseconds::max());
  // Calls `done` once `lsn` is durable (or can no longer be): at once on the caller's thread if
  // that is already known, otherwise on the writer thread. `done` must not call the writer's
  // waiting functions.
  void when_durable(Lsn lsn, std::function<void(const Status&)> done);

  // Queues a snapshot of the live state: a new segment with a begin record, these records
  // (flagged in_snapshot), and an end record. It must restate exactly the effect of every record
  // appended before the call (call it from the thread that appends). Once its end record is
  // synced, the segments before it are deleted, before its LSN is published as durable. Returns the
  // LSN of the end record (wait for it like any other). The size bounds of the queue do not apply
  // to snapshots.
  Result<Lsn> write_snapshot(std::span<const SnapshotRecord> records);

  Lsn durable_lsn() const;
  Health health() const;
  WriterStats stats() const;

 private:
  struct Segment;  // the segment being appended to (writer thread only)

  explicit Writer(WriterOptions options);
  Status start(const RecordVisitor& visit);
  void run();
  Status write_batch(std::vector<std::byte>& batch, bool& snapshot_written,
                     std::uint64_t& snapshot_seq);
  Status flush_chunk(std::span<const std::byte> chunk);
  Status rotate(Lsn first_lsn);
  Status create_segment(std::uint64_t seq, Lsn first_lsn);
  void delete_before(std::uint64_t seq);
  void fail(Error error);
  void publish(Lsn durable);

  const WriterOptions options_;
  RecoveryReport report_;
  int dir_fd_ = -1;  // holds the directory lock for the writer's lifetime

  // Shared between appenders and the thread.
  mutable std::mutex mu_;
  std::condition_variable work_cv_;     // the thread waits here for records or the stop
  std::condition_variable durable_cv_;  // wait_durable() waits here
  std::vector<std::byte> pending_;      // encoded records, CRCs not yet filled in
  std::size_t pending_records_ = 0;
  Lsn next_lsn_ = 1;
  Lsn durable_lsn_ = 0;
  // How far the callbacks have run (success up to called_lsn_; all of them, with the error):
  // what wait_durable waits for.
  Lsn called_lsn_ = 0;
  bool failure_called_ = false;
  bool stop_ = false;
  Error error_;  // sticky
  std::string warning_;
  std::multimap<Lsn, std::function<void(const Status&)>> callbacks_;
  WriterStats stats_;

  // Writer thread only (after start()).
  std::unique_ptr<Segment> segment_;
  std::uint64_t next_seq_ = 1;
  std::vector<std::byte> spare_;  // the batch buffer handed back to pending_ (keeps capacity)

  std::thread thread_;
};

}  // namespace shmsched::journal
