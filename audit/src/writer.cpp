// The audit writer: the open (continue the chain, cut a torn tail), the writer thread's batches,
// rotation, retention and the fsync policies. See writer.h for the contract.
#include "shmsched/audit/writer.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "frame.h"
#include "log_file.h"
#include "sha256.h"

namespace shmsched::audit {

using namespace detail;
using Clock = std::chrono::steady_clock;

namespace {

// A batch is written in pieces of about this size: the buffer stays small, and a disk that is
// almost full takes what still fits.
constexpr std::size_t kMaxWriteBytes = 256 << 10;

std::string os_error(const std::string& what) {
  return what + ": " + std::strerror(errno);
}

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void write_all(int fd, std::span<const std::byte> data, const std::string& path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw AuditError(os_error("audit: cannot write " + path));
    data = data.subspan(static_cast<std::size_t>(n));
  }
}

// The state the last file leaves the chain in, and where its valid records end.
struct TailScan {
  bool header_ok = false;
  std::uint64_t size = 0;
  std::uint64_t end = 0;  // offset after the last valid frame
  std::uint64_t records = 0;
  std::uint64_t next_seq = 0;
  Hash chain{};
  std::string damage;  // set when something invalid is followed by more data: not a torn tail
};

TailScan scan_last_file(const LogFile& file) {
  TailScan s;
  FrameCursor cursor(file.path);
  s.size = cursor.file_size();
  Frame f;
  if (cursor.next(f) != FrameStatus::kFrame) return s;
  const auto header = decode_header(f.body);
  if (!header || header->first_seq != file.first_seq ||
      chain_hash(header->prev_hash, f.body) != f.stored) {
    return s;
  }
  s.header_ok = true;
  s.chain = f.stored;
  s.next_seq = header->first_seq;
  for (;;) {
    s.end = cursor.offset();
    const FrameStatus st = cursor.next(f);
    if (st == FrameStatus::kEnd || st == FrameStatus::kIncomplete) return s;
    if (st == FrameStatus::kBadLength) {
      // A crash can leave the file longer than what was written, the rest zeros.
      if (!cursor.rest_is_zero())
        s.damage = "bad frame length " + std::to_string(cursor.declared_length());
      return s;
    }
    const auto record = decode_record(f.body);
    if (!record || record->seq != s.next_seq || chain_hash(s.chain, f.body) != f.stored) {
      // The last frame of the file may be one a crash cut short; anything before it is damage.
      if (f.offset + f.size() != s.size)
        s.damage = "record " + std::to_string(s.next_seq) + " does not match the chain";
      return s;
    }
    s.chain = f.stored;
    ++s.next_seq;
    ++s.records;
  }
}

}  // namespace

std::optional<FsyncPolicy> parse_fsync_policy(std::string_view name) {
  if (name == "batch") return FsyncPolicy::kBatch;
  if (name == "interval") return FsyncPolicy::kInterval;
  if (name == "none") return FsyncPolicy::kNone;
  return std::nullopt;
}

std::string_view fsync_policy_name(FsyncPolicy policy) {
  switch (policy) {
    case FsyncPolicy::kBatch:
      return "batch";
    case FsyncPolicy::kInterval:
      return "interval";
    case FsyncPolicy::kNone:
      return "none";
  }
  return "?";
}

struct AuditWriter::File {
  int fd = -1;
  std::string name;
  std::uint64_t bytes = 0;    // its size: where the next frame goes
  std::uint64_t records = 0;  // records in it
  ~File() {
    if (fd >= 0) ::close(fd);
  }
};

AuditWriter::AuditWriter(AuditWriterOptions options) : options_(std::move(options)) {
  auto cleanup = [&] {
    file_.reset();
    if (dir_fd_ >= 0) ::close(dir_fd_);
  };
  try {
    open_directory();
  } catch (const AuditError&) {
    cleanup();
    throw;
  } catch (const std::exception& e) {  // std::filesystem's errors
    cleanup();
    throw AuditError(std::string("audit: ") + e.what());
  }
  stats_.durable_seq = stats_.last_written_seq = next_seq_ - 1;
  thread_ = std::thread([this] { run(); });
}

AuditWriter::~AuditWriter() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
    stop_deadline_ = Clock::now() + options_.close_timeout;
    writer_idle_ = false;
  }
  work_cv_.notify_all();
  thread_.join();
  file_.reset();
  ::close(dir_fd_);
}

void AuditWriter::open_directory() {
  namespace fs = std::filesystem;
  const std::string& dir = options_.dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    const fs::path parent = fs::path(dir).parent_path();
    if (!parent.empty()) fs::create_directories(parent, ec);
    if (::mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST)
      throw AuditError(os_error("audit: cannot create " + dir));
  }
  dir_fd_ = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd_ < 0) throw AuditError(os_error("audit: cannot open " + dir));
  if (::flock(dir_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK)
      throw AuditError("audit: " + dir + " is in use by another audit writer");
    throw AuditError(os_error("audit: cannot lock " + dir));
  }
  // A file is created under a .tmp name and renamed once its header is whole: leftovers are
  // files that never were.
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.ends_with(".log.tmp") && parse_file_name(name.substr(0, name.size() - 4)))
      fs::remove(entry.path(), ec);
  }

  auto files = list_log_files(dir);
  std::optional<std::uint64_t> fresh_start;  // first seq of a new first file
  while (!files.empty()) {
    const LogFile last = files.back();
    TailScan scan = scan_last_file(last);
    if (!scan.header_ok) {
      // Without a whole header the file holds nothing that can be chained. Only a file too
      // small to hold a record after its header, or all zeros, is taken for a crash's leftover.
      FrameCursor cursor(last.path);
      if (scan.size > kFrameOverhead + 256 && !cursor.rest_is_zero()) {
        throw AuditError("audit: " + last.path +
                         " has no valid header; run `shmschedctl audit verify` and move the file "
                         "aside to start a new one");
      }
      if (::unlinkat(dir_fd_, last.name.c_str(), 0) != 0)
        throw AuditError(os_error("audit: cannot remove " + last.path));
      ++report_.removed_files;
      report_.cut_bytes += scan.size;
      report_.cut_file = last.name;
      report_.cut_offset = 0;
      files.pop_back();
      fresh_start = last.first_seq;
      continue;
    }
    if (!scan.damage.empty()) {
      throw AuditError("audit: " + last.path + " offset " + std::to_string(scan.end) + ": " +
                       scan.damage +
                       ", and records follow it; run `shmschedctl audit verify` and move the "
                       "file aside to start a new one");
    }
    auto file = std::make_unique<File>();
    file->fd = ::openat(dir_fd_, last.name.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (file->fd < 0) throw AuditError(os_error("audit: cannot open " + last.path));
    if (scan.end < scan.size) {
      if (::ftruncate(file->fd, static_cast<off_t>(scan.end)) != 0)
        throw AuditError(os_error("audit: cannot cut the torn tail of " + last.path));
      if (options_.fsync != FsyncPolicy::kNone) ::fdatasync(file->fd);
      report_.cut_bytes += scan.size - scan.end;
      report_.cut_file = last.name;
      report_.cut_offset = scan.end;
    }
    file->name = last.name;
    file->bytes = scan.end;
    file->records = scan.records;
    file_ = std::move(file);
    chain_ = scan.chain;
    next_seq_ = scan.next_seq;
    break;
  }
  if (!file_) {
    chain_ = Hash{};
    next_seq_ = fresh_start.value_or(1);
    create_file(next_seq_);
  }
  report_.removed_files += apply_retention();
  report_.files = list_log_files(dir).size();
  report_.next_seq = next_seq_;
}

void AuditWriter::create_file(std::uint64_t first_seq) {
  const std::string name = file_name(first_seq);
  const std::string tmp = name + ".tmp";
  const std::string path = options_.dir + "/" + name;
  auto file = std::make_unique<File>();
  file->fd =
      ::openat(dir_fd_, tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0640);
  if (file->fd < 0) throw AuditError(os_error("audit: cannot create " + options_.dir + "/" + tmp));
  std::vector<std::byte> header;
  const std::size_t start = begin_frame(header);
  FileHeader h;
  h.first_seq = first_seq;
  h.prev_hash = chain_;
  h.created_ns = now_ns();
  encode_header(h, header);
  const Hash hash = end_frame(header, start, chain_);
  write_all(file->fd, header, path);
  const bool durable = options_.fsync != FsyncPolicy::kNone;
  if (durable && ::fdatasync(file->fd) != 0)
    throw AuditError(os_error("audit: cannot sync " + path));
  if (::renameat(dir_fd_, tmp.c_str(), dir_fd_, name.c_str()) != 0)
    throw AuditError(os_error("audit: cannot rename " + tmp + " to " + path));
  if (durable && ::fsync(dir_fd_) != 0)
    throw AuditError(os_error("audit: cannot sync " + options_.dir));
  file->name = name;
  file->bytes = header.size();
  file_ = std::move(file);
  chain_ = hash;
}

std::size_t AuditWriter::apply_retention() {
  if (options_.max_files == 0) return 0;
  std::vector<LogFile> files;
  try {
    files = list_log_files(options_.dir);
  } catch (const AuditError& e) {
    report_error(e.what());
    return 0;
  }
  std::size_t removed = 0;
  for (std::size_t i = 0; i + options_.max_files < files.size(); ++i) {
    if (files[i].name == file_->name) break;  // never the file being written
    if (::unlinkat(dir_fd_, files[i].name.c_str(), 0) != 0 && errno != ENOENT) {
      report_error(os_error("audit: cannot remove " + files[i].path));
      continue;
    }
    ++removed;
  }
  return removed;
}

void AuditWriter::report_error(const std::string& message) {
  {
    std::lock_guard lk(mu_);
    ++stats_.errors;
  }
  if (options_.on_error) options_.on_error(message);
}

std::uint64_t AuditWriter::append(AuditRecord record) {
  if (record.type.empty()) throw std::invalid_argument("audit: a record needs a type");
  if (encoded_size_bound(record) > kMaxBodyBytes)
    throw std::length_error("audit: record of type " + record.type + " is too large");
  if (record.time_ns == 0) record.time_ns = now_ns();
  std::unique_lock lk(mu_);
  if (dead_) throw AuditError("audit: the writer thread has stopped");
  if (pending_.size() >= options_.max_pending) {
    ++stats_.append_waits;
    space_cv_.wait(lk, [&] { return pending_.size() < options_.max_pending || dead_; });
    if (dead_) throw AuditError("audit: the writer thread has stopped");
  }
  const std::uint64_t seq = record.seq = next_seq_++;
  pending_.push_back(std::move(record));
  ++stats_.appended;
  const bool wake = writer_idle_;
  writer_idle_ = false;  // one wake-up is enough for everything appended until the thread runs
  lk.unlock();
  if (wake) work_cv_.notify_one();
  return seq;
}

bool AuditWriter::flush(std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  const std::uint64_t target = next_seq_ - 1;
  if (stats_.durable_seq >= target) return true;
  sync_target_ = std::max(sync_target_, target);
  writer_idle_ = false;
  work_cv_.notify_one();  // also while it lingers: a flush should not wait for the poll
  const auto done = [&] { return stats_.durable_seq >= target || dead_; };
  if (timeout >= std::chrono::hours(24 * 365)) {  // "forever" (and no overflow in wait_for)
    done_cv_.wait(lk, done);
  } else {
    done_cv_.wait_for(lk, timeout, done);
  }
  return stats_.durable_seq >= target;
}

AuditWriterStats AuditWriter::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

// Runs `step` until it succeeds, reporting each failure and waiting a little longer each time;
// after the stop, only until stop_deadline_. Returns false when it gave up.
bool AuditWriter::retry(const std::function<void()>& step) {
  auto backoff = std::chrono::milliseconds(50);
  for (;;) {
    try {
      step();
      return true;
    } catch (const std::exception& e) {
      report_error(e.what());
    }
    std::unique_lock lk(mu_);
    if (stop_ && Clock::now() >= stop_deadline_) return false;
    auto until = Clock::now() + backoff;
    if (stop_) until = std::min(until, stop_deadline_);
    work_cv_.wait_until(lk, until);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
  }
}

bool AuditWriter::commit(std::uint64_t records) {
  if (buffer_.empty()) return true;
  const bool ok = retry([&] {
    try {
      write_all(file_->fd, buffer_, options_.dir + "/" + file_->name);
    } catch (...) {
      // Leave no part of the buffer behind: the retry writes all of it again.
      if (::ftruncate(file_->fd, static_cast<off_t>(file_->bytes)) != 0) {
        report_error(os_error("audit: cannot cut a failed write of " + file_->name));
      }
      throw;
    }
  });
  if (!ok) return false;
  if (options_.fsync != FsyncPolicy::kNone) {
    if (!unsynced_) next_sync_ = Clock::now() + options_.fsync_interval;
    unsynced_ = true;
  }
  file_->bytes += buffer_.size();
  file_->records += records;
  std::lock_guard lk(mu_);
  stats_.bytes += buffer_.size();
  return true;
}

bool AuditWriter::rotate(std::uint64_t first_seq) {
  sync();  // the old file is complete before the new one exists
  if (!retry([&] { create_file(first_seq); })) return false;
  const std::size_t removed = apply_retention();
  std::lock_guard lk(mu_);
  ++stats_.rotations;
  stats_.bytes += file_->bytes;
  stats_.files_removed += removed;
  return true;
}

void AuditWriter::sync() {
  if (!unsynced_) return;
  unsynced_ = false;  // a failed fdatasync is not retried: Linux may have dropped the pages
  if (::fdatasync(file_->fd) != 0) {
    report_error(os_error("audit: cannot sync " + options_.dir + "/" + file_->name));
    return;
  }
  std::lock_guard lk(mu_);
  ++stats_.syncs;
}

void AuditWriter::write_batch(const std::vector<AuditRecord>& batch) {
  buffer_.clear();
  std::uint64_t framed = 0;  // in buffer_
  std::uint64_t written = 0;
  auto publish = [&](std::uint64_t last_seq) {
    std::lock_guard lk(mu_);
    stats_.written += written;
    if (written) stats_.last_written_seq = last_seq;
  };
  // After the writer gave up (at close), nothing more is written: a later record after lost
  // ones would be a gap in the chain.
  auto lose_rest = [&](std::size_t from) {
    gave_up_ = true;
    publish(from ? batch[from - 1].seq : 0);
    const auto n = batch.size() - from;
    report_error("audit: gave up at close: " + std::to_string(n) + " records (seq " +
                 std::to_string(batch[from].seq) + " .. " + std::to_string(batch.back().seq) +
                 ") not written");
    std::lock_guard lk(mu_);
    stats_.lost += n;
  };
  if (gave_up_) return lose_rest(0);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    std::size_t start = begin_frame(buffer_);
    encode_record(batch[i], buffer_);
    const std::uint64_t end = file_->bytes + buffer_.size() + kHashBytes;
    const bool next_file = end > options_.max_file_bytes && file_->records + framed > 0;
    if (next_file || buffer_.size() > kMaxWriteBytes) {
      // Write what came before this record (then, if it opens the next file, rotate).
      buffer_.resize(start);
      if (!commit(framed)) return lose_rest(i - framed);
      written += framed;
      buffer_.clear();
      framed = 0;
      if (next_file && !rotate(batch[i].seq)) return lose_rest(i);
      start = begin_frame(buffer_);
      encode_record(batch[i], buffer_);
    }
    chain_ = end_frame(buffer_, start, chain_);
    ++framed;
  }
  if (!commit(framed)) return lose_rest(batch.size() - framed);
  written += framed;
  publish(batch.back().seq);
}

void AuditWriter::run() {
  std::vector<AuditRecord> batch;
  Clock::time_point linger_until{};
  try {
    for (;;) {
      bool flush_wanted = false;
      bool stopping = false;
      {
        std::unique_lock lk(mu_);
        for (;;) {
          if (!pending_.empty() || stop_) break;
          if (unsynced_ && sync_target_ > stats_.durable_seq) break;
          const bool interval_sync = unsynced_ && options_.fsync == FsyncPolicy::kInterval;
          const auto now = Clock::now();
          if (interval_sync && now >= next_sync_) break;
          auto until = interval_sync ? next_sync_ : Clock::time_point::max();
          // Right after a batch the thread polls for the next one instead of sleeping, so that
          // appends under steady traffic find it awake and make no system call to wake it.
          const bool lingering = now < linger_until;
          if (lingering) until = std::min(until, linger_until);
          writer_idle_ = !lingering;
          if (until == Clock::time_point::max()) {
            work_cv_.wait(lk);
          } else {
            work_cv_.wait_until(lk, until);
          }
          writer_idle_ = false;
        }
        writer_idle_ = false;
        batch.swap(pending_);
        flush_wanted = sync_target_ > stats_.durable_seq;
        stopping = stop_;
      }
      space_cv_.notify_all();
      if (!batch.empty()) {
        write_batch(batch);
        linger_until = Clock::now() + options_.linger;
      }
      const bool sync_now = options_.fsync == FsyncPolicy::kBatch ||
                            (options_.fsync == FsyncPolicy::kInterval &&
                             (flush_wanted || stopping || Clock::now() >= next_sync_));
      if (sync_now) sync();
      {
        std::lock_guard lk(mu_);
        if (!batch.empty()) ++stats_.batches;
        if (!unsynced_) stats_.durable_seq = stats_.last_written_seq;
        if (stop_ && pending_.empty() && !unsynced_) break;
      }
      done_cv_.notify_all();
      batch.clear();
    }
  } catch (const std::exception& e) {
    {
      std::lock_guard lk(mu_);
      dead_ = true;
    }
    if (options_.on_error)
      options_.on_error(std::string("audit: writer thread stopped: ") + e.what());
  }
  done_cv_.notify_all();
  space_cv_.notify_all();
}

}  // namespace shmsched::audit
