// shmschedd's journal on disk (issue 12), end to end with real processes: a SIGKILLed supervisor
// whose shared-memory segment is removed as a reboot would remove it, a torn and a damaged
// journal, a journal directory that is full or read-only, and the rule that reconciles a journal
// with an existing segment.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "daemon_support.h"
#include "tmpfs_mount.h"

namespace shmsched::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::Not;

// A REQ client with a short timeout: a call to a killed supervisor fails fast (not acknowledged).
class QuickClient {
 public:
  explicit QuickClient(const std::string& endpoint) {
    ipc::ClientOptions o;
    o.endpoint = endpoint;
    o.use_shared_memory = false;
    o.timeout = std::chrono::milliseconds(700);
    client_ = std::make_unique<ipc::Client>(o);
  }
  // The reply, or nullopt when none came.
  std::optional<Map> call(const std::vector<std::byte>& request) {
    try {
      return Map{std::make_shared<msgpack::object_handle>(client_->call(request))};
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }

 private:
  std::unique_ptr<ipc::Client> client_;
};

std::vector<std::byte> submit_request(const std::string& id, const std::string& user,
                                      const std::string& priority, const std::string& payload,
                                      const std::string& durability) {
  const auto* b = reinterpret_cast<const std::byte*>(payload.data());
  MapBuilder m;
  m.str("op", "submit")
      .str("execution_id", id)
      .str("user_id", user)
      .str("priority", priority)
      .bin("payload", std::vector<std::byte>(b, b + payload.size()));
  if (!durability.empty()) m.str("durability", durability);
  return m.finish();
}

// Every execution the queue holds (queued or dispatched): id -> state.
std::map<std::string, std::string> listing(Ingress& ingress) {
  std::map<std::string, std::string> out;
  auto r = ingress.call(MapBuilder().str("op", "list").integer("limit", 1'000'000).finish());
  const auto* items = ipc::find_field(r.get(), "executions");
  if (!items || items->type != msgpack::type::ARRAY) return out;
  for (std::uint32_t i = 0; i < items->via.array.size; ++i) {
    const auto& e = items->via.array.ptr[i];
    out[ipc::get_string(e, "execution_id").value_or("")] = ipc::get_string(e, "state").value_or("");
  }
  return out;
}

// A supervisor with a journal, its runtime directory, segment and journal directory.
struct Journaled {
  std::string dir = temp_dir("journal");
  std::string segment = segment_name("journal");
  std::string journal = dir + "-wal";
  std::unique_ptr<Daemon> daemon;

  explicit Journaled(std::vector<std::string> args) {
    ipc::Segment::remove(segment);
    fs::create_directories(journal);
    args.push_back("--journal-dir=" + journal);
    daemon = std::make_unique<Daemon>(dir, segment, std::move(args));
  }
  ~Journaled() {
    daemon.reset();
    ipc::Segment::remove(segment);
    fs::remove("/dev/shm/" + segment + ".restoring");
    fs::remove_all(dir);
    fs::remove_all(journal);
  }
  // What a power cut does: the process dies at once, and /dev/shm is empty on the next boot.
  void crash_and_reboot() {
    daemon->signal(SIGKILL);
    daemon->wait_exit();
    ipc::Segment::remove(segment);
    fs::remove("/dev/shm/" + segment + ".restoring");
  }
  std::vector<fs::path> journal_files() const {
    std::vector<fs::path> out;
    for (const auto& e : fs::directory_iterator(journal)) {
      if (e.path().extension() == ".wal") out.push_back(e.path());
    }
    std::sort(out.begin(), out.end());
    return out;
  }
};

// The reboot simulation: submitters with durability disk and a completer run while the
// supervisor is SIGKILLed at random moments and its segment removed. Every acknowledged
// execution is there after each restart (or was completed), nothing appears that was never
// submitted, and in the end every one of them is dispatched.
TEST(DaemonJournal, DurablyAcknowledgedExecutionsSurviveKillsAndLostSegments) {
  Journaled j({"--max-active-executions=4", "--durability=disk"});
  std::mutex mu;
  std::set<std::string> submitted, acked, completed;  // completed: asked to
  std::size_t acked_via_shm = 0;
  std::mt19937 rng(20261130);
  for (int round = 0; round < 5; ++round) {
    j.daemon->start();
    {
      Ingress ingress(j.daemon->endpoint());
      const auto present = listing(ingress);
      std::lock_guard lock(mu);
      for (const auto& id : acked) {
        EXPECT_TRUE(present.count(id) || completed.count(id))
            << "round " << round << ": " << id << " was acknowledged as durable and is gone";
      }
      for (const auto& [id, state] : present) {
        EXPECT_TRUE(submitted.count(id)) << id << " was never submitted";
      }
    }
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t) {
      threads.emplace_back([&, t] {
        QuickClient c(j.daemon->endpoint());
        for (int i = 0; !stop; ++i) {
          const std::string id =
              "r" + std::to_string(round) + "-t" + std::to_string(t) + "-" + std::to_string(i);
          {
            std::lock_guard lock(mu);
            submitted.insert(id);
          }
          auto r = c.call(submit_request(id, "u" + std::to_string(i % 3), "normal",
                                         std::string(100 + i % 200, 'x'), ""));
          if (!r) return;  // killed
          if (r->ok()) {
            std::lock_guard lock(mu);
            acked.insert(id);
          }
        }
      });
    }
    // A submitter through shared memory: each submit returns once its durable mark is there.
    threads.emplace_back([&] {
      ipc::ClientOptions o;
      o.segment = j.segment;
      o.endpoint = j.daemon->endpoint();
      o.timeout = std::chrono::milliseconds(700);
      ipc::Client c(o);
      for (int i = 0; !stop; ++i) {
        const std::string id = "r" + std::to_string(round) + "-shm-" + std::to_string(i);
        {
          std::lock_guard lock(mu);
          submitted.insert(id);
        }
        ipc::protocol::SubmitOp op;
        op.execution_id = id;
        op.user_id = "s" + std::to_string(i % 3);
        op.payload.assign(100 + i % 200, std::byte{'s'});
        try {
          const auto r = c.submit(op);
          if (r.result.accepted()) {
            std::lock_guard lock(mu);
            acked.insert(id);
            if (r.via_shared_memory) ++acked_via_shm;
          }
        } catch (const std::exception&) {
          return;  // killed: no mark comes
        }
      }
    });
    threads.emplace_back([&] {
      Ingress ingress(j.daemon->endpoint());
      QuickClient c(j.daemon->endpoint());
      while (!stop) {
        // Slower than the submitters: a backlog builds up for the restarts to bring back.
        std::this_thread::sleep_for(10ms);
        auto l = c.call(MapBuilder().str("op", "list").str("state", "dispatched").finish());
        if (!l) return;
        const auto* items = ipc::find_field(l->get(), "executions");
        for (std::uint32_t i = 0; items && i < items->via.array.size; ++i) {
          const auto id = ipc::get_string(items->via.array.ptr[i], "execution_id").value_or("");
          {
            // Counted before the call: a supervisor killed after carrying it out and before
            // the answer has completed it all the same.
            std::lock_guard lock(mu);
            completed.insert(id);
          }
          if (!c.call(MapBuilder().str("op", "complete").str("execution_id", id).finish())) return;
        }
      }
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 400));
    j.crash_and_reboot();
    stop = true;
    for (auto& t : threads) t.join();
  }
  // The last start: room for everything, and nothing kills it.
  for (auto& a : j.daemon->args()) {
    if (a.rfind("--max-active-executions", 0) == 0) a = "--max-active-executions=4096";
  }
  j.daemon->start();
  Ingress ingress(j.daemon->endpoint());
  std::map<std::string, std::string> present;
  const auto deadline = Clock::now() + 20s;
  for (;;) {
    present = listing(ingress);
    const bool all = std::all_of(present.begin(), present.end(),
                                 [](const auto& p) { return p.second == "dispatched"; });
    if (all || Clock::now() > deadline) break;
    std::this_thread::sleep_for(20ms);
  }
  std::size_t missing = 0;
  for (const auto& id : acked) {
    if (!present.count(id) && !completed.count(id)) ++missing;
  }
  EXPECT_EQ(missing, 0u) << "of " << acked.size() << " acknowledged";
  for (const auto& [id, state] : present) {
    EXPECT_EQ(state, "dispatched") << id;
    EXPECT_TRUE(submitted.count(id)) << id << " was never submitted";
  }
  EXPECT_GT(acked.size(), 50u) << "the storm acknowledged too little to prove anything";
  EXPECT_GT(acked_via_shm, 10u) << "too few acknowledged through shared memory";
  EXPECT_THAT(j.daemon->log_text(), HasSubstr("rebuilt it from the journal"));
}

// After a reboot the queue is the same: order, priorities, users, payloads, capabilities,
// metadata, timeouts and attempts; the dispatched one is dispatched again.
TEST(DaemonJournal, TheRebuiltQueueKeepsOrderPrioritiesUsersAndPayloads) {
  Journaled j({"--max-active-executions=1", "--durability=disk"});
  j.daemon->start();
  {
    Ingress ingress(j.daemon->endpoint());
    const std::vector<std::pair<std::string, std::string>> subs = {
        {"first", "normal"}, {"low-1", "low"},  {"crit-1", "critical"}, {"n-2", "normal"},
        {"low-2", "low"},    {"n-3", "normal"}, {"crit-2", "critical"}};
    for (const auto& [id, prio] : subs) {
      auto r = ingress.call(submit_request(id, "user-" + id, prio, "payload of " + id, ""));
      ASSERT_TRUE(r.ok()) << r.str("message");
    }
    auto r = ingress.call(MapBuilder()
                              .str("op", "submit")
                              .str("execution_id", "extras")
                              .str("user_id", "carol")
                              .str("priority", "high")
                              .bin("payload", {})
                              .strings("required_capabilities", {"gpu"})
                              .string_map("metadata", {{"team", "ml"}})
                              .integer("timeout_seconds", 77)
                              .str("durability", "disk")
                              .finish());
    ASSERT_TRUE(r.ok()) << r.str("message");
  }
  // What the queue holds before the crash, read from the segment itself.
  auto snapshot = [&] {
    auto seg = ipc::Segment::attach(j.segment);
    ipc::Producer reader(seg);
    auto all = reader.list(std::nullopt, 1000);
    std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
      if (a.state != b.state) return a.state == ipc::ExecutionState::kActive;
      return a.queue_position.value_or(0) < b.queue_position.value_or(0);
    });
    return all;
  };
  const auto before = snapshot();
  ASSERT_EQ(before.size(), 8u);
  ASSERT_EQ(before[0].state, ipc::ExecutionState::kActive);  // "first" was dispatched
  j.crash_and_reboot();
  j.daemon->start();
  const auto after = snapshot();
  ASSERT_EQ(after.size(), before.size());
  std::map<std::string, ipc::ExecutionRecord> by_id;
  for (const auto& r : after) by_id[r.execution_id] = r;
  for (const auto& b : before) {
    SCOPED_TRACE(b.execution_id);
    ASSERT_TRUE(by_id.count(b.execution_id));
    const auto& a = by_id[b.execution_id];
    EXPECT_EQ(a.user_id, b.user_id);
    EXPECT_EQ(a.priority, b.priority);
    EXPECT_EQ(a.payload, b.payload);
    EXPECT_EQ(a.enqueued_at_ns, b.enqueued_at_ns);
    EXPECT_EQ(a.attempt, b.attempt);
    EXPECT_EQ(a.timeout_seconds, b.timeout_seconds);
    EXPECT_EQ(a.required_capabilities, b.required_capabilities);
    EXPECT_EQ(a.metadata, b.metadata);
  }
  // The order within each priority (the one dispatched before the crash goes back at the head
  // of its priority; the new supervisor dispatches by priority again).
  auto order = [](const std::vector<ipc::ExecutionRecord>& records) {
    std::map<Priority, std::vector<std::string>> out;
    for (const auto& r : records) out[r.priority].push_back(r.execution_id);
    return out;
  };
  EXPECT_EQ(order(after), order(before));
  EXPECT_THAT(j.daemon->log_text(), HasSubstr("of which 1 had been dispatched"));
}

// The supervisor's snapshots (journal_snapshot_min_bytes small, so that a few submits make one
// due): a snapshot restates the live queue, the dispatched and the queued in their order and not
// the finished, and a reboot after it, with records written after it too, brings back exactly
// what the queue held.
TEST(DaemonJournal, ASnapshotRestatesTheLiveQueueInItsOrderWithoutTheFinished) {
  Journaled j(
      {"--max-active-executions=2", "--durability=disk", "--journal-snapshot-min-bytes=4096"});
  j.daemon->start();
  const std::string big(300, 'x');
  auto queue_in_order = [&] {
    auto seg = ipc::Segment::attach(j.segment);
    ipc::Producer reader(seg);
    auto all = reader.list(std::nullopt, 1000);
    std::map<Priority, std::vector<std::string>> out;
    std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
      if (a.state != b.state) return a.state == ipc::ExecutionState::kActive;
      return a.queue_position.value_or(0) < b.queue_position.value_or(0);
    });
    for (const auto& r : all) out[r.priority].push_back(r.execution_id);
    return out;
  };
  {
    Ingress ingress(j.daemon->endpoint());
    for (const char* id : {"a1", "a2"}) {
      ASSERT_TRUE(ingress.call(submit_request(id, "u", "normal", big, "")).ok());
    }
    ASSERT_TRUE(ingress.complete("a1").ok());
    const char* priorities[] = {"low", "normal", "high", "critical"};
    for (int i = 0; i < 24; ++i) {
      const std::string id = "q-" + std::to_string(i);
      ASSERT_TRUE(
          ingress
              .call(submit_request(id, "user-" + std::to_string(i % 3), priorities[i % 4], big, ""))
              .ok());
    }
    const auto deadline = Clock::now() + 10s;
    while (j.daemon->log_text().find("snapshot of") == std::string::npos &&
           Clock::now() < deadline) {
      std::this_thread::sleep_for(5ms);
    }
    ASSERT_THAT(j.daemon->log_text(), HasSubstr("snapshot of"));
    // Records after the snapshot: submits and an end.
    for (const char* id : {"after-1", "after-2"}) {
      ASSERT_TRUE(ingress.call(submit_request(id, "u", "high", big, "")).ok());
    }
    ASSERT_TRUE(ingress.complete("a2").ok());
    const auto settled = Clock::now() + 5s;
    while (listing(ingress).count("a2") && Clock::now() < settled) {
      std::this_thread::sleep_for(5ms);
    }
    ASSERT_FALSE(listing(ingress).count("a2"));
  }
  const auto before = queue_in_order();
  std::size_t n = 0;
  for (const auto& [p, ids] : before) n += ids.size();
  ASSERT_EQ(n, 26u);
  j.crash_and_reboot();
  j.daemon->start();
  EXPECT_EQ(queue_in_order(), before);
  Ingress ingress(j.daemon->endpoint());
  const auto present = listing(ingress);
  EXPECT_FALSE(present.count("a1"));
  EXPECT_FALSE(present.count("a2"));
}

// A finished, a cancelled and an expired execution never come back, even when the segment is
// lost right after a clean stop; the slot of a finished one is given back only once its end is
// on disk, so not even a SIGKILL right after the answer brings a completed one back.
TEST(DaemonJournal, FinishedExecutionsAreNotBroughtBack) {
  Journaled j({"--max-active-executions=2", "--durability=disk"});
  j.daemon->start();
  {
    Ingress ingress(j.daemon->endpoint());
    for (const char* id : {"done", "failed", "cancelled", "waiting"}) {
      ASSERT_TRUE(ingress.call(submit_request(id, "u", "normal", "p", "")).ok());
    }
    ASSERT_TRUE(ingress.complete("done").ok());
    ASSERT_TRUE(ingress.fail("failed", "boom", false).ok());
    ASSERT_TRUE(ingress.op("cancel", "cancelled").ok());
    // The slots go back once the ends are durable; then the queue no longer has them.
    const auto deadline = Clock::now() + 5s;
    while (listing(ingress).size() != 1 && Clock::now() < deadline)
      std::this_thread::sleep_for(5ms);
    ASSERT_EQ(listing(ingress).size(), 1u);
  }
  j.crash_and_reboot();
  j.daemon->start();
  Ingress ingress(j.daemon->endpoint());
  const auto present = listing(ingress);
  EXPECT_EQ(present.size(), 1u);
  EXPECT_TRUE(present.count("waiting"));
}

// The journal's end was torn by a crash mid-write: cut, with a log line saying how much. Damage
// in the middle stops the start with the file, the offset and the way out; that way out keeps
// what precedes the damage.
TEST(DaemonJournal, ATornTailIsCutAndDamageInTheMiddleStopsTheStart) {
  Journaled j({"--max-active-executions=1"});
  j.daemon->start();
  {
    Ingress ingress(j.daemon->endpoint());
    for (int i = 0; i < 20; ++i) {
      ASSERT_TRUE(ingress
                      .call(submit_request("e" + std::to_string(i), "u", "normal",
                                           std::string(300, 'p'), "disk"))
                      .ok());
    }
  }
  j.daemon->signal(SIGTERM);
  j.daemon->wait_exit();
  ipc::Segment::remove(j.segment);
  auto files = j.journal_files();
  ASSERT_FALSE(files.empty());
  {
    std::ofstream torn(files.back(), std::ios::binary | std::ios::app);
    torn << std::string(37, '\x5a');  // half a record
  }
  j.daemon->start();
  EXPECT_THAT(j.daemon->log_text(), HasSubstr("37"));
  EXPECT_THAT(j.daemon->log_text(), HasSubstr("rebuilt it from the journal"));
  j.daemon->signal(SIGTERM);
  j.daemon->wait_exit();
  ipc::Segment::remove(j.segment);

  // One flipped byte in the middle of the first file.
  files = j.journal_files();
  const auto size = fs::file_size(files.front());
  {
    std::fstream f(files.front(), std::ios::binary | std::ios::in | std::ios::out);
    f.seekg(static_cast<std::streamoff>(size / 2));
    char c = 0;
    f.read(&c, 1);
    f.seekp(static_cast<std::streamoff>(size / 2));
    c = static_cast<char>(c ^ 0x10);
    f.write(&c, 1);
  }
  j.daemon->start(false);
  EXPECT_NE(j.daemon->wait_exit(), 0);
  const std::string log = j.daemon->log_text();
  EXPECT_THAT(log, HasSubstr(files.front().filename().string()));
  EXPECT_THAT(log, HasSubstr("--journal-salvage=true"));

  j.daemon->args().push_back("--journal-salvage=true");
  j.daemon->start();
  Ingress ingress(j.daemon->endpoint());
  const auto present = listing(ingress);
  EXPECT_GT(present.size(), 0u) << "salvage kept nothing";
  EXPECT_LT(present.size(), 20u) << "salvage kept records after the damage";
}

// A journal directory that is full or read-only: disk submits are refused with an error that
// says why (not accepted and then lost); memory submits go on; stats and the log show it.
TEST(DaemonJournal, AJournalThatCannotWriteRefusesDiskSubmitsAndMemoryGoesOn) {
  Journaled j({"--max-active-executions=1", "--max-payload-bytes=65536"});
  Tmpfs fs_(j.journal, 512 << 10);
  if (!fs_.mounted()) GTEST_SKIP() << fs_.why();
  j.daemon->start();
  Ingress ingress(j.daemon->endpoint());
  {
    auto stats = ingress.call(MapBuilder().str("op", "stats").finish());
    const auto* journal = ipc::find_field(stats.get(), "journal");
    ASSERT_NE(journal, nullptr);
    EXPECT_EQ(ipc::get_bool(*journal, "durable_marks").value_or(false), true);
  }
  const std::string big(60000, 'b');
  int refused = 0;
  std::string message;
  for (int i = 0; i < 40 && refused == 0; ++i) {
    auto r = ingress.call(submit_request("big-" + std::to_string(i), "u", "normal", big, "disk"));
    if (!r.ok()) {
      ++refused;
      message = r.str("message");
      EXPECT_EQ(r.str("error"), "queue_full");
    }
  }
  ASSERT_EQ(refused, 1) << "a full journal directory never refused a disk submit";
  EXPECT_THAT(message, HasSubstr("journal"));
  // Refused from now on, at once, with the cause; and nothing refused stays queued.
  auto again = ingress.call(submit_request("after-full", "u", "normal", "p", "disk"));
  EXPECT_FALSE(again.ok());
  EXPECT_THAT(again.str("message"), HasSubstr("journal"));
  EXPECT_EQ(ingress.op("status", "after-full").str("error"), "not_found");
  // Memory submits go on.
  EXPECT_TRUE(ingress.call(submit_request("in-memory", "u", "normal", "p", "memory")).ok());
  EXPECT_TRUE(ingress.call(submit_request("default", "u", "normal", "p", "")).ok());
  auto stats = ingress.call(MapBuilder().str("op", "stats").finish());
  const auto* journal = ipc::find_field(stats.get(), "journal");
  ASSERT_NE(journal, nullptr);
  EXPECT_EQ(ipc::get_bool(*journal, "ok").value_or(true), false);
  EXPECT_THAT(ipc::get_string(*journal, "error").value_or(""), HasSubstr("No space"));
  EXPECT_EQ(ipc::get_bool(*journal, "durable_marks").value_or(true), false)
      << "a failed journal still answers shared-memory disk submits";
  EXPECT_THAT(j.daemon->log_text(), HasSubstr("the journal failed"));
  // A shared-memory client's disk submit goes to the ingress now, and is refused there.
  ipc::ClientOptions o;
  o.segment = j.segment;
  o.endpoint = j.daemon->endpoint();
  ipc::Client client(o);
  ASSERT_TRUE(client.shared_memory());
  ipc::protocol::SubmitOp op;
  op.execution_id = "shm-after-full";
  op.user_id = "u";
  op.payload = {std::byte{'p'}};
  op.durability = ipc::protocol::Durability::kDisk;
  const auto r = client.submit(op);
  EXPECT_FALSE(r.via_shared_memory);
  EXPECT_EQ(r.result.admission, Admission::kQueueFull);
  EXPECT_THAT(r.result.message, HasSubstr("journal"));
  EXPECT_EQ(ingress.op("status", "shm-after-full").str("error"), "not_found");
}

// Both exist: the segment wins. An execution the journal holds but the segment no longer has
// (cancelled by a supervisor that ran without the journal) is recorded as ended, and does not
// come back after a later reboot; one the segment has and the journal never saw is recorded.
TEST(DaemonJournal, AnExistingSegmentWinsAndTheJournalFollowsIt) {
  Journaled j({"--max-active-executions=1"});
  j.daemon->start();
  {
    Ingress ingress(j.daemon->endpoint());
    for (const char* id : {"running", "kept", "gone"}) {
      ASSERT_TRUE(ingress.call(submit_request(id, "u", "normal", "p", "disk")).ok());
    }
  }
  j.daemon->signal(SIGTERM);
  j.daemon->wait_exit();
  // A supervisor without the journal changes the queue meanwhile.
  {
    Daemon plain(j.dir, j.segment, {"--max-active-executions=1", "--journal-dir=off"});
    plain.start();
    Ingress ingress(plain.endpoint());
    ASSERT_TRUE(ingress.op("cancel", "gone").ok());
    ASSERT_TRUE(ingress.call(submit_request("unjournaled", "u", "normal", "p", "")).ok());
    plain.signal(SIGTERM);
    plain.wait_exit();
  }
  j.daemon->start();
  EXPECT_THAT(j.daemon->log_text(), HasSubstr("no longer in the queue"));
  j.daemon->signal(SIGTERM);
  j.daemon->wait_exit();
  ipc::Segment::remove(j.segment);
  j.daemon->start();
  Ingress ingress(j.daemon->endpoint());
  const auto present = listing(ingress);
  EXPECT_EQ(present.size(), 3u);
  EXPECT_TRUE(present.count("running") && present.count("kept") && present.count("unjournaled"));
  EXPECT_FALSE(present.count("gone"));
}

// Without a journal, a submit that asks for disk is refused (never acknowledged as something it
// is not); the default durability disk needs journal_dir.
TEST(DaemonJournal, DiskWithoutAJournalIsRefused) {
  DaemonFixture f("nojournal", {"--journal-dir=off"});
  auto r = f.ingress->call(submit_request("x", "u", "normal", "p", "disk"));
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.str("error"), "invalid");
  EXPECT_THAT(r.str("message"), HasSubstr("journal_dir"));
  auto bad = f.ingress->call(submit_request("y", "u", "normal", "p", "tape"));
  EXPECT_EQ(bad.str("error"), "invalid");

  Daemon d(temp_dir("nojournal2"), segment_name("nojournal2"), {"--durability=disk"});
  d.start(false);
  EXPECT_NE(d.wait_exit(), 0);
  EXPECT_THAT(d.log_text(), HasSubstr("journal_dir"));
}

}  // namespace
}  // namespace shmsched::test

// Review findings
//
// Reproductions of defects found in the review of the journal (commits 031ab6c, e9de6ff): each
// fails on the code it was written against. Some stop the journal's writer thread with ptrace
// (FrozenWriter): nothing appended reaches the file while it is stopped, which is what a disk
// that stalls looks like, and, followed by a SIGKILL, what a power cut before the batch's
// fdatasync leaves.
#include <sys/ptrace.h>
#include <sys/statvfs.h>

#include <cstring>
#include <iostream>

namespace shmsched::test {
namespace {

// The journal's writer thread of a running shmschedd, stopped (ptrace, from this thread only).
class FrozenWriter {
 public:
  explicit FrozenWriter(pid_t pid) : pid_(pid) {
    std::vector<pid_t> tids;
    for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
      const pid_t t = std::stoi(e.path().filename().string());
      if (t != pid) tids.push_back(t);
    }
    std::sort(tids.begin(), tids.end());
    for (const pid_t t : tids) {
      std::ifstream comm("/proc/" + std::to_string(pid) + "/task/" + std::to_string(t) + "/comm");
      std::string name;
      std::getline(comm, name);
      if (name == "journal-writer") {
        tid_ = t;
        break;
      }
    }
    if (tid_ <= 0) throw std::runtime_error("the journal's writer thread was not found");
    if (::ptrace(PTRACE_SEIZE, tid_, nullptr, nullptr) != 0) {
      throw std::runtime_error(std::string("PTRACE_SEIZE: ") + std::strerror(errno));
    }
    ::ptrace(PTRACE_INTERRUPT, tid_, nullptr, nullptr);
    int status = 0;
    ::waitpid(tid_, &status, __WALL);
    frozen_ = true;
  }
  ~FrozenWriter() { thaw(); }
  FrozenWriter(const FrozenWriter&) = delete;
  FrozenWriter& operator=(const FrozenWriter&) = delete;

  void thaw() {
    if (!frozen_) return;
    frozen_ = false;
    ::ptrace(PTRACE_DETACH, tid_, nullptr, nullptr);
  }
  // SIGKILL while the writer is stopped: what it had not written is lost.
  void kill_process(Daemon& d) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(tid_, &status, __WALL);  // a traced thread is reaped by its tracer
    frozen_ = false;
    d.wait_exit();
  }

 private:
  pid_t pid_;
  pid_t tid_ = -1;
  bool frozen_ = false;
};

// A client whose calls may wait long (an acknowledgement that waits for the disk).
std::unique_ptr<ipc::Client> patient_client(const std::string& endpoint,
                                            std::chrono::milliseconds timeout = 60s) {
  ipc::ClientOptions o;
  o.endpoint = endpoint;
  o.use_shared_memory = false;
  o.timeout = timeout;
  return std::make_unique<ipc::Client>(o);
}

bool ok_reply(const msgpack::object_handle& r) {
  return ipc::get_bool(r.get(), "ok").value_or(false);
}

void wait_for_state(Ingress& ingress, const std::string& id, const std::string& state) {
  const auto deadline = Clock::now() + 10s;
  while (Clock::now() < deadline) {
    const auto l = listing(ingress);
    if (auto it = l.find(id); it != l.end() && it->second == state) return;
    std::this_thread::sleep_for(5ms);
  }
  FAIL() << id << " never became " << state;
}

std::size_t occurrences(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Finding: the supervisor's configured durability = disk does not reach a client that writes to
// shared memory. ipc::Client sends a submit through the ingress only when the submit itself
// names disk; one that names no durability (the supervisor's default applies, says
// docs/protocol.md) goes straight into the segment and is acknowledged there, before the
// supervisor has even seen it. A reboot then loses it.
TEST(DaemonJournal, ReviewTheConfiguredDiskDurabilityHoldsForSharedMemoryClients) {
  Journaled j({"--durability=disk"});
  j.daemon->start();
  ipc::ClientOptions o;
  o.segment = j.segment;
  o.endpoint = j.daemon->endpoint();
  o.timeout = 10s;
  ipc::Client client(o);
  ASSERT_TRUE(client.shared_memory());
  ipc::protocol::SubmitOp op;
  op.execution_id = "shm-default";
  op.user_id = "u";
  op.payload = {std::byte{'p'}};
  const auto r = client.submit(op);
  ASSERT_TRUE(r.result.accepted()) << r.result.message;
  // Through shared memory, answered once the supervisor marked it durable.
  EXPECT_TRUE(r.via_shared_memory);
  j.crash_and_reboot();
  j.daemon->start();
  Ingress ingress(j.daemon->endpoint());
  EXPECT_TRUE(listing(ingress).count("shm-default")) << "acknowledged, and lost by a reboot";
}

// A shared-memory submit with durability disk returns only once its record is on disk. Its
// supervisor killed before it wrote the record, the submitter goes on waiting; the next
// supervisor on the same segment journals what its predecessor had not, marks it, and the
// submitter returns: a reboot after that keeps it.
TEST(DaemonJournal, ASharedMemoryDiskSubmitWaitsAcrossASupervisorKillForTheDisk) {
  Journaled j({});
  j.daemon->start();
  ipc::ClientOptions o;
  o.segment = j.segment;
  o.endpoint = j.daemon->endpoint();
  o.timeout = 60s;
  std::optional<ipc::ClientSubmitResult> result;
  std::string error;
  {
    FrozenWriter writer(j.daemon->pid());
    auto client = std::make_unique<ipc::Client>(o);
    ASSERT_TRUE(client->shared_memory());
    std::promise<void> returned;
    auto done = returned.get_future();
    std::thread submitter([&] {
      ipc::protocol::SubmitOp op;
      op.execution_id = "shm-disk";
      op.user_id = "u";
      op.payload = {std::byte{'p'}};
      op.durability = ipc::protocol::Durability::kDisk;
      try {
        result = client->submit(op);
      } catch (const std::exception& e) {
        error = e.what();
      }
      returned.set_value();
    });
    {
      Ingress ingress(j.daemon->endpoint());
      wait_for_state(ingress, "shm-disk", "dispatched");  // the supervisor has seen it
    }
    EXPECT_EQ(done.wait_for(200ms), std::future_status::timeout)
        << "answered before its record was written";
    writer.kill_process(*j.daemon);  // the record was never written
    EXPECT_EQ(done.wait_for(200ms), std::future_status::timeout)
        << "answered by a killed supervisor";
    j.daemon->start();  // the same segment
    submitter.join();
  }
  ASSERT_TRUE(error.empty()) << error;
  ASSERT_TRUE(result.has_value());
  EXPECT_TRUE(result->via_shared_memory);
  ASSERT_TRUE(result->result.accepted()) << result->result.message;
  j.crash_and_reboot();
  j.daemon->start();
  Ingress ingress(j.daemon->endpoint());
  EXPECT_TRUE(listing(ingress).count("shm-disk"))
      << "acknowledged as durable, and lost by a reboot";
}

// Client::submit_many through shared memory: the batch goes into the segment, and the call
// returns once every disk submit of it is on disk (one wait, not one per submit). While the
// journal cannot write, a short timeout names how many are queued and not confirmed; a duplicate
// inside the batch is answered as submit() would answer it. A reboot keeps all it acknowledged.
TEST(DaemonJournal, ABatchOfSharedMemoryDiskSubmitsIsAnsweredOnceAllAreOnDisk) {
  Journaled j({});
  j.daemon->start();
  auto batch = [](const std::string& prefix, std::size_t n) {
    std::vector<ipc::protocol::SubmitOp> ops(n);
    for (std::size_t i = 0; i < n; ++i) {
      ops[i].execution_id = prefix + std::to_string(i);
      ops[i].user_id = "u";
      ops[i].payload = {std::byte{'p'}};
      ops[i].durability = ipc::protocol::Durability::kDisk;
    }
    return ops;
  };
  ipc::ClientOptions o;
  o.segment = j.segment;
  o.endpoint = j.daemon->endpoint();
  o.timeout = 60s;
  std::vector<ipc::ClientSubmitResult> results;
  std::string error;
  {
    FrozenWriter writer(j.daemon->pid());
    ipc::ClientOptions quick = o;
    quick.timeout = 300ms;
    ipc::Client impatient(quick);
    ASSERT_TRUE(impatient.shared_memory());
    try {
      impatient.submit_many(batch("early-", 20));
      ADD_FAILURE() << "a batch was confirmed while the journal could not write";
    } catch (const ipc::ClientError& e) {
      EXPECT_THAT(e.what(), HasSubstr("20 of the batch's 20 executions are queued"));
    }
    ipc::Client client(o);
    std::promise<void> returned;
    auto done = returned.get_future();
    std::thread submitter([&] {
      auto ops = batch("b-", 50);
      ops[49].execution_id = "b-7";  // a duplicate inside the batch
      try {
        results = client.submit_many(ops);
      } catch (const std::exception& e) {
        error = e.what();
      }
      returned.set_value();
    });
    {
      Ingress ingress(j.daemon->endpoint());
      wait_for_state(ingress, "b-48", "queued");  // the supervisor has seen the batch
    }
    EXPECT_EQ(done.wait_for(200ms), std::future_status::timeout)
        << "answered before the batch was on disk";
    writer.thaw();
    submitter.join();
  }
  ASSERT_TRUE(error.empty()) << error;
  ASSERT_EQ(results.size(), 50u);
  for (std::size_t i = 0; i < 49; ++i) {
    EXPECT_TRUE(results[i].result.accepted()) << i << ": " << results[i].result.message;
    EXPECT_TRUE(results[i].via_shared_memory);
    EXPECT_EQ(results[i].execution_id, "b-" + std::to_string(i));
  }
  EXPECT_EQ(results[49].result.admission, Admission::kDuplicate);
  j.crash_and_reboot();
  j.daemon->start();
  Ingress ingress(j.daemon->endpoint());
  const auto l = listing(ingress);
  for (std::size_t i = 0; i < 49; ++i) {
    EXPECT_TRUE(l.count("b-" + std::to_string(i))) << "b-" << i << " acknowledged, and lost";
  }
  // The early batch was queued before its timeout, and written once the writer went on.
  EXPECT_TRUE(l.count("early-19"));
}

// Finding: a supervisor killed after an execution's end was decided and before its finished
// record was written leaves the slot marked finished (the release waits for the record). The
// next supervisor on the same segment releases that slot (Scheduler: Recovered in phase
// finished -> Release; release_after_journal releases at once, nothing is pending) without ever
// recording the end, and reconcile_with_journal does not notice (the id is in both). The
// journal holds the execution for good: a reboot, however much later, brings a completed
// execution back and dispatches it again.
TEST(DaemonJournal, ReviewAFinishedSlotReleasedByTheNextSupervisorIsRecordedAsFinished) {
  // Durability memory by default: the complete is answered before its record is on disk.
  Journaled j({"--max-active-executions=1"});
  j.daemon->start();
  {
    Ingress ingress(j.daemon->endpoint());
    ASSERT_TRUE(ingress.call(submit_request("done", "u", "normal", "p", "disk")).ok());
    wait_for_state(ingress, "done", "dispatched");
    FrozenWriter writer(j.daemon->pid());
    ASSERT_TRUE(ingress.complete("done").ok());
    writer.kill_process(*j.daemon);  // a SIGKILL before the writer wrote the finished record
  }
  j.daemon->start();  // the same segment (no reboot): the slot marked finished is given back
  {
    Ingress ingress(j.daemon->endpoint());
    const auto deadline = Clock::now() + 5s;
    while (!listing(ingress).empty() && Clock::now() < deadline) std::this_thread::sleep_for(5ms);
    ASSERT_TRUE(listing(ingress).empty());
    ASSERT_EQ(ingress.op("status", "done").str("state"), "completed");
  }
  EXPECT_EQ(j.daemon->signal(SIGTERM), 0);  // a clean stop: everything appended is synced
  ipc::Segment::remove(j.segment);          // a reboot, any time later
  j.daemon->start();
  Ingress ingress(j.daemon->endpoint());
  EXPECT_FALSE(listing(ingress).count("done"))
      << "an execution completed (and released by a supervisor that ran on) came back after a "
         "reboot and is dispatched again";
}

// Finding: the answers to cancel, complete and fail went out before the finished record was on
// disk; a power cut in between (simulated: the writer stopped, then SIGKILL and the segment
// removed) brought back an execution whose cancel was answered 'cancelled'. With durability =
// disk configured, such an answer now waits for the record.
TEST(DaemonJournal, ReviewACancelAnsweredBeforeItsRecordIsOnDiskStaysCancelledAfterAPowerCut) {
  Journaled j({"--max-active-executions=1", "--durability=disk"});
  j.daemon->start();
  Ingress ingress(j.daemon->endpoint());
  ASSERT_TRUE(ingress.call(submit_request("running", "u", "normal", "p", "")).ok());
  ASSERT_TRUE(ingress.call(submit_request("to-cancel", "u", "normal", "p", "")).ok());
  wait_for_state(ingress, "running", "dispatched");
  {
    FrozenWriter writer(j.daemon->pid());
    std::atomic<bool> answered{false};
    std::thread canceller([&] {
      auto c = patient_client(j.daemon->endpoint());
      answered = ok_reply(
          c->call(MapBuilder().str("op", "cancel").str("execution_id", "to-cancel").finish()));
    });
    std::this_thread::sleep_for(300ms);
    EXPECT_FALSE(answered) << "answered 'cancelled' before its record could be on disk";
    writer.thaw();
    canceller.join();
    EXPECT_TRUE(answered);
  }
  j.crash_and_reboot();
  j.daemon->start();
  Ingress after(j.daemon->endpoint());
  EXPECT_FALSE(listing(after).count("to-cancel")) << "answered 'cancelled', then brought back";
}

// Finding: a disk that stalls while more than 65,536 records wait for it (the writer's default
// bound). Before the fix a finished record over the bound was dropped (the cancelled and the
// completed execution came back after a reboot), and an accepted record stopped the loop for
// 10 s, was dropped, and its disk submit was acknowledged anyway (lost by a reboot). Now the
// records wait in memory, the loop goes on, and the acknowledgement waits for the disk.
TEST(DaemonJournal, ReviewAStalledDiskNeitherDropsRecordsNorAcknowledgesWhatIsNotOnDisk) {
  constexpr int kFill = 65536;  // WriterOptions::max_pending_records
  Journaled j({"--max-active-executions=1", "--max-queue-size=70000", "--max-payload-bytes=64",
               "--max-extras-bytes=256"});
  j.daemon->start();
  auto loop_client = patient_client(j.daemon->endpoint());
  ASSERT_TRUE(ok_reply(loop_client->call(submit_request("running", "u", "normal", "p", "disk"))));
  {
    Ingress ingress(j.daemon->endpoint());
    wait_for_state(ingress, "running", "dispatched");
  }
  // A barrier: once a disk submit is answered, everything appended before it is on disk.
  ASSERT_TRUE(ok_reply(loop_client->call(submit_request("barrier", "u", "normal", "p", "disk"))));

  FrozenWriter writer(j.daemon->pid());
  {
    auto seg = ipc::Segment::attach(j.segment);
    ipc::Producer producer(seg);
    const std::byte payload[1] = {std::byte{'f'}};
    for (int i = 0; i < kFill; ++i) {
      const std::string id = "f" + std::to_string(i);
      const std::string user = "u" + std::to_string(i % 1000);
      ipc::SubmitRequest r;
      r.execution_id = id;
      r.user_id = user;
      r.payload = payload;
      ASSERT_TRUE(producer.submit(r).accepted()) << id;
    }
  }
  // A cancel announces everything queued first (kFill accepted records: the bound is reached);
  // its own finished record is the first one over it.
  const auto cancelled =
      loop_client->call(MapBuilder().str("op", "cancel").str("execution_id", "f0").finish());
  ASSERT_TRUE(ok_reply(cancelled));
  ASSERT_TRUE(ok_reply(loop_client->call(
      MapBuilder().str("op", "complete").str("execution_id", "running").finish())));

  // A disk submit now: its accepted record does not fit either.
  std::atomic<bool> acked{false};
  std::thread submitter([&] {
    auto c = patient_client(j.daemon->endpoint());
    try {
      acked = ok_reply(c->call(submit_request("acked", "u", "normal", "p", "disk")));
    } catch (const std::exception&) {
    }
  });
  // The loop goes on while the disk stalls: it answers at once what needs no disk.
  {
    const auto asked = Clock::now();
    Ingress ingress(j.daemon->endpoint());
    EXPECT_TRUE(ingress.op("status", "barrier").ok());
    EXPECT_LT(Clock::now() - asked, 2s) << "a stalled disk stopped the loop";
  }
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(acked) << "a disk submit was answered while its record could not be on disk";
  writer.thaw();  // the disk comes back
  submitter.join();
  // Everything appended is on disk once a later disk submit is answered.
  ASSERT_TRUE(ok_reply(loop_client->call(submit_request("barrier-2", "u", "normal", "p", "disk"))));
  {
    Ingress ingress(j.daemon->endpoint());
    const auto deadline = Clock::now() + 10s;
    while (ingress.op("status", "running").str("state") != "completed" && Clock::now() < deadline)
      std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(acked) << "(the disk submit was not acknowledged: the finding below is moot)";

  j.crash_and_reboot();
  j.daemon->start();
  Ingress ingress(j.daemon->endpoint());
  EXPECT_EQ(ingress.op("status", "barrier").str("error"), "") << "durable before the stall";
  EXPECT_NE(ingress.op("status", "acked").str("error"), "not_found")
      << "acknowledged with durability disk, and lost by a reboot";
  EXPECT_EQ(ingress.op("status", "running").str("error"), "not_found")
      << "completed (its slot given back once the journal was durable), back after a reboot";
  EXPECT_EQ(ingress.op("status", "f0").str("error"), "not_found")
      << "cancelled (answered 'cancelled'), back after a reboot";
}

// Finding: a disk submit whose write failed part-way (ENOSPC) was answered "it was not accepted"
// and cancelled, although its own record was written whole before the failure (the record
// after it was cut): a reboot brought the refused execution back, and the client, told to submit
// again, had it twice. Now the answer says what is known: it is queued, and may not survive a
// reboot.
TEST(DaemonJournal, ReviewADiskSubmitCaughtInAFailedWriteIsToldWhatIsKnown) {
  Journaled j({"--max-active-executions=1", "--max-payload-bytes=65536"});
  Tmpfs fs_(j.journal, 1 << 20);
  if (!fs_.mounted()) GTEST_SKIP() << fs_.why();
  j.daemon->start();
  auto client = patient_client(j.daemon->endpoint());
  ASSERT_TRUE(ok_reply(client->call(submit_request("running", "u", "normal", "p", "disk"))));
  {
    Ingress ingress(j.daemon->endpoint());
    wait_for_state(ingress, "running", "dispatched");
  }
  ASSERT_TRUE(ok_reply(client->call(submit_request("barrier", "u", "normal", "p", "disk"))));
  // Ballast leaves about two pages free: room for a small record, not for a 60 kB one.
  const std::string ballast = j.journal + "/ballast";
  {
    struct statvfs st {};
    ASSERT_EQ(::statvfs(j.journal.c_str(), &st), 0);
    const std::uint64_t free_bytes = st.f_bavail * st.f_frsize;
    ASSERT_GT(free_bytes, 16384u);
    std::ofstream b(ballast, std::ios::binary);
    b << std::string(free_bytes - 8192, 'b');
  }
  std::string refusal;
  std::string error;
  std::optional<ipc::ClientSubmitResult> shm;
  std::string shm_error;
  {
    FrozenWriter writer(j.daemon->pid());
    std::thread submitter([&] {
      auto c = patient_client(j.daemon->endpoint());
      auto r = c->call(submit_request("refused", "u", "normal", std::string(1000, 'r'), "disk"));
      error = ipc::get_string(r.get(), "error").value_or("");
      refusal = ipc::get_string(r.get(), "message").value_or("");
    });
    // The same through shared memory: it waits for a durable mark that never comes.
    std::thread shm_submitter([&] {
      ipc::ClientOptions o;
      o.segment = j.segment;
      o.endpoint = j.daemon->endpoint();
      o.timeout = 60s;
      ipc::Client c(o);
      ipc::protocol::SubmitOp op;
      op.execution_id = "refused-shm";
      op.user_id = "u";
      op.payload.assign(1000, std::byte{'s'});
      op.durability = ipc::protocol::Durability::kDisk;
      try {
        shm = c.submit(op);
      } catch (const std::exception& e) {
        shm_error = e.what();
      }
    });
    // Queued behind it, a memory submit whose record does not fit: the batch's write fails in it.
    std::this_thread::sleep_for(300ms);
    ASSERT_TRUE(ok_reply(
        client->call(submit_request("big", "u", "normal", std::string(60000, 'g'), "memory"))));
    std::this_thread::sleep_for(300ms);
    writer.thaw();
    submitter.join();
    shm_submitter.join();
  }
  // Its record may be whole on disk (the write failed after it): it is not called refused, and
  // not cancelled; the client is told it is queued and may not survive a reboot.
  ASSERT_EQ(error, "queue_full") << refusal;
  EXPECT_THAT(refusal, HasSubstr("is queued"));
  EXPECT_THAT(refusal, HasSubstr("may not survive a reboot"));
  ASSERT_TRUE(shm_error.empty()) << shm_error;
  ASSERT_TRUE(shm.has_value());
  EXPECT_TRUE(shm->via_shared_memory);
  EXPECT_EQ(shm->result.admission, Admission::kQueueFull) << shm->result.message;
  EXPECT_THAT(shm->result.message, HasSubstr("is queued"));
  EXPECT_THAT(shm->result.message, HasSubstr("may not survive a reboot"));
  {
    Ingress ingress(j.daemon->endpoint());
    EXPECT_EQ(ingress.op("status", "refused").str("state"), "queued");
    EXPECT_EQ(ingress.op("status", "refused-shm").str("state"), "queued");
  }
  j.crash_and_reboot();
  fs::remove(ballast);  // the cause is fixed before the restart
  j.daemon->start();
  Ingress ingress(j.daemon->endpoint());
  const auto present = listing(ingress);
  ASSERT_TRUE(present.count("barrier"));
}

// Finding: a journal directory that is full when shmschedd starts after a reboot (the segment is
// gone) stops the start: the 'restoring' marker cannot be written, and shmschedd exits 1 (under
// systemd, a restart loop). Nothing runs then, memory submits included, although the journal
// can be read and the queue filled from it.
TEST(DaemonJournal, ReviewAFullJournalDirectoryAtStartStillLetsMemorySubmitsGoOn) {
  Journaled j({"--max-active-executions=1"});
  Tmpfs fs_(j.journal, 512 << 10);
  if (!fs_.mounted()) GTEST_SKIP() << fs_.why();
  j.daemon->start();
  {
    Ingress ingress(j.daemon->endpoint());
    for (const char* id : {"a", "b", "c"}) {
      ASSERT_TRUE(ingress.call(submit_request(id, "u", "normal", "p", "disk")).ok());
    }
  }
  {
    // The disk fills up (another writer on the same filesystem).
    std::ofstream b(j.journal + "/ballast", std::ios::binary);
    const std::string chunk(4096, 'b');
    while (b.write(chunk.data(), static_cast<std::streamsize>(chunk.size())) && b.flush()) {
    }
  }
  j.crash_and_reboot();
  j.daemon->start(false);
  bool ready = false;
  try {
    j.daemon->wait_until_ready();
    ready = true;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "shmschedd did not start with a full journal directory:\n" << e.what();
  }
  if (!ready) return;
  Ingress ingress(j.daemon->endpoint());
  EXPECT_TRUE(ingress.call(submit_request("in-memory", "u", "normal", "p", "memory")).ok());
  EXPECT_EQ(listing(ingress).size(), 4u) << "the journal's executions were not brought back";
}

// Finding (minor): a fill that did not fit the queue (max_queue_size too small for the journal's
// live executions) stops the start with "configure a queue that holds them, e.g.
// max_queue_size", but it has already created the segment at the old size: the next start with
// the larger size is refused too ("exists with other sizes ... remove it"). Nothing is lost (the
// 'restoring' marker stays), but the advice given does not work by itself.
TEST(DaemonJournal, ReviewARestoreThatDidNotFitWorksOnceTheQueueIsLarger) {
  Journaled j({"--max-active-executions=1", "--max-queue-size=10"});
  j.daemon->start();
  {
    Ingress ingress(j.daemon->endpoint());
    for (int i = 0; i < 6; ++i) {
      ASSERT_TRUE(
          ingress.call(submit_request("e" + std::to_string(i), "u", "normal", "p", "disk")).ok());
    }
  }
  j.crash_and_reboot();
  auto set_queue = [&](const std::string& size) {
    for (auto& a : j.daemon->args()) {
      if (a.rfind("--max-queue-size", 0) == 0) a = "--max-queue-size=" + size;
    }
  };
  set_queue("3");
  j.daemon->start(false);
  ASSERT_NE(j.daemon->wait_exit(), 0);
  ASSERT_THAT(j.daemon->log_text(), HasSubstr("max_queue_size"));
  set_queue("10");  // as the message says
  j.daemon->start(false);
  try {
    j.daemon->wait_until_ready();
  } catch (const std::exception& e) {
    FAIL() << "the advised fix does not start:\n" << e.what();
  }
  Ingress ingress(j.daemon->endpoint());
  EXPECT_EQ(listing(ingress).size(), 6u);
}

// Finding (minor): after a fill cut short by a crash, the next start fills again and skips what
// the segment has (kDuplicate), but only the executions it adds itself are kept from being
// announced: those the first fill had put in are announced again (ExecutionAccepted, the audit
// log's 'accepted'), contrary to "They are not announced again".
TEST(DaemonJournal, ReviewAFillCutShortDoesNotAnnounceRestoredExecutionsAgain) {
  Journaled j({"--max-active-executions=1"});
  const std::string audit = j.dir + "-audit";
  j.daemon->args().push_back("--audit-dir=" + audit);
  j.daemon->start();
  auto accepted = [&](const std::string& id) {
    const std::string cmd = std::string(SHMSCHED_BIN_DIR) + "/shmschedctl --json audit --dir " +
                            audit + " --execution " + id;
    FILE* f = ::popen(cmd.c_str(), "r");
    std::string out;
    char buf[4096];
    while (f && std::fgets(buf, sizeof buf, f)) out += buf;
    if (f) ::pclose(f);
    return occurrences(out, "\"type\":\"accepted\"");
  };
  {
    Ingress ingress(j.daemon->endpoint());
    for (const char* id : {"a", "b", "c"}) {
      ASSERT_TRUE(ingress.call(submit_request(id, "u", "normal", "p", "disk")).ok());
    }
  }
  // The audit log is written by its own thread: the kill comes once it holds all three
  // acceptances (a kill before would lose them from the log, which is not what is tested here).
  const auto deadline = Clock::now() + 20s;
  while (accepted("c") == 0 && Clock::now() < deadline) std::this_thread::sleep_for(20ms);
  ASSERT_EQ(accepted("c"), 1u) << "the audit log never recorded c's acceptance";
  j.crash_and_reboot();
  // What a supervisor killed in the middle of its fill leaves: the marker, and a segment with
  // the first of the journal's executions in it (the dispatched one goes first).
  {
    std::ofstream("/dev/shm/" + j.segment + ".restoring").put('\n');
    auto seg = ipc::Segment::create(j.segment, ipc::SegmentConfig{});
    ipc::Producer producer(seg);
    const std::byte p[1] = {std::byte{'p'}};
    ipc::SubmitRequest r;
    r.execution_id = "a";
    r.user_id = "u";
    r.payload = p;
    ASSERT_TRUE(producer.submit(r).accepted());
  }
  j.daemon->start();
  {
    Ingress ingress(j.daemon->endpoint());
    ASSERT_EQ(listing(ingress).size(), 3u);
  }
  EXPECT_EQ(j.daemon->signal(SIGTERM), 0);
  EXPECT_EQ(accepted("b"), 1u);
  EXPECT_EQ(accepted("a"), 1u) << "announced again after the fill cut short";
  fs::remove_all(audit);
}

// Second review

// Finding: with durability = disk, the answer to a complete waits in the inbox (DurableWaitMessage,
// then DurableDoneMessage posted by the journal's callback). A stop that comes meanwhile never
// reads the inbox again after its one process_inbox(): the complete was carried out and its
// record reaches the disk during the stop (the stop even waits for it, for the slot's release),
// and the client is never answered. With durability = memory it was answered at once.
TEST(DaemonJournal, SecondReviewACompleteCarriedOutBeforeAStopIsAnswered) {
  Journaled j({"--max-active-executions=1", "--durability=disk"});
  j.daemon->start();
  {
    Ingress ingress(j.daemon->endpoint());
    ASSERT_TRUE(ingress.call(submit_request("running", "u", "normal", "p", "disk")).ok());
    wait_for_state(ingress, "running", "dispatched");
  }
  FrozenWriter writer(j.daemon->pid());
  std::atomic<int> outcome{0};  // 1 answered ok, 2 answered an error, 3 no answer
  std::thread completer([&] {
    auto c = patient_client(j.daemon->endpoint(), 15s);
    try {
      outcome = ok_reply(c->call(
                    MapBuilder().str("op", "complete").str("execution_id", "running").finish()))
                    ? 1
                    : 2;
    } catch (const std::exception&) {
      outcome = 3;
    }
  });
  std::this_thread::sleep_for(300ms);
  ASSERT_EQ(outcome.load(), 0);  // waits for the disk, as it should
  ::kill(j.daemon->pid(), SIGTERM);
  std::this_thread::sleep_for(500ms);  // stopping: it waits up to 5 s for the disk
  writer.thaw();                       // the disk comes back within that wait
  completer.join();
  EXPECT_EQ(j.daemon->wait_exit(), 0);
  EXPECT_EQ(outcome.load(), 1)
      << "a complete carried out, its record on disk before the supervisor exited, was never "
         "answered (the client is left to guess; a transport's message is not acknowledged)";
}

// Finding (the fix of ReviewARestoreThatDidNotFitWorksOnceTheQueueIsLarger is partial): only
// max_queue_size is checked before the segment is created. A journal whose live executions name
// more users than max_users creates the segment, then the fill fails (user_limit); the next start
// with a larger max_users is refused, the segment existing with other sizes.
TEST(DaemonJournal, SecondReviewARestoreWithMoreUsersThanMaxUsersWorksOnceMaxUsersIsLarger) {
  Journaled j({"--max-active-executions=1", "--max-users=16"});
  j.daemon->start();
  {
    Ingress ingress(j.daemon->endpoint());
    for (int i = 0; i < 6; ++i) {
      const std::string n = std::to_string(i);
      ASSERT_TRUE(ingress.call(submit_request("e" + n, "u" + n, "normal", "p", "disk")).ok());
    }
  }
  j.crash_and_reboot();
  auto set_users = [&](const std::string& n) {
    for (auto& a : j.daemon->args()) {
      if (a.rfind("--max-users", 0) == 0) a = "--max-users=" + n;
    }
  };
  set_users("2");
  j.daemon->start(false);
  ASSERT_NE(j.daemon->wait_exit(), 0);
  set_users("16");  // what the journal needs
  j.daemon->start(false);
  try {
    j.daemon->wait_until_ready();
  } catch (const std::exception& e) {
    FAIL() << "a larger max_users does not start:\n" << e.what();
  }
  Ingress ingress(j.daemon->endpoint());
  EXPECT_EQ(listing(ingress).size(), 6u);
}

// Finding: a full journal directory at start filled the queue without the 'restoring' marker
// (which lived in the journal directory): a supervisor killed during that fill left a half-filled
// segment and no marker, which the next start took for the newer truth, dropping from the journal
// what was not filled yet. The marker now lives beside the segment, in /dev/shm: a full journal
// disk cannot keep it from being written. (Simulated: the state a kill in the middle of the fill
// leaves, with the journal's disk full.)
TEST(DaemonJournal, SecondReviewAFillCutShortWhileTheJournalDiskIsFullLosesNothing) {
  Journaled j({"--max-active-executions=1"});
  Tmpfs fs_(j.journal, 512 << 10);
  if (!fs_.mounted()) GTEST_SKIP() << fs_.why();
  j.daemon->start();
  {
    Ingress ingress(j.daemon->endpoint());
    for (const char* id : {"a", "b", "c"}) {
      ASSERT_TRUE(ingress.call(submit_request(id, "u", "normal", "p", "disk")).ok());
    }
  }
  j.crash_and_reboot();
  const std::string ballast = j.journal + "/ballast";
  {
    std::ofstream b(ballast, std::ios::binary);
    const std::string chunk(64 << 10, 'b');
    while (b.write(chunk.data(), static_cast<std::streamsize>(chunk.size()))) {
    }
  }
  {
    std::ofstream("/dev/shm/" + j.segment + ".restoring").put('\n');
    auto seg = ipc::Segment::create(j.segment, ipc::SegmentConfig{});
    ipc::Producer producer(seg);
    const std::byte p[1] = {std::byte{'p'}};
    ipc::SubmitRequest r;
    r.execution_id = "a";
    r.user_id = "u";
    r.payload = p;
    ASSERT_TRUE(producer.submit(r).accepted());
  }
  j.daemon->start();
  {
    Ingress ingress(j.daemon->endpoint());
    EXPECT_EQ(listing(ingress).size(), 3u) << "acknowledged with durability disk, and dropped";
  }
  EXPECT_EQ(j.daemon->signal(SIGTERM), 0);
  fs::remove(ballast);
  ipc::Segment::remove(j.segment);
  j.daemon->start();
  Ingress ingress(j.daemon->endpoint());
  EXPECT_EQ(listing(ingress).size(), 3u) << "dropped from the journal";
}

// Finding (durable marks): the reconcile at start compared ids only. A supervisor killed after
// it cancelled x (answered) and before the finished record was written leaves a journal that
// holds the old x; a shared-memory client that submitted x again meanwhile (durability disk,
// announced by that supervisor, whose records never reached the disk) waits for its mark. The
// next supervisor found "x" in both, wrote nothing, and marked the new x durable at start: the
// journal held another occupant's record (user, payload), and never learned of this one (it was
// announced already). A reboot brought back the cancelled x, and the acknowledged one was lost.
TEST(DaemonJournal, ThirdReviewTheStartMarksOnlyAnOccupantTheJournalHolds) {
  Journaled j({"--max-active-executions=1"});
  j.daemon->start();
  Ingress ingress(j.daemon->endpoint());
  Events events(j.daemon->events_endpoint());
  events.sync(ingress);
  ASSERT_TRUE(ingress.call(submit_request("running", "u", "normal", "p", "disk")).ok());
  wait_for_state(ingress, "running", "dispatched");
  ASSERT_TRUE(ingress.call(submit_request("x", "old-user", "normal", "old", "disk")).ok());

  ipc::ClientOptions o;
  o.segment = j.segment;
  o.endpoint = j.daemon->endpoint();
  o.timeout = 20s;
  ipc::Client client(o);
  ASSERT_TRUE(client.shared_memory());
  std::optional<ipc::ClientSubmitResult> result;
  std::string error;
  std::promise<void> returned;
  auto done = returned.get_future();
  std::thread submitter;
  {
    FrozenWriter writer(j.daemon->pid());
    ASSERT_TRUE(ingress.op("cancel", "x").ok());  // answered; its record never reaches the disk
    submitter = std::thread([&] {
      ipc::protocol::SubmitOp op;
      op.execution_id = "x";
      op.user_id = "new-user";
      op.payload = {std::byte{'n'}, std::byte{'e'}, std::byte{'w'}};
      op.durability = ipc::protocol::Durability::kDisk;
      try {
        result = client.submit(op);
      } catch (const std::exception& e) {
        error = e.what();
      }
      returned.set_value();
    });
    // The supervisor announced the new x (its accepted record waits for the frozen writer).
    int seen = 0;
    while (seen < 2) {
      auto e = events.next("ExecutionAccepted");
      ASSERT_TRUE(e.has_value()) << "the new x was never announced";
      if (e->str("execution_id") == "x") ++seen;
    }
    // An operation of the loop after it (a cancel announces first): the announce cursor has
    // moved past the new x, so the next supervisor does not announce (and record) it again.
    EXPECT_EQ(ingress.op("cancel", "no-such-execution").str("error"), "not_found");
    EXPECT_EQ(done.wait_for(0ms), std::future_status::timeout) << "answered before the disk";
    writer.kill_process(*j.daemon);
  }
  j.daemon->start();  // the same segment, the journal that holds the old x
  submitter.join();
  ASSERT_TRUE(error.empty()) << error;
  ASSERT_TRUE(result.has_value());
  ASSERT_TRUE(result->result.accepted()) << result->result.message;
  ASSERT_TRUE(result->via_shared_memory);
  j.crash_and_reboot();
  j.daemon->start();
  Ingress after(j.daemon->endpoint());
  const auto status = after.op("status", "x");
  EXPECT_EQ(status.str("user_id"), "new-user")
      << "acknowledged as durable, and a reboot brought back the occupant before it ("
      << status.str("user_id") << status.str("error") << ")";
}

// Finding: a segment made for a restore was published with default durability memory, and the
// configured default (durability = disk) was stored only once the queue was filled from the
// journal and settled, seconds for a large journal. A shared-memory client whose submit named
// no durability meanwhile had it acknowledged in shared memory at once: not on disk, and lost
// by a power cut then. (The supervisor is stopped just after the segment appeared: nothing it
// holds can be on disk.)
TEST(DaemonJournal, ThirdReviewARestoredSegmentCarriesTheConfiguredDiskDurabilityFromItsCreation) {
  Journaled j({"--durability=disk", "--max-active-executions=1"});
  j.daemon->start();
  {
    auto seg = ipc::Segment::attach(j.segment);
    ipc::Producer producer(seg);
    const std::byte payload[1] = {std::byte{'p'}};
    for (int i = 0; i < 3000; ++i) {
      const std::string id = "j" + std::to_string(i);
      const std::string user = "u" + std::to_string(i % 100);
      ipc::SubmitRequest r;
      r.execution_id = id;
      r.user_id = user;
      r.payload = payload;
      ASSERT_TRUE(producer.submit(r).accepted()) << id;
    }
  }
  Ingress(j.daemon->endpoint()).op("cancel", "no-such-execution");  // all announced
  EXPECT_EQ(j.daemon->signal(SIGTERM), 0);                          // and on disk
  ipc::Segment::remove(j.segment);                                  // a reboot

  j.daemon->start(false);
  std::shared_ptr<ipc::Segment> seg;
  const auto deadline = Clock::now() + 10s;
  while (!seg && Clock::now() < deadline) {
    try {
      seg = ipc::Segment::attach(j.segment);
    } catch (const ipc::SegmentError&) {
    }
  }
  ASSERT_TRUE(seg) << "the segment never appeared";
  ASSERT_EQ(::kill(j.daemon->pid(), SIGSTOP), 0);  // in the middle of its start
  ipc::ClientOptions o;
  o.segment = j.segment;
  o.endpoint = j.daemon->endpoint();
  o.timeout = 300ms;
  std::optional<ipc::ClientSubmitResult> r;
  {
    ipc::Client client(o);
    ASSERT_TRUE(client.shared_memory());
    ipc::protocol::SubmitOp op;  // no durability: the supervisor's default, disk
    op.execution_id = "during-start";
    op.user_id = "u";
    op.payload = {std::byte{'p'}};
    try {
      r = client.submit(op);
    } catch (const std::exception&) {
      // No answer from the stopped supervisor: not acknowledged.
    }
  }
  ::kill(j.daemon->pid(), SIGCONT);
  EXPECT_FALSE(r && r->result.accepted())
      << "acknowledged (via shared memory: " << (r && r->via_shared_memory)
      << ") while the supervisor, stopped, could not have it on disk";
}

// ---- Findings of the review of submit_many and the snapshot's order (fourth review) ----

std::vector<ipc::protocol::SubmitOp> review_ops(std::size_t n, ipc::protocol::Durability d) {
  std::vector<ipc::protocol::SubmitOp> ops(n);
  for (auto& op : ops) {
    op.user_id = "u";
    op.payload = {std::byte{'p'}};
    op.durability = d;  // execution_id left empty: the library generates it
  }
  return ops;
}

// R1: a batch whose disk marks time out throws, and the results (with the ids the library
// generated) are thrown away: the caller cannot tell which executions are queued, cancel them,
// or retry without submitting them twice. submit() names its id in the same error.
TEST(DaemonJournal, FourthReviewABatchThatTimesOutNamesTheExecutionsItQueued) {
  Journaled j({});
  j.daemon->start();
  ipc::ClientOptions o;
  o.segment = j.segment;
  o.endpoint = j.daemon->endpoint();
  o.timeout = 300ms;
  std::string what;
  {
    FrozenWriter writer(j.daemon->pid());
    ipc::Client client(o);
    ASSERT_TRUE(client.shared_memory());
    try {
      client.submit_many(review_ops(3, ipc::protocol::Durability::kDisk));
      ADD_FAILURE() << "confirmed while the journal could not write";
    } catch (const ipc::ClientBatchError& e) {
      what = e.what();
      EXPECT_EQ(e.results().size(), 3u);
      EXPECT_EQ(e.unconfirmed(), (std::vector<std::size_t>{0, 1, 2}));
    } catch (const ipc::ClientError& e) {
      what = e.what();
      ADD_FAILURE() << "not a ClientBatchError: " << what;
    }
    writer.thaw();
  }
  Ingress ingress(j.daemon->endpoint());
  const auto l = listing(ingress);
  ASSERT_EQ(l.size(), 3u);
  for (const auto& [id, state] : l) {
    EXPECT_THAT(what, HasSubstr(id)) << "queued under an id the caller was never told";
  }
}

// R2: a batch that falls back to the ingress part-way (the supervisor stopped: its durable
// marks are off) and whose ingress call throws loses the results of the entries it already put
// into the segment: they are queued, and the error says nothing of them.
TEST(DaemonJournal, FourthReviewABatchWhoseIngressFallbackThrowsSaysWhatItAlreadyQueued) {
  Journaled j({});
  j.daemon->start();
  ASSERT_EQ(j.daemon->signal(SIGTERM), 0);  // a clean stop: the segment stays, marks off
  ipc::ClientOptions o;
  o.segment = j.segment;
  o.endpoint = j.daemon->endpoint();
  o.timeout = 300ms;
  ipc::Client client(o);
  ASSERT_TRUE(client.shared_memory());
  auto ops = review_ops(2, ipc::protocol::Durability::kMemory);
  ops[1].durability = ipc::protocol::Durability::kDisk;  // -> the ingress, which is down
  std::string what;
  try {
    client.submit_many(ops);
    ADD_FAILURE() << "no error";
  } catch (const ipc::ClientBatchError& e) {
    what = e.what();
    ASSERT_EQ(e.results().size(), 1u);
    EXPECT_TRUE(e.results()[0].result.accepted());
    EXPECT_FALSE(e.unanswered_id().empty());
    EXPECT_THAT(what, HasSubstr(e.unanswered_id()));
  }
  auto seg = ipc::Segment::attach(j.segment);
  ipc::Producer reader(seg);
  const auto queued = reader.list(std::nullopt, 100);
  ASSERT_EQ(queued.size(), 1u);
  EXPECT_THAT(what, HasSubstr(queued[0].execution_id))
      << "the batch's first execution is queued and the caller was never told its id";
}

// R3: journal_snapshot_min_bytes = -1 is taken as 2^64-1 (boost's unsigned parse), passes the
// ">= 4096" check, and turns snapshots off: the journal grows without bound and is replayed
// whole at every start. 4095 is refused; -1 should be too (and so for every unsigned setting).
TEST(DaemonJournal, FourthReviewANegativeSnapshotMinimumIsRefused) {
  {
    Journaled j({"--journal-snapshot-min-bytes=4095"});
    EXPECT_ANY_THROW(j.daemon->start());
  }
  {
    Journaled j({"--max-queue-size=-1"});
    EXPECT_ANY_THROW(j.daemon->start());
  }
  Journaled j({"--journal-snapshot-min-bytes=-1", "--max-payload-bytes=65536"});
  bool started = true;
  try {
    j.daemon->start();
  } catch (const std::exception&) {
    started = false;
  }
  EXPECT_FALSE(started) << "journal_snapshot_min_bytes = -1 was accepted";
  if (!started) return;
  Ingress ingress(j.daemon->endpoint());
  const std::string big(60000, 'x');
  for (int i = 0; i < 200; ++i) {  // 12 MB of journal, 1 live execution at a time
    const std::string id = "n" + std::to_string(i);
    ASSERT_TRUE(ingress.call(submit_request(id, "u", "normal", big, "")).ok());
    ingress.op("cancel", id);
  }
  std::uintmax_t bytes = 0;
  for (const auto& f : j.journal_files()) bytes += fs::file_size(f);
  ADD_FAILURE() << "journal: " << bytes
                << " bytes, snapshots logged: " << occurrences(j.daemon->log_text(), "snapshot of");
}

// R4: the snapshot orders the queue by queue_position, a rank across levels computed slot by
// slot while producers go on: a submit at a higher priority between the reads of two entries
// of one level shifts the later-read one's rank. Read in slot order, with slots reused against
// FIFO order, the later entry of a level can come first (a tie broken by slot order, or a
// plain inversion), and a reboot restores that level out of FIFO order.
TEST(DaemonJournal, FourthReviewASnapshotTakenWhileHigherLevelsGrowKeepsEachLevelsFifoOrder) {
  Journaled j({"--max-active-executions=1", "--journal-snapshot-min-bytes=4096",
               "--max-queue-size=400000", "--max-executions-per-user=400000"});
  j.daemon->start();
  Ingress ingress(j.daemon->endpoint());
  auto seg = ipc::Segment::attach(j.segment);
  ipc::Producer producer(seg);
  const std::byte payload[1] = {std::byte{'p'}};
  auto put = [&](const std::string& id, Priority p) {
    ipc::SubmitRequest r;
    r.execution_id = id;
    r.user_id = "u";
    r.priority = p;
    r.payload = payload;
    return producer.submit(r).accepted();
  };
  ASSERT_TRUE(ingress.call(submit_request("running", "u", "critical", "p", "")).ok());
  wait_for_state(ingress, "running", "dispatched");
  // Tombstones at the head of `critical`; the next dequeue passes them and frees their slots onto
  // the free stack (LIFO): the low entries submitted next get slots in descending order.
  constexpr int kLow = 3000;
  for (int i = 0; i < kLow; ++i) ASSERT_TRUE(put("tmp-" + std::to_string(i), Priority::kCritical));
  for (int i = 0; i < kLow; ++i) {
    ASSERT_TRUE(ingress.op("cancel", "tmp-" + std::to_string(i)).ok());
  }
  ASSERT_TRUE(ingress.call(submit_request("running-2", "u", "critical", "p", "")).ok());
  ASSERT_TRUE(ingress.complete("running").ok());
  wait_for_state(ingress, "running-2", "dispatched");
  char id[32];
  std::size_t descending = 0;
  std::uint32_t last_slot = 0;
  for (int i = 0; i < kLow; ++i) {
    std::snprintf(id, sizeof id, "low-%05d", i);
    ipc::SubmitRequest r;
    r.execution_id = id;
    r.user_id = "u";
    r.priority = Priority::kLow;
    r.payload = payload;
    const auto res = producer.submit(r);
    ASSERT_TRUE(res.accepted());
    if (i > 0 && res.slot < last_slot) ++descending;
    last_slot = res.slot;
  }
  ASSERT_GT(descending, static_cast<std::size_t>(kLow / 2))
      << "the slots were not reused backwards";
  // Critical submits while the supervisor takes its snapshots.
  const auto snapshots = [&] { return occurrences(j.daemon->log_text(), "snapshot of"); };
  const std::size_t before = snapshots();
  std::atomic<bool> stop{false}, done{false};
  std::atomic<int> refused{0};
  std::thread hammer([&] {
    ipc::Producer p(seg);
    // Paced (bursts of 200, then 2 ms), so that the supervisor keeps up and snapshots while
    // submits go on, also in a slow (sanitized) build; bounded, so that the queue never fills
    // (the barrier below must be taken) and the rebuild after the reboot stays short (TSan).
    for (int i = 0; !stop && i < 60'000; ++i) {
      ipc::SubmitRequest r;
      const std::string cid = "c-" + std::to_string(i);
      r.execution_id = cid;
      r.user_id = "h";
      r.priority = Priority::kCritical;
      r.payload = payload;
      if (!p.submit(r).accepted()) ++refused;
      if (i % 200 == 199) std::this_thread::sleep_for(2ms);
    }
    done = true;
  });
  while (snapshots() < before + 3 && !done) std::this_thread::sleep_for(20ms);
  const std::size_t during = snapshots() - before;
  stop = true;
  hammer.join();
  ASSERT_EQ(refused.load(), 0);
  ASSERT_GE(during, 1u) << "no snapshot while the higher level grew";
  // A disk submit is answered once everything recorded before it is on disk.
  ASSERT_TRUE(ingress.call(submit_request("barrier", "u", "background", "p", "disk")).ok());
  j.crash_and_reboot();
  j.daemon->start();
  auto seg2 = ipc::Segment::attach(j.segment);
  ipc::Producer reader(seg2);
  auto all = reader.list(std::nullopt, 1'000'000);
  std::vector<std::pair<std::uint64_t, std::string>> low;
  for (const auto& r : all) {
    if (r.priority == Priority::kLow)
      low.emplace_back(r.queue_position.value_or(0), r.execution_id);
  }
  std::sort(low.begin(), low.end());
  ASSERT_EQ(low.size(), static_cast<std::size_t>(kLow));
  std::size_t misplaced = 0;
  std::string first;
  for (int i = 0; i < kLow; ++i) {
    std::snprintf(id, sizeof id, "low-%05d", i);
    if (low[i].second != id) {
      if (misplaced++ == 0) first = "place " + std::to_string(i) + ": " + low[i].second;
    }
  }
  EXPECT_EQ(misplaced, 0u) << "the low level came back out of FIFO order; first: " << first;
}

// R5: a reload that changed journal_snapshot_min_bytes was taken silently and had no effect
// (config_ said the new value, the journal kept the old one). It takes effect now.
TEST(DaemonJournal, FourthReviewAReloadOfTheSnapshotMinimumTakesEffect) {
  Journaled j({});
  const std::string conf = j.dir + "/shmschedd.conf";
  std::ofstream(conf) << "journal_snapshot_min_bytes = 67108864\n";
  j.daemon->args().push_back("--config=" + conf);
  j.daemon->start();
  std::ofstream(conf) << "journal_snapshot_min_bytes = 4096\n";
  j.daemon->signal(SIGHUP);
  const auto deadline = Clock::now() + 10s;
  while (j.daemon->log_text().find("configuration reloaded") == std::string::npos &&
         Clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_THAT(j.daemon->log_text(), HasSubstr("configuration reloaded"));
  Ingress ingress(j.daemon->endpoint());
  for (int i = 0; i < 100; ++i) {  // ~30 KB of journal
    ASSERT_TRUE(
        ingress
            .call(submit_request("r" + std::to_string(i), "u", "normal", std::string(300, 'x'), ""))
            .ok());
  }
  const auto snapshot_by = Clock::now() + 10s;
  while (j.daemon->log_text().find("snapshot of") == std::string::npos &&
         Clock::now() < snapshot_by) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_THAT(j.daemon->log_text(), HasSubstr("snapshot of"))
      << "the reload took journal_snapshot_min_bytes = 4096 without effect";
}

// A batch waiting while its supervisor is SIGKILLed and restarted on the same segment, with a
// mixed batch (memory and disk): every one is answered, and the disk ones survive a reboot.
TEST(DaemonJournal, FourthReviewABatchWaitsAcrossASupervisorKill) {
  Journaled j({"--max-active-executions=4"});
  j.daemon->start();
  ipc::ClientOptions o;
  o.segment = j.segment;
  o.endpoint = j.daemon->endpoint();
  o.timeout = 60s;
  std::vector<ipc::ClientSubmitResult> results;
  std::string error;
  std::vector<ipc::protocol::SubmitOp> ops(30);
  for (std::size_t i = 0; i < ops.size(); ++i) {
    ops[i].execution_id = "k-" + std::to_string(i);
    ops[i].user_id = "u";
    ops[i].payload = {std::byte{'p'}};
    ops[i].durability =
        i % 3 == 0 ? ipc::protocol::Durability::kMemory : ipc::protocol::Durability::kDisk;
  }
  {
    FrozenWriter writer(j.daemon->pid());
    ipc::Client client(o);
    ASSERT_TRUE(client.shared_memory());
    std::thread submitter([&] {
      try {
        results = client.submit_many(ops);
      } catch (const std::exception& e) {
        error = e.what();
      }
    });
    {
      Ingress ingress(j.daemon->endpoint());
      wait_for_state(ingress, "k-29", "queued");
    }
    writer.kill_process(*j.daemon);
    j.daemon->start();
    submitter.join();
  }
  ASSERT_TRUE(error.empty()) << error;
  ASSERT_EQ(results.size(), 30u);
  for (const auto& r : results) EXPECT_TRUE(r.result.accepted()) << r.result.message;
  j.crash_and_reboot();
  j.daemon->start();
  Ingress ingress(j.daemon->endpoint());
  const auto l = listing(ingress);
  for (std::size_t i = 0; i < ops.size(); ++i) {
    if (i % 3) {
      EXPECT_TRUE(l.count("k-" + std::to_string(i))) << i;
    }
  }
}

// R6: at open the journal counts its whole size (the last snapshot included) as written since
// the last snapshot, and the last snapshot's size as 0: a start over a journal larger than
// journal_snapshot_min_bytes takes a full snapshot at once, even when nothing happened since.
TEST(DaemonJournal, FourthReviewARestartWithNothingNewTakesNoSnapshot) {
  Journaled j({"--journal-snapshot-min-bytes=65536", "--max-active-executions=1"});
  j.daemon->start();
  {
    Ingress ingress(j.daemon->endpoint());
    for (int i = 0; i < 300; ++i) {  // ~100 KB live: one snapshot is due past 64 KB
      ASSERT_TRUE(ingress
                      .call(submit_request("s" + std::to_string(i), "u" + std::to_string(i % 5),
                                           "normal", std::string(300, 'x'), ""))
                      .ok());
    }
    ASSERT_TRUE(ingress.call(submit_request("barrier", "u", "normal", "p", "disk")).ok());
  }
  ASSERT_GE(occurrences(j.daemon->log_text(), "snapshot of"), 1u);
  for (int restart = 0; restart < 3; ++restart) {
    ASSERT_EQ(j.daemon->signal(SIGTERM), 0);
    j.daemon->start();  // the same segment, nothing new
    {
      // Answered by the loop, after its timers (where a due snapshot is taken) ran.
      Ingress ingress(j.daemon->endpoint());
      ASSERT_TRUE(ingress
                      .call(submit_request("barrier-" + std::to_string(restart), "u", "normal", "p",
                                           "disk"))
                      .ok());
    }
    EXPECT_EQ(occurrences(j.daemon->log_text(), "snapshot of"), 0u)
        << "restart " << restart << " rewrote the whole live set with nothing new to record";
  }
}

}  // namespace
}  // namespace shmsched::test
