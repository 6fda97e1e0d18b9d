// End-to-end: shmschedd under conditions the queue's other users create, found in review
// (issue 7): a full participant table, participants frozen inside an operation.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "daemon_support.h"
#include "journal_listener.h"
#include "notify_listener.h"
#include "shmsched/ipc/queue.h"

namespace shmsched::test {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

std::vector<std::byte> bytes_of(const std::string& s) {
  const auto* b = reinterpret_cast<const std::byte*>(s.data());
  return {b, b + s.size()};
}

std::optional<std::string> wait_for_file(const std::string& path, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (std::filesystem::exists(path)) {
      std::ifstream in(path, std::ios::binary);
      return std::string((std::istreambuf_iterator<char>(in)), {});
    }
    std::this_thread::sleep_for(10ms);
  }
  return std::nullopt;
}

// Hands a submit of `id` to the flaky transport's inbound directory, as a broker would.
void drop_request(const std::string& dir, const std::string& name, const std::string& id) {
  const auto req = MapBuilder()
                       .str("op", "submit")
                       .str("execution_id", id)
                       .str("user_id", "u")
                       .bin("payload", bytes_of("x"))
                       .finish();
  std::ofstream(dir + "/" + name + ".tmp", std::ios::binary)
      .write(reinterpret_cast<const char*>(req.data()), static_cast<std::streamsize>(req.size()));
  std::filesystem::rename(dir + "/" + name + ".tmp", dir + "/" + name + ".req");
}

Map stats_of(Ingress& in) {
  return in.call(MapBuilder().str("op", "stats").finish());
}

std::int64_t counter(const Map& stats, const std::string& name) {
  const auto* counters = ipc::find_field(stats.get(), "counters");
  return counters ? ipc::get_int(*counters, name).value_or(-1) : -1;
}

// Item 3: with every participant entry taken by other processes, shmschedd used to abort (its
// ingress thread could not register) and a transport's inbound submit threw out of the loop.
// A full table is an error answered to the one request, logged and counted.
TEST(DaemonRobustness, FullParticipantTableIsAnErrorForTheRequestNotACrash) {
  const std::string dir = temp_dir("full-table");
  const std::string inbound = dir + "/inbound";
  std::filesystem::create_directories(inbound);
  const std::string segment = segment_name("full-table");
  ipc::Segment::remove(segment);
  // Consumer + ingress producer + the loop's producer for transport submits = 3 entries.
  Daemon daemon(dir, segment,
                {"--max-participants=3", "--transports=zeromq,flaky",
                 "--flaky.log_file=" + dir + "/delivered", "--flaky.inbound_dir=" + inbound});
  daemon.start();
  ASSERT_EQ(daemon.signal(SIGTERM), 0);
  // Other processes take every entry the supervisor would use.
  auto seg = ipc::Segment::attach(segment);
  std::vector<std::unique_ptr<ipc::Producer>> hogs;
  for (int i = 0; i < 2; ++i) hogs.push_back(std::make_unique<ipc::Producer>(seg));
  daemon.start();
  Ingress ingress(daemon.endpoint());

  auto r = ingress.submit("zmq-1", "u");
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.str("error"), "queue_full");
  EXPECT_THAT(r.str("message"), HasSubstr("max_participants"));
  // A submit arriving through a transport is answered (and acknowledged) too.
  drop_request(inbound, "t1", "kafka-1");
  const auto reply = wait_for_file(inbound + "/t1.reply", 10s);
  ASSERT_TRUE(reply) << daemon.log_text();
  const Map decoded = decode(reply->data(), reply->size());
  EXPECT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.str("error"), "queue_full");
  EXPECT_TRUE(wait_for_file(inbound + "/t1.acked", 10s));

  // Still running, and it says what happened.
  EXPECT_EQ(::waitpid(daemon.pid(), nullptr, WNOHANG), 0) << daemon.log_text();
  const auto stats = stats_of(ingress);
  EXPECT_TRUE(stats.ok());
  EXPECT_GE(counter(stats, "rejected_no_participant_entry"), 2);
  EXPECT_THAT(daemon.log_text(), HasSubstr("max_participants"));

  // Entries free again: submits go through, by both ways.
  hogs.clear();
  EXPECT_TRUE(ingress.submit("zmq-2", "u").ok());
  drop_request(inbound, "t2", "kafka-2");
  const auto reply2 = wait_for_file(inbound + "/t2.reply", 10s);
  ASSERT_TRUE(reply2);
  EXPECT_TRUE(decode(reply2->data(), reply2->size()).ok());
  EXPECT_EQ(daemon.signal(SIGTERM), 0);
  seg.reset();
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// Stopped, not dead: a producer frozen (SIGSTOP) inside its submit while another producer died
// inside its own. The repair the dead one needs waits for the frozen one, but the supervisor's
// loop must not: it logs which pid it waits for, keeps dispatching what is queued, keeps
// answering, and keeps the watchdog fed. Once the frozen producer continues, the repair runs.
TEST(DaemonRobustness, AProducerStoppedInsideAnOperationDoesNotStopTheLoop) {
  const std::string dir = temp_dir("stopped");
  const std::string segment = segment_name("stopped");
  ipc::Segment::remove(segment);
  NotifyListener notify(dir + "/notify.sock");
  Daemon daemon(dir, segment, {"--max-active-executions=1", "--reap-interval-ms=50"});
  daemon.env()["NOTIFY_SOCKET"] = notify.path();
  daemon.env()["WATCHDOG_USEC"] = "400000";  // a ping every 200 ms
  daemon.start();
  Ingress ingress(daemon.endpoint());
  Events events(daemon.events_endpoint());
  events.sync(ingress);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ingress.submit("s" + std::to_string(i), "u").ok());
  ASSERT_TRUE(events.next("CreatePodCommand"));

  auto producer = [&](const std::string& how, const std::string& site, const std::string& id) {
    return crash_point_producer(segment, how, site, id);
  };
  const auto [frozen, frozen_status] = producer("stop", "ring push: tail CAS", "frozen");
  ASSERT_TRUE(WIFSTOPPED(frozen_status));
  const auto [dead, dead_status] = producer("kill", "dedup insert: claim an empty entry", "dead");
  ASSERT_TRUE(WIFSIGNALED(dead_status));

  // The loop says whom it waits for ...
  const std::string frozen_pid = "pid " + std::to_string(frozen);
  const auto deadline = Clock::now() + 10s;
  while (daemon.log_text().find(frozen_pid) == std::string::npos && Clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_THAT(daemon.log_text(), HasSubstr(frozen_pid + " blocks"));
  // ... and goes on: completions free capacity, what is queued is dispatched, requests are
  // answered, and the watchdog is fed all the while.
  const auto t0 = Clock::now();
  std::size_t pings = 0;
  auto longest_gap = 0ms;
  auto last = t0;
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(ingress.complete("s" + std::to_string(i)).ok());
    const auto cmd = events.next("CreatePodCommand", 5s);
    ASSERT_TRUE(cmd) << daemon.log_text();
    EXPECT_EQ(cmd->str("execution_id"), "s" + std::to_string(i + 1));
  }
  EXPECT_TRUE(stats_of(ingress).ok());
  while (notify.next(0ms)) {  // what queued up meanwhile
  }
  const auto t1 = Clock::now();
  last = t1;
  while (Clock::now() - t1 < 1500ms) {
    if (auto m = notify.next(100ms); m && m->text.find("WATCHDOG=1") != std::string::npos) {
      ++pings;
      longest_gap = std::max(longest_gap,
                             std::chrono::duration_cast<std::chrono::milliseconds>(m->at - last));
      last = m->at;
    }
  }
  EXPECT_GE(pings, 5u);
  EXPECT_LT(longest_gap, 400ms) << "the watchdog went hungry";
  EXPECT_GE(counter(stats_of(ingress), "maintenance_deferred"), 1);

  // Let the frozen producer go: it finishes its submit, the repair runs, and the dead
  // producer's half-done submit is gone (its id can be submitted again).
  ::kill(frozen, SIGCONT);
  int status = 0;
  ::waitpid(frozen, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  const auto repaired = Clock::now() + 10s;
  bool resubmitted = false;
  while (!resubmitted && Clock::now() < repaired) {
    resubmitted = ingress.submit("dead", "u").ok();
    if (!resubmitted) std::this_thread::sleep_for(50ms);
  }
  EXPECT_TRUE(resubmitted) << daemon.log_text();
  EXPECT_EQ(ingress.op("status", "frozen").str("execution_id"), "frozen");
  EXPECT_EQ(daemon.signal(SIGTERM), 0);
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// Logs under the journal: with JOURNAL_STREAM naming its stderr, shmschedd writes native journal
// entries with a numeric PRIORITY (so `journalctl -p warning` filters) and the execution a line
// is about as EXECUTION_ID. The test runs it in its own mount namespace, with the journal's
// socket directory bound to one the test listens on.
TEST(DaemonRobustness, LogsGoToTheJournalWithPrioritiesAndExecutionIds) {
  const std::string dir = temp_dir("journal");
  const std::string segment = segment_name("journal");
  ipc::Segment::remove(segment);
  std::filesystem::create_directories("/run/systemd/journal");  // the mount point
  std::filesystem::create_directories(dir + "/journal");
  JournalListener journal(dir + "/journal/socket");
  const std::string fail_file = dir + "/fail";
  std::ofstream(fail_file).put('x');
  Daemon daemon(dir, segment,
                {"--transports=flaky", "--flaky.log_file=" + dir + "/delivered",
                 "--flaky.fail_file=" + fail_file, "--dispatch-backoff-ms=100"});
  daemon.prefix() = {
      "/usr/bin/unshare", "-m", "/bin/sh", "-c",
      "mount --bind '" + dir + "/journal' /run/systemd/journal && exec \"$0\" \"$@\""};
  daemon.env()["JOURNAL_STREAM"] = "auto";
  daemon.start();
  Ingress ingress(daemon.endpoint());
  ASSERT_TRUE(ingress.submit("j-1", "u").ok());

  auto ready = journal.wait_for([](const JournalEntry& e) {
    return e.field("MESSAGE").find("shmschedd ready") != std::string::npos;
  });
  ASSERT_TRUE(ready) << daemon.log_text();
  EXPECT_EQ(ready->field("PRIORITY"), "6");
  EXPECT_EQ(ready->field("SYSLOG_IDENTIFIER"), "shmschedd");
  EXPECT_FALSE(ready->has("EXECUTION_ID"));
  auto failed = journal.wait_for([](const JournalEntry& e) {
    return e.field("MESSAGE").find("dispatch of j-1 failed") != std::string::npos;
  });
  ASSERT_TRUE(failed);
  EXPECT_EQ(failed->field("PRIORITY"), "4");
  EXPECT_EQ(failed->field("EXECUTION_ID"), "j-1");
  // Nothing went to stderr with a textual level that the journal would not understand.
  EXPECT_THAT(daemon.log_text(), ::testing::Not(HasSubstr("<warning>")));
  EXPECT_EQ(daemon.signal(SIGTERM), 0);
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// Found in review: the loop's "is there work?" and the scheduler's "what can I take?" disagreed
// (cells vs counts), so the loop spun on a full core while a cancelled entry sat at the head, or
// a producer was stopped before moving the tail (and that entry was never taken), or a repair a
// stopped process blocks kept being requested. The loop sleeps in all three.
double cpu_seconds(pid_t pid) {
  return static_cast<double>(cpu_ticks(pid)) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

TEST(DaemonRobustness, TheLoopSleepsWhateverIsLeftInTheQueue) {
  const std::string dir = temp_dir("no-spin");
  const std::string segment = segment_name("no-spin");
  ipc::Segment::remove(segment);
  Daemon daemon(dir, segment, {"--max-active-executions=1"});
  daemon.start();
  Ingress ingress(daemon.endpoint());
  Events events(daemon.events_endpoint());
  events.sync(ingress);
  auto busy = [&] {
    const double c0 = cpu_seconds(daemon.pid());
    std::this_thread::sleep_for(1500ms);
    return cpu_seconds(daemon.pid()) - c0;
  };
  // (a) Only a cancelled entry left, capacity free.
  ASSERT_TRUE(ingress.submit("a", "u").ok());
  ASSERT_TRUE(events.next("CreatePodCommand"));
  ASSERT_TRUE(ingress.submit("b", "u").ok());
  ASSERT_TRUE(ingress.op("cancel", "b").ok());
  ASSERT_TRUE(ingress.complete("a").ok());
  EXPECT_LT(busy(), 0.3) << "spins on a cancelled entry at the head";
  // (b) A producer stopped between publishing its entry and moving the tail: the entry is
  // accepted (in the ring), so it is taken, and the loop sleeps.
  auto producer = [&](const std::string& how, const std::string& site, const std::string& id) {
    return crash_point_producer(segment, how, site, id);
  };
  const auto [frozen, frozen_status] = producer("stop", "ring push: tail CAS", "frozen");
  ASSERT_TRUE(WIFSTOPPED(frozen_status));
  auto cmd = events.next("CreatePodCommand", 5s);
  ASSERT_TRUE(cmd) << "the stopped producer's entry was never taken";
  EXPECT_EQ(cmd->str("execution_id"), "frozen");
  EXPECT_LT(busy(), 0.3) << "spins behind a lagging tail";
  ::kill(frozen, SIGCONT);
  ::waitpid(frozen, nullptr, 0);
  // (c) A repair held up by a stopped producer (another died inside its submit).
  const auto [stopped, stopped_status] = producer("stop", "submit: fill the slot", "stopped");
  ASSERT_TRUE(WIFSTOPPED(stopped_status));
  const auto [dead, dead_status] = producer("kill", "dedup insert: claim an empty entry", "dead");
  ASSERT_TRUE(WIFSIGNALED(dead_status));
  std::this_thread::sleep_for(300ms);
  EXPECT_LT(busy(), 0.3) << "spins on a repair it cannot run";
  ::kill(stopped, SIGCONT);
  ::waitpid(stopped, nullptr, 0);
  EXPECT_EQ(daemon.signal(SIGTERM), 0);
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// An exception out of the loop while events wait in the outbound buffer (here: the transport's
// publish throws, against the ABI's rule) ends in the orderly exit 1 of a stopped loop. It
// crashed once: the buffer was kept, and the shutdown handed it to a transport entry it had
// already moved out of its map.
TEST(DaemonRobustness, AnExceptionWithEventsBufferedEndsInAnOrderlyExitNotACrash) {
  const std::string dir = temp_dir("throwing");
  const std::string segment = segment_name("throwing");
  ipc::Segment::remove(segment);
  const std::string throw_file = dir + "/throw";
  Daemon daemon(dir, segment,
                {"--transports=throwing", "--throwing.throw_file=" + throw_file,
                 "--throwing.log_file=" + dir + "/delivered"});
  daemon.start();
  std::ofstream(throw_file).put('x');
  Ingress ingress(daemon.endpoint());
  ASSERT_TRUE(ingress.submit("t-1", "u").ok());
  const int code = daemon.wait_exit();
  EXPECT_THAT(daemon.log_text(), HasSubstr("the scheduling loop stopped"));
  EXPECT_EQ(code, 1) << "128 + 11 is SIGSEGV\n" << daemon.log_text();
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shmsched::test

namespace shmsched::test {
namespace {

// systemd's side of the notify protocol, stood in for by a socket of the test: READY only when
// the ingress answers, a STATUS that says something, RELOADING with MONOTONIC_USEC then READY
// around a reload, STOPPING at the stop; and WATCHDOG from the loop itself, so that a wedged loop
// (here: a transport call that hangs) stops the pings, and they come back when it goes on.
TEST(DaemonRobustness, TheNotifyProtocolAndAWedgedLoopStopsTheWatchdog) {
  const std::string dir = temp_dir("notify");
  const std::string segment = segment_name("notify");
  const std::string block_file = dir + "/block";
  ipc::Segment::remove(segment);
  NotifyListener notify(dir + "/notify.sock");
  Daemon daemon(dir, segment,
                {"--transports=zeromq,flaky", "--flaky.log_file=" + dir + "/delivered",
                 "--flaky.block_file=" + block_file});
  daemon.env()["NOTIFY_SOCKET"] = notify.path();
  daemon.env()["WATCHDOG_USEC"] = "400000";  // a ping every 200 ms
  daemon.start(false);
  const auto ready = notify.wait_for("READY=1", 20s);
  ASSERT_TRUE(ready) << daemon.log_text();
  {
    // Ready means the ingress answers: at once, no retry.
    ipc::ClientOptions o;
    o.endpoint = daemon.endpoint();
    o.use_shared_memory = false;
    o.timeout = 2s;
    ipc::Client client(o);
    EXPECT_NO_THROW(client.call(MapBuilder().str("op", "stats").finish()));
  }
  const auto status = notify.wait_for("STATUS=", 5s);
  ASSERT_TRUE(status);
  EXPECT_THAT(status->text, HasSubstr("0 queued, 0 of 10 dispatched, 0 held; transports "));
  EXPECT_THAT(status->text, HasSubstr("zeromq"));
  EXPECT_THAT(status->text, HasSubstr("flaky"));

  daemon.signal(SIGHUP);
  const auto reloading = notify.wait_for("RELOADING=1", 5s);
  ASSERT_TRUE(reloading) << daemon.log_text();
  EXPECT_THAT(reloading->text, testing::ContainsRegex("MONOTONIC_USEC=[0-9]+"));
  EXPECT_TRUE(notify.wait_for("READY=1", 5s));

  // Wedge the loop inside a publish: the pings stop ...
  ASSERT_TRUE(notify.wait_for("WATCHDOG=1", 2s));
  std::ofstream(block_file).put('x');
  Ingress ingress(daemon.endpoint());
  ASSERT_TRUE(ingress.submit("w-1", "u").ok());
  const std::string delivered = dir + "/delivered";
  // The event before the blocked command went out: the loop is in the command's publish now.
  const auto in_publish = Clock::now() + 10s;
  while (Clock::now() < in_publish) {
    std::ifstream in(delivered);
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    if (text.find("ExecutionAccepted w-1") != std::string::npos) break;
    std::this_thread::sleep_for(10ms);
  }
  while (notify.next(0ms)) {  // what was sent before it wedged
  }
  EXPECT_FALSE(notify.wait_for("WATCHDOG=1", 1500ms)) << "a wedged loop must not ping";
  // ... and come back when it goes on.
  std::filesystem::remove(block_file);
  EXPECT_TRUE(notify.wait_for("WATCHDOG=1", 2s));
  EXPECT_EQ(daemon.signal(SIGTERM), 0);
  bool stopping = false;
  while (auto m = notify.next(0ms)) stopping = stopping || m->text.find("STOPPING=1") == 0;
  EXPECT_TRUE(stopping);
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shmsched::test
