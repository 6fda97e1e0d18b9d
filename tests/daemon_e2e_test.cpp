// End-to-end: the real shmschedd process, submissions through ZeroMQ and shared memory, the
// zeromq transport's events read by a subscriber.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>

#include "daemon_support.h"
#include "shmsched/ipc/queue.h"

namespace shmsched::test {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

using Fixture = DaemonFixture;

TEST(DaemonE2E, SubmitThroughZeromqAndSharedMemoryDispatchesAndCompletes) {
  Fixture f("basic", {});
  // Over ZeroMQ.
  auto r = f.ingress->submit("zmq-1", "alice", "high", "print(1)");
  ASSERT_TRUE(r.ok()) << r.str("message");
  EXPECT_EQ(r.str("execution_id"), "zmq-1");
  EXPECT_EQ(r.integer("queue_position"), 0);
  auto acc = f.events->next("ExecutionAccepted");
  ASSERT_TRUE(acc);
  EXPECT_EQ(acc->str("execution_id"), "zmq-1");
  EXPECT_EQ(acc->str("user_id"), "alice");
  EXPECT_EQ(acc->str("priority"), "high");
  auto cmd = f.events->next("CreatePodCommand");
  ASSERT_TRUE(cmd);
  EXPECT_EQ(cmd->str("execution_id"), "zmq-1");
  EXPECT_EQ(cmd->integer("attempt"), 1);
  EXPECT_TRUE(cmd->has("payload") && cmd->has("metadata") && cmd->has("required_capabilities") &&
              cmd->has("timeout_seconds") && cmd->has("timestamp"));
  // Directly into shared memory, through the client library.
  ipc::ClientOptions o;
  o.segment = f.segment;
  o.endpoint = f.daemon->endpoint();
  ipc::Client client(o);
  ASSERT_TRUE(client.shared_memory());
  ipc::protocol::SubmitOp op;
  op.user_id = "bob";
  op.execution_id = "shm-1";
  op.metadata = {{"lang", "python"}};
  const auto sr = client.submit(op);
  ASSERT_TRUE(sr.result.accepted()) << sr.result.message;
  EXPECT_TRUE(sr.via_shared_memory);
  acc = f.events->next("ExecutionAccepted");
  ASSERT_TRUE(acc);
  EXPECT_EQ(acc->str("execution_id"), "shm-1");
  cmd = f.events->next("CreatePodCommand");
  ASSERT_TRUE(cmd);
  EXPECT_EQ(cmd->str("execution_id"), "shm-1");
  // Status, complete, and the second complete.
  auto st = f.ingress->op("status", "shm-1");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st.str("state"), "dispatched");
  EXPECT_EQ(st.str("user_id"), "bob");
  ASSERT_TRUE(f.ingress->complete("shm-1", 3).ok());
  auto done = f.events->next("ExecutionCompleted");
  ASSERT_TRUE(done);
  EXPECT_EQ(done->str("execution_id"), "shm-1");
  EXPECT_EQ(done->integer("exit_code"), 3);
  auto again = f.ingress->complete("shm-1");
  EXPECT_FALSE(again.ok());
  EXPECT_EQ(again.str("error"), "finished");
  // A finished execution has a status (issue 8: it used to be not_found).
  const auto finished = f.ingress->op("status", "shm-1");
  EXPECT_TRUE(finished.ok());
  EXPECT_EQ(finished.str("state"), "completed");
  EXPECT_EQ(finished.integer("exit_code"), 3);
  EXPECT_GT(finished.integer("finished_at"), 0);
  EXPECT_EQ(f.ingress->op("status", "never-was").str("error"), "not_found");
  EXPECT_EQ(f.ingress->complete("never-was").str("error"), "not_found");
  EXPECT_EQ(f.daemon->signal(SIGTERM), 0);
}

TEST(DaemonE2E, ActiveCapQueuePositionsAndReactiveDispatch) {
  Fixture f("cap", {"--max-active-executions=2"});
  for (int i = 0; i < 5; ++i) {
    auto r = f.ingress->submit("e" + std::to_string(i), "u" + std::to_string(i));
    ASSERT_TRUE(r.ok());
  }
  for (int i = 0; i < 2; ++i) {
    auto c = f.events->next("CreatePodCommand");
    ASSERT_TRUE(c);
    EXPECT_EQ(c->str("execution_id"), "e" + std::to_string(i));
  }
  EXPECT_FALSE(f.events->next("CreatePodCommand", std::chrono::milliseconds(300)))
      << "more than max_active_executions dispatched";
  EXPECT_EQ(f.ingress->op("status", "e2").integer("queue_position"), 0);
  EXPECT_EQ(f.ingress->op("status", "e4").integer("queue_position"), 2);
  auto critical = f.ingress->submit("urgent", "z", "critical");
  EXPECT_EQ(critical.integer("queue_position"), 0);
  EXPECT_EQ(f.ingress->op("status", "e4").integer("queue_position"), 3);
  ASSERT_TRUE(f.ingress->complete("e0").ok());
  auto next = f.events->next("CreatePodCommand");
  ASSERT_TRUE(next);
  EXPECT_EQ(next->str("execution_id"), "urgent") << "critical first";
  ASSERT_TRUE(f.ingress->fail("e1", "oom", false).ok());
  auto failed = f.events->next("ExecutionFailed");
  ASSERT_TRUE(failed);
  EXPECT_EQ(failed->str("error"), "oom");
  next = f.events->next("CreatePodCommand");
  ASSERT_TRUE(next);
  EXPECT_EQ(next->str("execution_id"), "e2");
  // The counters `stats` reads are published after the loop's round that sent the command: a
  // client that got the command at once may ask before (CI saw active = 1 once).
  auto stats = f.ingress->call(MapBuilder().str("op", "stats").finish());
  for (const auto deadline = Clock::now() + std::chrono::seconds(5);
       stats.integer("active") != 2 && Clock::now() < deadline;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    stats = f.ingress->call(MapBuilder().str("op", "stats").finish());
  }
  EXPECT_EQ(stats.integer("active"), 2);
  EXPECT_EQ(stats.integer("capacity"), 2);
  const auto* waits = ipc::find_field(stats.get(), "oldest_wait_ms");
  ASSERT_NE(waits, nullptr);
  EXPECT_GE(ipc::get_int(*waits, "normal").value_or(-1), 0);
  const auto* depth = ipc::find_field(stats.get(), "queue_depth");
  ASSERT_NE(depth, nullptr);
  EXPECT_EQ(ipc::get_int(*depth, "normal").value_or(-1), 2);
}

// Review of issue 11: `stats` read the oldest waits only through the ingress's own queue
// registration, made by its first submit, status or list; entries submitted straight into shared
// memory showed an oldest wait of 0 however long they waited.
TEST(DaemonE2E, StatsShowsTheOldestWaitOfEntriesSubmittedThroughSharedMemory) {
  // No fixture: its events sync submits through the ingress, which registers it.
  const auto dir = temp_dir("oldest");
  const auto segment = segment_name("oldest");
  Daemon daemon(dir, segment, {"--max-active-executions=1"});
  daemon.start();
  ipc::ClientOptions o;
  o.segment = segment;
  o.endpoint = daemon.endpoint();
  ipc::Client client(o);
  for (int i = 0; i < 3; ++i) {
    ipc::protocol::SubmitOp op;
    op.user_id = "bob";
    op.execution_id = "shm-wait-" + std::to_string(i);
    ASSERT_TRUE(client.submit(op).via_shared_memory);
  }
  Ingress ingress(daemon.endpoint());
  // Two wait behind the one dispatched; their wait grows past 0 ms within a moment.
  std::int64_t waited = 0;
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (waited <= 0 && Clock::now() < deadline) {
    auto stats = ingress.call(MapBuilder().str("op", "stats").finish());
    const auto* depth = ipc::find_field(stats.get(), "queue_depth");
    ASSERT_NE(depth, nullptr);
    if (ipc::get_int(*depth, "normal").value_or(-1) != 2) continue;  // not yet dispatched
    const auto* waits = ipc::find_field(stats.get(), "oldest_wait_ms");
    ASSERT_NE(waits, nullptr);
    waited = ipc::get_int(*waits, "normal").value_or(-1);
  }
  EXPECT_GT(waited, 0) << "two executions queued for seconds, and stats says nobody waits";
  daemon.signal(SIGTERM);
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// `list` over the ingress copied every queued execution out of the segment, payloads included,
// to pick the few it answers with (found beside the dashboard's per-user top, which did the
// same): with 4,000 queued 16 KiB payloads, one list of 10 raised the peak RSS by ~130 MB.
TEST(DaemonE2E, AListCopiesNoPayloads) {
  Fixture f("list-mem", {"--max-active-executions=1", "--max-executions-per-user=100000"});
  auto seg = ipc::Segment::attach(f.segment);
  {
    ipc::Producer p(seg);
    ipc::protocol::SubmitOp op;
    op.user_id = "bulk";
    op.payload.assign(16 * 1024 - 16, std::byte{'x'});
    for (int i = 0; i < 4000; ++i) {
      ASSERT_TRUE(
          p.submit(ipc::protocol::to_submit_request(op, "m" + std::to_string(i))).accepted())
          << i;
    }
  }
  // The announcements of the 4,000 are out before we measure.
  ASSERT_EQ(f.ingress->op("status", "m3999").str("state"), "queued");
  const long before = peak_rss_kb(f.daemon->pid());
  const auto list = f.ingress->call(
      MapBuilder().str("op", "list").str("state", "queued").integer("limit", 10).finish());
  const auto* items = ipc::find_field(list.get(), "executions");
  ASSERT_NE(items, nullptr);
  EXPECT_EQ(items->via.array.size, 10u);
  const long grew = peak_rss_kb(f.daemon->pid()) - before;
  EXPECT_LT(grew, 24 * 1024) << "one list of 10 raised the peak RSS by " << grew / 1024 << " MB";
  seg.reset();
}

TEST(DaemonE2E, RejectionsAreExactAndPublished) {
  Fixture f("reject", {"--max-queue-size=3", "--max-executions-per-user=2",
                       "--max-payload-bytes=16", "--max-active-executions=1"});
  ASSERT_TRUE(f.ingress->submit("a1", "alice").ok());
  ASSERT_TRUE(f.ingress->submit("a2", "alice").ok());
  auto r = f.ingress->submit("a3", "alice");
  EXPECT_EQ(r.str("error"), "user_limit");
  auto rej = f.events->next("ExecutionRejected");
  ASSERT_TRUE(rej);
  EXPECT_EQ(rej->str("reason"), "user_limit");
  EXPECT_EQ(rej->str("execution_id"), "a3");
  EXPECT_EQ(f.ingress->submit("a2", "bob").str("error"), "duplicate");
  EXPECT_EQ(f.ingress->submit("big", "bob", "normal", std::string(17, 'x')).str("error"),
            "payload_too_large");
  ASSERT_TRUE(f.ingress->submit("b1", "bob").ok());
  ASSERT_TRUE(f.ingress->submit("c1", "carol").ok());  // a1 dispatched; a2, b1, c1 queued
  EXPECT_EQ(f.ingress->submit("d1", "dave").str("error"), "queue_full");
  EXPECT_EQ(f.ingress->submit("bad-prio", "dave", "urgent").str("error"), "invalid");
}

TEST(DaemonE2E, MalformedInputGetsInvalidAndTheServerGoesOn) {
  Fixture f("fuzzish", {});
  zmq::context_t ctx;
  auto raw = [&](std::vector<std::string> frames) {
    zmq::socket_t s(ctx, zmq::socket_type::dealer);
    s.set(zmq::sockopt::rcvtimeo, 5000);
    s.set(zmq::sockopt::linger, 0);
    s.connect(f.daemon->endpoint());
    for (std::size_t i = 0; i < frames.size(); ++i) {
      s.send(zmq::buffer(frames[i]),
             i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
    std::vector<zmq::message_t> reply;
    zmq::message_t m;
    do {
      if (!s.recv(m)) return Map{};
      reply.push_back(std::move(m));
    } while (reply.back().more());
    return decode(reply.back().data(), reply.back().size());
  };
  auto expect_invalid = [&](std::vector<std::string> frames, const std::string& why) {
    const Map r = raw(std::move(frames));
    ASSERT_TRUE(r.handle) << "no answer to " << why;
    EXPECT_FALSE(r.ok()) << why;
    EXPECT_EQ(r.str("error"), "invalid") << why;
    EXPECT_FALSE(r.str("message").empty()) << why;
  };
  auto packed = [](auto&& build) {
    const auto v = build.finish();
    return std::string(reinterpret_cast<const char*>(v.data()), v.size());
  };
  expect_invalid({"", "not msgpack \xc1"}, "garbage");
  expect_invalid({"", std::string("\x93\x01\x02\x03", 4)}, "an array, not a map");
  expect_invalid({"", packed(MapBuilder().str("no_op", "x"))}, "missing op");
  expect_invalid({"", packed(MapBuilder().integer("op", 3))}, "op not a string");
  expect_invalid({"", packed(MapBuilder().str("op", "explode"))}, "unknown op");
  expect_invalid({"", packed(MapBuilder().str("op", "submit").str("user_id", "u"))}, "no payload");
  expect_invalid(
      {"", packed(MapBuilder().str("op", "submit").integer("user_id", 5).str("payload", "x"))},
      "user_id not a string");
  expect_invalid({"", packed(MapBuilder()
                                 .str("op", "submit")
                                 .str("user_id", "u")
                                 .str("payload", "x")
                                 .integer("priority", 9))},
                 "priority out of range");
  expect_invalid({"", packed(MapBuilder().str("op", "status"))}, "status without id");
  expect_invalid({"", "a", "b"}, "two body frames");
  expect_invalid({"", packed(MapBuilder().str("op", "register_worker").integer("capacity", 2))},
                 "register_worker without worker_id");
  expect_invalid(
      {"",
       packed(
           MapBuilder().str("op", "register_worker").str("worker_id", "w").integer("capacity", 0))},
      "a worker without capacity");
  expect_invalid({"", packed(MapBuilder().str("op", "claim").str("worker_id", "w"))},
                 "claim without execution_id");
  // A DEALER without the empty delimiter is answered too.
  const Map plain = raw({packed(MapBuilder().str("op", "stats"))});
  ASSERT_TRUE(plain.handle);
  EXPECT_TRUE(plain.ok());
  // And the server still serves normal clients.
  EXPECT_TRUE(f.ingress->submit("after", "u").ok());
  EXPECT_GE(f.ingress->call(MapBuilder().str("op", "stats").finish()).has("counters"), true);
}

TEST(DaemonE2E, CancelQueuedAndDispatched) {
  Fixture f("cancel", {"--max-active-executions=1"});
  ASSERT_TRUE(f.ingress->submit("run", "u").ok());
  ASSERT_TRUE(f.ingress->submit("wait", "u").ok());
  ASSERT_TRUE(f.events->next("CreatePodCommand"));
  ASSERT_TRUE(f.ingress
                  ->call(MapBuilder()
                             .str("op", "cancel")
                             .str("execution_id", "wait")
                             .str("reason", "user asked")
                             .finish())
                  .ok());
  auto c = f.events->next("ExecutionCancelled");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->str("execution_id"), "wait");
  EXPECT_EQ(c->str("reason"), "user asked");
  EXPECT_EQ(c->str("user_id"), "u");
  ASSERT_TRUE(f.ingress->op("cancel", "run").ok());
  c = f.events->next("ExecutionCancelled");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->str("execution_id"), "run");
  EXPECT_EQ(f.ingress->op("cancel", "run").str("error"), "finished");
  EXPECT_EQ(f.ingress->op("cancel", "ghost").str("error"), "not_found");
  EXPECT_FALSE(f.events->next("CreatePodCommand", std::chrono::milliseconds(300)))
      << "a cancelled execution was dispatched";
  // Capacity is back: a new one is dispatched at once.
  ASSERT_TRUE(f.ingress->submit("next", "u").ok());
  auto cmd = f.events->next("CreatePodCommand");
  ASSERT_TRUE(cmd);
  EXPECT_EQ(cmd->str("execution_id"), "next");
}

TEST(DaemonE2E, FailWithRetryBacksOffThenGivesUp) {
  Fixture f("retry", {"--max-attempts=2", "--retry-backoff-ms=200"});
  ASSERT_TRUE(f.ingress->submit("flaky-job", "u").ok());
  auto first = f.events->next("CreatePodCommand");
  ASSERT_TRUE(first);
  EXPECT_EQ(first->integer("attempt"), 1);
  const auto t0 = Clock::now();
  ASSERT_TRUE(f.ingress->fail("flaky-job", "exit 1", true).ok());
  auto failed = f.events->next("ExecutionFailed");
  ASSERT_TRUE(failed);
  EXPECT_TRUE(ipc::get_bool(failed->get(), "will_retry").value_or(false));
  auto second = f.events->next("CreatePodCommand");
  ASSERT_TRUE(second);
  EXPECT_EQ(second->integer("attempt"), 2);
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(190)) << "no backoff before the retry";
  EXPECT_EQ(f.ingress->op("status", "flaky-job").integer("attempt"), 2);
  ASSERT_TRUE(f.ingress->fail("flaky-job", "exit 1 again", true).ok());
  failed = f.events->next("ExecutionFailed");
  ASSERT_TRUE(failed);
  EXPECT_FALSE(ipc::get_bool(failed->get(), "will_retry").value_or(true));
  EXPECT_FALSE(f.events->next("CreatePodCommand", std::chrono::milliseconds(500)));
  const auto finished = f.ingress->op("status", "flaky-job");
  EXPECT_EQ(finished.str("state"), "failed");
  EXPECT_EQ(finished.str("error"), "exit 1 again");
  EXPECT_EQ(finished.integer("attempt"), 2);
}

// The supervisor's publish_failures counter, once it reached `n` (or after 10 s).
std::int64_t wait_for_publish_failures(Ingress& ingress, std::int64_t n) {
  const auto failures = [&] {
    auto stats = ingress.call(MapBuilder().str("op", "stats").finish());
    return ipc::get_int(*ipc::find_field(stats.get(), "counters"), "publish_failures").value_or(0);
  };
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (failures() < n && Clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return failures();
}

std::size_t count_lines(const std::string& path, const std::string& needle) {
  std::ifstream in(path);
  std::size_t n = 0;
  for (std::string line; std::getline(in, line);) n += line.find(needle) != std::string::npos;
  return n;
}

TEST(DaemonE2E, FailingTransportBacksOffAndNothingIsLost) {
  const std::string dir = temp_dir("flaky-files");
  const std::string fail_file = dir + "/fail";
  const std::string log_file = dir + "/delivered";
  std::ofstream(fail_file).put('x');
  Fixture f("flaky", {"--transports=zeromq,flaky", "--flaky.fail_file=" + fail_file,
                      "--flaky.log_file=" + log_file, "--dispatch-backoff-ms=50",
                      "--max-active-executions=4"});
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(f.ingress->submit("t" + std::to_string(i), "u").ok());
  // zeromq has the first one; flaky keeps failing, so it is retried with backoff, and nothing
  // else is taken from the queue meanwhile.
  auto cmd = f.events->next("CreatePodCommand");
  ASSERT_TRUE(cmd);
  EXPECT_EQ(cmd->str("execution_id"), "t0");
  EXPECT_GE(wait_for_publish_failures(*f.ingress, 3), 3);  // several backoff rounds
  EXPECT_EQ(count_lines(log_file, "CreatePodCommand"), 0u);
  std::filesystem::remove(fail_file);  // the broker is back
  // Every execution reaches the flaky transport exactly once, and zeromq never twice.
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (count_lines(log_file, "CreatePodCommand") < 4 && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(count_lines(log_file, "CreatePodCommand t" + std::to_string(i)), 1u) << i;
  }
  std::size_t zmq_commands =
      1 + f.events->count_for("CreatePodCommand", std::chrono::milliseconds(500));
  EXPECT_EQ(zmq_commands, 4u);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(f.ingress->complete("t" + std::to_string(i)).ok());
  while (count_lines(log_file, "CreatePodCommand") < 6 && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(count_lines(log_file, "CreatePodCommand t4"), 1u);
  EXPECT_EQ(count_lines(log_file, "CreatePodCommand t5"), 1u);
  std::filesystem::remove_all(dir);
}

TEST(DaemonE2E, RetryWhileASlowTransportStillAcknowledgesTheFirstAttempt) {
  const std::string dir = temp_dir("slow-files");
  const std::string log_file = dir + "/delivered";
  Fixture f("slow", {"--transports=zeromq,flaky", "--flaky.delay_ms=700",
                     "--flaky.log_file=" + log_file, "--max-attempts=2", "--retry-backoff-ms=50"});
  ASSERT_TRUE(f.ingress->submit("slow-1", "u").ok());
  auto first = f.events->next("CreatePodCommand");
  ASSERT_TRUE(first);
  EXPECT_EQ(first->integer("attempt"), 1);
  // The worker fails attempt 1 while the slow transport has not acknowledged it yet.
  ASSERT_TRUE(f.ingress->fail("slow-1", "crashed", true).ok());
  auto second = f.events->next("CreatePodCommand");
  ASSERT_TRUE(second);
  EXPECT_EQ(second->integer("attempt"), 2);
  // The late acknowledgement of attempt 1 must not count for attempt 2: attempt 2 reaches the
  // slow transport too, once, and stays dispatched until it finishes.
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (count_lines(log_file, "CreatePodCommand slow-1") < 2 && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(count_lines(log_file, "CreatePodCommand slow-1"), 2u);
  EXPECT_EQ(f.events->count_for("CreatePodCommand", std::chrono::milliseconds(1500)), 0u);
  EXPECT_EQ(f.ingress->op("status", "slow-1").str("state"), "dispatched");
  ASSERT_TRUE(f.ingress->complete("slow-1").ok());
  std::filesystem::remove_all(dir);
}

TEST(DaemonE2E, RestartCarriesOnWithQueuedAndActiveWork) {
  Fixture f("restart", {"--max-active-executions=1"});
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(f.ingress->submit("r" + std::to_string(i), "u").ok());
  auto cmd = f.events->next("CreatePodCommand");
  ASSERT_TRUE(cmd);
  EXPECT_EQ(cmd->str("execution_id"), "r0");
  EXPECT_EQ(f.daemon->signal(SIGTERM), 0);
  f.daemon->start();
  f.ingress = std::make_unique<Ingress>(f.daemon->endpoint());
  f.events = std::make_unique<Events>(f.daemon->events_endpoint());
  f.events->sync(*f.ingress);
  // r0 is still dispatched (not re-dispatched); r1, r2 still queued in order.
  EXPECT_EQ(f.ingress->op("status", "r0").str("state"), "dispatched");
  EXPECT_EQ(f.ingress->op("status", "r1").integer("queue_position"), 0);
  EXPECT_EQ(f.ingress->op("status", "r2").integer("queue_position"), 1);
  EXPECT_FALSE(f.events->next("CreatePodCommand", std::chrono::milliseconds(300)));
  ASSERT_TRUE(f.ingress->complete("r0").ok());
  cmd = f.events->next("CreatePodCommand");
  ASSERT_TRUE(cmd);
  EXPECT_EQ(cmd->str("execution_id"), "r1");
}

TEST(DaemonE2E, KilledSupervisorIsReplacedByAStandby) {
  Fixture f("standby", {"--max-active-executions=1"});
  // A second supervisor is refused while the first holds the lock.
  Daemon second(f.dir, f.segment, {});
  second.start(false);
  EXPECT_EQ(second.wait_exit(), 1);
  EXPECT_THAT(second.log_text(), HasSubstr("already scheduling"));
  // A standby waits, and takes over with all state when the first is SIGKILLed.
  ASSERT_TRUE(f.ingress->submit("s0", "u").ok());
  ASSERT_TRUE(f.ingress->submit("s1", "u").ok());
  ASSERT_TRUE(f.events->next("CreatePodCommand"));
  Daemon standby(f.dir, f.segment, {"--standby", "--max-active-executions=1"});
  standby.start(false);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_NE(::waitpid(standby.pid(), nullptr, WNOHANG), standby.pid()) << "the standby exited";
  f.daemon->signal(SIGKILL);
  standby.wait_until_ready();
  Ingress ingress(standby.endpoint());
  EXPECT_EQ(ingress.op("status", "s0").str("state"), "dispatched");
  EXPECT_EQ(ingress.op("status", "s1").integer("queue_position"), 0);
  ASSERT_TRUE(ingress.complete("s0").ok());
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (ingress.op("status", "s1").str("state") != "dispatched" && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(ingress.op("status", "s1").str("state"), "dispatched");
  EXPECT_EQ(standby.signal(SIGTERM), 0);
}

TEST(DaemonE2E, StaleEntriesExpire) {
  Fixture f("stale", {"--max-active-executions=1", "--stale-timeout-seconds=1"});
  ASSERT_TRUE(f.ingress->submit("busy", "u").ok());
  ASSERT_TRUE(f.ingress->submit("old", "u").ok());
  auto e = f.events->next("ExecutionExpired", std::chrono::seconds(10));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->str("execution_id"), "old");
  const auto finished = f.ingress->op("status", "old");
  EXPECT_EQ(finished.str("state"), "expired");
  EXPECT_EQ(finished.str("reason"), "stale_timeout");
}

TEST(DaemonE2E, SighupSwapsTransportsAndKeepsQueuedWork) {
  const std::string dir = temp_dir("hup-files");
  const std::string conf = dir + "/shmschedd.conf";
  const std::string log_file = dir + "/delivered";
  std::ofstream(conf) << "transports = zeromq\nmax_active_executions = 1\n";
  Fixture f("hup", {"--config=" + conf});
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(f.ingress->submit("h" + std::to_string(i), "u").ok());
  ASSERT_TRUE(f.events->next("CreatePodCommand"));
  // Move to the flaky transport alone, with a larger cap.
  std::ofstream(conf) << "transports = flaky\nmax_active_executions = 5\n[flaky]\nlog_file = "
                      << log_file << "\n";
  f.daemon->signal(SIGHUP);
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (count_lines(log_file, "CreatePodCommand") < 2 && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(count_lines(log_file, "CreatePodCommand h1"), 1u);
  EXPECT_EQ(count_lines(log_file, "CreatePodCommand h2"), 1u);
  // h0 was dispatched through zeromq, which is gone; the flaky transport gets it too, since it
  // never had it: delivery is at least once per transport.
  EXPECT_LE(count_lines(log_file, "CreatePodCommand h0"), 1u);
  EXPECT_THAT(f.daemon->log_text(), HasSubstr("configuration reloaded"));
  std::filesystem::remove_all(dir);
}

TEST(DaemonE2E, AgingLiftsLongWaitingEntries) {
  Fixture f("aging", {"--max-active-executions=1", "--aging-seconds=1"});
  ASSERT_TRUE(f.ingress->submit("busy", "u").ok());
  ASSERT_TRUE(f.events->next("CreatePodCommand"));
  ASSERT_TRUE(f.ingress->submit("starving", "u", "background").ok());
  // Aging is defined in time: three seconds of waiting lift background (4) above normal (2).
  // It changes the order, never the admission: the entry stays queued, counted and placed.
  std::this_thread::sleep_for(std::chrono::milliseconds(3300));
  EXPECT_EQ(f.ingress->op("status", "starving").str("state"), "queued");
  ASSERT_TRUE(f.ingress->submit("fresh", "u", "normal").ok());
  ASSERT_TRUE(f.ingress->complete("busy").ok());
  auto cmd = f.events->next("CreatePodCommand");
  ASSERT_TRUE(cmd);
  EXPECT_EQ(cmd->str("execution_id"), "starving") << "the aged background entry should go first";
  // (The counters are published at the end of the loop's round: wait for it.)
  std::int64_t aged = 0;
  for (const auto until = Clock::now() + std::chrono::seconds(5); aged == 0 && Clock::now() < until;
       std::this_thread::sleep_for(std::chrono::milliseconds(10))) {
    auto st = f.ingress->call(MapBuilder().str("op", "stats").finish());
    aged = ipc::get_int(*ipc::find_field(st.get(), "counters"), "aged").value_or(0);
  }
  EXPECT_EQ(aged, 1);
}

std::string run_ctl(const Fixture& f, const std::string& args, int* rc = nullptr) {
  const std::string cmd = std::string(SHMSCHED_BIN_DIR "/shmschedctl --runtime-dir ") + f.dir +
                          " --segment " + f.segment + " " + args + " 2>&1";
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  char buf[4096];
  while (p && std::fgets(buf, sizeof buf, p)) out += buf;
  const int status = p ? ::pclose(p) : -1;
  if (rc) *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

TEST(DaemonE2E, ShmschedctlForPeopleAndScripts) {
  Fixture f("ctl", {"--max-active-executions=1"});
  int rc = 0;
  EXPECT_THAT(run_ctl(f, "submit --user alice --id c1 --priority high --payload 'print(1)'", &rc),
              HasSubstr("accepted c1 at queue position 0 (shared memory)"));
  EXPECT_EQ(rc, 0);
  EXPECT_THAT(
      run_ctl(f, "--json submit --user bob --id c2 --via-ingress --meta lang=py", &rc),
      HasSubstr("\"ok\":true,\"execution_id\":\"c2\",\"queue_position\":0,\"via\":\"ingress\""));
  EXPECT_THAT(run_ctl(f, "submit --user bob --id c2", &rc), HasSubstr("rejected c2: duplicate"));
  EXPECT_EQ(rc, 1);
  ASSERT_TRUE(f.events->next("CreatePodCommand"));
  EXPECT_THAT(run_ctl(f, "status c2"), HasSubstr("queued"));
  EXPECT_THAT(run_ctl(f, "--json status c1"), HasSubstr("\"state\":\"dispatched\""));
  const std::string list = run_ctl(f, "list");
  EXPECT_THAT(list, HasSubstr("c1"));
  EXPECT_THAT(list, HasSubstr("c2"));
  EXPECT_THAT(run_ctl(f, "list --state queued --json"), Not(HasSubstr("\"c1\"")));
  EXPECT_THAT(run_ctl(f, "top --iterations 1"), HasSubstr("oldest wait"));
  EXPECT_THAT(run_ctl(f, "--json stats"), HasSubstr("\"queue_depth\""));
  // Keys longer than the column ran into their values ("waiting_for_workers0").
  EXPECT_THAT(run_ctl(f, "stats"), HasSubstr("waiting_for_workers 0"));
  EXPECT_THAT(run_ctl(f, "cancel c2 --reason test"), Not(HasSubstr("error")));
  EXPECT_THAT(run_ctl(f, "complete c1 --exit-code 0", &rc), Not(HasSubstr("error")));
  EXPECT_EQ(rc, 0);
  EXPECT_THAT(run_ctl(f, "complete c1", &rc), HasSubstr("finished"));
  EXPECT_EQ(rc, 1);
  EXPECT_THAT(run_ctl(f, "frobnicate", &rc), HasSubstr("unknown command"));
  EXPECT_EQ(rc, 2);
  EXPECT_THAT(run_ctl(f, "submit", &rc), HasSubstr("--user"));
  EXPECT_EQ(rc, 2);
}

TEST(DaemonE2E, BadConfigurationNamesTheKey) {
  const std::string dir = temp_dir("badconf");
  std::vector<std::string> segments;
  auto seg = [&] {
    segments.push_back(segment_name("badconf"));
    return segments.back();
  };
  Daemon d(dir, seg(), {"--max-queue-size=0"});
  d.start(false);
  EXPECT_EQ(d.wait_exit(), 2);
  EXPECT_THAT(d.log_text(), HasSubstr("max_queue_size = 0"));
  Daemon missing(dir, seg(), {"--transports=nosuch"});
  missing.start(false);
  EXPECT_EQ(missing.wait_exit(), 1);
  EXPECT_THAT(missing.log_text(), HasSubstr("libshmsched_transport_nosuch.so"));
  Daemon old(dir, seg(), {"--transports=oldabi"});
  old.start(false);
  EXPECT_EQ(old.wait_exit(), 1);
  EXPECT_THAT(old.log_text(), HasSubstr("was built for plugin ABI version 1, this shmschedd "
                                        "speaks version 2: rebuild the plugin"));
  Daemon nosym(dir, seg(), {"--transports=nosymbol"});
  nosym.start(false);
  EXPECT_EQ(nosym.wait_exit(), 1);
  EXPECT_THAT(nosym.log_text(), HasSubstr("does not export shmsched_transport_entry"));
  // One bad transport among good ones: with it optional, the supervisor runs with the good ones
  // (required, it stops the start: daemon_config_test).
  Daemon mixed(dir, seg(), {"--transports=zeromq,nosuch", "--optional-transports=nosuch"});
  mixed.start();
  EXPECT_THAT(mixed.log_text(), HasSubstr("libshmsched_transport_nosuch.so"));
  EXPECT_EQ(mixed.signal(SIGTERM), 0);
  // A supervisor that failed to start leaves the segment for the next one, as in production.
  for (const auto& s : segments) ipc::Segment::remove(s);
  std::filesystem::remove_all(dir);
}

// A transport that refuses part of a batch (publish_batch takes a prefix): the refused command
// is a failed delivery, backed off and published again; the messages after it are offered again
// at once; each command reaches each transport once.
TEST(DaemonE2E, RefusedCommandsInABatchAreRetriedAndNothingIsLostOrDoubled) {
  const std::string dir = temp_dir("refuse-files");
  const std::string refuse_file = dir + "/refuse";
  const std::string log_file = dir + "/delivered";
  std::ofstream(refuse_file).put('x');
  Fixture f("refuse", {"--transports=zeromq,flaky", "--flaky.refuse_file=" + refuse_file,
                       "--flaky.log_file=" + log_file, "--dispatch-backoff-ms=50",
                       "--max-active-executions=4"});
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(f.ingress->submit("r" + std::to_string(i), "u").ok());
  EXPECT_GE(wait_for_publish_failures(*f.ingress, 3), 3);  // several backoff rounds
  EXPECT_EQ(count_lines(log_file, "CreatePodCommand"), 0u);
  // The events of the batch around the refused commands were taken (offered again after each).
  EXPECT_EQ(count_lines(log_file, "ExecutionAccepted r"), 6u);
  std::filesystem::remove(refuse_file);
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (count_lines(log_file, "CreatePodCommand") < 4 && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(count_lines(log_file, "CreatePodCommand r" + std::to_string(i)), 1u) << i;
  }
  EXPECT_EQ(f.events->count_for("CreatePodCommand", std::chrono::milliseconds(500)), 4u)
      << "zeromq had each once";
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(f.ingress->complete("r" + std::to_string(i)).ok());
  while (count_lines(log_file, "CreatePodCommand") < 6 && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(count_lines(log_file, "CreatePodCommand r4"), 1u);
  EXPECT_EQ(count_lines(log_file, "CreatePodCommand r5"), 1u);
  EXPECT_THAT(f.daemon->log_text(), ::testing::HasSubstr("refused CreatePodCommand"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shmsched::test
