// verify_audit_dir: checks the hash chain of an audit directory, across the files present, and
// names the first bad record.
//
// Each file's header anchors it (first_seq, prev_hash), so the files left after retention verify
// on their own; consecutive files must continue each other (no gap, same hash). What verify cannot
// see: records removed from the very end (the last records, or the newest files, deleted whole),
// since nothing comes after them. Keep last_seq / last_hash elsewhere (the daemon's journal, a
// metric) to detect that.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "shmsched/audit/format.h"

namespace shmsched::audit {

enum class VerifyProblem {
  kNone,
  kUnreadable,    // the directory or a file cannot be read
  kBadHeader,     // a file does not start with a valid header, or its name disagrees with it
  kHashMismatch,  // a record's (or header's) content was changed: its hash does not match
  kMissing,       // records are missing: a sequence gap inside a file or between two files
  kReordered,     // a record is not where its sequence number says (moved or repeated)
  kChainBroken,   // a file does not continue the previous one's chain
  kMalformed,     // a frame that is no record: a bad length, or a body whose hash matches but
                  // that does not decode
  kTruncated,     // a file ends inside a record
};

std::string_view verify_problem_name(VerifyProblem problem);  // "hash_mismatch", ...

struct VerifyResult {
  VerifyProblem problem = VerifyProblem::kNone;
  bool ok() const { return problem == VerifyProblem::kNone; }

  std::size_t files = 0;        // files looked at (all of them when ok)
  std::uint64_t records = 0;    // intact records before the first problem (all when ok)
  std::uint64_t first_seq = 0;  // of the intact records (0 when there are none)
  std::uint64_t last_seq = 0;
  Hash last_hash{};  // the chain's head after last_seq (an anchor to keep elsewhere)

  // The first bad record, when !ok.
  std::uint64_t seq = 0;     // its record number: the sequence number due at that place
  std::string file;          // file name inside the directory
  std::uint64_t offset = 0;  // byte offset of its frame in the file
  // For people. When !ok: "record 42 (audit-...log offset 1234): <what is wrong>"; when ok:
  // "N records in M files, chain intact (first seq A .. last seq B)".
  std::string message;
};

struct VerifyOptions {
  // A record cut short at the end of the newest file may be one a live writer is writing: it is
  // read again until it is whole or this has passed, then reported as truncated.
  std::chrono::milliseconds settle{200};
};

// Does not throw for anything found on disk; the result says what is wrong.
VerifyResult verify_audit_dir(const std::string& dir, const VerifyOptions& options = {});

}  // namespace shmsched::audit
