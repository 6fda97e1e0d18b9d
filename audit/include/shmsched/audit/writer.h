// AuditWriter: appends records to the hash-chained audit log from one thread of its own.
//
// append() only moves the record into a vector under a mutex (the writer thread swaps the vector
// out and writes the batch), so the scheduler loop never waits for the disk. The thread frames
// and hashes each batch, writes it in pieces of up to 256 KiB, rotates files by size, deletes the
// oldest beyond max_files, and calls fdatasync as the FsyncPolicy says. docs/audit.md has the
// format and what each policy survives.
//
//   AuditWriterOptions options;
//   options.dir = "/var/lib/shmsched/audit";
//   AuditWriter writer(std::move(options));
//   AuditRecord r;
//   r.type = "accepted";
//   r.execution_id = id;
//   writer.append(std::move(r));
//   writer.flush();  // everything appended so far is on disk (and synced, unless kNone)
//
// (GCC 12 warns about designated initializers that leave members out under -Wextra: fill the
// structs member by member.)
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "shmsched/audit/format.h"
#include "shmsched/audit/record.h"

namespace shmsched::audit {

enum class FsyncPolicy {
  kBatch,     // "batch": fdatasync after every batch; a record is durable once flush() returns
  kInterval,  // "interval": fdatasync at most every fsync_interval (and on flush()); a power loss
              // loses at most that much
  kNone,      // "none": never; survives a crash of shmschedd, not of the kernel or the power
};

// "batch", "interval", "none" (the configuration's spelling), and back.
std::optional<FsyncPolicy> parse_fsync_policy(std::string_view name);
std::string_view fsync_policy_name(FsyncPolicy policy);

struct AuditWriterOptions {
  std::string dir = kDefaultDir;  // created if missing (mode 0750; files 0640)
  FsyncPolicy fsync = FsyncPolicy::kBatch;
  std::chrono::milliseconds fsync_interval{1000};  // for kInterval
  std::uint64_t max_file_bytes = 64ull << 20;      // a file is closed before it would pass this
  std::uint32_t max_files = 16;                    // files kept, the current one included; 0: all
  // Records handed to the writer and not yet taken by its thread. At the bound, append() waits
  // for the thread to take them (counted in append_waits): a record is never dropped. The wait
  // lasts until the thread is done with the batch it is writing (and syncing), so a smaller
  // bound also means shorter stalls. Memory: up to twice this many records.
  std::size_t max_pending = 16384;
  // After a batch the thread waits this long before it takes the next, and only then sleeps
  // until woken: appends in that window make no system call (no wake-up, no context switch), at
  // the price of up to this much delay before a record is written. Idle, the thread sleeps.
  std::chrono::microseconds linger{500};
  // How long the destructor keeps retrying failed writes before it gives up on what is left.
  std::chrono::milliseconds close_timeout{5000};
  // Trouble on the writer thread (a failed write, sync, rotation or deletion), called from that
  // thread with a message that names the file and the error. The writer retries failed writes.
  std::function<void(std::string_view message)> on_error;
};

// What the writer found when it opened the directory.
struct AuditOpenReport {
  std::size_t files = 0;          // log files present after the open (retention applied)
  std::uint64_t next_seq = 1;     // the first record appended now gets this number
  std::uint64_t cut_bytes = 0;    // torn tail removed from the last file (a crash mid-write)
  std::string cut_file;           // its name, when cut_bytes > 0
  std::uint64_t cut_offset = 0;   // where it was cut (the end of the last valid record)
  std::size_t removed_files = 0;  // deleted: by retention, or a last file without a whole header
};

struct AuditWriterStats {
  std::uint64_t appended = 0;  // records handed to append()
  std::uint64_t written = 0;   // records written to a file
  std::uint64_t last_written_seq = 0;
  std::uint64_t durable_seq = 0;  // written and synced as the policy says
  std::uint64_t batches = 0;
  std::uint64_t bytes = 0;  // frame bytes written (headers included)
  std::uint64_t syncs = 0;
  std::uint64_t rotations = 0;
  std::uint64_t files_removed = 0;  // by retention since the open
  std::uint64_t append_waits = 0;   // appends that waited because max_pending was reached
  std::uint64_t errors = 0;         // failed writes, syncs, rotations, deletions (each reported)
  std::uint64_t lost = 0;           // records given up at close after close_timeout of failures
};

class AuditWriter {
 public:
  // Opens (or creates) the log in options.dir: takes an exclusive lock on the directory,
  // continues the chain from the last valid record of the last file, cuts a torn tail (see
  // open_report()), applies retention and starts the writer thread. Throws AuditError if the
  // directory cannot be created, read or locked (another writer), or if the last file is damaged
  // before its end (verify names the record; move the file aside).
  explicit AuditWriter(AuditWriterOptions options);
  // Writes everything appended (retrying failures up to close_timeout), syncs unless kNone,
  // and joins the thread.
  ~AuditWriter();
  AuditWriter(const AuditWriter&) = delete;
  AuditWriter& operator=(const AuditWriter&) = delete;

  const AuditOpenReport& open_report() const { return report_; }

  // Hands a record to the writer thread and returns its sequence number (record.seq is ignored;
  // time_ns is set to now when 0). Thread-safe. Waits only when max_pending records are queued.
  // Throws std::invalid_argument if type is empty, std::length_error if the record could exceed
  // kMaxBodyBytes, AuditError if the writer thread has ended on an unexpected error.
  std::uint64_t append(AuditRecord record);

  // Waits until every record appended before the call is written and, unless kNone, synced
  // (kInterval syncs now rather than at the interval). Returns false if `timeout` passed first
  // or the thread has ended. While writes fail (a full disk) it waits as long as they do.
  bool flush(std::chrono::milliseconds timeout = std::chrono::milliseconds::max());

  AuditWriterStats stats() const;

 private:
  struct File;  // the file being appended to (writer thread only)

  void open_directory();
  void run();
  void write_batch(const std::vector<AuditRecord>& batch);
  bool commit(std::uint64_t records);
  bool rotate(std::uint64_t first_seq);
  void create_file(std::uint64_t first_seq);
  std::size_t apply_retention();  // returns the number of files removed
  void sync();
  bool retry(const std::function<void()>& step);
  void report_error(const std::string& message);

  const AuditWriterOptions options_;
  AuditOpenReport report_;
  int dir_fd_ = -1;  // holds the lock (flock) for the writer's lifetime

  // Shared between append()/flush() and the thread.
  mutable std::mutex mu_;
  std::condition_variable work_cv_;   // the thread waits here for records, flushes or the stop
  std::condition_variable space_cv_;  // appenders wait here at max_pending
  std::condition_variable done_cv_;   // flush() waits here for durable_seq
  std::vector<AuditRecord> pending_;
  std::uint64_t next_seq_ = 1;
  std::uint64_t sync_target_ = 0;  // flush() wants records up to here synced
  bool writer_idle_ = false;       // the thread sleeps until notified: the next append wakes it
  bool stop_ = false;
  bool dead_ = false;  // the thread ended on an unexpected exception (reported through on_error)
  std::chrono::steady_clock::time_point stop_deadline_{};
  AuditWriterStats stats_;

  // Writer thread only (after the constructor).
  std::unique_ptr<File> file_;
  Hash chain_{};                   // hash of the last frame framed: the next frame links to it
  std::vector<std::byte> buffer_;  // frames of the batch not yet written
  bool gave_up_ = false;           // a write failed past close_timeout: nothing more is written
  bool unsynced_ = false;          // written, not yet synced (never set under kNone)
  std::chrono::steady_clock::time_point next_sync_{};

  std::thread thread_;
};

}  // namespace shmsched::audit
