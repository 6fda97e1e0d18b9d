#include "execution_journal.h"

#include <absl/container/flat_hash_map.h>
#include <msgpack.hpp>

#include <cstring>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <unordered_map>

namespace shmsched::daemon {

namespace {

using journal::Lsn;

using Packer = msgpack::packer<msgpack::sbuffer>;

std::vector<std::byte> bytes_of(const msgpack::sbuffer& b) {
  const auto* p = reinterpret_cast<const std::byte*>(b.data());
  return std::vector<std::byte>(p, p + b.size());
}

void pack_bin(Packer& pk, std::span<const std::byte> data) {
  pk.pack_bin(static_cast<std::uint32_t>(data.size()));
  pk.pack_bin_body(reinterpret_cast<const char*>(data.data()),
                   static_cast<std::uint32_t>(data.size()));
}

void pack_str(Packer& pk, std::string_view s) {
  pk.pack_str(static_cast<std::uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<std::uint32_t>(s.size()));
}

std::vector<std::byte> accepted_body(std::string_view id, std::string_view user, Priority priority,
                                     std::int64_t enqueued_at_ns, std::uint32_t attempt,
                                     std::uint32_t timeout_seconds,
                                     std::span<const std::byte> payload,
                                     std::span<const std::byte> extras) {
  msgpack::sbuffer b(96 + id.size() + user.size() + payload.size() + extras.size());
  Packer pk(b);
  pk.pack_array(8);
  pack_str(pk, id);
  pack_str(pk, user);
  pk.pack(static_cast<std::uint32_t>(priority_index(priority)));
  pk.pack(enqueued_at_ns);
  pk.pack(attempt);
  pk.pack(timeout_seconds);
  pack_bin(pk, payload);
  pack_bin(pk, extras);
  return bytes_of(b);
}

// Reading a record back: a CRC-checked record that does not decode is a bug or a journal from
// an incompatible version, never silently skipped.
[[noreturn]] void bad_record(const journal::Record& r, const std::string& why) {
  throw std::runtime_error("journal record at LSN " + std::to_string(r.lsn) + " (type " +
                           std::to_string(r.type) + ") does not decode: " + why);
}

std::string str_of(const journal::Record& r, const msgpack::object& o) {
  if (o.type != msgpack::type::STR) bad_record(r, "a string was expected");
  return std::string(o.via.str.ptr, o.via.str.size);
}

std::uint64_t uint_of(const journal::Record& r, const msgpack::object& o) {
  if (o.type != msgpack::type::POSITIVE_INTEGER) bad_record(r, "an unsigned integer was expected");
  return o.via.u64;
}

std::int64_t int_of(const journal::Record& r, const msgpack::object& o) {
  if (o.type == msgpack::type::POSITIVE_INTEGER) return static_cast<std::int64_t>(o.via.u64);
  if (o.type == msgpack::type::NEGATIVE_INTEGER) return o.via.i64;
  bad_record(r, "an integer was expected");
}

std::vector<std::byte> bin_of(const journal::Record& r, const msgpack::object& o) {
  if (o.type != msgpack::type::BIN) bad_record(r, "bytes were expected");
  const auto* p = reinterpret_cast<const std::byte*>(o.via.bin.ptr);
  return std::vector<std::byte>(p, p + o.via.bin.size);
}

// About how many records the journal's files hold, from their size (an accepted record with a
// short id and a small payload takes some 100 bytes), for the replay's reservations. A low
// estimate only lets the tables grow as they would have; a high one makes the id index larger
// than it needs to be, and every probe into it a likelier cache miss.
std::size_t records_estimate(const std::string& dir) {
  std::error_code ec;
  std::uint64_t bytes = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    std::error_code size_ec;
    if (!e.is_regular_file(size_ec)) continue;
    const std::uint64_t size = e.file_size(size_ec);
    if (!size_ec) bytes += size;
  }
  return static_cast<std::size_t>(std::min<std::uint64_t>(bytes / 96, 1ULL << 24));
}

// The live set while the journal is replayed.
class Replay {
 public:
  // Room for `records` executions up front (a million of them would otherwise be moved each
  // time the vector doubles, and the index rehashed as often).
  void reserve(std::size_t records) {
    order_.reserve(records);
    live_.reserve(records);
    by_id_.reserve(records);
  }

  void apply(const journal::Record& r) {
    // One zone for every record (a million records, not a million allocations of one).
    zone_.clear();
    msgpack::object o;
    try {
      o = msgpack::unpack(zone_, reinterpret_cast<const char*>(r.payload.data()), r.payload.size());
    } catch (const std::exception& e) {
      bad_record(r, e.what());
    }
    if (o.type != msgpack::type::ARRAY || o.via.array.size == 0) bad_record(r, "not an array");
    const msgpack::object* f = o.via.array.ptr;
    const std::size_t n = o.via.array.size;
    switch (r.type) {
      case ExecutionJournal::kAccepted: {
        if (n != 8) bad_record(r, "an accepted record has 8 fields");
        JournaledExecution e;
        e.execution_id = str_of(r, f[0]);
        e.user_id = str_of(r, f[1]);
        const auto level = uint_of(r, f[2]);
        if (level >= kPriorityLevels) bad_record(r, "priority out of range");
        e.priority = static_cast<Priority>(level);
        e.enqueued_at_ns = int_of(r, f[3]);
        e.attempt = static_cast<std::uint32_t>(uint_of(r, f[4]));
        e.timeout_seconds = static_cast<std::uint32_t>(uint_of(r, f[5]));
        e.payload = bin_of(r, f[6]);
        e.extras = bin_of(r, f[7]);
        e.accepted_lsn = r.lsn;
        auto it = by_id_.find(e.execution_id);
        if (it != by_id_.end()) {
          // Recorded again (a supervisor that died between recording and moving its announce
          // cursor announces again; a snapshot restates it): keep its place and what it knew.
          JournaledExecution& have = order_[it->second];
          e.accepted_lsn = have.accepted_lsn;
          e.dispatched = e.dispatched || have.dispatched;
          e.attempt = std::max(e.attempt, have.attempt);
          have = std::move(e);
          return;
        }
        by_id_.emplace(e.execution_id, order_.size());
        order_.push_back(std::move(e));
        live_.push_back(1);
        return;
      }
      case ExecutionJournal::kDispatched: {
        if (n != 2) bad_record(r, "a dispatched record has 2 fields");
        auto it = by_id_.find(str_of(r, f[0]));
        if (it == by_id_.end()) return;  // finished meanwhile, or accepted before a snapshot
        JournaledExecution& e = order_[it->second];
        e.dispatched = true;
        e.attempt = std::max(e.attempt, static_cast<std::uint32_t>(uint_of(r, f[1])));
        return;
      }
      case ExecutionJournal::kFinished: {
        if (n != 1) bad_record(r, "a finished record has 1 field");
        auto it = by_id_.find(str_of(r, f[0]));
        if (it == by_id_.end()) return;
        // Its place stays (records come in LSN order: the vector is the acceptance order).
        live_[it->second] = 0;
        order_[it->second] = JournaledExecution{};
        by_id_.erase(it);
        return;
      }
      default:
        bad_record(r, "unknown record type (a journal written by a newer shmschedd?)");
    }
  }

  std::vector<JournaledExecution> take() {
    // Compacted in place: the live ones, in acceptance order, without a second vector.
    by_id_ = {};
    std::size_t kept = 0;
    for (std::size_t i = 0; i < order_.size(); ++i) {
      if (!live_[i]) continue;
      if (kept != i) order_[kept] = std::move(order_[i]);
      ++kept;
    }
    order_.resize(kept);
    live_ = {};
    return std::move(order_);
  }

 private:
  msgpack::zone zone_;
  std::vector<JournaledExecution> order_;  // in acceptance (LSN) order
  std::vector<char> live_;                 // not finished since
  absl::flat_hash_map<std::string, std::size_t> by_id_;
};

}  // namespace

std::unique_ptr<ExecutionJournal> ExecutionJournal::open(const Options& options,
                                                         std::vector<JournaledExecution>& live) {
  journal::WriterOptions wo;
  wo.dir = options.dir;
  wo.salvage = options.salvage;
  wo.max_record_bytes = options.max_record_bytes;
  // The loop never waits for the disk and never drops a record: what a stalled disk holds up
  // waits in memory, up to a bound that is a failure of the journal (not a dropped record).
  wo.max_pending_bytes =
      std::max<std::size_t>(options.max_pending_bytes, 4ull * options.max_record_bytes);
  wo.max_pending_records = std::max<std::size_t>(wo.max_pending_records, wo.max_pending_bytes / 64);
  wo.on_error = options.on_error;
  Replay replay;
  replay.reserve(records_estimate(options.dir));
  // What the journal holds, counted as append() and write_snapshot() count: the snapshot it
  // starts from (if any) and what came after it. A start is no reason for a snapshot.
  std::uint64_t snapshot_bytes = 0, since_snapshot = 0;
  auto writer = journal::Writer::open(std::move(wo), [&](const journal::Record& r) {
    (r.in_snapshot() ? snapshot_bytes : since_snapshot) += r.payload.size() + 32;
    replay.apply(r);
  });
  if (!writer) {
    std::string message = "journal_dir " + options.dir + ": " + writer.error().message;
    if (writer.error().code == journal::Errc::kCorrupt && !options.salvage) {
      message +=
          ". Start once with --journal-salvage=true to keep the records before the damage (the "
          "rest is set aside in the directory, not deleted)";
    }
    throw std::runtime_error(message);
  }
  live = replay.take();
  std::unique_ptr<ExecutionJournal> j(new ExecutionJournal(options.dir, std::move(*writer)));
  j->bytes_since_snapshot_ = since_snapshot;
  j->last_snapshot_bytes_ = snapshot_bytes;
  j->snapshot_min_bytes_ = options.snapshot_min_bytes;
  return j;
}

journal::Result<Lsn> ExecutionJournal::append(std::uint8_t type,
                                              const std::vector<std::byte>& body) {
  if (has_failed_.load(std::memory_order_acquire)) {
    std::lock_guard lock(failed_mutex_);
    return failed_;
  }
  auto lsn = writer_->append(type, body);
  if (lsn) {
    appended_ = *lsn;
    bytes_since_snapshot_ += body.size() + 32;
    return lsn;
  }
  journal::Error e = lsn.error();
  if (e.code == journal::Errc::kQueueFull) e.message = "the disk fell behind: " + e.message;
  fail(e);
  return e;
}

void ExecutionJournal::fail(journal::Error error) {
  std::lock_guard lock(failed_mutex_);
  if (!failed_.ok()) return;
  failed_ = std::move(error);
  has_failed_.store(true, std::memory_order_release);
}

journal::Health ExecutionJournal::health() const {
  journal::Health h = writer_->health();
  if (h.ok && has_failed_.load(std::memory_order_acquire)) {
    std::lock_guard lock(failed_mutex_);
    h.ok = false;
    h.error = failed_;
  }
  return h;
}

journal::Result<Lsn> ExecutionJournal::accepted(const ipc::ExecutionView& v) {
  return append(kAccepted, accepted_body(v.execution_id, v.user_id, v.priority, v.enqueued_at_ns,
                                         v.attempt, v.timeout_seconds, v.payload, v.extras));
}

journal::Result<Lsn> ExecutionJournal::accepted(const JournaledExecution& e) {
  return append(kAccepted, accepted_body(e.execution_id, e.user_id, e.priority, e.enqueued_at_ns,
                                         e.attempt, e.timeout_seconds, e.payload, e.extras));
}

journal::Result<Lsn> ExecutionJournal::dispatched(std::string_view execution_id,
                                                  std::uint32_t attempt) {
  msgpack::sbuffer b;
  Packer pk(b);
  pk.pack_array(2);
  pack_str(pk, execution_id);
  pk.pack(attempt);
  return append(kDispatched, bytes_of(b));
}

journal::Result<Lsn> ExecutionJournal::finished(std::string_view execution_id) {
  msgpack::sbuffer b;
  Packer pk(b);
  pk.pack_array(1);
  pack_str(pk, execution_id);
  return append(kFinished, bytes_of(b));
}

void ExecutionJournal::snapshot_records(const JournaledExecution& e,
                                        std::vector<journal::SnapshotRecord>& out) {
  out.push_back({kAccepted, accepted_body(e.execution_id, e.user_id, e.priority, e.enqueued_at_ns,
                                          e.attempt, e.timeout_seconds, e.payload, e.extras)});
  if (e.dispatched) {
    msgpack::sbuffer b;
    Packer pk(b);
    pk.pack_array(2);
    pack_str(pk, e.execution_id);
    pk.pack(e.attempt);
    out.push_back({kDispatched, bytes_of(b)});
  }
}

journal::Result<Lsn> ExecutionJournal::write_snapshot(
    std::span<const journal::SnapshotRecord> records) {
  auto lsn = writer_->write_snapshot(records);
  if (lsn) {
    appended_ = *lsn;
    bytes_since_snapshot_ = 0;
    last_snapshot_bytes_ = 0;
    for (const auto& r : records) last_snapshot_bytes_ += r.payload.size() + 32;
  }
  return lsn;
}

bool ExecutionJournal::snapshot_due() const {
  // The journal follows the live state, not the history: at most about three times the last
  // snapshot, and at least snapshot_min_bytes between snapshots (each one rewrites every live
  // payload, on the loop).
  return bytes_since_snapshot_ > std::max(snapshot_min_bytes_, 2 * last_snapshot_bytes_);
}

}  // namespace shmsched::daemon
