// The audit log against real files in a scratch directory: the writer (batches, restart, torn
// tail, rotation, retention, concurrent appends), the reader (filters, follow across rotation),
// the verifier (each kind of damage named at the right record), and `shmschedctl audit`.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "shmsched/audit/reader.h"
#include "shmsched/audit/verifier.h"
#include "shmsched/audit/writer.h"

namespace shmsched::audit {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    static int counter = 0;
    path_ = "/tmp/shmsched-audit-" + tag + "-" + std::to_string(::getpid()) + "-" +
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

AuditWriterOptions options(const std::string& dir) {
  AuditWriterOptions o;
  o.dir = dir;
  o.fsync = FsyncPolicy::kNone;  // the tests check the format, not the disk
  return o;
}

// A record whose last body byte is inside the detail value (so flipping it keeps the seq).
AuditRecord record(std::string type, std::string execution = "", std::string worker = "",
                   std::string user = "") {
  AuditRecord r;
  r.type = std::move(type);
  r.execution_id = std::move(execution);
  r.worker_id = std::move(worker);
  r.user_id = std::move(user);
  r.detail = {{"note", "something happened"}};
  return r;
}

void write_records(const AuditWriterOptions& o, int n) {
  AuditWriter w(o);
  for (int i = 0; i < n; ++i) w.append(record("accepted", "e" + std::to_string(i)));
  ASSERT_TRUE(w.flush(10s));
}

std::vector<AuditRecord> read_all(const std::string& dir, AuditFilter filter = {}) {
  AuditReader reader(dir, std::move(filter));
  std::vector<AuditRecord> out;
  while (auto r = reader.next()) out.push_back(std::move(*r));
  return out;
}

AuditFilter filter(std::string execution, std::string worker, std::string type) {
  AuditFilter f;
  f.execution_id = std::move(execution);
  f.worker_id = std::move(worker);
  f.type = std::move(type);
  return f;
}

std::vector<std::string> log_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// Frames of a file by the documented layout: u32 LE length | body | 32-byte hash. Frame 0 is the
// header; frame k is the file's k-th record.
struct FrameAt {
  std::size_t offset;
  std::size_t size;
};
std::vector<FrameAt> frames(const std::string& bytes) {
  std::vector<FrameAt> out;
  for (std::size_t at = 0; at + 4 <= bytes.size();) {
    std::uint32_t len = 0;
    for (int i = 3; i >= 0; --i) len = (len << 8) | static_cast<std::uint8_t>(bytes[at + i]);
    const std::size_t size = 4 + len + 32;
    if (at + size > bytes.size()) break;
    out.push_back({at, size});
    at += size;
  }
  return out;
}

TEST(AuditLog, RecordsComeBackAsWritten) {
  TempDir dir("roundtrip");
  std::vector<AuditRecord> written;
  {
    AuditWriter w(options(dir.path()));
    EXPECT_EQ(w.open_report().next_seq, 1u);
    for (int i = 0; i < 100; ++i) {
      AuditRecord r = record(i % 2 ? "claimed" : "accepted", "exec-" + std::to_string(i),
                             i % 3 ? "w1" : "", "alice");
      r.detail["attempt"] = std::to_string(i);
      r.time_ns = 1'700'000'000'000'000'000 + i;
      const std::uint64_t seq = w.append(r);
      EXPECT_EQ(seq, static_cast<std::uint64_t>(i + 1));
      r.seq = seq;
      written.push_back(r);
    }
    AuditRecord bare;
    bare.type = "worker_gone";
    bare.seq = w.append(bare);
    ASSERT_TRUE(w.flush(10s));
    bare.time_ns = read_all(dir.path()).back().time_ns;  // filled in by append
    EXPECT_GT(bare.time_ns, 0);
    written.push_back(bare);
    const auto stats = w.stats();
    EXPECT_EQ(stats.appended, 101u);
    EXPECT_EQ(stats.written, 101u);
    EXPECT_EQ(stats.durable_seq, 101u);
  }
  EXPECT_EQ(read_all(dir.path()), written);
  const auto v = verify_audit_dir(dir.path());
  EXPECT_TRUE(v.ok()) << v.message;
  EXPECT_EQ(v.records, 101u);
  EXPECT_EQ(v.files, 1u);
  EXPECT_EQ(v.first_seq, 1u);
  EXPECT_EQ(v.last_seq, 101u);
}

TEST(AuditLog, AppendRefusesWhatCannotBeARecord) {
  TempDir dir("refuse");
  AuditWriter w(options(dir.path()));
  EXPECT_THROW(w.append(AuditRecord{}), std::invalid_argument);
  AuditRecord big = record("accepted");
  big.detail["blob"] = std::string(kMaxBodyBytes, 'x');
  EXPECT_THROW(w.append(big), std::length_error);
  EXPECT_EQ(w.append(record("accepted")), 1u);  // nothing was numbered for the refused ones
}

TEST(AuditLog, ASecondWriterOnTheSameDirectoryIsRefused) {
  TempDir dir("lock");
  AuditWriter w(options(dir.path()));
  EXPECT_THROW(AuditWriter{options(dir.path())}, AuditError);
}

TEST(AuditLog, ARestartContinuesTheChain) {
  TempDir dir("restart");
  write_records(options(dir.path()), 10);
  {
    AuditWriter w(options(dir.path()));
    EXPECT_EQ(w.open_report().next_seq, 11u);
    EXPECT_EQ(w.open_report().cut_bytes, 0u);
    EXPECT_EQ(w.append(record("claimed")), 11u);
    for (int i = 0; i < 9; ++i) w.append(record("claimed"));
  }
  const auto all = read_all(dir.path());
  ASSERT_EQ(all.size(), 20u);
  for (std::size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i].seq, i + 1);
  const auto v = verify_audit_dir(dir.path());
  EXPECT_TRUE(v.ok()) << v.message;
  EXPECT_EQ(v.records, 20u);
  EXPECT_EQ(v.files, 1u);
}

TEST(AuditLog, EachFsyncPolicyWritesAndFlushes) {
  for (const auto policy : {FsyncPolicy::kBatch, FsyncPolicy::kInterval, FsyncPolicy::kNone}) {
    SCOPED_TRACE(std::string(fsync_policy_name(policy)));
    EXPECT_EQ(parse_fsync_policy(fsync_policy_name(policy)), policy);
    TempDir dir("fsync");
    auto o = options(dir.path());
    o.fsync = policy;
    o.fsync_interval = 10s;  // flush must not wait for it
    AuditWriter w(o);
    for (int i = 0; i < 50; ++i) w.append(record("accepted"));
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(w.flush(5s));
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
    EXPECT_EQ(read_all(dir.path()).size(), 50u);
    if (policy == FsyncPolicy::kNone) {
      EXPECT_EQ(w.stats().syncs, 0u);
    } else {
      EXPECT_GE(w.stats().syncs, 1u);
    }
  }
  EXPECT_FALSE(parse_fsync_policy("sometimes"));
}

TEST(AuditLog, RotationKeepsTheChainAndRetentionDeletesTheOldest) {
  TempDir dir("rotate");
  auto o = options(dir.path());
  o.max_file_bytes = 4096;
  o.max_files = 3;
  {
    AuditWriter w(o);
    for (int i = 0; i < 500; ++i) {
      w.append(record("accepted", "e" + std::to_string(i)));
      if (i % 50 == 0) {
        ASSERT_TRUE(w.flush(10s));  // several batches, so several rotations
      }
    }
    ASSERT_TRUE(w.flush(10s));
    EXPECT_GT(w.stats().rotations, 3u);
    EXPECT_GT(w.stats().files_removed, 0u);
  }
  const auto files = log_files(dir.path());
  ASSERT_EQ(files.size(), 3u);
  for (const auto& f : files) EXPECT_LE(fs::file_size(f), 4096u) << f;

  const auto v = verify_audit_dir(dir.path());
  EXPECT_TRUE(v.ok()) << v.message;
  EXPECT_EQ(v.files, 3u);
  EXPECT_GT(v.first_seq, 1u);  // the oldest records went with their files
  EXPECT_EQ(v.last_seq, 500u);
  EXPECT_EQ(v.records, 500 - v.first_seq + 1);

  const auto all = read_all(dir.path());
  ASSERT_EQ(all.size(), v.records);
  for (std::size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i].seq, v.first_seq + i);

  // A restart continues in the newest file, and retention still holds.
  {
    AuditWriter w(o);
    EXPECT_EQ(w.open_report().next_seq, 501u);
    for (int i = 0; i < 100; ++i) w.append(record("claimed"));
  }
  EXPECT_EQ(log_files(dir.path()).size(), 3u);
  const auto again = verify_audit_dir(dir.path());
  EXPECT_TRUE(again.ok()) << again.message;
  EXPECT_EQ(again.last_seq, 600u);
}

TEST(AuditLog, RetentionZeroKeepsEveryFile) {
  TempDir dir("keep-all");
  auto o = options(dir.path());
  o.max_file_bytes = 2048;
  o.max_files = 0;
  write_records(o, 200);
  const auto v = verify_audit_dir(dir.path());
  EXPECT_TRUE(v.ok()) << v.message;
  EXPECT_EQ(v.first_seq, 1u);
  EXPECT_EQ(v.records, 200u);
  EXPECT_EQ(v.files, log_files(dir.path()).size());
  EXPECT_GT(v.files, 5u);
}

// ---- Verify: damage, each named at the right record ------------------------------------------

// One file with records 1..20.
struct OneFileLog {
  TempDir dir{"damage"};
  std::string file;
  std::string bytes;
  std::vector<FrameAt> at;  // at[k]: record k (at[0] is the header)

  OneFileLog() {
    write_records(options(dir.path()), 20);
    file = log_files(dir.path()).at(0);
    bytes = read_bytes(file);
    at = frames(bytes);
  }
  std::string name() const { return fs::path(file).filename().string(); }
  std::string record_bytes(int k) const { return bytes.substr(at[k].offset, at[k].size); }
};

VerifyResult verify_now(const std::string& dir) {
  VerifyOptions o;
  o.settle = 0ms;
  return verify_audit_dir(dir, o);
}

TEST(AuditVerify, AFlippedByteIsAHashMismatchAtThatRecord) {
  OneFileLog log;
  ASSERT_EQ(log.at.size(), 21u);
  std::string damaged = log.bytes;
  damaged[log.at[7].offset + log.at[7].size - 33] ^= 0x01;  // the body's last byte
  write_bytes(log.file, damaged);
  const auto v = verify_now(log.dir.path());
  EXPECT_EQ(v.problem, VerifyProblem::kHashMismatch) << v.message;
  EXPECT_EQ(v.seq, 7u);
  EXPECT_EQ(v.file, log.name());
  EXPECT_EQ(v.offset, log.at[7].offset);
  EXPECT_EQ(v.records, 6u);
  EXPECT_THAT(v.message, HasSubstr("record 7 (" + log.name() + " offset " +
                                   std::to_string(log.at[7].offset) + ")"));
}

TEST(AuditVerify, AFlippedHashByteIsAHashMismatchAtThatRecord) {
  OneFileLog log;
  std::string damaged = log.bytes;
  damaged[log.at[12].offset + log.at[12].size - 1] ^= 0x80;
  write_bytes(log.file, damaged);
  const auto v = verify_now(log.dir.path());
  EXPECT_EQ(v.problem, VerifyProblem::kHashMismatch) << v.message;
  EXPECT_EQ(v.seq, 12u);
}

TEST(AuditVerify, ADeletedRecordIsMissing) {
  OneFileLog log;
  std::string damaged = log.bytes;
  damaged.erase(log.at[5].offset, log.at[5].size);
  write_bytes(log.file, damaged);
  const auto v = verify_now(log.dir.path());
  EXPECT_EQ(v.problem, VerifyProblem::kMissing) << v.message;
  EXPECT_EQ(v.seq, 5u);
  EXPECT_EQ(v.offset, log.at[5].offset);
  EXPECT_THAT(v.message, HasSubstr("record 5 missing"));
}

TEST(AuditVerify, AReorderedPairIsOutOfOrder) {
  OneFileLog log;
  std::string damaged = log.bytes.substr(0, log.at[5].offset) + log.record_bytes(6) +
                        log.record_bytes(5) + log.bytes.substr(log.at[7].offset);
  ASSERT_EQ(damaged.size(), log.bytes.size());
  write_bytes(log.file, damaged);
  const auto v = verify_now(log.dir.path());
  EXPECT_EQ(v.problem, VerifyProblem::kReordered) << v.message;
  EXPECT_EQ(v.seq, 5u);
  EXPECT_EQ(v.offset, log.at[5].offset);
  EXPECT_THAT(v.message, HasSubstr("out of order"));
}

TEST(AuditVerify, AReplayedRecordIsOutOfOrder) {
  OneFileLog log;
  std::string damaged = log.bytes.substr(0, log.at[9].offset) + log.record_bytes(3) +
                        log.bytes.substr(log.at[9].offset);
  write_bytes(log.file, damaged);
  const auto v = verify_now(log.dir.path());
  EXPECT_EQ(v.problem, VerifyProblem::kReordered) << v.message;
  EXPECT_EQ(v.seq, 9u);
}

TEST(AuditVerify, TheLastFileCutInsideARecordIsTruncated) {
  OneFileLog log;
  write_bytes(log.file, log.bytes.substr(0, log.at[20].offset + 10));
  const auto v = verify_now(log.dir.path());
  EXPECT_EQ(v.problem, VerifyProblem::kTruncated) << v.message;
  EXPECT_EQ(v.seq, 20u);
  EXPECT_EQ(v.offset, log.at[20].offset);
  EXPECT_EQ(v.records, 19u);
  EXPECT_THAT(v.message, HasSubstr("truncated"));
}

// Several files of a few records each.
struct ManyFileLog {
  TempDir dir{"files"};
  std::vector<std::string> files;

  ManyFileLog() {
    auto o = options(dir.path());
    o.max_file_bytes = 1024;
    o.max_files = 0;
    write_records(o, 60);
    files = log_files(dir.path());
  }
  static std::string name(const std::string& path) { return fs::path(path).filename().string(); }
  // The sequence number of the first record of files[i] (from its name, audit-<seq>.log).
  std::uint64_t first_seq(std::size_t i) const { return std::stoull(name(files[i]).substr(6, 20)); }
};

TEST(AuditVerify, AFileCutInsideARecordBeforeTheLastIsTruncated) {
  ManyFileLog log;
  ASSERT_GE(log.files.size(), 4u);
  const std::string bytes = read_bytes(log.files[1]);
  const auto at = frames(bytes);
  write_bytes(log.files[1], bytes.substr(0, at.back().offset + 7));
  const auto v = verify_now(log.dir.path());
  EXPECT_EQ(v.problem, VerifyProblem::kTruncated) << v.message;
  EXPECT_EQ(v.seq, log.first_seq(2) - 1);  // the last record of files[1]
  EXPECT_EQ(v.file, log.name(log.files[1]));
  EXPECT_EQ(v.offset, at.back().offset);
}

TEST(AuditVerify, ADeletedMiddleFileIsAGap) {
  ManyFileLog log;
  ASSERT_GE(log.files.size(), 4u);
  fs::remove(log.files[2]);
  const auto v = verify_now(log.dir.path());
  EXPECT_EQ(v.problem, VerifyProblem::kMissing) << v.message;
  EXPECT_EQ(v.seq, log.first_seq(2));
  EXPECT_EQ(v.file, log.name(log.files[3]));
  EXPECT_EQ(v.offset, 0u);
}

TEST(AuditVerify, TheOldestFilesDeletedIsNoDamage) {
  ManyFileLog log;
  fs::remove(log.files[0]);
  fs::remove(log.files[1]);
  const auto v = verify_now(log.dir.path());
  EXPECT_TRUE(v.ok()) << v.message;
  EXPECT_EQ(v.first_seq, log.first_seq(2));
  EXPECT_EQ(v.last_seq, 60u);
}

TEST(AuditVerify, AnEmptyOrMissingDirectory) {
  TempDir dir("empty");
  EXPECT_TRUE(verify_now(dir.path()).ok());
  EXPECT_EQ(verify_now(dir.path()).records, 0u);
  const auto v = verify_now(dir.path() + "/nowhere");
  EXPECT_EQ(v.problem, VerifyProblem::kUnreadable);
  EXPECT_THAT(v.message, HasSubstr("nowhere"));
}

// ---- Restart after a crash -------------------------------------------------------------------

TEST(AuditLog, ATornTailIsCutOnReopenAndCounted) {
  OneFileLog log;
  // A crash in the middle of a write: the first 30 bytes of a frame.
  const std::string torn = log.record_bytes(20).substr(0, 30);
  write_bytes(log.file, log.bytes + torn);
  {
    AuditWriter w(options(log.dir.path()));
    EXPECT_EQ(w.open_report().cut_bytes, 30u);
    EXPECT_EQ(w.open_report().cut_offset, log.bytes.size());
    EXPECT_EQ(w.open_report().cut_file, log.name());
    EXPECT_EQ(w.open_report().next_seq, 21u);
    EXPECT_EQ(w.append(record("claimed")), 21u);
  }
  auto v = verify_now(log.dir.path());
  EXPECT_TRUE(v.ok()) << v.message;
  EXPECT_EQ(v.last_seq, 21u);

  // A power loss: the file grew, the data never landed (zeros).
  write_bytes(log.file, read_bytes(log.file) + std::string(4096, '\0'));
  {
    AuditWriter w(options(log.dir.path()));
    EXPECT_EQ(w.open_report().cut_bytes, 4096u);
    EXPECT_EQ(w.open_report().next_seq, 22u);
  }
  // The last whole record written over with garbage: the crash hit it, it is cut too.
  const std::string bytes = read_bytes(log.file);
  const auto at = frames(bytes);
  std::string damaged = bytes;
  damaged[at.back().offset + 10] ^= 0x55;
  write_bytes(log.file, damaged);
  {
    AuditWriter w(options(log.dir.path()));
    EXPECT_EQ(w.open_report().cut_bytes, at.back().size);
    EXPECT_EQ(w.open_report().next_seq, 21u);
  }
  v = verify_now(log.dir.path());
  EXPECT_TRUE(v.ok()) << v.message;
  EXPECT_EQ(v.last_seq, 20u);
}

TEST(AuditLog, DamageBeforeTheEndIsNotCutButRefused) {
  OneFileLog log;
  std::string damaged = log.bytes;
  damaged[log.at[10].offset + log.at[10].size - 33] ^= 0x01;
  write_bytes(log.file, damaged);
  try {
    AuditWriter w(options(log.dir.path()));
    FAIL() << "opened a log damaged in the middle";
  } catch (const AuditError& e) {
    EXPECT_THAT(e.what(), HasSubstr("record 10"));
  }
  EXPECT_EQ(read_bytes(log.file), damaged);  // nothing was cut
}

TEST(AuditLog, ALastFileWithoutAWholeHeaderIsRemovedOnReopen) {
  TempDir dir("headerless");
  auto o = options(dir.path());
  o.max_file_bytes = 1024;
  o.max_files = 0;
  write_records(o, 30);
  const auto before = verify_now(dir.path());
  ASSERT_TRUE(before.ok()) << before.message;
  // A crash while the newest file was being created: its name exists, its header does not.
  const std::string next = dir.path() + "/audit-" + std::string(20 - 2, '0') + "31.log";
  write_bytes(next, std::string(20, '\x07'));
  {
    AuditWriter w(o);
    EXPECT_EQ(w.open_report().removed_files, 1u);
    EXPECT_EQ(w.open_report().cut_bytes, 20u);
    EXPECT_EQ(w.open_report().next_seq, 31u);
    w.append(record("claimed"));
  }
  const auto v = verify_now(dir.path());
  EXPECT_TRUE(v.ok()) << v.message;
  EXPECT_EQ(v.last_seq, 31u);
}

// A disk that refuses writes (a file size limit here): every failure is reported, a partial
// write is cut so the log stays valid, and what is still unwritten at close after close_timeout
// is counted as lost and reported, never dropped silently.
TEST(AuditLog, FailedWritesAreReportedCutAndWhatIsLeftIsCountedAtClose) {
  TempDir dir("efbig");
  constexpr rlim_t kLimit = 32 << 10;
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);
    const rlimit limit{kLimit, kLimit};
    ::setrlimit(RLIMIT_FSIZE, &limit);
    std::atomic<int> errors{0};
    std::atomic<bool> gave_up{false};
    {
      auto o = options(dir.path());
      o.close_timeout = 300ms;
      o.on_error = [&](std::string_view message) {
        ++errors;
        if (message.find("gave up at close") != std::string_view::npos) gave_up = true;
      };
      AuditWriter w(o);
      for (int i = 0; i < 50; ++i) w.append(record("accepted", "e" + std::to_string(i)));
      if (!w.flush(5s)) ::_exit(9);  // these fit
      for (int i = 50; i < 1000; ++i) w.append(record("accepted", "e" + std::to_string(i)));
      if (w.flush(200ms)) ::_exit(10);  // these cannot
      if (w.stats().errors == 0) ::_exit(11);
    }
    ::_exit(errors > 1 && gave_up ? 0 : 12);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  const auto v = verify_now(dir.path());
  EXPECT_TRUE(v.ok()) << v.message;
  EXPECT_GE(v.last_seq, 50u);
  EXPECT_LT(v.last_seq, 1000u);
  EXPECT_LE(fs::file_size(log_files(dir.path()).at(0)), kLimit);
}

// ---- The reader ------------------------------------------------------------------------------

TEST(AuditReader, FiltersByExecutionWorkerAndType) {
  TempDir dir("filter");
  {
    AuditWriter w(options(dir.path()));
    w.append(record("accepted", "e1", "", "alice"));
    w.append(record("accepted", "e2", "", "bob"));
    w.append(record("dispatched", "e1", "w1"));
    w.append(record("claimed", "e1", "w1"));
    w.append(record("claimed", "e2", "w2"));
    w.append(record("worker_registered", "", "w1"));
    w.append(record("completed", "e1", "w1"));
  }
  auto seqs = [&](AuditFilter f) {
    std::vector<std::uint64_t> out;
    for (const auto& r : read_all(dir.path(), std::move(f))) out.push_back(r.seq);
    return out;
  };
  using V = std::vector<std::uint64_t>;
  EXPECT_EQ(seqs({}), (V{1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(seqs(filter("e1", "", "")), (V{1, 3, 4, 7}));
  EXPECT_EQ(seqs(filter("", "w1", "")), (V{3, 4, 6, 7}));
  EXPECT_EQ(seqs(filter("", "", "claimed")), (V{4, 5}));
  EXPECT_EQ(seqs(filter("e1", "w1", "claimed")), (V{4}));
  EXPECT_EQ(seqs(filter("nobody", "", "")), V{});
}

TEST(AuditReader, FollowSeesRecordsAppendedLaterAcrossRotations) {
  TempDir dir("follow");
  auto o = options(dir.path());
  o.max_file_bytes = 1024;
  o.max_files = 0;
  AuditWriter w(o);
  w.append(record("accepted", "before"));
  ASSERT_TRUE(w.flush(10s));

  AuditReader reader(dir.path(), filter("", "", "claimed"));
  EXPECT_FALSE(reader.next());  // "accepted" does not match
  constexpr int kRecords = 100;
  std::vector<AuditRecord> seen;
  std::thread follower([&] {
    while (seen.size() < kRecords) {
      auto r = reader.wait_next(10s);
      if (!r) return;  // the deadline: the assertions below fail
      seen.push_back(std::move(*r));
    }
  });
  for (int i = 0; i < kRecords; ++i) {
    w.append(record("claimed", "e" + std::to_string(i)));
    w.append(record("accepted", "noise"));
    if (i % 10 == 0) {
      ASSERT_TRUE(w.flush(10s));  // batches of their own, across rotations
    }
  }
  ASSERT_TRUE(w.flush(10s));
  follower.join();
  ASSERT_EQ(seen.size(), static_cast<std::size_t>(kRecords));
  for (int i = 0; i < kRecords; ++i) {
    EXPECT_EQ(seen[i].execution_id, "e" + std::to_string(i));
    EXPECT_EQ(seen[i].seq, static_cast<std::uint64_t>(2 + 2 * i));
  }
  EXPECT_GT(w.stats().rotations, 5u);
}

TEST(AuditReader, FollowWaitsOutItsTimeoutWhenNothingComes) {
  TempDir dir("follow-idle");
  write_records(options(dir.path()), 3);
  AuditReader reader(dir.path());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(reader.next());
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(reader.wait_next(100ms));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 100ms);
}

// ---- Concurrency -----------------------------------------------------------------------------

TEST(AuditLog, ConcurrentAppendsLandExactlyOnceInSequenceOrder) {
  TempDir dir("concurrent");
  constexpr int kThreads = 4;
  constexpr int kPerThread = 5000;
  auto o = options(dir.path());
  o.max_pending = 64;  // small: appenders also wait for the writer
  o.max_file_bytes = 256 << 10;
  o.max_files = 0;
  std::vector<std::vector<std::uint64_t>> returned(kThreads);
  {
    AuditWriter w(o);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kPerThread; ++i) {
          returned[t].push_back(
              w.append(record("accepted", "t" + std::to_string(t) + "-" + std::to_string(i))));
        }
      });
    }
    for (auto& th : threads) th.join();
    ASSERT_TRUE(w.flush(30s));
    EXPECT_EQ(w.stats().written, static_cast<std::uint64_t>(kThreads * kPerThread));
  }
  const auto all = read_all(dir.path());
  ASSERT_EQ(all.size(), static_cast<std::size_t>(kThreads * kPerThread));
  std::set<std::string> ids;
  std::vector<int> next(kThreads, 0);
  for (std::size_t i = 0; i < all.size(); ++i) {
    ASSERT_EQ(all[i].seq, i + 1);
    EXPECT_TRUE(ids.insert(all[i].execution_id).second) << all[i].execution_id;
    // Each thread's records appear in the order it appended them, with the seq it was given.
    const int t = all[i].execution_id[1] - '0';
    const int n = std::stoi(all[i].execution_id.substr(3));
    ASSERT_EQ(n, next[t]);
    EXPECT_EQ(returned[t][n], all[i].seq);
    ++next[t];
  }
  const auto v = verify_audit_dir(dir.path());
  EXPECT_TRUE(v.ok()) << v.message;
  EXPECT_EQ(v.records, static_cast<std::uint64_t>(kThreads * kPerThread));
}

// ---- shmschedctl audit -----------------------------------------------------------------------

struct Output {
  int code = -1;
  std::string text;
};

Output shmschedctl(const std::string& args) {
  const std::string cmd = std::string(SHMSCHED_BIN_DIR) + "/shmschedctl " + args + " 2>&1";
  std::FILE* p = ::popen(cmd.c_str(), "r");
  Output o;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) o.text.append(buf, n);
  const int status = ::pclose(p);
  o.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return o;
}

TEST(AuditCli, VerifySaysOkOrNamesTheFirstBadRecord) {
  OneFileLog log;
  auto out = shmschedctl("audit verify --dir " + log.dir.path());
  EXPECT_EQ(out.code, 0) << out.text;
  EXPECT_EQ(out.text, "ok: 20 records in 1 files, chain intact (first seq 1 .. last seq 20)\n");

  std::string damaged = log.bytes;
  damaged[log.at[7].offset + log.at[7].size - 33] ^= 0x01;
  write_bytes(log.file, damaged);
  out = shmschedctl("audit verify --dir " + log.dir.path());
  EXPECT_EQ(out.code, 1) << out.text;
  EXPECT_THAT(out.text, HasSubstr("record 7 (" + log.name() + " offset " +
                                  std::to_string(log.at[7].offset) + "): the record was changed"));

  out = shmschedctl("--json audit verify --dir " + log.dir.path());
  EXPECT_EQ(out.code, 1) << out.text;
  EXPECT_THAT(out.text, HasSubstr("\"ok\":false"));
  EXPECT_THAT(out.text, HasSubstr("\"error\":\"hash_mismatch\",\"seq\":7"));
}

TEST(AuditCli, PrintsFilteredRecordsAsTextOrJson) {
  TempDir dir("cli-print");
  {
    AuditWriter w(options(dir.path()));
    w.append(record("accepted", "e1", "", "alice"));
    w.append(record("claimed", "e1", "w1"));
    w.append(record("claimed", "e2", "w2"));
  }
  auto out = shmschedctl("audit --dir " + dir.path() + " --type claimed");
  EXPECT_EQ(out.code, 0) << out.text;
  EXPECT_THAT(out.text, HasSubstr(" claimed "));
  EXPECT_THAT(out.text, HasSubstr("execution=e1 worker=w1 note=\"something happened\"\n"));
  EXPECT_EQ(std::count(out.text.begin(), out.text.end(), '\n'), 2);

  out = shmschedctl("audit --dir " + dir.path() + " --execution e1 --json");
  EXPECT_EQ(out.code, 0) << out.text;
  EXPECT_EQ(std::count(out.text.begin(), out.text.end(), '\n'), 2);
  EXPECT_THAT(out.text, HasSubstr("{\"seq\":1,"));
  EXPECT_THAT(out.text, HasSubstr("\"type\":\"accepted\",\"execution_id\":\"e1\",\"worker_id\":"
                                  "\"\",\"user_id\":\"alice\",\"detail\":{\"note\":\"something "
                                  "happened\"}}\n"));

  out = shmschedctl("audit --dir " + dir.path() + "/nowhere");
  EXPECT_EQ(out.code, 1);
  EXPECT_THAT(out.text, HasSubstr("nowhere"));
}

}  // namespace
}  // namespace shmsched::audit
