// The writer (writer.h): appends encode into one buffer under a mutex; the writer thread takes
// the whole buffer, fills in the CRCs, writes it with one write() per segment it spans, syncs
// once and publishes the durable LSN (group commit).
#include "shmsched/journal/writer.h"

#include <pthread.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <stdexcept>

#include "le.h"
#include "os.h"
#include "recovery.h"
#include "shmsched/journal/codec.h"

namespace shmsched::journal {

using namespace detail;

namespace {

// After a batch this large (a snapshot) the buffer's memory is given back.
constexpr std::size_t kKeepBufferBytes = 64u << 20;

std::span<const std::byte> as_bytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

std::vector<std::byte> u64_payload(std::uint64_t v) {
  std::vector<std::byte> out(8);
  store_u64(out.data(), v);
  return out;
}

}  // namespace

struct Writer::Segment {
  int fd = -1;
  std::uint64_t seq = 0;
  std::string path;
  std::uint64_t size = 0;  // bytes written (the header included)

  ~Segment() {
    if (fd >= 0) ::close(fd);
  }
};

Writer::Writer(WriterOptions options) : options_(std::move(options)) {}

Result<std::unique_ptr<Writer>> Writer::open(WriterOptions options, const RecordVisitor& visit) {
  if (options.dir.empty()) {
    return Error{Errc::kInvalidArgument, "journal: no directory given (set journal_dir)"};
  }
  if (options.max_record_bytes > kMaxPayloadBytes || options.max_record_bytes == 0) {
    return Error{Errc::kInvalidArgument,
                 "journal: max_record_bytes must be 1.." + std::to_string(kMaxPayloadBytes)};
  }
  std::unique_ptr<Writer> writer(new Writer(std::move(options)));
  if (Status s = writer->start(visit)) return s;
  return writer;
}

Status Writer::start(const RecordVisitor& visit) {
  const std::string& dir = options_.dir;
  auto fd = open_locked_dir(dir);
  if (!fd) return fd.error();
  dir_fd_ = *fd;

  // A segment is created as <name>.tmp and renamed once its header is synced: a leftover is a
  // creation cut short, holding no record.
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), e; !ec && it != e; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() > 4 && name.ends_with(".tmp") &&
        parse_segment_file_name(name.substr(0, name.size() - 4))) {
      std::filesystem::remove(it->path(), ec);
    }
  }

  JournalEnd end;
  auto report = recover_dir(dir, dir_fd_, options_.salvage, visit, &end);
  if (!report) return report.error();
  report_ = std::move(*report);

  next_lsn_ = end.next_lsn;
  durable_lsn_ = end.next_lsn - 1;
  next_seq_ = end.next_seq;
  stats_.appended_lsn = durable_lsn_;
  stats_.durable_lsn = durable_lsn_;
  stats_.segments = end.segments;
  stats_.journal_bytes = end.bytes;
  if (end.has_segment) {
    auto seg = std::make_unique<Segment>();
    seg->fd = ::open(end.path.c_str(), O_WRONLY | O_CLOEXEC);
    if (seg->fd < 0) return os_error(errno, dir, "cannot open " + end.path);
    if (::lseek(seg->fd, static_cast<off_t>(end.size), SEEK_SET) < 0) {
      return os_error(errno, dir, "cannot seek in " + end.path);
    }
    // What it holds may have been written by a writer killed before its fdatasync: readable
    // from the page cache, and not yet on the disk. It is called durable below, so sync it.
    if (Status s = sync_data(seg->fd, dir, end.path, options_.fault_injector)) return s;
    seg->seq = end.seq;
    seg->path = end.path;
    seg->size = end.size;
    segment_ = std::move(seg);
  } else if (Status s = create_segment(next_seq_++, next_lsn_)) {
    return s;
  }
  thread_ = std::thread([this] {
    // Named, so that ps, top and a debugger (and the tests) tell it from its owner's threads.
    ::pthread_setname_np(::pthread_self(), "journal-writer");
    run();
  });
  return {};
}

Writer::~Writer() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  segment_.reset();
  if (dir_fd_ >= 0) ::close(dir_fd_);
}

Result<Lsn> Writer::append(std::uint8_t type, std::span<const std::byte> payload) {
  if (type == 0 || type > kMaxUserType) {
    return Error{Errc::kInvalidArgument, "journal: record type " + std::to_string(type) +
                                             " is not 1.." + std::to_string(kMaxUserType) +
                                             " (the others are the journal's own)"};
  }
  if (payload.size() > options_.max_record_bytes) {
    return Error{Errc::kTooLarge, "journal: a record of " + std::to_string(payload.size()) +
                                      " bytes is above max_record_bytes (" +
                                      std::to_string(options_.max_record_bytes) + ")"};
  }
  Lsn lsn = 0;
  bool wake = false;
  {
    std::lock_guard lk(mu_);
    if (error_) return error_;
    if (stop_) return Error{Errc::kClosed, "journal: the writer is closing"};
    if (pending_records_ >= options_.max_pending_records ||
        pending_.size() + kRecordHeaderBytes + payload.size() > options_.max_pending_bytes) {
      ++stats_.queue_full;
      return Error{Errc::kQueueFull,
                   "journal: " + std::to_string(pending_records_) + " records (" +
                       std::to_string(pending_.size()) +
                       " bytes) are already waiting for the disk of " + options_.dir +
                       " (max_pending_records / max_pending_bytes): the disk is slower than the "
                       "appends; retry later, raise the bounds or use a faster disk"};
    }
    lsn = next_lsn_++;
    encode_unsealed_record(lsn, type, 0, payload, pending_);
    wake = ++pending_records_ == 1;  // the thread sleeps only when nothing is pending
    stats_.appended_lsn = lsn;
  }
  if (wake) work_cv_.notify_one();
  return lsn;
}

Result<Lsn> Writer::append(std::uint8_t type, std::string_view payload) {
  return append(type, as_bytes(payload));
}

Result<Lsn> Writer::write_snapshot(std::span<const SnapshotRecord> records) {
  for (const SnapshotRecord& r : records) {
    if (r.type == 0 || r.type > kMaxUserType || r.payload.size() > options_.max_record_bytes) {
      return Error{Errc::kInvalidArgument,
                   "journal: a snapshot record has type " + std::to_string(r.type) + " and " +
                       std::to_string(r.payload.size()) + " bytes (types 1.." +
                       std::to_string(kMaxUserType) + ", at most max_record_bytes)"};
    }
  }
  // Encoded outside the lock with LSNs from 0; the LSNs are patched in under it.
  std::vector<std::byte> encoded;
  encode_unsealed_record(0, kTypeSnapshotBegin, 0, u64_payload(records.size()), encoded);
  for (const SnapshotRecord& r : records) {
    encode_unsealed_record(0, r.type, kFlagSnapshot, r.payload, encoded);
  }
  encode_unsealed_record(0, kTypeSnapshotEnd, 0, u64_payload(0), encoded);

  Lsn end = 0;
  bool wake = false;
  {
    std::lock_guard lk(mu_);
    if (error_) return error_;
    if (stop_) return Error{Errc::kClosed, "journal: the writer is closing"};
    const Lsn begin = next_lsn_;
    Lsn lsn = begin;
    std::size_t off = 0;
    while (off < encoded.size()) {
      std::byte* h = encoded.data() + off;
      store_u64(h + 8, lsn++);
      off += kRecordHeaderBytes + load_u32(h + 4);
    }
    store_u64(encoded.data() + encoded.size() - 8, begin);  // the end record names its begin
    end = lsn - 1;
    next_lsn_ = lsn;
    pending_.insert(pending_.end(), encoded.begin(), encoded.end());
    wake = pending_records_ == 0;
    pending_records_ += records.size() + 2;
    stats_.appended_lsn = end;
  }
  if (wake) work_cv_.notify_one();
  return end;
}

Status Writer::wait_durable(Lsn lsn, std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  if (lsn >= next_lsn_) {
    return {Errc::kInvalidArgument,
            "journal: LSN " + std::to_string(lsn) + " was not handed out by append()"};
  }
  const auto done = [&] { return durable_lsn_ >= lsn || !error_.ok(); };
  if (timeout >= std::chrono::hours(24 * 365)) {
    durable_cv_.wait(lk, done);
  } else if (!durable_cv_.wait_for(lk, timeout, done)) {
    return {Errc::kTimeout, "journal: LSN " + std::to_string(lsn) + " was not durable after " +
                                std::to_string(timeout.count()) + " ms (durable up to " +
                                std::to_string(durable_lsn_) + ")"};
  }
  if (durable_lsn_ >= lsn) return {};
  return error_;
}

void Writer::when_durable(Lsn lsn, std::function<void(const Status&)> done) {
  Status now;
  {
    std::lock_guard lk(mu_);
    if (durable_lsn_ >= lsn) {
      // durable: now is ok
    } else if (error_) {
      now = error_;
    } else if (lsn >= next_lsn_) {
      now = {Errc::kInvalidArgument,
             "journal: LSN " + std::to_string(lsn) + " was not handed out by append()"};
    } else {
      callbacks_.emplace(lsn, std::move(done));
      return;
    }
  }
  done(now);
}

Lsn Writer::durable_lsn() const {
  std::lock_guard lk(mu_);
  return durable_lsn_;
}

Health Writer::health() const {
  std::lock_guard lk(mu_);
  return {error_.ok(), error_, warning_};
}

WriterStats Writer::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

void Writer::run() {
  std::vector<std::byte> batch;
  for (;;) {
    Lsn last = 0;
    {
      std::unique_lock lk(mu_);
      work_cv_.wait(lk, [&] { return pending_records_ > 0 || stop_; });
      if (pending_records_ == 0) return;  // stopped, and everything is written
      batch.swap(pending_);               // pending_ gets the empty buffer back
      pending_records_ = 0;
      last = next_lsn_ - 1;
    }
    bool snapshot = false;
    std::uint64_t snapshot_seq = 0;
    if (Status s = write_batch(batch, snapshot, snapshot_seq)) {
      fail(std::move(s));
      return;
    }
    batch.clear();
    if (batch.capacity() > kKeepBufferBytes) batch.shrink_to_fit();
    // Before publishing: once a snapshot's end is durable, the history before it is gone.
    if (snapshot) delete_before(snapshot_seq);
    publish(last);
  }
}

Status Writer::write_batch(std::vector<std::byte>& batch, bool& snapshot_written,
                           std::uint64_t& snapshot_seq) {
  const std::span<std::byte> all(batch);
  std::size_t chunk = 0;  // start of what is not yet written
  bool in_snapshot = false;
  for (std::size_t off = 0; off < all.size();) {
    std::byte* h = all.data() + off;
    const std::size_t size = kRecordHeaderBytes + load_u32(h + 4);
    const Lsn lsn = load_u64(h + 8);
    const auto type = std::to_integer<std::uint8_t>(h[16]);
    seal_record(all.subspan(off, size));
    const std::uint64_t segment_bytes = segment_->size + (off - chunk);
    // A snapshot starts a segment of its own; other records go to the next segment once this
    // one is full (but a segment holds at least one record, and a snapshot is never split).
    const bool full = !in_snapshot && segment_bytes > kSegmentHeaderBytes &&
                      segment_bytes + size > options_.max_segment_bytes;
    if (type == kTypeSnapshotBegin || full) {
      // The old segment is synced before the new one exists: only the last segment can end in
      // a torn write.
      if (off > chunk) {
        if (Status s = flush_chunk(all.subspan(chunk, off - chunk))) return s;
      }
      if (Status s =
              sync_data(segment_->fd, options_.dir, segment_->path, options_.fault_injector)) {
        return s;
      }
      if (Status s = rotate(lsn)) return s;
      chunk = off;
      if (type == kTypeSnapshotBegin) {
        in_snapshot = true;
        snapshot_written = true;
        snapshot_seq = segment_->seq;
      }
    }
    if (type == kTypeSnapshotEnd) in_snapshot = false;
    off += size;
  }
  if (all.size() > chunk) {
    if (Status s = flush_chunk(all.subspan(chunk))) return s;
  }
  return sync_data(segment_->fd, options_.dir, segment_->path, options_.fault_injector);
}

Status Writer::flush_chunk(std::span<const std::byte> chunk) {
  // Counted even when the write fails part-way: recovery cuts what it left.
  Status s = write_all(segment_->fd, chunk, options_.dir, segment_->path, options_.fault_injector);
  if (s) return s;
  segment_->size += chunk.size();
  std::lock_guard lk(mu_);
  stats_.bytes += chunk.size();
  stats_.journal_bytes += chunk.size();
  return {};
}

Status Writer::rotate(Lsn first_lsn) {
  if (Status s = create_segment(next_seq_++, first_lsn)) return s;
  std::lock_guard lk(mu_);
  ++stats_.rotations;
  return {};
}

Status Writer::create_segment(std::uint64_t seq, Lsn first_lsn) {
  const std::string& dir = options_.dir;
  const std::string path = dir + "/" + segment_file_name(seq);
  const std::string tmp = path + ".tmp";
  if (options_.fault_injector) {
    if (const int err = options_.fault_injector(IoOp::kCreate, path)) {
      return os_error(err, dir, "cannot create " + path);
    }
  }
  auto seg = std::make_unique<Segment>();
  seg->fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  if (seg->fd < 0) return os_error(errno, dir, "cannot create " + tmp);
  std::vector<std::byte> header;
  encode_segment_header({seq, first_lsn}, header);
  Status s = write_all(seg->fd, header, dir, tmp, options_.fault_injector);
  if (!s) s = sync_data(seg->fd, dir, tmp, options_.fault_injector);
  if (!s && ::rename(tmp.c_str(), path.c_str()) != 0) {
    s = os_error(errno, dir, "cannot rename " + tmp);
  }
  if (!s) s = sync_dir(dir_fd_, dir);
  if (s) {
    ::unlink(tmp.c_str());  // best effort: the next open removes it too
    return s;
  }
  seg->seq = seq;
  seg->path = path;
  seg->size = header.size();
  segment_ = std::move(seg);
  std::lock_guard lk(mu_);
  ++stats_.segments;
  stats_.journal_bytes += header.size();
  stats_.bytes += header.size();
  return {};
}

void Writer::delete_before(std::uint64_t seq) {
  // The snapshot's end is durable: the segments before it are history. Oldest first, so that
  // what a crash leaves is still a run of consecutive segments.
  auto listed = list_segments(options_.dir);
  Error problem;
  std::uint64_t deleted = 0, freed = 0;
  if (!listed) {
    problem = listed.error();
  } else {
    for (const SegmentFile& f : *listed) {
      if (f.seq >= seq) break;
      std::error_code ec;
      const auto size = std::filesystem::file_size(f.path, ec);
      if (::unlink(f.path.c_str()) != 0) {
        problem = os_error(errno, options_.dir, "cannot delete the compacted segment " + f.path);
        break;
      }
      ++deleted;
      if (!ec) freed += size;
    }
    if (deleted > 0 && !problem) problem = sync_dir(dir_fd_, options_.dir);
  }
  {
    std::lock_guard lk(mu_);
    ++stats_.snapshots;
    stats_.segments_deleted += deleted;
    stats_.segments -= std::min(stats_.segments, deleted);
    stats_.journal_bytes -= std::min(stats_.journal_bytes, freed);
    if (problem) warning_ = problem.message;
  }
  if (problem && options_.on_error) options_.on_error(problem);
}

void Writer::publish(Lsn durable) {
  std::vector<std::function<void(const Status&)>> ready;
  {
    std::lock_guard lk(mu_);
    stats_.records += durable - durable_lsn_;
    durable_lsn_ = durable;
    stats_.durable_lsn = durable;
    ++stats_.batches;
    const auto upto = callbacks_.upper_bound(durable);
    for (auto it = callbacks_.begin(); it != upto; ++it) ready.push_back(std::move(it->second));
    callbacks_.erase(callbacks_.begin(), upto);
  }
  durable_cv_.notify_all();
  if (options_.on_durable) options_.on_durable(durable);
  const Status ok;
  for (auto& done : ready) done(ok);
}

void Writer::fail(Error error) {
  std::vector<std::function<void(const Status&)>> failed;
  {
    std::lock_guard lk(mu_);
    error_ = error;
    pending_.clear();
    pending_records_ = 0;
    for (auto& [lsn, done] : callbacks_) failed.push_back(std::move(done));
    callbacks_.clear();
  }
  durable_cv_.notify_all();
  if (options_.on_error) options_.on_error(error);
  for (auto& done : failed) done(error);
}

}  // namespace shmsched::journal
