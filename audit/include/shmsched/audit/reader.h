// AuditReader: the records of an audit directory in order, filtered, and optionally followed as
// they are appended (across rotations), like `tail -f`.
//
// The reader decodes; it does not check the hash chain (verify_audit_dir does). It needs no lock:
// it reads while a writer appends, and a record that is only partly written yet is returned once
// it is whole. A follower that falls behind retention loses the files deleted before it got to
// them (the sequence numbers it returns then jump).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "shmsched/audit/format.h"
#include "shmsched/audit/record.h"

namespace shmsched::audit {

// Empty fields match anything; set fields must be equal.
struct AuditFilter {
  std::string execution_id;
  std::string worker_id;
  std::string type;

  bool matches(const AuditRecord& record) const;
};

class AuditReader {
 public:
  // Starts before the first record of the oldest file. Throws AuditError if `dir` cannot be read.
  explicit AuditReader(std::string dir, AuditFilter filter = {});
  ~AuditReader();
  AuditReader(const AuditReader&) = delete;
  AuditReader& operator=(const AuditReader&) = delete;

  // The next matching record written so far, or nullopt when there is none yet. Throws
  // AuditError on damage that is not the end of what is written (a frame that does not decode,
  // a bad length, a partial record in a file that is not the last): verify names it.
  std::optional<AuditRecord> next();

  // Like next(), but waits up to `timeout` for a matching record to be appended (inotify on the
  // directory; a slow poll where inotify is unavailable).
  std::optional<AuditRecord> wait_next(std::chrono::milliseconds timeout);

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace shmsched::audit
