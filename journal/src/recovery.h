// The recovery shared by recover() and Writer::open(): it also says where appending goes on.
#pragma once

#include <cstdint>
#include <string>

#include "shmsched/journal/reader.h"

namespace shmsched::journal::detail {

// Where the journal ends after recovery.
struct JournalEnd {
  bool has_segment = false;  // a segment to go on appending to
  std::uint64_t seq = 0;     // its sequence number (if has_segment)
  std::string path;
  std::uint64_t size = 0;      // its valid size (the tail is cut on repair)
  std::uint64_t segments = 0;  // segment files left
  std::uint64_t bytes = 0;     // their total size
  Lsn next_lsn = 1;
  std::uint64_t next_seq = 1;  // for a new segment
};

// dir_fd: the locked directory when repairing, -1 to only read.
Result<RecoveryReport> recover_dir(const std::string& dir, int dir_fd, bool salvage,
                                   const RecordVisitor& visit, JournalEnd* end);

}  // namespace shmsched::journal::detail
