// Recovery (reader.h): find the newest complete snapshot, read from there in LSN order, and tell
// a torn tail (cut it) from damage (stop, or salvage what precedes it).
#include "recovery.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <optional>

#include "le.h"
#include "os.h"
#include "shmsched/journal/codec.h"

namespace shmsched::journal::detail {

namespace {

struct Loaded {
  std::vector<std::byte> bytes;
  SegmentScan scan;
};

Error load(const std::string& dir, const SegmentFile& file, Loaded& out) {
  if (Error e = read_file(dir, file.path, out.bytes)) return e;
  out.scan = scan_segment(out.bytes);
  return {};
}

// A segment that starts with a snapshot and holds its end record: a complete snapshot.
bool holds_complete_snapshot(const SegmentScan& scan) {
  if (scan.records.empty() || scan.records[0].type != kTypeSnapshotBegin) return false;
  for (const Record& r : scan.records) {
    if (r.type == kTypeSnapshotEnd && r.payload.size() == 8 &&
        load_u64(r.payload.data()) == scan.records[0].lsn) {
      return true;
    }
  }
  return false;
}

Error damage_error(const SegmentFile& file, std::uint64_t offset, const std::string& what,
                   Lsn kept_up_to) {
  return {Errc::kCorrupt,
          "journal: " + file.path + " is damaged at offset " + std::to_string(offset) + ": " +
              what +
              ". This is not a torn tail (a crash can only cut the end of the last segment). "
              "Start with salvage to keep the records before it (up to LSN " +
              std::to_string(kept_up_to) +
              ") and set the rest aside, or restore the journal directory from a backup"};
}

// Moves the bytes of `path` from `offset` on to "<path>.salvaged-<offset>", then cuts them off.
Error set_aside_tail(const std::string& dir, const std::string& path,
                     std::span<const std::byte> bytes, std::uint64_t offset, std::string& aside) {
  aside = path + ".salvaged-" + std::to_string(offset);
  const int fd = ::open(aside.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) return os_error(errno, dir, "cannot create " + aside);
  Error e = write_all(fd, bytes.subspan(offset), dir, aside, nullptr);
  if (!e) e = sync_data(fd, dir, aside, nullptr);
  ::close(fd);
  if (e) return e;
  return truncate_file(dir, path, offset);
}

}  // namespace

Result<RecoveryReport> recover_dir(const std::string& dir, int dir_fd, bool salvage,
                                   const RecordVisitor& visit, JournalEnd* end) {
  RecoveryReport report;
  auto listed = list_segments(dir);
  if (!listed) return listed.error();
  const std::vector<SegmentFile>& files = *listed;
  const bool repair = dir_fd >= 0;

  // 1. Where to start: the newest segment that begins with a complete snapshot. The writer
  // deletes older segments only once a snapshot's end is durable, so a last segment holding an
  // unfinished snapshot (a crash while it was written) leaves the previous start in place.
  std::size_t start = 0;
  std::size_t stop = files.size();
  std::optional<std::size_t> drop;  // the last segment: a snapshot without its end
  Lsn drop_first_lsn = 0;
  std::optional<std::size_t> cached_index;
  Loaded cached;
  std::vector<std::byte> peek;
  for (std::size_t i = files.size(); i-- > 0;) {
    const std::size_t need = kSegmentHeaderBytes + kRecordHeaderBytes;
    if (Error e = read_prefix(dir, files[i].path, need, peek)) return e;
    if (peek.size() < need ||
        std::to_integer<std::uint8_t>(peek[kSegmentHeaderBytes + 16]) != kTypeSnapshotBegin) {
      continue;
    }
    Loaded l;
    if (Error e = load(dir, files[i], l)) return e;
    if (holds_complete_snapshot(l.scan)) {
      start = i;
    } else if (i + 1 == files.size() && l.scan.header &&
               l.scan.tail != SegmentScan::Tail::kCorrupt) {
      // Appends made after a snapshot follow its end record, so this segment holds nothing else.
      drop = i;
      drop_first_lsn = l.scan.header->first_lsn;
      stop = i;
      report.incomplete_snapshot_file = files[i].path;
      continue;
    } else {
      start = i;  // a damaged snapshot: the pass below reports the damage
    }
    cached = std::move(l);
    cached_index = i;
    break;
  }

  // 2. Read from there in order; each segment continues the LSNs of the one before.
  Lsn expected = 0;
  std::optional<std::size_t> last_kept;
  std::uint64_t last_kept_size = 0;
  for (std::size_t i = start; i < stop; ++i) {
    const SegmentFile& f = files[i];
    Loaded own;
    if (cached_index != i) {
      if (Error e = load(dir, f, own)) return e;
    }
    Loaded& l = cached_index == i ? cached : own;
    const SegmentScan& s = l.scan;
    const bool last = i + 1 == stop;
    ++report.segments;

    // Damage in the file header makes the whole file unusable; damage after it, the rest.
    std::string problem;
    std::uint64_t problem_at = 0;
    if (!s.header) {
      problem = s.reason;
    } else if (s.header->seq != f.seq) {
      problem = "a file header naming segment " + std::to_string(s.header->seq);
    } else if (expected != 0 && s.header->first_lsn != expected) {
      problem = "first LSN " + std::to_string(s.header->first_lsn) + " where " +
                std::to_string(expected) +
                " was expected (records between the previous segment and this one are missing)";
    } else if (expected == 0 && cached_index != i && s.header->first_lsn != 1) {
      // Salvage keeps such a journal as it is: nothing here is damaged, only the start missing.
      if (!salvage) {
        return damage_error(f, 24,
                            "first LSN " + std::to_string(s.header->first_lsn) +
                                " without a snapshot before it (the segments before it are "
                                "missing)",
                            0);
      }
      report.salvaged = true;
      report.damaged_file = f.path;
      report.damaged_offset = 24;
      report.damage =
          "the segments before LSN " + std::to_string(s.header->first_lsn) + " are missing";
    }
    if (problem.empty()) {
      if (s.tail == SegmentScan::Tail::kCorrupt || (s.tail == SegmentScan::Tail::kTorn && !last)) {
        problem = s.tail == SegmentScan::Tail::kTorn
                      ? s.reason + " at the end of a segment that is not the last one"
                      : s.reason;
        problem_at = s.valid_end;
        if (!salvage) {
          const Lsn kept = s.header->first_lsn + s.records.size() - 1;
          return damage_error(f, problem_at, problem, kept);
        }
      }
      for (const Record& r : s.records) {
        if (r.type == kTypeSnapshotBegin) {
          if (report.snapshot_lsn == 0) report.snapshot_lsn = r.lsn;
          continue;
        }
        if (r.type == kTypeSnapshotEnd) continue;
        ++report.records;
        if (r.in_snapshot()) ++report.snapshot_records;
        if (report.first_lsn == 0) report.first_lsn = r.lsn;
        report.last_lsn = r.lsn;
        if (visit) visit(r);
      }
      expected = s.header->first_lsn + s.records.size();
      last_kept = i;
      last_kept_size = s.valid_end;
      if (problem.empty() && s.tail == SegmentScan::Tail::kTorn) {
        report.torn_bytes = s.size - s.valid_end;
        report.torn_file = f.path;
        report.torn_offset = s.valid_end;
        report.torn_reason = s.reason;
        if (repair) {
          if (Error e = truncate_file(dir, f.path, s.valid_end)) return e;
          report.repaired = true;
        }
      }
    } else if (!salvage) {
      return damage_error(f, problem_at, problem, expected == 0 ? 0 : expected - 1);
    }
    if (problem.empty()) continue;

    // Salvage: keep what precedes the damage, set everything after it aside (never delete it).
    report.salvaged = true;
    report.damaged_file = f.path;
    report.damaged_offset = problem_at;
    report.damage = problem;
    report.dropped_bytes = s.size - problem_at;
    for (std::size_t j = i + 1; j < stop; ++j) {
      std::error_code ec;
      const auto size = std::filesystem::file_size(files[j].path, ec);
      if (!ec) report.dropped_bytes += size;
    }
    if (repair) {
      std::size_t first_whole = i + 1;
      if (problem_at >= kSegmentHeaderBytes) {
        std::string aside;
        if (Error e = set_aside_tail(dir, f.path, l.bytes, problem_at, aside)) return e;
        report.set_aside.push_back(aside);
      } else {
        first_whole = i;
      }
      for (std::size_t j = first_whole; j < stop; ++j) {
        const std::string aside = files[j].path + ".salvaged";
        if (::rename(files[j].path.c_str(), aside.c_str()) != 0) {
          return os_error(errno, dir, "cannot set " + files[j].path + " aside");
        }
        report.set_aside.push_back(aside);
      }
      report.repaired = true;
    }
    if (problem_at < kSegmentHeaderBytes && last_kept == i) last_kept.reset();
    break;
  }

  if (drop && repair) {
    if (::unlink(files[*drop].path.c_str()) != 0) {
      return os_error(errno, dir, "cannot delete the unfinished snapshot " + files[*drop].path);
    }
    report.repaired = true;
  }
  if (report.repaired) {
    if (Error e = sync_dir(dir_fd, dir)) return e;
  }

  if (end != nullptr) {
    JournalEnd je;
    if (last_kept) {
      je.has_segment = true;
      je.seq = files[*last_kept].seq;
      je.path = files[*last_kept].path;
      je.size = last_kept_size;
    }
    if (expected != 0) {
      je.next_lsn = expected;
    } else if (drop) {
      je.next_lsn = drop_first_lsn;  // the unfinished snapshot's LSNs were never durable
    }
    je.next_seq = files.empty() ? 1 : files.back().seq + 1;
    auto left = list_segments(dir);
    if (!left) return left.error();
    for (const SegmentFile& f : *left) {
      std::error_code ec;
      const auto size = std::filesystem::file_size(f.path, ec);
      if (!ec) je.bytes += size;
      ++je.segments;
    }
    *end = je;
  }
  return report;
}

}  // namespace shmsched::journal::detail

namespace shmsched::journal {

std::string RecoveryReport::summary() const {
  std::string s = "journal: recovered " + std::to_string(records) + " records";
  if (records > 0) {
    s += " (LSN " + std::to_string(first_lsn) + ".." + std::to_string(last_lsn) + ")";
  }
  s += " from " + std::to_string(segments) + " segment(s)";
  if (snapshot_lsn != 0) {
    s += ", starting at the snapshot of LSN " + std::to_string(snapshot_lsn) + " (" +
         std::to_string(snapshot_records) + " records)";
  }
  if (torn_bytes > 0) {
    s += "; torn tail: " + std::to_string(torn_bytes) + " bytes dropped from " + torn_file +
         " at offset " + std::to_string(torn_offset) + " (" + torn_reason + ")";
  }
  if (!incomplete_snapshot_file.empty()) {
    s += "; an unfinished snapshot was dropped: " + incomplete_snapshot_file;
  }
  if (salvaged) {
    s += "; SALVAGED: damage in " + damaged_file + " at offset " + std::to_string(damaged_offset) +
         " (" + damage + "), " + std::to_string(dropped_bytes) + " bytes dropped";
    if (!set_aside.empty()) {
      s += ", set aside as";
      for (const auto& a : set_aside) s += " " + a;
    }
  }
  return s;
}

Result<RecoveryReport> recover(const RecoverOptions& options, const RecordVisitor& visit) {
  if (!options.repair) {
    std::error_code ec;
    if (!std::filesystem::exists(options.dir, ec)) return RecoveryReport{};
    return detail::recover_dir(options.dir, -1, options.salvage, visit, nullptr);
  }
  auto fd = detail::open_locked_dir(options.dir);
  if (!fd) return fd.error();
  auto result = detail::recover_dir(options.dir, *fd, options.salvage, visit, nullptr);
  ::close(*fd);
  return result;
}

}  // namespace shmsched::journal
