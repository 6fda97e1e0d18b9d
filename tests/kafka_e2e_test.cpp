// The kafka transport end to end: shmschedd configured with it, librdkafka's mock cluster as the
// broker (a real Kafka protocol endpoint), kcat as the outside world.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon_support.h"
#include "kafka_support.h"
#include "shmsched/ipc/queue.h"
#include "tmpfs_mount.h"

namespace shmsched::test {
namespace {

using ::testing::HasSubstr;

std::string unique(const std::string& tag) {
  static int n = 0;
  return tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
}

std::vector<std::byte> requested(const std::string& id, const std::string& user,
                                 const std::string& payload = "print('from kafka')") {
  const auto* b = reinterpret_cast<const std::byte*>(payload.data());
  return MapBuilder()
      .str("type", "ExecutionRequested")
      .str("execution_id", id)
      .str("user_id", user)
      .str("priority", "high")
      .bin("payload", std::vector<std::byte>(b, b + payload.size()))
      .finish();
}

std::vector<std::byte> completed(const std::string& id) {
  return MapBuilder()
      .str("type", "ExecutionCompleted")
      .str("execution_id", id)
      .integer("exit_code", 0)
      .finish();
}

// Polls kcat until `want` CreatePodCommands (counting repeats) are on saga_commands.
std::map<std::string, int> wait_commands(const std::string& brokers, std::size_t want,
                                         std::chrono::seconds limit = std::chrono::seconds(30)) {
  const auto deadline = Clock::now() + limit;
  std::map<std::string, int> n;
  for (;;) {
    n = count_keys(kcat_consume(brokers, "saga_commands"), "CreatePodCommand");
    std::size_t total = 0;
    for (const auto& [k, c] : n) total += static_cast<std::size_t>(c);
    if (total >= want || Clock::now() > deadline) return n;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// Each test has a fresh cluster, so its groups read their topics from the beginning
// (auto_offset_reset = earliest; the default, latest, would race the first produced message
// against the group's first offset look-up). Waiting for the assignment checks the rebalance
// callback.
void wait_assigned(const Daemon& d, int times = 1) {
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  for (;;) {
    const std::string log = d.log_text();
    int n = 0;
    for (auto at = log.find("kafka: assigned"); at != std::string::npos;
         at = log.find("kafka: assigned", at + 1)) {
      ++n;
    }
    if (n >= times) return;
    if (Clock::now() > deadline) throw std::runtime_error("no partition assigned:\n" + log);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

struct KafkaFixture {
  KafkaMock mock;
  std::string dir = temp_dir("kafka");
  std::string segment = unique("shmsched-e2e-kafka");
  std::unique_ptr<Daemon> daemon;
  std::unique_ptr<Ingress> ingress;

  explicit KafkaFixture(std::vector<std::string> args) {
    args.push_back("--transports=kafka");
    args.push_back("--kafka.brokers=" + mock.bootstrap());
    args.push_back("--kafka.auto_offset_reset=earliest");
    args.push_back("--kafka.group_id=" +
                   unique("group"));  // the mock is slow to rebalance a rejoined group
    daemon = std::make_unique<Daemon>(dir, segment, std::move(args));
    daemon->start();
    ingress = std::make_unique<Ingress>(daemon->endpoint());
    wait_assigned(*daemon);
  }
  ~KafkaFixture() {
    daemon.reset();
    ipc::Segment::remove(segment);
    std::filesystem::remove_all(dir);
  }
};

TEST(KafkaE2E, CommandsOutSubmissionsAndCompletionsIn) {
  KafkaFixture f({"--max-active-executions=1"});
  // One submission through the ZeroMQ ingress, one as a produced ExecutionRequested.
  ASSERT_TRUE(f.ingress->submit("via-zmq", "alice").ok());
  ASSERT_TRUE(kcat_produce(f.mock.bootstrap(), "execution_events", "ExecutionRequested",
                           "via-kafka", requested("via-kafka", "bob"), f.dir));
  auto cmds = wait_commands(f.mock.bootstrap(), 1);
  EXPECT_EQ(cmds["via-zmq"], 1);
  // The cap holds the second one back until kcat reports the first completed.
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (f.ingress->op("status", "via-kafka").str("state") != "queued" && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(f.ingress->op("status", "via-kafka").str("state"), "queued");
  EXPECT_EQ(f.ingress->op("status", "via-kafka").str("user_id"), "bob");
  ASSERT_TRUE(kcat_produce(f.mock.bootstrap(), "execution_events", "ExecutionCompleted", "via-zmq",
                           completed("via-zmq"), f.dir));
  cmds = wait_commands(f.mock.bootstrap(), 2);
  EXPECT_EQ(cmds["via-zmq"], 1);
  EXPECT_EQ(cmds["via-kafka"], 1);
  // Lifecycle events are on execution_events with their type header; our own are not consumed
  // back as operations (the completion below would otherwise be answered "finished" in a loop).
  const auto events = kcat_consume(f.mock.bootstrap(), "execution_events");
  EXPECT_GE(count_keys(events, "ExecutionAccepted")["via-kafka"], 1);
  EXPECT_GE(count_keys(events, "ExecutionCompleted")["via-zmq"], 1);
  EXPECT_EQ(f.ingress->op("status", "via-zmq").str("state"), "completed");
  auto stats = f.ingress->call(MapBuilder().str("op", "stats").finish());
  EXPECT_EQ(ipc::get_int(*ipc::find_field(stats.get(), "counters"), "completed").value_or(0), 1);
}

TEST(KafkaE2E, BrokerDownThenUpLosesNothingAndDuplicatesNothing) {
  KafkaFixture f({"--max-active-executions=100", "--dispatch-backoff-ms=100",
                  "--max-backoff-ms=1000", "--kafka.rdkafka.message.timeout.ms=1500"});
  f.mock.all_down();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(f.ingress->submit("d" + std::to_string(i), "u").ok());
  // Deliveries time out while the brokers are down: the executions wait, with backoff.
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  for (;;) {
    auto stats = f.ingress->call(MapBuilder().str("op", "stats").finish());
    if (ipc::get_int(*ipc::find_field(stats.get(), "counters"), "publish_failures").value_or(0) >=
        1)
      break;
    ASSERT_LT(Clock::now(), deadline) << "no delivery failed while the brokers were down";
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  f.mock.all_up();
  const auto cmds = wait_commands(f.mock.bootstrap(), 20, std::chrono::seconds(60));
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(cmds.count("d" + std::to_string(i)) ? cmds.at("d" + std::to_string(i)) : 0, 1)
        << "d" << i << " must be dispatched exactly once";
  }
}

TEST(KafkaE2E, MalformedMessagesDoNotStopTheConsumer) {
  KafkaFixture f({});
  const std::string garbage = "\xc1 not msgpack";
  const auto* g = reinterpret_cast<const std::byte*>(garbage.data());
  ASSERT_TRUE(kcat_produce(f.mock.bootstrap(), "execution_events", "ExecutionRequested", "junk",
                           std::vector<std::byte>(g, g + garbage.size()), f.dir));
  ASSERT_TRUE(kcat_produce(f.mock.bootstrap(), "execution_events", "ExecutionRequested", "no-user",
                           MapBuilder().str("execution_id", "no-user").finish(), f.dir));
  ASSERT_TRUE(kcat_produce(f.mock.bootstrap(), "execution_events", "ExecutionRequested", "good",
                           requested("good", "carol"), f.dir));
  const auto cmds = wait_commands(f.mock.bootstrap(), 1);
  EXPECT_EQ(cmds.count("good") ? cmds.at("good") : 0, 1);
  EXPECT_EQ(cmds.count("no-user"), 0u);
  // Both bad messages were logged and skipped.
  EXPECT_THAT(f.daemon->log_text(), HasSubstr("skipped a malformed message"));
  EXPECT_THAT(f.daemon->log_text(), HasSubstr("missing field 'user_id'"));
}

// A replayed or redelivered ExecutionRequested for an execution that already finished must not
// run it again: it is a duplicate.
TEST(KafkaE2E, ARequestForARecentlyFinishedExecutionIsADuplicate) {
  KafkaFixture f({});
  ASSERT_TRUE(kcat_produce(f.mock.bootstrap(), "execution_events", "ExecutionRequested", "once",
                           requested("once", "dave"), f.dir));
  ASSERT_EQ(wait_commands(f.mock.bootstrap(), 1)["once"], 1);
  ASSERT_TRUE(kcat_produce(f.mock.bootstrap(), "execution_events", "ExecutionCompleted", "once",
                           completed("once"), f.dir));
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (f.ingress->op("status", "once").str("state") != "completed" && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(kcat_produce(f.mock.bootstrap(), "execution_events", "ExecutionRequested", "once",
                           requested("once", "dave"), f.dir));
  std::map<std::string, int> rejected;
  while (rejected["once"] == 0 && Clock::now() < deadline) {
    rejected =
        count_keys(kcat_consume(f.mock.bootstrap(), "execution_events"), "ExecutionRejected");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(rejected["once"], 1);
  EXPECT_EQ(wait_commands(f.mock.bootstrap(), 2, std::chrono::seconds(2))["once"], 1)
      << "a finished execution ran again";
}

// Two supervisors on one cluster, each with the default consumer group: each sees the
// completions of its own executions (with one shared group, the other could own the partition
// and take them).
TEST(KafkaE2E, TwoSupervisorsOnOneClusterEachGetTheirOwnCompletions) {
  KafkaMock mock;
  struct Side {
    std::string dir = temp_dir("kafka-two");
    std::string segment = unique("shmsched-e2e-ktwo");
    std::unique_ptr<Daemon> daemon;
    std::unique_ptr<Ingress> ingress;
  };
  Side a, b;
  for (Side* s : {&a, &b}) {
    ipc::Segment::remove(s->segment);
    s->daemon = std::make_unique<Daemon>(
        s->dir, s->segment,
        std::vector<std::string>{"--transports=kafka", "--kafka.brokers=" + mock.bootstrap(),
                                 "--kafka.auto_offset_reset=earliest",
                                 "--max-active-executions=1"});
    s->daemon->start();
    s->ingress = std::make_unique<Ingress>(s->daemon->endpoint());
  }
  wait_assigned(*a.daemon);
  wait_assigned(*b.daemon);
  auto group_of = [](const Daemon& d) {
    const std::string log = d.log_text();
    const auto at = log.find("as group ");
    return at == std::string::npos ? std::string()
                                   : log.substr(at + 9, log.find(' ', at + 9) - at - 9);
  };
  EXPECT_THAT(group_of(*a.daemon), HasSubstr("shmsched."));
  EXPECT_NE(group_of(*a.daemon), group_of(*b.daemon));
  ASSERT_TRUE(a.ingress->submit("a1", "u").ok());
  ASSERT_TRUE(a.ingress->submit("a2", "u").ok());
  ASSERT_TRUE(b.ingress->submit("b1", "u").ok());
  ASSERT_TRUE(b.ingress->submit("b2", "u").ok());
  auto cmds = wait_commands(mock.bootstrap(), 2);
  ASSERT_EQ(cmds["a1"], 1);
  ASSERT_EQ(cmds["b1"], 1);
  // Each one's first execution completes: each dispatches its second.
  ASSERT_TRUE(kcat_produce(mock.bootstrap(), "execution_events", "ExecutionCompleted", "a1",
                           completed("a1"), a.dir));
  ASSERT_TRUE(kcat_produce(mock.bootstrap(), "execution_events", "ExecutionCompleted", "b1",
                           completed("b1"), b.dir));
  cmds = wait_commands(mock.bootstrap(), 4);
  EXPECT_EQ(cmds["a2"], 1) << a.daemon->log_text();
  EXPECT_EQ(cmds["b2"], 1) << b.daemon->log_text();
  for (Side* s : {&a, &b}) {
    auto stats = s->ingress->call(MapBuilder().str("op", "stats").finish());
    EXPECT_EQ(ipc::get_int(*ipc::find_field(stats.get(), "counters"), "completed").value_or(0), 1);
    EXPECT_EQ(s->daemon->signal(SIGTERM), 0);
    ipc::Segment::remove(s->segment);
    std::filesystem::remove_all(s->dir);
  }
}

// Offsets are committed once the supervisor has taken an operation: a restarted supervisor in
// the same group does not read the same requests and completions again.
TEST(KafkaE2E, ARestartedSupervisorDoesNotReadTakenMessagesAgain) {
  KafkaMock mock;
  const std::string dir = temp_dir("kafka-restart");
  const std::string segment = unique("shmsched-e2e-krestart");
  ipc::Segment::remove(segment);
  Daemon d(
      dir, segment,
      {"--transports=kafka", "--kafka.brokers=" + mock.bootstrap(),
       "--kafka.auto_offset_reset=earliest", "--kafka.group_id=" + unique("group"),
       // The mock cluster keeps a departed member until its session times out.
       "--kafka.rdkafka.session.timeout.ms=6000", "--kafka.rdkafka.heartbeat.interval.ms=500"});
  d.start();
  wait_assigned(d);
  Ingress ingress(d.endpoint());
  ASSERT_TRUE(kcat_produce(mock.bootstrap(), "execution_events", "ExecutionRequested", "r1",
                           requested("r1", "erin"), dir));
  ASSERT_EQ(wait_commands(mock.bootstrap(), 1)["r1"], 1);
  ASSERT_TRUE(kcat_produce(mock.bootstrap(), "execution_events", "ExecutionCompleted", "r1",
                           completed("r1"), dir));
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (ingress.op("status", "r1").str("state") != "completed" && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(ingress.op("status", "r1").str("state"), "completed");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the commit goes out
  EXPECT_EQ(d.signal(SIGTERM), 0);
  EXPECT_THAT(d.log_text(), ::testing::Not(HasSubstr(", 0 offset commits")));
  d.start();
  wait_assigned(d);
  // A new request behind the old ones is taken; the old request is not run again.
  ASSERT_TRUE(kcat_produce(mock.bootstrap(), "execution_events", "ExecutionRequested", "r2",
                           requested("r2", "erin"), dir));
  const auto cmds = wait_commands(mock.bootstrap(), 3, std::chrono::seconds(10));
  EXPECT_EQ(cmds.count("r2") ? cmds.at("r2") : 0, 1);
  EXPECT_EQ(cmds.at("r1"), 1) << "the restarted supervisor ran r1 again";
  EXPECT_EQ(d.signal(SIGTERM), 0);
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// With durability = disk an ExecutionRequested message's offset is committed only once its
// execution is on disk. The journal's disk fills up: r2 is taken into the queue but
// cannot be made durable, so its offset stays uncommitted and the next supervisor of the group
// reads it again (and finds it queued already: a duplicate), while r1, durable, is not read again.
TEST(KafkaE2E, WithDurabilityDiskAnOffsetIsCommittedOnlyOnceOnDisk) {
  KafkaMock mock;
  const std::string dir = temp_dir("kafka-disk");
  const std::string journal = dir + "-wal";
  const std::string segment = unique("shmsched-e2e-kdisk");
  ipc::Segment::remove(segment);
  std::filesystem::create_directories(journal);
  Tmpfs fs_(journal, 8 << 20);
  if (!fs_.mounted()) GTEST_SKIP() << fs_.why();
  Daemon d(dir, segment,
           {"--transports=kafka", "--kafka.brokers=" + mock.bootstrap(),
            "--kafka.auto_offset_reset=earliest", "--kafka.group_id=" + unique("group"),
            "--kafka.rdkafka.session.timeout.ms=6000", "--kafka.rdkafka.heartbeat.interval.ms=500",
            "--journal-dir=" + journal, "--durability=disk"});
  d.start();
  wait_assigned(d);
  ASSERT_TRUE(kcat_produce(mock.bootstrap(), "execution_events", "ExecutionRequested", "r1",
                           requested("r1", "erin"), dir));
  ASSERT_EQ(wait_commands(mock.bootstrap(), 1)["r1"], 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // r1's commit goes out
  // The journal's disk fills up (a read-only remount is refused while the journal is open).
  {
    std::ofstream filler(journal + "/filler", std::ios::binary);
    const std::string chunk(64 << 10, 'f');
    while (filler.write(chunk.data(), static_cast<std::streamsize>(chunk.size()))) {
    }
  }
  // Larger than a page: the journal's last page has no room for it.
  ASSERT_TRUE(kcat_produce(mock.bootstrap(), "execution_events", "ExecutionRequested", "r2",
                           requested("r2", "erin", std::string(10000, 'x')), dir));
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (d.log_text().find("the journal failed") == std::string::npos && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_THAT(d.log_text(), HasSubstr("the journal failed"));
  EXPECT_EQ(d.signal(SIGTERM), 0);
  std::filesystem::remove(journal + "/filler");
  d.start();
  wait_assigned(d);
  std::map<std::string, int> rejected;
  while (rejected["r2"] == 0 && Clock::now() < deadline + std::chrono::seconds(10)) {
    rejected = count_keys(kcat_consume(mock.bootstrap(), "execution_events"), "ExecutionRejected");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(rejected["r2"], 1) << "r2's message was not read again: its offset was committed";
  EXPECT_EQ(rejected["r1"], 0) << "r1's message was read again: its offset was not committed";
  EXPECT_EQ(d.signal(SIGTERM), 0);
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

TEST(KafkaE2E, SwapFromZeromqToKafkaAndToBothBySighup) {
  KafkaMock mock;
  const std::string dir = temp_dir("kafka-swap");
  const std::string segment = unique("shmsched-e2e-kswap");
  const std::string conf = dir + "/shmschedd.conf";
  std::ofstream(conf) << "transports = zeromq\nmax_active_executions = 1\n";
  Daemon d(dir, segment, {"--config=" + conf});
  d.start();
  Ingress ingress(d.endpoint());
  Events events(d.events_endpoint());
  events.sync(ingress);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ingress.submit("w" + std::to_string(i), "u").ok());
  ASSERT_TRUE(events.next("CreatePodCommand"));
  // To kafka alone: the queued two go out there.
  std::ofstream(conf) << "transports = kafka\nmax_active_executions = 3\n[kafka]\nbrokers = "
                      << mock.bootstrap() << "\ngroup_id = " << unique("group") << "\n";
  d.signal(SIGHUP);
  auto cmds = wait_commands(mock.bootstrap(), 2);
  EXPECT_EQ(cmds["w1"], 1);
  EXPECT_EQ(cmds["w2"], 1);
  // To both: a new submission reaches Kafka and the zeromq subscribers.
  std::ofstream(conf) << "transports = kafka,zeromq\nmax_active_executions = 5\n[kafka]\nbrokers = "
                      << mock.bootstrap() << "\ngroup_id = " << unique("group") << "\n";
  d.signal(SIGHUP);
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (d.log_text().find("transports kafka,zeromq") == std::string::npos &&
         Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  Events again(d.events_endpoint());
  again.sync(ingress);
  ASSERT_TRUE(ingress.submit("both", "u").ok());
  auto zmq_cmd = again.next("CreatePodCommand");
  ASSERT_TRUE(zmq_cmd);
  EXPECT_EQ(zmq_cmd->str("execution_id"), "both");
  cmds = wait_commands(mock.bootstrap(), 3);
  EXPECT_EQ(cmds["both"], 1);
  EXPECT_EQ(d.signal(SIGTERM), 0);
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shmsched::test
