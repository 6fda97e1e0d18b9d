// The verifier: walks every frame of every file in order with the expected sequence number and
// the previous hash, and on the first mismatch works out which kind of damage it is.
#include "shmsched/audit/verifier.h"

#include <filesystem>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "frame.h"
#include "log_file.h"
#include "sha256.h"
#include "shmsched/audit/record.h"

namespace shmsched::audit {

using namespace detail;

std::string_view verify_problem_name(VerifyProblem problem) {
  switch (problem) {
    case VerifyProblem::kNone:
      return "none";
    case VerifyProblem::kUnreadable:
      return "unreadable";
    case VerifyProblem::kBadHeader:
      return "bad_header";
    case VerifyProblem::kHashMismatch:
      return "hash_mismatch";
    case VerifyProblem::kMissing:
      return "missing";
    case VerifyProblem::kReordered:
      return "reordered";
    case VerifyProblem::kChainBroken:
      return "chain_broken";
    case VerifyProblem::kMalformed:
      return "malformed";
    case VerifyProblem::kTruncated:
      return "truncated";
  }
  return "?";
}

namespace {

std::string range(std::uint64_t from, std::uint64_t to) {
  return from == to ? "record " + std::to_string(from)
                    : "records " + std::to_string(from) + " .. " + std::to_string(to);
}

class Verifier {
 public:
  Verifier(std::string dir, const VerifyOptions& options, VerifyResult& result)
      : dir_(std::move(dir)), options_(options), r_(result) {}

  // False once a problem is recorded in the result.
  bool check_file(const LogFile& file, bool newest) {
    std::unique_ptr<FrameCursor> cursor;
    try {
      cursor = std::make_unique<FrameCursor>(file.path);
    } catch (const AuditError& e) {
      // Retention may delete the oldest file while it is being verified.
      if (!anchored_ && !std::filesystem::exists(file.path)) return true;
      return fail(VerifyProblem::kUnreadable, file.first_seq, file.name, 0, e.what());
    }
    ++r_.files;
    Frame f;
    const FrameStatus st = cursor->next(f);
    if (st != FrameStatus::kFrame) {
      return fail(
          st == FrameStatus::kIncomplete ? VerifyProblem::kTruncated : VerifyProblem::kBadHeader,
          file.first_seq, file.name, 0,
          st == FrameStatus::kEnd ? "the file is empty: no header"
                                  : "the file header is cut short or has a bad length");
    }
    const auto header = decode_header(f.body);
    if (!header)
      return fail(VerifyProblem::kBadHeader, file.first_seq, file.name, 0,
                  "the first frame is not a file header");
    if (header->first_seq != file.first_seq) {
      return fail(VerifyProblem::kBadHeader, file.first_seq, file.name, 0,
                  "the header says the file starts at record " + std::to_string(header->first_seq) +
                      ", its name says " + std::to_string(file.first_seq));
    }
    if (chain_hash(header->prev_hash, f.body) != f.stored)
      return fail(VerifyProblem::kHashMismatch, file.first_seq, file.name, 0,
                  "the file header was changed (hash mismatch)");
    if (anchored_) {
      if (header->first_seq > expected_) {
        return fail(VerifyProblem::kMissing, expected_, file.name, 0,
                    range(expected_, header->first_seq - 1) + " missing: " + previous_file_ +
                        " ends at record " + std::to_string(expected_ - 1) +
                        " and this file starts at record " + std::to_string(header->first_seq) +
                        " (a file or records deleted)");
      }
      if (header->first_seq < expected_) {
        return fail(VerifyProblem::kReordered, header->first_seq, file.name, 0,
                    "this file starts at record " + std::to_string(header->first_seq) + " but " +
                        previous_file_ + " already went up to record " +
                        std::to_string(expected_ - 1));
      }
      if (header->prev_hash != chain_)
        return fail(VerifyProblem::kChainBroken, expected_, file.name, 0,
                    "this file does not continue the chain of " + previous_file_ +
                        " (its header's prev_hash differs)");
    } else if (header->first_seq == 1 && header->prev_hash != Hash{}) {
      return fail(VerifyProblem::kChainBroken, 1, file.name, 0,
                  "the first file's chain must start from the zero hash");
    }
    anchored_ = true;
    chain_ = f.stored;
    expected_ = header->first_seq;
    previous_file_ = file.name;

    for (;;) {
      FrameStatus st = cursor->next(f);
      if (st == FrameStatus::kIncomplete && newest) {
        // Perhaps a writer is in the middle of this record: give it a moment.
        const auto until = std::chrono::steady_clock::now() + options_.settle;
        while (st == FrameStatus::kIncomplete && std::chrono::steady_clock::now() < until) {
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
          st = cursor->next(f);
        }
      }
      switch (st) {
        case FrameStatus::kEnd:
          return true;
        case FrameStatus::kIncomplete: {
          const auto have = cursor->file_size() - cursor->offset();
          const auto len = cursor->declared_length();
          std::string what =
              "truncated: the file ends inside this record (" + std::to_string(have) + " bytes";
          if (len) what += " of " + std::to_string(kFrameOverhead + len);
          what += newest ? ")" : "), and newer files follow";
          return fail(VerifyProblem::kTruncated, expected_, file.name, cursor->offset(), what);
        }
        case FrameStatus::kBadLength:
          return fail(VerifyProblem::kMalformed, expected_, file.name, cursor->offset(),
                      "bad frame length " + std::to_string(cursor->declared_length()));
        case FrameStatus::kFrame:
          if (!check_record(file, f)) return false;
      }
    }
  }

  void finish() {
    r_.problem = VerifyProblem::kNone;
    r_.last_hash = chain_;
    r_.message = std::to_string(r_.records) + " records in " + std::to_string(r_.files) +
                 " files, chain intact";
    if (r_.records)
      r_.message += " (first seq " + std::to_string(r_.first_seq) + " .. last seq " +
                    std::to_string(r_.last_seq) + ")";
  }

 private:
  bool check_record(const LogFile& file, const Frame& f) {
    const auto record = decode_record(f.body);
    if (chain_hash(chain_, f.body) == f.stored) {
      if (!record)
        return fail(VerifyProblem::kMalformed, expected_, file.name, f.offset,
                    "its hash matches but it is not a record");
      if (record->seq != expected_) {
        return fail(VerifyProblem::kChainBroken, expected_, file.name, f.offset,
                    "its hash links to the record before, but it is numbered " +
                        std::to_string(record->seq));
      }
      accept(f);
      return true;
    }
    if (!record || record->seq == expected_)
      return fail(VerifyProblem::kHashMismatch, expected_, file.name, f.offset,
                  record ? "the record was changed (hash mismatch)"
                         : "the record was changed: it no longer decodes (hash mismatch)");
    // Another number stands where expected_ is due: a changed number, a moved record or a gap.
    // What follows tells them apart.
    const std::uint64_t found = record->seq;
    const auto after = following_seqs(file, f.offset + f.size());
    if (!after.empty() && after.front().first == expected_ + 1) {
      return fail(VerifyProblem::kHashMismatch, expected_, file.name, f.offset,
                  "the record was changed: it now reads record " + std::to_string(found) +
                      " (hash mismatch)");
    }
    for (const auto& [seq, offset] : after) {
      if (seq == expected_) {
        return fail(VerifyProblem::kReordered, expected_, file.name, f.offset,
                    "out of order: record " + std::to_string(found) +
                        " is in its place, and it is at offset " + std::to_string(offset));
      }
    }
    if (found > expected_) {
      return fail(VerifyProblem::kMissing, expected_, file.name, f.offset,
                  range(expected_, found - 1) + " missing: record " + std::to_string(found) +
                      " follows record " + std::to_string(expected_ - 1));
    }
    return fail(VerifyProblem::kReordered, expected_, file.name, f.offset,
                "record " + std::to_string(found) + " appears again after record " +
                    std::to_string(expected_ - 1) + " (moved or replayed)");
  }

  // The sequence numbers (and offsets) of the records after `offset` in `file`, up to the first
  // frame that is not a record.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> following_seqs(const LogFile& file,
                                                                      std::uint64_t offset) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
    try {
      FrameCursor cursor(file.path, offset);
      Frame f;
      while (out.size() < (1u << 20) && cursor.next(f) == FrameStatus::kFrame) {
        const auto record = decode_record(f.body);
        if (!record) break;
        out.emplace_back(record->seq, f.offset);
      }
    } catch (const AuditError&) {
    }
    return out;
  }

  void accept(const Frame& f) {
    if (r_.records == 0) r_.first_seq = expected_;
    r_.last_seq = expected_;
    ++r_.records;
    chain_ = f.stored;
    r_.last_hash = chain_;
    ++expected_;
  }

  bool fail(VerifyProblem problem, std::uint64_t seq, const std::string& file, std::uint64_t offset,
            const std::string& what) {
    r_.problem = problem;
    r_.seq = seq;
    r_.file = file;
    r_.offset = offset;
    r_.message = "record " + std::to_string(seq) + " (" + file + " offset " +
                 std::to_string(offset) + "): " + what;
    return false;
  }

  const std::string dir_;
  const VerifyOptions& options_;
  VerifyResult& r_;
  bool anchored_ = false;  // a header has set the chain and the expected number
  std::uint64_t expected_ = 0;
  Hash chain_{};
  std::string previous_file_;
};

}  // namespace

VerifyResult verify_audit_dir(const std::string& dir, const VerifyOptions& options) {
  VerifyResult result;
  std::vector<LogFile> files;
  try {
    files = list_log_files(dir);
  } catch (const AuditError& e) {
    result.problem = VerifyProblem::kUnreadable;
    result.message = e.what();
    return result;
  }
  Verifier verifier(dir, options, result);
  try {
    for (std::size_t i = 0; i < files.size(); ++i)
      if (!verifier.check_file(files[i], i + 1 == files.size())) return result;
  } catch (const AuditError& e) {  // a read error in the middle of a file
    result.problem = VerifyProblem::kUnreadable;
    result.message = e.what();
    return result;
  }
  verifier.finish();
  return result;
}

}  // namespace shmsched::audit
