// shmschedd's journal on disk (issue 12), end to end with real processes: a SIGKILLed supervisor
// whose shared-memory segment is removed as a reboot would remove it, a torn and a damaged
// journal, a journal directory that is full or read-only, and the rule that reconciles a journal
// with an existing segment.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
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
    fs::remove_all(dir);
    fs::remove_all(journal);
  }
  // What a power cut does: the process dies at once, and /dev/shm is empty on the next boot.
  void crash_and_reboot() {
    daemon->signal(SIGKILL);
    daemon->wait_exit();
    ipc::Segment::remove(segment);
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
  EXPECT_THAT(message, HasSubstr("durab"));
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
  EXPECT_THAT(j.daemon->log_text(), HasSubstr("the journal failed"));
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
