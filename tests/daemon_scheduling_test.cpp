// End-to-end: defects at the seam between the scheduling policy and the I/O, found in review
// (issue 8), each reproduced against the real shmschedd.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "daemon_support.h"
#include "notify_listener.h"
#include "shmsched/ipc/queue.h"

namespace shmsched::test {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

struct Fixture : DaemonFixture {
  using DaemonFixture::DaemonFixture;
  std::int64_t counter(const std::string& name) {
    auto st = ingress->call(MapBuilder().str("op", "stats").finish());
    return ipc::get_int(*ipc::find_field(st.get(), "counters"), name).value_or(-1);
  }
  // The counters are published at the end of the loop's round: wait for `want` a moment.
  std::int64_t wait_counter(const std::string& name, std::int64_t want) {
    std::int64_t v = counter(name);
    for (const auto until = Clock::now() + 5s; v < want && Clock::now() < until;
         v = counter(name)) {
      std::this_thread::sleep_for(10ms);
    }
    return v;
  }
};

std::size_t count_lines(const std::string& path, const std::string& needle) {
  std::ifstream in(path);
  std::string line;
  std::size_t n = 0;
  while (std::getline(in, line)) n += line.rfind(needle, 0) == 0;
  return n;
}

// 1. Aging used to move every head that waited long enough out of the queue into the
// supervisor's memory, whether or not it could be dispatched: the queue's capacity no longer
// held, `stats` showed nothing waiting, and refused submits each ran a rebuild. Aging changes
// the order, never the admission.
TEST(DaemonScheduling, AgingChangesTheOrderNeverTheAdmission) {
  Fixture f("aging-cap", {"--max-queue-size=10", "--max-active-executions=1", "--aging-seconds=1"});
  std::size_t accepted = 0;
  std::size_t full = 0;
  for (int i = 0; i < 24; ++i) {
    auto r = f.ingress->submit("a" + std::to_string(i), "u" + std::to_string(i % 3));
    if (r.ok()) {
      ++accepted;
    } else {
      EXPECT_EQ(r.str("error"), "queue_full");
      EXPECT_THAT(r.str("message"), ::testing::Not(HasSubstr("compaction")));
      ++full;
    }
    std::this_thread::sleep_for(150ms);  // spread over 3.6 s: entries age while they wait
  }
  EXPECT_EQ(accepted, 11u) << "one dispatched and ten queued, no more";
  EXPECT_EQ(full, 13u);
  auto st = f.ingress->call(MapBuilder().str("op", "stats").finish());
  std::int64_t depth = 0;
  for (const auto& kv : ipc::find_field(st.get(), "queue_depth")->via.map)
    depth += kv.val.as<std::int64_t>();
  EXPECT_EQ(depth, 10) << "everything that waits is counted";
  EXPECT_TRUE(f.ingress->op("status", "a5").has("queue_position"));
}

// 2. A compaction renumbers ring positions. The announce cursor did not follow: the loop spun on
// a full core and the next submission was never announced.
TEST(DaemonScheduling, ACompactionDoesNotHideLaterSubmissionsNorSpin) {
  Fixture f("compaction", {"--max-active-executions=1"});
  for (const char* id : {"A", "B", "C"}) ASSERT_TRUE(f.ingress->submit(id, "u").ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(f.events->next("ExecutionAccepted"));
  ASSERT_TRUE(f.events->next("CreatePodCommand"));
  ASSERT_TRUE(f.ingress->op("cancel", "B").ok());
  {
    // Any process may ask for maintenance; with the supervisor attached, it runs it.
    ipc::Producer p(ipc::Segment::attach(f.segment));
    ASSERT_TRUE(p.run_maintenance());
  }
  ASSERT_TRUE(f.ingress->submit("D", "u").ok());
  auto accepted = f.events->next("ExecutionAccepted", 5s);
  ASSERT_TRUE(accepted) << "D was never announced";
  EXPECT_EQ(accepted->str("execution_id"), "D");
  EXPECT_EQ(accepted->integer("queue_position"), 1);  // behind C
  const long before = cpu_ticks(f.daemon->pid());
  std::this_thread::sleep_for(1s);
  EXPECT_LT(cpu_ticks(f.daemon->pid()) - before, 20) << "the supervisor spins";
  ASSERT_TRUE(f.ingress->complete("A").ok());
  auto cmd = f.events->next("CreatePodCommand");
  ASSERT_TRUE(cmd);
  EXPECT_EQ(cmd->str("execution_id"), "C");
}

// 3. Dispatched executions never timed out: a lost command held a unit of capacity forever.
TEST(DaemonScheduling, ADispatchedExecutionThatNeverFinishesTimesOutAndGivesItsCapacityBack) {
  Fixture f("timeout", {"--max-active-executions=1", "--timeout-grace-seconds=0",
                        "--default-timeout-seconds=2"});
  const std::string payload = "p";
  const auto* b = reinterpret_cast<const std::byte*>(payload.data());
  ASSERT_TRUE(f.ingress
                  ->call(MapBuilder()
                             .str("op", "submit")
                             .str("execution_id", "lost")
                             .str("user_id", "u")
                             .bin("payload", std::vector<std::byte>(b, b + 1))
                             .integer("timeout_seconds", 1)
                             .finish())
                  .ok());
  ASSERT_TRUE(f.ingress->submit("next", "u").ok());  // the default: 2 s
  const auto t0 = Clock::now();
  ASSERT_TRUE(f.events->next("CreatePodCommand"));
  auto failed = f.events->next("ExecutionFailed", 5s);
  ASSERT_TRUE(failed);
  EXPECT_EQ(failed->str("execution_id"), "lost");
  EXPECT_EQ(failed->str("reason"), "timeout");
  EXPECT_GE(Clock::now() - t0, 900ms);
  auto cmd = f.events->next("CreatePodCommand");
  ASSERT_TRUE(cmd) << "the capacity did not come back";
  EXPECT_EQ(cmd->str("execution_id"), "next");
  EXPECT_EQ(f.ingress->op("status", "lost").str("state"), "failed");
  EXPECT_EQ(f.ingress->op("status", "lost").str("reason"), "timeout");
  EXPECT_EQ(f.wait_counter("timed_out", 1), 1);
}

// 4. A stale or redelivered `fail` with retry for attempt N counted against attempt N+1.
TEST(DaemonScheduling, AReportForAnAttemptThatIsNotCurrentIsAnsweredAndIgnored) {
  Fixture f("fence", {"--max-attempts=3", "--retry-backoff-ms=50"});
  ASSERT_TRUE(f.ingress->submit("x", "u").ok());
  ASSERT_EQ(f.events->next("CreatePodCommand")->integer("attempt"), 1);
  auto fail_attempt = [&](int attempt) {
    return f.ingress->call(MapBuilder()
                               .str("op", "fail")
                               .str("execution_id", "x")
                               .str("error", "boom")
                               .boolean("retry", true)
                               .integer("attempt", attempt)
                               .finish());
  };
  ASSERT_TRUE(fail_attempt(1).ok());
  ASSERT_EQ(f.events->next("CreatePodCommand")->integer("attempt"), 2);
  const auto stale = fail_attempt(1);  // redelivered
  EXPECT_TRUE(stale.ok());
  EXPECT_TRUE(ipc::get_bool(stale.get(), "ignored").value_or(false));
  EXPECT_EQ(stale.integer("attempt"), 2);
  EXPECT_FALSE(f.events->next("CreatePodCommand", 500ms)) << "a stale report started attempt 3";
  EXPECT_EQ(f.ingress->op("status", "x").integer("attempt"), 2);
  EXPECT_EQ(f.wait_counter("stale_reports", 1), 1);
  // The current attempt's report counts; a completion for an old attempt is ignored too.
  EXPECT_TRUE(ipc::get_bool(f.ingress
                                ->call(MapBuilder()
                                           .str("op", "complete")
                                           .str("execution_id", "x")
                                           .integer("attempt", 1)
                                           .finish())
                                .get(),
                            "ignored")
                  .value_or(false));
  ASSERT_TRUE(f.ingress
                  ->call(MapBuilder()
                             .str("op", "complete")
                             .str("execution_id", "x")
                             .integer("attempt", 2)
                             .finish())
                  .ok());
  EXPECT_EQ(f.ingress->op("status", "x").str("state"), "completed");
}

// 5a/b. A reload validated max_active_executions against the new max_active and then reverted
// the size keys (the cap could exceed what the segment holds); a reload that also touched a size
// key lost its new per-user cap.
TEST(DaemonScheduling, AReloadRespectsTheSegmentsSizesAndKeepsANewPerUserCap) {
  const std::string dir = temp_dir("reload-sizes");
  const std::string conf = dir + "/shmschedd.conf";
  std::ofstream(conf) << "max_active = 4\nmax_active_executions = 2\n";
  const std::string segment = segment_name("reload-sizes");
  ipc::Segment::remove(segment);
  Daemon d(dir, segment, {"--config=" + conf});
  d.start();
  Ingress ingress(d.endpoint());
  auto log_has = [&](const std::string& text) {
    const auto deadline = Clock::now() + 10s;
    while (Clock::now() < deadline) {
      if (d.log_text().find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(20ms);
    }
    return false;
  };
  std::ofstream(conf) << "max_active = 64\nmax_active_executions = 32\n";
  d.signal(SIGHUP);
  EXPECT_TRUE(log_has("reload failed, keeping the running configuration")) << d.log_text();
  EXPECT_THAT(d.log_text(), HasSubstr("at most max_active = 4"));
  auto st = ingress.call(MapBuilder().str("op", "stats").finish());
  EXPECT_EQ(st.integer("capacity"), 2);
  // A size key changes along with the per-user cap: the size keeps, the cap takes effect.
  std::ofstream(conf) << "max_active = 4\nmax_queue_size = 20000\nmax_executions_per_user = 1\n"
                         "max_active_executions = 2\n";
  d.signal(SIGHUP);
  EXPECT_TRUE(log_has("configuration reloaded"));
  ASSERT_TRUE(ingress.submit("c1", "carol").ok());
  const auto second = ingress.submit("c2", "carol");
  EXPECT_EQ(second.str("error"), "user_limit");
  EXPECT_EQ(d.signal(SIGTERM), 0);
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// 5c/d. Delivery results that arrived while a replaced transport was flushing were dropped (its
// dispatches were published again), and the flush held the loop (5 s per transport against a
// 10 s watchdog).
TEST(DaemonScheduling, AReplacedTransportIsFlushedWithoutStoppingTheLoopAndItsResultsCount) {
  const std::string dir = temp_dir("retire");
  const std::string conf = dir + "/shmschedd.conf";
  const std::string log_file = dir + "/delivered";
  std::ofstream(conf) << "transports = zeromq,flaky\nflush_timeout_ms = 5000\n[flaky]\n"
                         "log_file = "
                      << log_file << "\ndelay_ms = 1500\n";
  const std::string segment = segment_name("retire");
  ipc::Segment::remove(segment);
  NotifyListener notify(dir + "/notify.sock");
  Daemon d(dir, segment, {"--config=" + conf});
  d.env()["NOTIFY_SOCKET"] = notify.path();
  d.env()["WATCHDOG_USEC"] = "400000";
  d.start();
  Ingress ingress(d.endpoint());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ingress.submit("r" + std::to_string(i), "u").ok());
  // The flaky transport has them, and acknowledges late. Replace it now (another option).
  const auto deadline = Clock::now() + 10s;
  while (count_lines(log_file, "CreatePodCommand") < 3 && Clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_EQ(count_lines(log_file, "CreatePodCommand"), 3u);
  std::ofstream(conf) << "transports = zeromq,flaky\nflush_timeout_ms = 5000\n[flaky]\n"
                         "log_file = "
                      << log_file << "\ndelay_ms = 10\n";
  while (notify.next(0ms)) {
  }
  d.signal(SIGHUP);
  // The loop goes on while the old instance flushes: the watchdog keeps being fed, requests
  // are answered.
  auto last = Clock::now();
  auto longest = 0ms;
  const auto window = Clock::now() + 2500ms;
  while (Clock::now() < window) {
    if (auto m = notify.next(100ms); m && m->text.find("WATCHDOG=1") != std::string::npos) {
      longest =
          std::max(longest, std::chrono::duration_cast<std::chrono::milliseconds>(m->at - last));
      last = m->at;
    }
  }
  EXPECT_LT(longest, 600ms) << "the loop stopped during the flush";
  EXPECT_TRUE(ingress.call(MapBuilder().str("op", "stats").finish()).ok());
  // Their late acknowledgements counted: nothing was published again.
  EXPECT_EQ(count_lines(log_file, "CreatePodCommand r0"), 1u);
  EXPECT_EQ(count_lines(log_file, "CreatePodCommand r1"), 1u);
  EXPECT_EQ(count_lines(log_file, "CreatePodCommand r2"), 1u);
  EXPECT_EQ(ingress.op("status", "r0").str("state"), "dispatched");
  EXPECT_EQ(d.signal(SIGTERM), 0);
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shmsched::test
