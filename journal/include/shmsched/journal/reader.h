// Recovery: reads a journal directory back, from the newest complete snapshot on, and says what
// it found. Writer::open() runs the same recovery before it appends (docs/journal.md).
//
//   RecoverOptions options;
//   options.dir = "/var/lib/shmsched/journal";
//   auto report = recover(options, [&](const Record& r) { state.apply(r); });
//   if (!report) { log(report.error().message); return 1; }  // names the file and offset
//   if (report->torn_bytes > 0) log(report->summary());
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "shmsched/journal/error.h"
#include "shmsched/journal/format.h"

namespace shmsched::journal {

struct RecoverOptions {
  std::string dir;
  // On damage that is not a torn tail, keep the records before it and set the rest aside
  // (renamed, never deleted) instead of failing.
  bool salvage = false;
  // Change the directory to match what was recovered: cut a torn tail, delete a snapshot that a
  // crash left without its end, set salvaged data aside. Takes the directory's lock, so it fails
  // (kLocked) while a writer runs. Without it recovery only reads.
  bool repair = true;
};

struct RecoveryReport {
  std::size_t segments = 0;   // segment files read
  std::uint64_t records = 0;  // records visited, snapshot records included
  std::uint64_t snapshot_records = 0;
  Lsn first_lsn = 0;  // of the records visited (0: none)
  Lsn last_lsn = 0;
  Lsn snapshot_lsn = 0;  // the LSN of the begin record of the snapshot read first (0: none)

  // A torn tail: the last segment ended inside a record (a crash during a write).
  std::uint64_t torn_bytes = 0;
  std::string torn_file;
  std::uint64_t torn_offset = 0;  // where the valid records end
  std::string torn_reason;

  // A snapshot that a crash left without its end record (its segment is deleted on repair).
  std::string incomplete_snapshot_file;

  // Salvage: the damage recovery stopped at, and what it dropped.
  bool salvaged = false;
  std::string damaged_file;
  std::uint64_t damaged_offset = 0;
  std::string damage;
  std::uint64_t dropped_bytes = 0;     // from the damage to the end of the journal
  std::vector<std::string> set_aside;  // where the dropped bytes were moved (on repair)

  bool repaired = false;  // the directory was changed (a cut, a deletion, a set-aside)

  // One line for the log: what was read and, when it happened, what was cut or dropped.
  std::string summary() const;
};

// Called for each record in LSN order. Snapshot records come first when recovery starts from a
// snapshot (Record::in_snapshot()); the journal's own begin/end records are not passed. The
// payload is valid during the call only. An exception from the visitor ends recovery and is
// passed on (nothing is repaired then).
using RecordVisitor = std::function<void(const Record&)>;

// Reads options.dir. Returns an error (kCorrupt, with the file and offset) on damage that is
// not a torn tail unless options.salvage, and on failed system calls. After an error the
// records already visited must be thrown away: recovery did not complete. An empty or missing
// directory is an empty journal.
Result<RecoveryReport> recover(const RecoverOptions& options, const RecordVisitor& visit);

}  // namespace shmsched::journal
