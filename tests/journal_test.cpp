// The write-ahead journal against real files in a scratch directory: CRC32C, the codec, the
// writer (round trip, group commit from many threads, rotation, snapshots and compaction, a full
// queue, sticky disk errors), and recovery (every truncation and every bit flip of a small
// journal, salvage). The full and read-only directories use a real tmpfs when the test may mount
// one, and an injected fault otherwise.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "shmsched/journal/codec.h"
#include "shmsched/journal/crc32c.h"
#include "shmsched/journal/reader.h"
#include "shmsched/journal/writer.h"
#include "tmpfs_mount.h"

namespace shmsched::journal {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    static int counter = 0;
    path_ = "/tmp/shmsched-journal-" + tag + "-" + std::to_string(::getpid()) + "-" +
            std::to_string(counter++);
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::span<const std::byte> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

struct Rec {
  Lsn lsn = 0;
  std::uint8_t type = 0;
  bool snapshot = false;
  std::string payload;
  bool operator==(const Rec&) const = default;
};

struct Recovered {
  Result<RecoveryReport> report = Error{};
  std::vector<Rec> records;
};

Recovered recover_all(const std::string& dir, bool repair = true, bool salvage = false) {
  Recovered out;
  RecoverOptions o;
  o.dir = dir;
  o.repair = repair;
  o.salvage = salvage;
  out.report = recover(o, [&](const Record& r) {
    out.records.push_back(
        {r.lsn, r.type, r.in_snapshot(),
         std::string(reinterpret_cast<const char*>(r.payload.data()), r.payload.size())});
  });
  return out;
}

WriterOptions options(const std::string& dir) {
  WriterOptions o;
  o.dir = dir;
  return o;
}

std::unique_ptr<Writer> open_writer(WriterOptions o, const RecordVisitor& visit = nullptr) {
  auto w = Writer::open(std::move(o), visit);
  EXPECT_TRUE(w.ok()) << w.error().message;
  return w.ok() ? std::move(*w) : nullptr;
}

std::vector<std::string> segment_names(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (parse_segment_file_name(name)) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

using Files = std::vector<std::pair<std::string, std::vector<std::byte>>>;

Files load_files(const std::string& dir) {
  Files files;
  for (const auto& name : segment_names(dir)) {
    std::ifstream in(dir + "/" + name, std::ios::binary);
    std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> b(s.size());
    std::memcpy(b.data(), s.data(), s.size());
    files.emplace_back(name, std::move(b));
  }
  return files;
}

void store_files(const std::string& dir, const Files& files) {
  for (const auto& e : fs::directory_iterator(dir)) fs::remove_all(e.path());
  for (const auto& [name, bytes] : files) {
    std::ofstream out(dir + "/" + name, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
  }
}

// ---------------------------------------------------------------------------------------------

TEST(Crc32c, StandardVectorBothImplementations) {
  const std::string check = "123456789";
  EXPECT_EQ(crc32c_portable(bytes_of(check)), 0xE3069283u);
  EXPECT_EQ(crc32c(bytes_of(check)), 0xE3069283u);
  if (crc32c_hardware_available()) {
    EXPECT_EQ(crc32c_hardware(bytes_of(check)), 0xE3069283u);
  }
  // RFC 3720 B.4: 32 bytes of zeros, and of 0xFF.
  const std::vector<std::byte> zeros(32, std::byte{0}), ones(32, std::byte{0xFF});
  EXPECT_EQ(crc32c_portable(zeros), 0x8A9136AAu);
  EXPECT_EQ(crc32c_portable(ones), 0x62A8AB43u);
}

TEST(Crc32c, ImplementationsAgreeAndExtend) {
  std::mt19937 rng(7);
  std::vector<std::byte> data(1000);
  for (auto& b : data) b = static_cast<std::byte>(rng());
  for (std::size_t n : {0u, 1u, 7u, 8u, 9u, 63u, 64u, 999u, 1000u}) {
    const std::span<const std::byte> s(data.data(), n);
    const auto whole = crc32c_portable(s);
    EXPECT_EQ(crc32c_hardware(s), whole) << n;
    EXPECT_EQ(crc32c(s.subspan(n / 3), crc32c(s.first(n / 3))), whole) << n;
  }
}

TEST(Codec, RecordsAndNames) {
  std::vector<std::byte> seg;
  encode_segment_header({5, 100}, seg);
  encode_record(100, 1, 0, bytes_of("hello"), seg);
  encode_record(101, 2, kFlagSnapshot, {}, seg);
  const auto scan = scan_segment(seg);
  ASSERT_TRUE(scan.header);
  EXPECT_EQ(scan.header->seq, 5u);
  EXPECT_EQ(scan.tail, SegmentScan::Tail::kClean);
  ASSERT_EQ(scan.records.size(), 2u);
  EXPECT_EQ(scan.records[0].lsn, 100u);
  EXPECT_EQ(scan.records[0].payload.size(), 5u);
  EXPECT_TRUE(scan.records[1].in_snapshot());
  EXPECT_EQ(segment_file_name(0x1f), "journal-000000000000001f.wal");
  EXPECT_EQ(parse_segment_file_name("journal-000000000000001f.wal"), 0x1fu);
  EXPECT_FALSE(parse_segment_file_name("journal-000000000000001F.wal"));
  EXPECT_FALSE(parse_segment_file_name("journal-000000000000001f.wal.tmp"));
}

TEST(Writer, RoundTripAndReopen) {
  TempDir dir("roundtrip");
  std::vector<Rec> appended;
  {
    auto w = open_writer(options(dir.path()));
    ASSERT_TRUE(w);
    for (int i = 0; i < 50; ++i) {
      const std::string payload(static_cast<std::size_t>(i * 37 % 300),
                                static_cast<char>('a' + i % 26));
      const auto type = static_cast<std::uint8_t>(1 + i % 5);
      auto lsn = w->append(type, payload);
      ASSERT_TRUE(lsn) << lsn.error().message;
      EXPECT_EQ(*lsn, static_cast<Lsn>(i + 1));
      appended.push_back({*lsn, type, false, payload});
    }
    EXPECT_TRUE(w->wait_durable(50).ok());
    EXPECT_EQ(w->durable_lsn(), 50u);
    EXPECT_EQ(w->stats().records, 50u);
    EXPECT_TRUE(w->health().ok);
  }
  auto rec = recover_all(dir.path());
  ASSERT_TRUE(rec.report) << rec.report.error().message;
  EXPECT_EQ(rec.records, appended);
  EXPECT_EQ(rec.report->torn_bytes, 0u);

  // A new writer recovers the same records and goes on after them.
  std::vector<Rec> seen;
  auto w = open_writer(options(dir.path()), [&](const Record& r) {
    seen.push_back(
        {r.lsn, r.type, r.in_snapshot(),
         std::string(reinterpret_cast<const char*>(r.payload.data()), r.payload.size())});
  });
  ASSERT_TRUE(w);
  EXPECT_EQ(seen, appended);
  auto lsn = w->append(9, std::string_view("after"));
  ASSERT_TRUE(lsn);
  EXPECT_EQ(*lsn, 51u);
  EXPECT_TRUE(w->wait_durable(*lsn).ok());

  // The directory is locked while a writer has it.
  auto second = Writer::open(options(dir.path()));
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error().code, Errc::kLocked);
  EXPECT_THAT(second.error().message, HasSubstr(dir.path()));

  // Bad arguments are refused with a reason.
  EXPECT_EQ(w->append(0, std::string_view("x")).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(w->append(kTypeSnapshotBegin, std::string_view("x")).error().code,
            Errc::kInvalidArgument);
  EXPECT_EQ(w->append(1, std::string(2u << 20, 'x')).error().code, Errc::kTooLarge);
}

TEST(Writer, GroupCommitFromManyThreads) {
  TempDir dir("group");
  constexpr int kThreads = 8;
  constexpr int kPerThread = 150;
  std::mutex mu;
  std::vector<Lsn> durable_seen;
  std::map<Lsn, std::string> waited;
  std::atomic<int> callbacks{0};
  {
    auto o = options(dir.path());
    o.on_durable = [&](Lsn d) {
      std::lock_guard lk(mu);
      durable_seen.push_back(d);
    };
    auto w = open_writer(std::move(o));
    ASSERT_TRUE(w);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kPerThread; ++i) {
          const std::string payload = "t" + std::to_string(t) + "-" + std::to_string(i);
          auto lsn = w->append(1, payload);
          ASSERT_TRUE(lsn) << lsn.error().message;
          if (i % 2 == 0) {
            ASSERT_TRUE(w->wait_durable(*lsn).ok());
            EXPECT_GE(w->durable_lsn(), *lsn);
          } else {
            w->when_durable(*lsn, [&](const Status& s) {
              EXPECT_TRUE(s.ok()) << s.message;
              callbacks.fetch_add(1);
            });
          }
          std::lock_guard lk(mu);
          waited[*lsn] = payload;
        }
      });
    }
    for (auto& t : threads) t.join();
    ASSERT_TRUE(w->wait_durable(kThreads * kPerThread).ok());
    const auto stats = w->stats();
    EXPECT_EQ(stats.durable_lsn, static_cast<Lsn>(kThreads * kPerThread));
    // Group commit: fewer syncs than records (the threads wait on each other's batches).
    EXPECT_LT(stats.batches, static_cast<std::uint64_t>(kThreads * kPerThread));
    std::printf("group commit: %d records in %llu batches\n", kThreads * kPerThread,
                static_cast<unsigned long long>(stats.batches));
  }
  EXPECT_EQ(callbacks.load(), kThreads * kPerThread / 2);
  ASSERT_FALSE(durable_seen.empty());
  for (std::size_t i = 1; i < durable_seen.size(); ++i)
    EXPECT_GT(durable_seen[i], durable_seen[i - 1]);
  auto rec = recover_all(dir.path());
  ASSERT_TRUE(rec.report) << rec.report.error().message;
  ASSERT_EQ(rec.records.size(), waited.size());
  for (const Rec& r : rec.records) EXPECT_EQ(waited.at(r.lsn), r.payload);
}

TEST(Writer, RotatesSegmentsBySize) {
  TempDir dir("rotate");
  std::vector<Rec> appended;
  {
    auto o = options(dir.path());
    o.max_segment_bytes = 1024;
    auto w = open_writer(std::move(o));
    ASSERT_TRUE(w);
    for (int i = 0; i < 100; ++i) {
      const std::string payload(100, static_cast<char>('A' + i % 26));
      auto lsn = w->append(2, payload);
      ASSERT_TRUE(lsn);
      appended.push_back({*lsn, 2, false, payload});
      if (i % 10 == 9) {
        ASSERT_TRUE(w->wait_durable(*lsn).ok());
      }
    }
    ASSERT_TRUE(w->wait_durable(100).ok());
    EXPECT_GT(w->stats().rotations, 8u);
  }
  const auto names = segment_names(dir.path());
  EXPECT_GT(names.size(), 9u);
  for (const auto& n : names) EXPECT_LE(fs::file_size(dir.path() + "/" + n), 1024u);
  auto rec = recover_all(dir.path());
  ASSERT_TRUE(rec.report) << rec.report.error().message;
  EXPECT_EQ(rec.records, appended);
  EXPECT_EQ(rec.report->segments, names.size());
}

TEST(Writer, SnapshotDeletesOlderSegments) {
  TempDir dir("snapshot");
  Files before_snapshot;
  std::string snapshot_segment;
  {
    auto o = options(dir.path());
    o.max_segment_bytes = 512;
    auto w = open_writer(std::move(o));
    ASSERT_TRUE(w);
    for (int i = 0; i < 40; ++i) ASSERT_TRUE(w->append(1, std::string(60, 'h')));
    ASSERT_TRUE(w->wait_durable(40).ok());
    EXPECT_GT(segment_names(dir.path()).size(), 4u);
    before_snapshot = load_files(dir.path());

    std::vector<SnapshotRecord> live(3);
    for (int i = 0; i < 3; ++i) {
      live[i].type = 7;
      const std::string p = "live-" + std::to_string(i);
      live[i].payload.assign(bytes_of(p).begin(), bytes_of(p).end());
    }
    auto end = w->write_snapshot(live);
    ASSERT_TRUE(end) << end.error().message;
    EXPECT_EQ(*end, 45u);  // begin 41, records 42..44, end 45
    auto after = w->append(3, std::string_view("after"));
    ASSERT_TRUE(after);
    ASSERT_TRUE(w->wait_durable(*after).ok());
    const auto names = segment_names(dir.path());
    ASSERT_EQ(names.size(), 1u);  // the older segments are gone; the snapshot's holds "after"
    snapshot_segment = names[0];
    const auto stats = w->stats();
    EXPECT_EQ(stats.segments, 1u);
    EXPECT_EQ(stats.snapshots, 1u);
    EXPECT_GE(stats.segments_deleted, 4u);
  }
  auto rec = recover_all(dir.path());
  ASSERT_TRUE(rec.report) << rec.report.error().message;
  const std::vector<Rec> want = {{42, 7, true, "live-0"},
                                 {43, 7, true, "live-1"},
                                 {44, 7, true, "live-2"},
                                 {46, 3, false, "after"}};
  EXPECT_EQ(rec.records, want);
  EXPECT_EQ(rec.report->snapshot_lsn, 41u);
  EXPECT_EQ(rec.report->snapshot_records, 3u);

  // A crash while the snapshot was written: its segment without the end record, the older
  // segments still there. Recovery drops the unfinished snapshot and reads the history.
  Files crashed = before_snapshot;
  auto snap = load_files(dir.path())[0].second;
  snap.resize(kSegmentHeaderBytes + 2 * (kRecordHeaderBytes + 8) + 3);  // inside the 2nd record
  crashed.emplace_back(snapshot_segment, snap);
  store_files(dir.path(), crashed);
  auto again = recover_all(dir.path());
  ASSERT_TRUE(again.report) << again.report.error().message;
  EXPECT_EQ(again.records.size(), 40u);
  EXPECT_THAT(again.report->incomplete_snapshot_file, HasSubstr(snapshot_segment));
  EXPECT_FALSE(fs::exists(dir.path() + "/" + snapshot_segment));
  auto w = open_writer(options(dir.path()));
  ASSERT_TRUE(w);
  auto lsn = w->append(1, std::string_view("next"));
  ASSERT_TRUE(lsn);
  EXPECT_EQ(*lsn, 41u);  // the unfinished snapshot's LSNs were never durable
}

TEST(Writer, QueueFullIsAnErrorAtOnce) {
  TempDir dir("full-queue");
  std::mutex mu;
  std::condition_variable cv;
  bool writing = false, release = false;
  auto o = options(dir.path());
  o.max_pending_records = 4;
  o.fault_injector = [&](IoOp op, const std::string& path) {
    if (op != IoOp::kWrite || path.ends_with(".tmp")) return 0;  // not a new segment's header
    std::unique_lock lk(mu);
    writing = true;
    cv.notify_all();
    cv.wait(lk, [&] { return release; });
    return 0;
  };
  auto w = open_writer(std::move(o));
  ASSERT_TRUE(w);
  ASSERT_TRUE(w->append(1, std::string_view("first")));
  {
    std::unique_lock lk(mu);
    cv.wait(lk, [&] { return writing; });  // the thread holds "first" and is stuck in write()
  }
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(w->append(1, std::string_view("queued")));
  auto refused = w->append(1, std::string_view("one too many"));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, Errc::kQueueFull);
  EXPECT_THAT(refused.error().message, HasSubstr("max_pending_records"));
  EXPECT_EQ(w->stats().queue_full, 1u);
  {
    std::lock_guard lk(mu);
    release = true;
  }
  cv.notify_all();
  EXPECT_TRUE(w->wait_durable(5).ok());
  EXPECT_TRUE(w->append(1, std::string_view("room again")));
}

TEST(Writer, DiskErrorsAreStickyValues) {
  TempDir dir("eio");
  std::atomic<int> inject{0};
  std::atomic<int> on_error_calls{0};
  auto o = options(dir.path());
  o.fault_injector = [&](IoOp op, const std::string&) {
    return op == IoOp::kSync ? inject.load() : 0;
  };
  o.on_error = [&](const Error&) { on_error_calls.fetch_add(1); };
  auto w = open_writer(std::move(o));
  ASSERT_TRUE(w);
  ASSERT_TRUE(w->append(1, std::string_view("kept")));
  ASSERT_TRUE(w->wait_durable(1).ok());
  inject = EIO;
  auto lsn = w->append(1, std::string_view("lost"));
  ASSERT_TRUE(lsn);
  Status callback_status;
  std::atomic<bool> called{false};
  const Status s = w->wait_durable(*lsn);
  w->when_durable(*lsn, [&](const Status& st) {
    callback_status = st;
    called = true;
  });
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code, Errc::kIo);
  EXPECT_THAT(s.message, HasSubstr(dir.path()));
  EXPECT_THAT(s.message, HasSubstr("EIO"));
  EXPECT_TRUE(called.load());
  EXPECT_EQ(callback_status.code, Errc::kIo);
  auto later = w->append(1, std::string_view("refused"));
  ASSERT_FALSE(later);
  EXPECT_EQ(later.error().code, Errc::kIo);  // sticky: the same error, at once
  const Health h = w->health();
  EXPECT_FALSE(h.ok);
  EXPECT_EQ(h.error.code, Errc::kIo);
  EXPECT_EQ(w->durable_lsn(), 1u);
  w.reset();
  EXPECT_EQ(on_error_calls.load(), 1);
  // What was durable survives; a new writer opens (the sync failed, the write may be there).
  auto rec = recover_all(dir.path());
  ASSERT_TRUE(rec.report) << rec.report.error().message;
  ASSERT_GE(rec.records.size(), 1u);
  EXPECT_EQ(rec.records[0].payload, "kept");
  EXPECT_TRUE(open_writer(options(dir.path())));
}

// Records a writer wrote and never synced (it was killed between its write and its fdatasync)
// are in the page cache, and a new writer reads them back: it syncs them before it calls them
// durable, since a supervisor answers durable submits from that LSN. Before the fix, the new writer
// reported them durable without any sync.
TEST(Writer, AReopenedJournalSyncsWhatTheLastWriterLeftUnsynced) {
  TempDir dir("unsynced");
  {
    auto o = options(dir.path());
    o.fault_injector = [](IoOp op, const std::string& path) {
      return op == IoOp::kSync && !path.ends_with(".tmp") ? EIO : 0;  // written, never synced
    };
    auto w = open_writer(std::move(o));
    ASSERT_TRUE(w);
    ASSERT_TRUE(w->append(1, std::string_view("written, not synced")));
    ASSERT_FALSE(w->wait_durable(1).ok());
  }
  std::mutex mu;  // the writer's thread calls the injector too once open() has returned
  std::vector<std::pair<IoOp, std::string>> io;
  auto o = options(dir.path());
  o.fault_injector = [&](IoOp op, const std::string& path) {
    std::lock_guard lock(mu);
    io.emplace_back(op, path);
    return 0;
  };
  auto w = open_writer(std::move(o));
  ASSERT_TRUE(w);
  ASSERT_EQ(w->durable_lsn(), 1u) << "the record was not read back";
  const auto names = segment_names(dir.path());
  ASSERT_FALSE(names.empty());
  std::lock_guard lock(mu);
  const bool synced = std::any_of(io.begin(), io.end(), [&](const auto& e) {
    return e.first == IoOp::kSync && e.second.ends_with(names.back());
  });
  EXPECT_TRUE(synced) << "the record is called durable without a sync since it was written";
}

TEST(Writer, InjectedReadOnlyAndFullDisk) {
  for (const int err : {EROFS, ENOSPC}) {
    TempDir dir("inject");
    auto o = options(dir.path());
    o.max_segment_bytes = 200;
    std::atomic<int> inject{0};
    o.fault_injector = [&](IoOp op, const std::string&) {
      return op == IoOp::kCreate ? inject.load() : 0;
    };
    auto w = open_writer(std::move(o));
    ASSERT_TRUE(w);
    inject = err;
    Status s;
    for (int i = 0; i < 20 && s.ok(); ++i) {
      auto lsn = w->append(1, std::string(100, 'x'));
      s = lsn ? w->wait_durable(*lsn) : lsn.error();
    }
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.code, err == EROFS ? Errc::kReadOnly : Errc::kNoSpace);
    EXPECT_THAT(s.message, HasSubstr(err == EROFS ? "read-only" : "is full"));
    EXPECT_THAT(s.message, HasSubstr("journal_dir"));
  }
}

TEST(Writer, FullTmpfs) {
  TempDir dir("tmpfs-full");
  test::Tmpfs fs_(dir.path(), 256 << 10);
  if (!fs_.mounted()) GTEST_SKIP() << fs_.why() << "; Writer.InjectedReadOnlyAndFullDisk covers it";
  const std::string jdir = dir.path() + "/journal";
  auto o = options(jdir);
  o.max_segment_bytes = 64 << 10;
  auto w = open_writer(std::move(o));
  ASSERT_TRUE(w);
  Status s;
  Lsn durable = 0;
  for (int i = 0; i < 200 && s.ok(); ++i) {
    auto lsn = w->append(1, std::string(4000, static_cast<char>('a' + i % 26)));
    s = lsn ? w->wait_durable(*lsn) : lsn.error();
    if (s.ok()) durable = *lsn;
  }
  ASSERT_FALSE(s.ok()) << "256 KiB took 800 KB";
  EXPECT_EQ(s.code, Errc::kNoSpace) << s.message;
  EXPECT_THAT(s.message, HasSubstr("ENOSPC"));
  EXPECT_THAT(s.message, HasSubstr(jdir));
  EXPECT_THAT(s.message, HasSubstr("free space"));
  EXPECT_EQ(w->append(1, std::string_view("x")).error().code, Errc::kNoSpace);
  EXPECT_EQ(w->health().error.code, Errc::kNoSpace);
  w.reset();
  auto rec = recover_all(jdir);
  ASSERT_TRUE(rec.report) << rec.report.error().message;
  ASSERT_GE(rec.records.size(), durable);
  for (Lsn l = 1; l <= durable; ++l) EXPECT_EQ(rec.records[l - 1].payload.size(), 4000u);
}

TEST(Writer, ReadOnlyTmpfs) {
  TempDir dir("tmpfs-ro");
  test::Tmpfs fs_(dir.path(), 1 << 20);
  if (!fs_.mounted()) GTEST_SKIP() << fs_.why() << "; Writer.InjectedReadOnlyAndFullDisk covers it";
  const std::string jdir = dir.path() + "/journal";
  {
    auto w = open_writer(options(jdir));
    ASSERT_TRUE(w);
    ASSERT_TRUE(w->append(1, std::string_view("one")));
    ASSERT_TRUE(w->wait_durable(1).ok());
  }
  ASSERT_TRUE(fs_.remount_read_only()) << std::strerror(errno);
  auto w = Writer::open(options(jdir));
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().code, Errc::kReadOnly) << w.error().message;
  EXPECT_THAT(w.error().message, HasSubstr("read-only"));
  EXPECT_THAT(w.error().message, HasSubstr(jdir));
  auto rec = recover_all(jdir, /*repair=*/false);  // reading still works
  ASSERT_TRUE(rec.report) << rec.report.error().message;
  EXPECT_EQ(rec.records.size(), 1u);
}

// ---------------------------------------------------------------------------------------------
// Damage: a small journal of three segments (a snapshot first), cut and flipped everywhere.

class Damage : public ::testing::Test {
 protected:
  void SetUp() override {
    auto o = options(dir_.path());
    o.max_segment_bytes = 256;
    auto w = open_writer(std::move(o));
    ASSERT_TRUE(w);
    for (int i = 0; i < 4; ++i) ASSERT_TRUE(w->append(1, std::string_view("history")));
    std::vector<SnapshotRecord> live(2);
    live[0].type = 4;
    live[0].payload.assign(10, std::byte{0x41});
    live[1].type = 5;
    ASSERT_TRUE(w->write_snapshot(live));
    for (int i = 0; i < 9; ++i) {
      ASSERT_TRUE(w->append(static_cast<std::uint8_t>(2 + i % 3), std::string(10 + i * 3, 'p')));
    }
    ASSERT_TRUE(w->wait_durable(17).ok());
    w.reset();
    files_ = load_files(dir_.path());
    ASSERT_GE(files_.size(), 3u);
    auto rec = recover_all(dir_.path(), false);
    ASSERT_TRUE(rec.report) << rec.report.error().message;
    expected_ = rec.records;
    ASSERT_EQ(expected_.size(), 11u);
    ASSERT_TRUE(expected_[0].snapshot && expected_[1].snapshot && !expected_[2].snapshot);
  }

  // The records are a prefix of the journal's (never one it did not hold).
  void expect_prefix(const std::vector<Rec>& got, const std::string& what) {
    ASSERT_LE(got.size(), expected_.size()) << what;
    for (std::size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], expected_[i]) << what;
  }

  TempDir dir_{"damage"};
  TempDir scratch_{"damage-scratch"};
  Files files_;
  std::vector<Rec> expected_;
};

TEST_F(Damage, EveryTruncation) {
  for (std::size_t f = 0; f < files_.size(); ++f) {
    const bool last = f + 1 == files_.size();
    for (std::size_t cut = 0; cut < files_[f].second.size(); ++cut) {
      Files damaged = files_;
      damaged[f].second.resize(cut);
      store_files(scratch_.path(), damaged);
      const std::string what = files_[f].first + " cut at " + std::to_string(cut);
      auto rec = recover_all(scratch_.path());
      expect_prefix(rec.records, what);
      if (!last || cut < kSegmentHeaderBytes) {
        // Only the last segment may end early, and never inside its header (a segment is
        // renamed into place once its header is synced): anything else is damage, named.
        ASSERT_FALSE(rec.report) << what;
        EXPECT_EQ(rec.report.error().code, Errc::kCorrupt);
        EXPECT_THAT(rec.report.error().message, HasSubstr("offset"));
        continue;
      }
      ASSERT_TRUE(rec.report) << what << ": " << rec.report.error().message;
      if (rec.report->torn_bytes > 0) {
        EXPECT_THAT(rec.report->torn_file, HasSubstr(files_[f].first)) << what;
        EXPECT_EQ(rec.report->torn_offset + rec.report->torn_bytes, cut) << what;
        EXPECT_THAT(rec.report->summary(), HasSubstr("torn tail")) << what;
      }
      // Cut once, then clean: a second recovery finds the same records and no tail.
      auto again = recover_all(scratch_.path());
      ASSERT_TRUE(again.report) << what;
      EXPECT_EQ(again.report->torn_bytes, 0u) << what;
      EXPECT_EQ(again.records, rec.records) << what;
    }
  }
}

TEST_F(Damage, EveryBitFlip) {
  store_files(scratch_.path(), files_);
  for (std::size_t f = 0; f < files_.size(); ++f) {
    const std::string path = scratch_.path() + "/" + files_[f].first;
    for (std::size_t at = 0; at < files_[f].second.size(); ++at) {
      const std::string what = files_[f].first + " bit " + std::to_string(at % 8) + " of byte " +
                               std::to_string(at) + " flipped";
      Files damaged = files_;
      damaged[f].second[at] ^= static_cast<std::byte>(1u << (at % 8));
      {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out.write(reinterpret_cast<const char*>(damaged[f].second.data()),
                  static_cast<std::streamsize>(damaged[f].second.size()));
      }
      auto rec = recover_all(scratch_.path(), /*repair=*/false);
      expect_prefix(rec.records, what);
      if (rec.report) {
        // Not an error: then it must look like a torn tail of the last segment, reported.
        EXPECT_GT(rec.report->torn_bytes, 0u) << what;
        EXPECT_LT(rec.records.size(), expected_.size()) << what;
      } else {
        EXPECT_THAT(rec.report.error().message, HasSubstr(files_[f].first)) << what;
        EXPECT_THAT(rec.report.error().message, HasSubstr("offset")) << what;
      }
    }
    // Restore the file for the next one.
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(files_[f].second.data()),
              static_cast<std::streamsize>(files_[f].second.size()));
  }
}

TEST_F(Damage, SalvageKeepsWhatPrecedesAndSetsTheRestAside) {
  // A CRC failure in the middle of the second segment.
  Files damaged = files_;
  auto& bytes = damaged[1].second;
  const std::size_t at = kSegmentHeaderBytes + kRecordHeaderBytes + 2;  // first record's payload
  bytes[at] ^= std::byte{0x10};
  store_files(scratch_.path(), damaged);
  auto plain = recover_all(scratch_.path());
  ASSERT_FALSE(plain.report);
  EXPECT_EQ(plain.report.error().code, Errc::kCorrupt);
  EXPECT_THAT(plain.report.error().message, HasSubstr(damaged[1].first));
  EXPECT_THAT(plain.report.error().message,
              HasSubstr("offset " + std::to_string(kSegmentHeaderBytes)));
  EXPECT_THAT(plain.report.error().message, HasSubstr("salvage"));

  auto saved = recover_all(scratch_.path(), true, /*salvage=*/true);
  ASSERT_TRUE(saved.report) << saved.report.error().message;
  expect_prefix(saved.records, "salvage");
  const auto first_segment_records = saved.records.size();
  EXPECT_GT(first_segment_records, 2u);
  EXPECT_TRUE(saved.report->salvaged);
  EXPECT_EQ(saved.report->damaged_offset, kSegmentHeaderBytes);
  EXPECT_GT(saved.report->dropped_bytes, 0u);
  EXPECT_EQ(saved.report->set_aside.size(), files_.size() - 1);
  for (const auto& p : saved.report->set_aside) EXPECT_TRUE(fs::exists(p)) << p;
  EXPECT_THAT(saved.report->summary(), HasSubstr("SALVAGED"));

  // The salvaged journal is whole again: a writer goes on after what was kept.
  auto w = open_writer(options(scratch_.path()));
  ASSERT_TRUE(w);
  EXPECT_TRUE(w->open_report().records == first_segment_records);
  auto lsn = w->append(1, std::string_view("after salvage"));
  ASSERT_TRUE(lsn);
  EXPECT_EQ(*lsn, saved.records.back().lsn + 1);
}

}  // namespace
}  // namespace shmsched::journal
