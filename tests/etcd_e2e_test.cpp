// The etcd transport end to end: shmschedd configured with it, Debian's etcd as the server
// (started here on free loopback ports), etcdctl as the outside world (workers claiming,
// completing and registering).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <dlfcn.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>

#include <nlohmann/json.hpp>

#include "daemon_support.h"
#include "etcd_support.h"
#include "shmsched/ipc/queue.h"
#include "shmsched/transport.h"

namespace shmsched::test {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;

std::string unique(const std::string& tag) {
  static int n = 0;
  return tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
}

// Polls `check` until it holds; false after `limit`.
bool eventually(const std::function<bool()>& check,
                std::chrono::milliseconds limit = std::chrono::seconds(20)) {
  const auto deadline = Clock::now() + limit;
  while (!check()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

std::int64_t counter(Ingress& ingress, const std::string& name) {
  auto stats = ingress.call(MapBuilder().str("op", "stats").finish());
  if (name == "workers" || name == "active") return stats.integer(name);
  return ipc::get_int(*ipc::find_field(stats.get(), "counters"), name).value_or(-1);
}

Map submit_with(Ingress& ingress, const std::string& id, const std::vector<std::string>& caps) {
  const std::string payload = "run " + id;
  const auto* b = reinterpret_cast<const std::byte*>(payload.data());
  return ingress.call(MapBuilder()
                          .str("op", "submit")
                          .str("execution_id", id)
                          .str("user_id", "u")
                          .bin("payload", std::vector<std::byte>(b, b + payload.size()))
                          .strings("required_capabilities", caps)
                          .finish());
}

// One etcd member for the tests that do not stop it; each test has its own prefix.
class EtcdE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { shared_ = new EtcdCluster(1); }
  static void TearDownTestSuite() {
    delete shared_;
    shared_ = nullptr;
  }
  static EtcdCluster* shared_;
};
EtcdCluster* EtcdE2E::shared_ = nullptr;

// A shmschedd with the zeromq and etcd transports, its etcd watch running.
struct EtcdDaemon {
  std::string dir = temp_dir("etcd");
  std::string segment = unique("shmsched-e2e-etcd");
  std::string prefix = "/" + unique("t");
  std::unique_ptr<Daemon> daemon;
  std::unique_ptr<Ingress> ingress;

  // `at`: the prefix (default: one of its own).
  EtcdDaemon(const std::string& endpoints, std::vector<std::string> args, std::string at = "") {
    if (!at.empty()) prefix = std::move(at);
    args.push_back("--transports=zeromq,etcd");
    args.push_back("--etcd.endpoints=" + endpoints);
    args.push_back("--etcd.prefix=" + prefix);
    daemon = std::make_unique<Daemon>(dir, segment, std::move(args));
    daemon->start();
    ingress = std::make_unique<Ingress>(daemon->endpoint());
    wait_log("etcd: read the current state");
  }
  ~EtcdDaemon() {
    daemon.reset();
    ipc::Segment::remove(segment);
    std::filesystem::remove_all(dir);
  }
  void wait_log(const std::string& line, int times = 1) const {
    const bool seen = eventually([&] {
      const std::string log = daemon->log_text();
      int n = 0;
      for (auto at = log.find(line); at != std::string::npos; at = log.find(line, at + 1)) ++n;
      return n >= times;
    });
    if (!seen) throw std::runtime_error("never logged '" + line + "':\n" + daemon->log_text());
  }
  std::string key(const std::string& rest) const { return prefix + "/" + rest; }
  std::string state(const std::string& id) const { return ingress->op("status", id).str("state"); }
};

// A worker registered through etcd: its registration under a lease of `ttl` seconds.
std::string register_worker(const Etcdctl& ctl, const EtcdDaemon& d, const std::string& worker,
                            const std::vector<std::string>& caps, int ttl = 60) {
  const std::string lease = ctl.grant(ttl);
  EXPECT_TRUE(
      ctl.put(d.key("workers/" + worker + "/registration"), registration_value(caps, 1), lease));
  return lease;
}

TEST_F(EtcdE2E, SubmissionsOverZeromqAppearAsCommandsAndPushes) {
  EtcdDaemon d(shared_->endpoints(), {});
  const Etcdctl ctl = shared_->ctl();
  register_worker(ctl, d, "gpu-1", {"gpu"});
  ASSERT_TRUE(eventually([&] { return counter(*d.ingress, "workers") == 1; }))
      << d.daemon->log_text();

  ASSERT_TRUE(submit_with(*d.ingress, "plain", {}).ok());
  ASSERT_TRUE(submit_with(*d.ingress, "needs-gpu", {"gpu"}).ok());
  ASSERT_TRUE(eventually([&] {
    return ctl.get(d.key("commands/plain")) && ctl.get(d.key("workers/gpu-1/inbox/needs-gpu"));
  })) << d.daemon->log_text();
  // The bodies are the protocol's CreatePodCommand and TaskPush.
  const std::string cmd = *ctl.get(d.key("commands/plain"));
  const Map command = decode(cmd.data(), cmd.size());
  EXPECT_EQ(command.str("execution_id"), "plain");
  EXPECT_EQ(command.integer("attempt"), 1);
  const std::string push = *ctl.get(d.key("workers/gpu-1/inbox/needs-gpu"));
  const Map task = decode(push.data(), push.size());
  EXPECT_EQ(task.str("worker_id"), "gpu-1");
  EXPECT_EQ(task.str("execution_id"), "needs-gpu");
  EXPECT_EQ(ctl.get(d.key("tasks/plain/owner")), "unclaimed");
  EXPECT_EQ(ctl.get(d.key("tasks/needs-gpu/owner")), "unclaimed");
  EXPECT_EQ(d.state("plain"), "dispatched");
  // Lifecycle events are under events/<execution_id>/<type>.
  EXPECT_TRUE(
      eventually([&] { return ctl.get(d.key("events/plain/ExecutionAccepted")).has_value(); }));
}

TEST_F(EtcdE2E, AnEtcdctlTransactionClaimsOnceAndAPutCompletesAndFreesCapacity) {
  EtcdDaemon d(shared_->endpoints(), {"--max-active-executions=1"});
  const Etcdctl ctl = shared_->ctl();
  register_worker(ctl, d, "w1", {});
  register_worker(ctl, d, "w2", {});
  ASSERT_TRUE(eventually([&] { return counter(*d.ingress, "workers") == 2; }));
  ASSERT_TRUE(d.ingress->submit("first", "u").ok());
  ASSERT_TRUE(d.ingress->submit("second", "u").ok());
  ASSERT_TRUE(eventually([&] { return ctl.get(d.key("tasks/first/owner")).has_value(); }));

  EXPECT_TRUE(ctl.claim(d.key("tasks/first/owner"), "w1"));
  EXPECT_FALSE(ctl.claim(d.key("tasks/first/owner"), "w2")) << "a second claim must lose";
  EXPECT_EQ(ctl.get(d.key("tasks/first/owner")), "w1");
  // The supervisor took the claim (a command's claim is the scheduler's: status still shows
  // "dispatched", the state of the shared-memory claim word that only worker tasks have).
  ASSERT_TRUE(eventually([&] { return counter(*d.ingress, "claims_won") == 1; }))
      << d.daemon->log_text();
  // The cap holds the second back.
  EXPECT_EQ(d.state("second"), "queued");
  EXPECT_FALSE(ctl.get(d.key("commands/second")));

  ASSERT_TRUE(ctl.put(d.key("tasks/first/owner"), "completed:w1"));
  ASSERT_TRUE(eventually([&] { return d.state("first") == "completed"; })) << d.daemon->log_text();
  ASSERT_TRUE(eventually([&] { return ctl.get(d.key("commands/second")).has_value(); }))
      << "the completion did not free the capacity:\n"
      << d.daemon->log_text();
  EXPECT_EQ(d.state("second"), "dispatched");

  // failed:<worker> fails it.
  EXPECT_TRUE(ctl.claim(d.key("tasks/second/owner"), "w2"));
  ASSERT_TRUE(ctl.put(d.key("tasks/second/owner"), "failed:w2"));
  ASSERT_TRUE(eventually([&] { return d.state("second") == "failed"; })) << d.daemon->log_text();
}

TEST_F(EtcdE2E, ARegistrationWhoseLeaseExpiresIsALostWorker) {
  EtcdDaemon d(shared_->endpoints(), {"--max-attempts=3"});
  const Etcdctl ctl = shared_->ctl();
  register_worker(ctl, d, "brief", {}, /*ttl=*/2);  // never kept alive
  ASSERT_TRUE(eventually([&] { return counter(*d.ingress, "workers") == 1; }));
  ASSERT_TRUE(d.ingress->submit("orphan", "u").ok());
  ASSERT_TRUE(eventually([&] { return ctl.get(d.key("tasks/orphan/owner")).has_value(); }));
  ASSERT_TRUE(ctl.claim(d.key("tasks/orphan/owner"), "brief"));
  ASSERT_TRUE(eventually([&] { return counter(*d.ingress, "claims_won") == 1; }));
  // etcd deletes the registration when the lease expires: the worker is gone, and its execution
  // goes back to the queue and out again as attempt 2, unclaimed.
  ASSERT_TRUE(
      eventually([&] { return counter(*d.ingress, "workers") == 0; }, std::chrono::seconds(15)))
      << d.daemon->log_text();
  EXPECT_GE(counter(*d.ingress, "workers_lost") + counter(*d.ingress, "worker_lost_executions"), 1);
  ASSERT_TRUE(eventually([&] { return ctl.get(d.key("tasks/orphan/dispatched")) == "2"; }))
      << d.daemon->log_text();
  EXPECT_EQ(ctl.get(d.key("tasks/orphan/owner")), "unclaimed");
}

// etcd is the truth for a worker registered there: one the supervisor dropped (here: unregistered
// over the ingress) while its registration lasts is registered again at its next heartbeat.
TEST_F(EtcdE2E, AWorkerTheSupervisorDroppedIsRegisteredAgainWhileItsRegistrationLasts) {
  EtcdDaemon d(shared_->endpoints(), {"--etcd.worker_heartbeat_ms=200"});
  const Etcdctl ctl = shared_->ctl();
  register_worker(ctl, d, "keeper", {"gpu"});
  ASSERT_TRUE(eventually([&] { return counter(*d.ingress, "workers") == 1; }));
  ASSERT_TRUE(
      d.ingress
          ->call(MapBuilder().str("op", "unregister_worker").str("worker_id", "keeper").finish())
          .ok());
  d.wait_log("registering worker keeper again");
  ASSERT_TRUE(eventually([&] { return counter(*d.ingress, "workers") == 1; }))
      << d.daemon->log_text();
}

TEST_F(EtcdE2E, KeysOfFinishedExecutionsGoAfterTheRetention) {
  EtcdDaemon d(shared_->endpoints(),
               {"--max-active-executions=4000", "--etcd.retention_seconds=2"});
  const Etcdctl ctl = shared_->ctl();
  const int n = 500;
  for (int i = 0; i < n; ++i) {
    // Users of 100 (the per-user cap).
    ASSERT_TRUE(d.ingress->submit("r" + std::to_string(i), "u" + std::to_string(i / 100)).ok());
  }
  ASSERT_TRUE(eventually([&] { return counter(*d.ingress, "dispatched") == n; }));
  ASSERT_TRUE(
      eventually([&] { return ctl.get(d.key("commands/r" + std::to_string(n - 1))).has_value(); }));
  // Every one completed by a worker outside: 100 puts per etcdctl transaction.
  for (int from = 0; from < n; from += 100) {
    std::string text = "\n";
    for (int i = from; i < from + 100; ++i) {
      text += "put " + d.key("tasks/r" + std::to_string(i) + "/owner") + " completed:outside\n";
    }
    ASSERT_TRUE(ctl.txn(text + "\n\n"));
  }
  ASSERT_TRUE(eventually([&] { return counter(*d.ingress, "completed") == n; }))
      << d.daemon->log_text();
  // After the retention (2 s, the lease's TTL; etcd's lease checks add up to a second or so)
  // nothing of them is left: commands, tasks and events are gone.
  ASSERT_TRUE(
      eventually([&] { return ctl.keys(d.prefix + "/").empty(); }, std::chrono::seconds(20)))
      << ctl.keys(d.prefix + "/").size() << " keys left, e.g. " << ctl.keys(d.prefix + "/")[0];
}

// etcd killed and started again (same data, same port) while submissions stream in: every
// execution ends up in etcd, each once.
TEST(EtcdRestart, EtcdKilledDuringAStreamLosesNothing) {
  EtcdCluster etcd(1);
  EtcdDaemon d(etcd.endpoints(), {"--max-active-executions=4000", "--dispatch-backoff-ms=50",
                                  "--max-backoff-ms=1000", "--etcd.request_timeout_ms=1000"});
  const int n = 200;
  std::atomic<int> submitted{0};
  std::thread producer([&] {
    Ingress ingress(d.daemon->endpoint());
    for (int i = 0; i < n; ++i) {
      if (ingress.submit("s" + std::to_string(i), "u" + std::to_string(i / 100)).ok()) {
        ++submitted;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  struct Join {
    std::thread& t;
    ~Join() { t.join(); }
  } join{producer};
  ASSERT_TRUE(eventually([&] { return submitted >= n / 3; }));
  etcd.kill(0);
  ASSERT_TRUE(eventually([&] { return counter(*d.ingress, "publish_failures") >= 1; }))
      << d.daemon->log_text();
  etcd.start(0);
  etcd.wait_healthy();
  ASSERT_TRUE(eventually([&] { return submitted == n; }));
  const Etcdctl ctl = etcd.ctl();
  ASSERT_TRUE(
      eventually([&] { return counter(*d.ingress, "dispatched") == n; }, std::chrono::seconds(30)))
      << d.daemon->log_text();
  const auto keys = ctl.keys(d.key("commands/"));
  EXPECT_EQ(keys.size(), static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    EXPECT_THAT(keys, Contains(d.key("commands/s" + std::to_string(i))));
  }
  // Each once: a repeated publish writes nothing (dispatched still names attempt 1).
  EXPECT_EQ(ctl.get(d.key("tasks/s0/dispatched")), "1");
}

// A completion written while the plugin cannot reach etcd is seen when it can again: the watch
// resumes from its last revision; and when that revision was compacted meanwhile, the plugin
// reads the current state instead.
void completion_while_away(bool compact) {
  EtcdCluster etcd(1);
  EtcdDaemon d(etcd.endpoints(), {});
  const Etcdctl ctl = etcd.ctl();
  register_worker(ctl, d, "w", {});
  ASSERT_TRUE(eventually([&] { return counter(*d.ingress, "workers") == 1; }));
  ASSERT_TRUE(d.ingress->submit("away", "u").ok());
  ASSERT_TRUE(eventually([&] { return ctl.get(d.key("tasks/away/owner")).has_value(); }));
  ASSERT_TRUE(ctl.claim(d.key("tasks/away/owner"), "w"));
  ASSERT_TRUE(eventually([&] { return counter(*d.ingress, "claims_won") == 1; }));

  // etcd back on another port, where the plugin does not look: a worker completes meanwhile.
  etcd.kill(0);
  const int elsewhere = free_loopback_port();
  etcd.start(0, elsewhere);
  const Etcdctl away("127.0.0.1:" + std::to_string(elsewhere));
  ASSERT_TRUE(eventually([&] { return away.healthy(); }));
  ASSERT_TRUE(away.put(d.key("tasks/away/owner"), "completed:w"));
  if (compact) {
    ASSERT_TRUE(away.put(d.key("tasks/unrelated/x"), "1"));
    ASSERT_EQ(away.run({"compact", std::to_string(away.revision())}).exit_code, 0);
  }
  EXPECT_EQ(d.state("away"), "dispatched");
  etcd.kill(0);
  etcd.start(0);
  etcd.wait_healthy();
  ASSERT_TRUE(eventually([&] { return d.state("away") == "completed"; }, std::chrono::seconds(30)))
      << d.daemon->log_text();
  if (compact) {
    EXPECT_THAT(d.daemon->log_text(), HasSubstr("was compacted"));
  }
}

TEST(EtcdRestart, ACompletionWrittenWhileDisconnectedIsSeen) {
  completion_while_away(false);
}

TEST(EtcdRestart, ACompletionWrittenWhileDisconnectedIsSeenAfterACompaction) {
  completion_while_away(true);
}

TEST(EtcdCluster3, OneMemberKilledDispatchGoesOn) {
  EtcdCluster etcd(3);
  EtcdDaemon d(etcd.endpoints(), {"--max-active-executions=1000", "--dispatch-backoff-ms=50",
                                  "--max-backoff-ms=1000", "--etcd.request_timeout_ms=1000"});
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(d.ingress->submit("a" + std::to_string(i), "u").ok());
  ASSERT_TRUE(eventually([&] { return counter(*d.ingress, "dispatched") == 20; }));
  etcd.kill(0);  // the first endpoint: the one the plugin started on
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(d.ingress->submit("b" + std::to_string(i), "u").ok());
  ASSERT_TRUE(
      eventually([&] { return counter(*d.ingress, "dispatched") == 40; }, std::chrono::seconds(30)))
      << d.daemon->log_text();
  EXPECT_EQ(etcd.ctl().keys(d.key("commands/")).size(), 40u);
}

TEST_F(EtcdE2E, SwapFromZeromqToEtcdAndToKafkaPlusEtcdBySighupKeepsQueuedWork) {
  const std::string dir = temp_dir("etcd-swap");
  const std::string segment = unique("shmsched-e2e-eswap");
  const std::string conf = dir + "/shmschedd.conf";
  const std::string prefix = "/" + unique("swap");
  const Etcdctl ctl = shared_->ctl();
  std::ofstream(conf) << "transports = zeromq\nmax_active_executions = 1\n";
  Daemon d(dir, segment, {"--config=" + conf});
  d.start();
  Ingress ingress(d.endpoint());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ingress.submit("q" + std::to_string(i), "u").ok());
  ASSERT_TRUE(eventually([&] { return ingress.op("status", "q0").str("state") == "dispatched"; }));
  // To etcd alone: the two queued ones go out there.
  std::ofstream(conf) << "transports = etcd\nmax_active_executions = 3\n[etcd]\nendpoints = "
                      << shared_->endpoints() << "\nprefix = " << prefix << "\n";
  d.signal(SIGHUP);
  ASSERT_TRUE(eventually([&] { return ctl.keys(prefix + "/commands/").size() == 2; }))
      << d.log_text();
  EXPECT_TRUE(ctl.get(prefix + "/commands/q1"));
  EXPECT_TRUE(ctl.get(prefix + "/commands/q2"));
  // To kafka and etcd: new work reaches both (Kafka: librdkafka's mock cluster).
  const std::string mock_log = dir + "/mock.out";
  std::string brokers;
  {
    // The kafka transport needs a broker; the mock cluster tool prints its bootstrap address.
    int out[2];
    ASSERT_EQ(::pipe(out), 0);
    const pid_t mock = ::fork();
    if (mock == 0) {
      ::dup2(out[1], 1);
      ::close(out[0]);
      ::execl(SHMSCHED_BIN_DIR "/kafka-mock-cluster", "kafka-mock-cluster", "--topic",
              "saga_commands:1", "--topic", "execution_events:1", nullptr);
      ::_exit(127);
    }
    ::close(out[1]);
    FILE* from = ::fdopen(out[0], "r");
    char line[256] = {};
    ASSERT_TRUE(std::fgets(line, sizeof line, from));
    brokers = std::string(line).substr(10);
    brokers.erase(brokers.find_last_not_of("\r\n") + 1);
    std::ofstream(conf)
        << "transports = kafka,etcd\nmax_active_executions = 5\n[etcd]\nendpoints = "
        << shared_->endpoints() << "\nprefix = " << prefix << "\n[kafka]\nbrokers = " << brokers
        << "\n";
    d.signal(SIGHUP);
    ASSERT_TRUE(eventually([&] {
      return d.log_text().find("transports kafka,etcd") != std::string::npos;
    })) << d.log_text();
    ASSERT_TRUE(ingress.submit("both", "u").ok());
    ASSERT_TRUE(eventually([&] { return ctl.get(prefix + "/commands/both").has_value(); }))
        << d.log_text();
    EXPECT_TRUE(eventually([&] {
      return ingress.op("status", "both").str("state") == "dispatched";
    })) << "kafka did not acknowledge it too:\n"
        << d.log_text();
    EXPECT_EQ(d.signal(SIGTERM), 0) << d.log_text();
    ::kill(mock, SIGTERM);
    ::waitpid(mock, nullptr, 0);
    std::fclose(from);
  }
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// etcd with authentication on: the transport logs in with etcd.user/etcd.password (its token on
// every call, the watch included); a wrong password stops the start with a clear message.
TEST(EtcdAuth, UserAndPasswordAreUsedAndAWrongPasswordIsRefused) {
  EtcdCluster etcd(1);
  const Etcdctl ctl = etcd.ctl();
  ASSERT_EQ(ctl.run({"user", "add", "root", "--new-user-password=s3cret"}).exit_code, 0);
  ASSERT_EQ(ctl.run({"auth", "enable"}).exit_code, 0);
  {
    EtcdDaemon d(etcd.endpoints(), {"--etcd.user=root", "--etcd.password=s3cret"});
    ASSERT_TRUE(d.ingress->submit("authed", "u").ok());
    ASSERT_TRUE(eventually([&] {
      return ctl.run({"--user=root:s3cret", "get", d.key("commands/authed"), "--keys-only"})
                 .out.find("authed") != std::string::npos;
    })) << d.daemon->log_text();
    // The watch reads with the token too: a completion arrives.
    ASSERT_TRUE(ctl.run({"--user=root:s3cret", "put", d.key("tasks/authed/owner"), "completed:w"})
                    .exit_code == 0);
    ASSERT_TRUE(eventually([&] { return d.state("authed") == "completed"; }))
        << d.daemon->log_text();
  }
  const std::string dir = temp_dir("etcd-auth");
  const std::string segment = unique("shmsched-e2e-eauth");
  Daemon d(dir, segment,
           {"--transports=etcd", "--etcd.endpoints=" + etcd.endpoints(), "--etcd.user=root",
            "--etcd.password=wrong"});
  d.start(false);
  EXPECT_NE(d.wait_exit(), 0);
  EXPECT_THAT(d.log_text(), HasSubstr("etcd refused user 'root'"));
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// etcd serving https: the transport verifies it with etcd.tls_ca_file; without the CA it cannot
// start (the certificate is not trusted).
TEST(EtcdTls, AnHttpsEndpointIsVerifiedWithTheConfiguredCa) {
  EtcdCluster etcd(1, /*tls=*/true);
  const Etcdctl ctl = etcd.ctl();
  {
    EtcdDaemon d("https://" + etcd.endpoint(0), {"--etcd.tls_ca_file=" + etcd.dir() + "/ca.crt"});
    ASSERT_TRUE(d.ingress->submit("secure", "u").ok());
    ASSERT_TRUE(eventually([&] { return ctl.get(d.key("commands/secure")).has_value(); }))
        << d.daemon->log_text();
  }
  const std::string dir = temp_dir("etcd-tls");
  const std::string segment = unique("shmsched-e2e-etls");
  Daemon d(dir, segment,
           {"--transports=etcd", "--etcd.endpoints=https://" + etcd.endpoint(0),
            "--etcd.dial_timeout_ms=1000"});
  d.start(false);
  EXPECT_NE(d.wait_exit(), 0);
  EXPECT_THAT(d.log_text(), HasSubstr("cannot reach etcd at " + etcd.endpoint(0)));
  EXPECT_THAT(d.log_text(), HasSubstr("etcd.tls_ca_file"));
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

TEST(EtcdOptions, BadOptionsAreRefusedWithTheKeyAndTheFix) {
  const std::string dir = temp_dir("etcd-opts");
  const std::string segment = unique("shmsched-e2e-eopts");
  for (const auto& [arg, message] : std::vector<std::pair<std::string, std::string>>{
           {"--etcd.endpoints=,", "etcd.endpoints is empty"},
           {"--etcd.endpoints=localhost", "has no port"},
           {"--etcd.endpoints=127.0.0.1:1", "cannot reach etcd at 127.0.0.1:1"}}) {
    Daemon d(dir, segment, {"--transports=etcd", arg, "--etcd.dial_timeout_ms=300"});
    d.start(false);
    EXPECT_NE(d.wait_exit(), 0);
    EXPECT_THAT(d.log_text(), HasSubstr(message)) << arg;
  }
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// The plugin loaded on its own (dlopen), under a host that records what the plugin reports.
struct DirectHost {
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::uint64_t, int> delivered;   // token -> times reported
  std::map<std::uint64_t, bool> ok;         // token -> the last outcome reported
  std::vector<Map> ops;                     // the operations handed over
  int entered = 0, left = 0;                // delivery callbacks begun, ended
  std::chrono::milliseconds hold_first{0};  // the first delivery callback takes this long
  std::atomic<bool> stop_returned{false};
  std::atomic<int> after_stop{0};  // callbacks that ran on after stop() returned

  static void log(void*, shmsched_log_level, const char*) {}
  static void delivery(void* ctx, std::uint64_t token, int ok, const char*) {
    auto* h = static_cast<DirectHost*>(ctx);
    bool first = false;
    {
      std::lock_guard lock(h->mu);
      first = h->entered++ == 0;
    }
    h->cv.notify_all();
    if (first) std::this_thread::sleep_for(h->hold_first);
    if (h->stop_returned) ++h->after_stop;
    {
      std::lock_guard lock(h->mu);
      ++h->delivered[token];
      h->ok[token] = ok != 0;
      ++h->left;
    }
    h->cv.notify_all();
  }
  static int inbound(void* ctx, const std::uint8_t* body, std::size_t len,
                     shmsched_inbound_done done) {
    auto* h = static_cast<DirectHost*>(ctx);
    {
      std::lock_guard lock(h->mu);
      h->ops.push_back(decode(body, len));
    }
    h->cv.notify_all();
    if (done.ack) done.ack(done.op_ctx);
    return SHMSCHED_OK;
  }
  shmsched_host host() { return shmsched_host{this, log, delivery, inbound}; }
};

struct DirectPlugin {
  void* lib = nullptr;
  const shmsched_transport_api* api = nullptr;
  shmsched_transport* t = nullptr;

  DirectPlugin(DirectHost& host, const std::vector<std::pair<std::string, std::string>>& options) {
    lib = ::dlopen(SHMSCHED_PLUGIN_DIR "/libshmsched_transport_etcd.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib) throw std::runtime_error(::dlerror());
    api = reinterpret_cast<shmsched_transport_entry_fn>(
        ::dlsym(lib, SHMSCHED_TRANSPORT_ENTRY_SYMBOL))();
    std::vector<shmsched_kv> kv;
    for (const auto& [k, v] : options) kv.push_back({k.c_str(), v.c_str()});
    const shmsched_host h = host.host();
    char err[512] = {};
    t = api->create(kv.data(), kv.size(), &h, err, sizeof err);
    if (!t) throw std::runtime_error(err);
    if (api->start(t, err, sizeof err) != SHMSCHED_OK) throw std::runtime_error(err);
  }
  ~DirectPlugin() {
    if (t) api->destroy(t);
    ::dlclose(lib);
  }
};

// msgpack {execution_id: id, attempt: 1}: enough of a CreatePodCommand for the plugin.
std::string command_body(const std::string& id) {
  std::string b =
      "\x82\xac"
      "execution_id";
  b += static_cast<char>(0xa0 | id.size());
  b += id;
  b += "\xa7"
       "attempt\x01";
  return b;
}

// msgpack {execution_id, attempt, worker_id}: enough of a TaskPush for the plugin.
std::string push_body(const std::string& id, int attempt, const std::string& worker) {
  std::string b =
      "\x83\xac"
      "execution_id";
  b += static_cast<char>(0xa0 | id.size());
  b += id;
  b += "\xa7"
       "attempt";
  b += static_cast<char>(attempt);
  b += "\xa9"
       "worker_id";
  b += static_cast<char>(0xa0 | worker.size());
  b += worker;
  return b;
}

// stop() must not return while a delivery of an answered transaction is still being reported:
// the ABI promises no callback after it returns (the host then frees what the callbacks use).
TEST_F(EtcdE2E, StopReturnsOnlyAfterEveryDeliveryWasReported) {
  DirectHost host;
  host.hold_first = std::chrono::milliseconds(300);
  const std::string prefix = "/" + unique("direct");
  auto plugin = std::make_unique<DirectPlugin>(
      host, std::vector<std::pair<std::string, std::string>>{{"endpoints", shared_->endpoints()},
                                                             {"prefix", prefix}});
  std::vector<std::string> ids, bodies;
  std::vector<shmsched_message> msgs;
  std::vector<std::uint64_t> tokens;
  for (int i = 0; i < 3; ++i) {
    ids.push_back("d" + std::to_string(i));
    bodies.push_back(command_body(ids.back()));
  }
  for (int i = 0; i < 3; ++i) {
    msgs.push_back({"CreatePodCommand", ids[i].c_str(), "CreatePodCommand",
                    reinterpret_cast<const std::uint8_t*>(bodies[i].data()), bodies[i].size(), 1});
    tokens.push_back(100 + i);
  }
  int refusal = 0;
  ASSERT_EQ(plugin->api->publish_batch(plugin->t, msgs.data(), tokens.data(), 3, &refusal), 3u);
  {
    std::unique_lock lock(host.mu);
    ASSERT_TRUE(host.cv.wait_for(lock, std::chrono::seconds(20), [&] { return host.entered > 0; }));
  }
  // etcd answered; the first delivery is being reported: stop now.
  plugin->api->stop(plugin->t);
  host.stop_returned = true;
  {
    std::unique_lock lock(host.mu);
    host.cv.wait_for(lock, std::chrono::seconds(5), [&] { return host.left == 3; });
    EXPECT_EQ(host.left, 3);
    for (const auto token : tokens) EXPECT_EQ(host.delivered[token], 1) << token;
  }
  EXPECT_EQ(host.after_stop, 0) << "delivery callbacks ran after stop() returned";
  plugin.reset();
}

// An etcd whose store began again (data directory wiped, an old backup restored) has a revision
// below the one the watch had reached: the watch must not wait for that revision to come back
// (every completion written until then would be missed), it reads the current state instead.
TEST(EtcdRestart, AWipedEtcdWithALowerRevisionStillDeliversCompletions) {
  EtcdCluster etcd(1);
  EtcdDaemon d(etcd.endpoints(), {"--dispatch-backoff-ms=50", "--max-backoff-ms=1000",
                                  "--etcd.request_timeout_ms=1000"});
  const Etcdctl ctl = etcd.ctl();
  // Revisions the watch sees (keys under tasks/ that are not owners), then a completion it acts
  // on: it has passed all of them.
  for (int i = 0; i < 15; ++i)
    ASSERT_TRUE(ctl.put(d.key("tasks/filler/" + std::to_string(i)), "x"));
  ASSERT_TRUE(d.ingress->submit("before", "u").ok());
  ASSERT_TRUE(eventually([&] { return ctl.get(d.key("commands/before")).has_value(); }));
  ASSERT_TRUE(ctl.put(d.key("tasks/before/owner"), "completed:w"));
  ASSERT_TRUE(eventually([&] { return d.state("before") == "completed"; })) << d.daemon->log_text();

  etcd.wipe(0);
  etcd.wait_healthy();
  ASSERT_LT(ctl.revision(), 10);
  ASSERT_TRUE(d.ingress->submit("after", "u").ok());
  ASSERT_TRUE(eventually([&] { return ctl.get(d.key("commands/after")).has_value(); },
                         std::chrono::seconds(30)))
      << d.daemon->log_text();
  ASSERT_TRUE(ctl.put(d.key("tasks/after/owner"), "completed:w"));
  ASSERT_TRUE(eventually([&] { return d.state("after") == "completed"; }))
      << "the completion written after etcd began again was missed:\n"
      << d.daemon->log_text();
}

// Without lifecycle events in etcd (write_events = false) the keys of finished executions still
// go after the retention: etcd stays bounded.
TEST_F(EtcdE2E, WithoutEventsKeysOfFinishedExecutionsStillGoAfterTheRetention) {
  EtcdDaemon d(shared_->endpoints(), {"--etcd.write_events=false", "--etcd.retention_seconds=2"});
  const Etcdctl ctl = shared_->ctl();
  for (const std::string id : {"x0", "x1"}) {
    ASSERT_TRUE(d.ingress->submit(id, "u").ok());
    ASSERT_TRUE(eventually([&] { return ctl.get(d.key("commands/" + id)).has_value(); }));
    ASSERT_TRUE(ctl.put(d.key("tasks/" + id + "/owner"), "completed:w"));
    ASSERT_TRUE(eventually([&] { return d.state(id) == "completed"; })) << d.daemon->log_text();
  }
  ASSERT_TRUE(
      eventually([&] { return ctl.keys(d.prefix + "/").empty(); }, std::chrono::seconds(15)))
      << ctl.keys(d.prefix + "/").size() << " keys left, e.g. " << ctl.keys(d.prefix + "/")[0];
}

// An execution id used again while the keys of its earlier run are kept for the retention (a
// supervisor that does not remember that run: restarted without a journal, or past the 100,000
// finished ones it keeps): the new dispatch must be written, not taken for a repeat of the old.
TEST_F(EtcdE2E, AnIdUsedAgainWithinTheRetentionIsDispatchedAfresh) {
  const std::string prefix = "/" + unique("reuse");
  const Etcdctl ctl = shared_->ctl();
  {
    EtcdDaemon d(shared_->endpoints(), {}, prefix);
    ASSERT_TRUE(d.ingress->submit("again", "u").ok());
    ASSERT_TRUE(eventually([&] { return ctl.get(d.key("commands/again")).has_value(); }));
    ASSERT_TRUE(ctl.put(d.key("tasks/again/owner"), "completed:w"));
    ASSERT_TRUE(eventually([&] { return d.state("again") == "completed"; }));
    // Its final event put its keys under the retention lease.
    ASSERT_TRUE(
        eventually([&] { return ctl.get(d.key("events/again/ExecutionCompleted")).has_value(); }));
  }
  EtcdDaemon d(shared_->endpoints(), {}, prefix);
  ASSERT_TRUE(d.ingress->submit("again", "u").ok());
  ASSERT_TRUE(eventually([&] { return counter(*d.ingress, "dispatched") == 1; }))
      << d.daemon->log_text();
  EXPECT_EQ(ctl.get(d.key("tasks/again/owner")), "unclaimed")
      << "the second run's dispatch wrote nothing:\n"
      << d.daemon->log_text();
  EXPECT_EQ(d.state("again"), "dispatched");
  // Claimed and completed like any other.
  ASSERT_TRUE(ctl.claim(d.key("tasks/again/owner"), "w2"));
  ASSERT_TRUE(ctl.put(d.key("tasks/again/owner"), "completed:w2"));
  ASSERT_TRUE(eventually([&] { return d.state("again") == "completed"; })) << d.daemon->log_text();
}

// Execution ids are any bytes up to 64 (the queue refuses nothing else): one with a '/' or a space
// is dispatched, claimed and completed through etcd like any other.
TEST_F(EtcdE2E, ExecutionIdsWithSlashesAndSpacesAreClaimedAndCompleted) {
  EtcdDaemon d(shared_->endpoints(), {});
  const Etcdctl ctl = shared_->ctl();
  register_worker(ctl, d, "w", {});
  ASSERT_TRUE(eventually([&] { return counter(*d.ingress, "workers") == 1; }));
  ASSERT_TRUE(d.ingress->submit("job/7", "u").ok());
  ASSERT_TRUE(d.ingress->submit("a b/owner", "u").ok());
  ASSERT_TRUE(eventually([&] {
    return ctl.get(d.key("commands/job/7")) && ctl.get(d.key("commands/a b/owner"));
  })) << d.daemon->log_text();
  ASSERT_TRUE(ctl.claim(d.key("tasks/job/7/owner"), "w"));
  ASSERT_TRUE(eventually([&] { return counter(*d.ingress, "claims_won") == 1; }))
      << d.daemon->log_text();
  ASSERT_TRUE(ctl.put(d.key("tasks/job/7/owner"), "completed:w"));
  ASSERT_TRUE(ctl.put(d.key("tasks/a b/owner/owner"), "completed:w"));
  ASSERT_TRUE(eventually([&] { return d.state("job/7") == "completed"; })) << d.daemon->log_text();
  ASSERT_TRUE(eventually([&] { return d.state("a b/owner") == "completed"; }))
      << d.daemon->log_text();
}

// A push offered to another worker for the same attempt (nobody claimed it in time, as far as the
// supervisor knew) must not reset an owner a worker wrote in etcd meanwhile: the claim that won
// in etcd stays the only winner (the supervisor takes it when it arrives), or two workers would
// both win a claim of one attempt and run it. A new attempt starts unclaimed.
TEST_F(EtcdE2E, APushOfferedAgainForTheSameAttemptKeepsAClaimMadeMeanwhile) {
  DirectHost host;
  const std::string prefix = "/" + unique("repush");
  DirectPlugin plugin(host, {{"endpoints", shared_->endpoints()}, {"prefix", prefix}});
  const Etcdctl ctl = shared_->ctl();
  std::uint64_t token = 0;
  auto push = [&](int attempt, const std::string& worker) {
    const std::string id = "x", body = push_body(id, attempt, worker), topic = "TaskPush." + worker;
    const shmsched_message m{"TaskPush",    id.c_str(),
                             topic.c_str(), reinterpret_cast<const std::uint8_t*>(body.data()),
                             body.size(),   1};
    const std::uint64_t t = ++token;
    ASSERT_EQ(plugin.api->publish(plugin.t, &m, t), SHMSCHED_OK);
    std::unique_lock lock(host.mu);
    ASSERT_TRUE(
        host.cv.wait_for(lock, std::chrono::seconds(20), [&] { return host.delivered.count(t); }));
  };
  const std::string owner = prefix + "/tasks/x/owner";
  push(1, "w1");
  ASSERT_TRUE(ctl.claim(owner, "w1"));
  push(1, "w2");
  EXPECT_EQ(ctl.get(prefix + "/tasks/x/dispatched"), "1:w2");
  EXPECT_TRUE(ctl.get(prefix + "/workers/w2/inbox/x").has_value());
  EXPECT_EQ(ctl.get(owner), "w1") << "the re-push took w1's claim away";
  EXPECT_FALSE(ctl.claim(owner, "w2")) << "a second claimant won the same attempt";
  // Attempt 2: unclaimed again, for anyone.
  push(2, "w2");
  EXPECT_EQ(ctl.get(owner), "unclaimed");
  EXPECT_TRUE(ctl.claim(owner, "w2"));
}

// A command etcd refuses for its size alone (a payload above etcd's request limit, 1.5 MiB by
// default, with max_payload_bytes raised) can never be written: published again and again it
// held every other dispatch back by the supervisor's backoff (up to max_backoff_ms each time),
// for ever. The transport fails that execution (no retry) with an error that names the limit.
TEST_F(EtcdE2E, ACommandTooLargeForEtcdFailsAndHoldsNothingBack) {
  EtcdDaemon d(shared_->endpoints(), {"--max-payload-bytes=4194304"});
  const std::vector<std::byte> big(2 << 20, std::byte{'x'});
  ASSERT_TRUE(d.ingress
                  ->call(MapBuilder()
                             .str("op", "submit")
                             .str("execution_id", "huge")
                             .str("user_id", "u")
                             .bin("payload", big)
                             .finish())
                  .ok());
  ASSERT_TRUE(eventually([&] { return d.state("huge") == "failed"; })) << d.daemon->log_text();
  EXPECT_THAT(d.ingress->op("status", "huge").str("error"), HasSubstr("etcd"));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(d.ingress->submit("small" + std::to_string(i), "u").ok());
  ASSERT_TRUE(
      eventually([&] { return counter(*d.ingress, "dispatched") == 5; }, std::chrono::seconds(5)))
      << d.daemon->log_text();
}

// A transaction etcd refuses as too large (its --max-request-bytes set lower than the batches)
// is not a verdict on each command in it: they are written one per transaction, and only one
// that is too large alone is refused.
TEST(EtcdLimits, ABatchTooLargeForEtcdIsWrittenOneCommandATime) {
  EtcdCluster etcd(1, false, {"--max-request-bytes=262144"});
  DirectHost host;
  DirectPlugin plugin(host, {{"endpoints", etcd.endpoints()}, {"prefix", "/limits"}});
  std::vector<std::string> ids, bodies;
  for (int i = 0; i < 4; ++i) {
    ids.push_back("c" + std::to_string(i));
    // msgpack {execution_id, attempt: 1, payload: bin 32}: 100 KB each, the last 400 KB.
    std::string b = command_body(ids.back());
    b[0] = '\x83';
    const std::uint32_t n = i == 3 ? 400000 : 100000;
    b += "\xa7payload\xc6";
    for (int shift = 24; shift >= 0; shift -= 8) b += static_cast<char>((n >> shift) & 0xff);
    b += std::string(n, 'p');
    bodies.push_back(b);
  }
  std::vector<shmsched_message> msgs;
  std::vector<std::uint64_t> tokens;
  for (int i = 0; i < 4; ++i) {
    msgs.push_back({"CreatePodCommand", ids[i].c_str(), "CreatePodCommand",
                    reinterpret_cast<const std::uint8_t*>(bodies[i].data()), bodies[i].size(), 1});
    tokens.push_back(i + 1);
  }
  int refusal = 0;
  ASSERT_EQ(plugin.api->publish_batch(plugin.t, msgs.data(), tokens.data(), 4, &refusal), 4u);
  std::unique_lock lock(host.mu);
  ASSERT_TRUE(host.cv.wait_for(lock, std::chrono::seconds(20), [&] { return host.left == 4; }));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(host.ok[tokens[i]]) << ids[i];
  EXPECT_FALSE(host.ok[tokens[3]]);
  // The one too large alone is failed, for good.
  ASSERT_TRUE(host.cv.wait_for(lock, std::chrono::seconds(5), [&] { return !host.ops.empty(); }));
  EXPECT_EQ(host.ops[0].str("op"), "fail");
  EXPECT_EQ(host.ops[0].str("execution_id"), "c3");
  EXPECT_TRUE(host.ops[0].has("retry"));
  lock.unlock();
  EXPECT_TRUE(etcd.ctl().get("/limits/commands/c0").has_value());
}

// A worker id that reads as an owner value of its own ("unclaimed", "completed:<w>",
// "failed:<w>") cannot claim through etcd: its claim would be taken for no claim at all (a second
// worker wins the same attempt too) or for w's completion (finished before it ran). Such a
// registration is refused, with a line that says why; the others are registered.
TEST_F(EtcdE2E, AWorkerIdThatReadsAsAnOwnerValueIsNotRegistered) {
  EtcdDaemon d(shared_->endpoints(), {});
  const Etcdctl ctl = shared_->ctl();
  register_worker(ctl, d, "completed:x", {"gpu"});
  register_worker(ctl, d, "unclaimed", {"gpu"});
  register_worker(ctl, d, "fine", {"gpu"});
  d.wait_log("etcd: ignored the registration " + d.key("workers/unclaimed/registration"));
  d.wait_log("etcd: ignored the registration " + d.key("workers/completed:x/registration"));
  ASSERT_TRUE(eventually([&] { return counter(*d.ingress, "workers") == 1; }));
  EXPECT_EQ(counter(*d.ingress, "workers"), 1);
}

// The plugin loaded on its own, with a retention of 2 s, publishing one message at a time and
// waiting for etcd's answer.
struct RetainingPlugin {
  DirectHost host;
  std::string prefix;
  DirectPlugin plugin;
  std::uint64_t token = 0;

  RetainingPlugin(const std::string& endpoints, const std::string& prefix_)
      : prefix(prefix_),
        plugin(host, {{"endpoints", endpoints}, {"prefix", prefix}, {"retention_seconds", "2"}}) {}

  void publish(const char* type, const std::string& id, const std::string& body, int command,
               const std::string& topic = "") {
    const std::string t = topic.empty() ? type : topic;
    const shmsched_message m{type,        id.c_str(),
                             t.c_str(),   reinterpret_cast<const std::uint8_t*>(body.data()),
                             body.size(), command};
    const std::uint64_t mine = ++token;
    ASSERT_EQ(plugin.api->publish(plugin.t, &m, mine), SHMSCHED_OK);
    std::unique_lock lock(host.mu);
    ASSERT_TRUE(host.cv.wait_for(lock, std::chrono::seconds(20),
                                 [&] { return host.delivered.count(mine) > 0; }));
    ASSERT_TRUE(host.ok[mine]) << type << " " << id;
  }
  void push(const std::string& id, int attempt, const std::string& worker) {
    publish("TaskPush", id, push_body(id, attempt, worker), 1, "TaskPush." + worker);
  }
  void completed(const std::string& id, const std::string& worker) {
    publish("ExecutionCompleted", id,
            to_string(MapBuilder()
                          .str("type", "ExecutionCompleted")
                          .str("execution_id", id)
                          .str("user_id", "u")
                          .str("worker_id", worker)
                          .integer("exit_code", 0)
                          .finish()),
            0);
  }
  // The operations of `op` handed over for `id` so far.
  int ops(const std::string& op, const std::string& id) {
    std::lock_guard lock(host.mu);
    return static_cast<int>(std::count_if(host.ops.begin(), host.ops.end(), [&](const Map& m) {
      return m.str("op") == op && m.str("execution_id") == id;
    }));
  }
  // Until an operation `op` for `id` was handed over.
  bool wait_op(const std::string& op, const std::string& id) {
    return eventually([&] { return ops(op, id) > 0; });
  }

  static std::string to_string(const std::vector<std::byte>& b) {
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
  }
};

// A finished execution's keys are put under the retention lease in one operation of the batch's
// transaction when all are there; when one is not (the inbox of an earlier push, deleted when the
// execution was pushed elsewhere), each one that is. Either way nothing of it is left after the
// retention.
TEST_F(EtcdE2E, AFinishedExecutionsKeysGoAfterTheRetentionEvenWhenOneIsMissing) {
  RetainingPlugin p(shared_->endpoints(), "/" + unique("finish"));
  const Etcdctl ctl = shared_->ctl();
  p.push("all", 1, "w1");
  p.push("moved", 1, "w1");
  p.push("moved", 2, "w2");  // workers/w1/inbox/moved is deleted
  ASSERT_FALSE(ctl.get(p.prefix + "/workers/w1/inbox/moved").has_value());
  p.completed("all", "w1");
  p.completed("moved", "w2");
  EXPECT_TRUE(ctl.get(p.prefix + "/events/moved/ExecutionCompleted").has_value());
  ASSERT_TRUE(
      eventually([&] { return ctl.keys(p.prefix + "/").empty(); }, std::chrono::seconds(20)))
      << ctl.keys(p.prefix + "/").size() << " keys left, e.g. " << ctl.keys(p.prefix + "/")[0];
}

// The watch reads no previous values (etcd would read each back from its database): the owner
// put under the transport's own retention lease, which keeps a worker's completed:<w> for the
// retention, is told apart by its lease and hands nothing over again; a worker's own put of the
// same value still counts.
TEST_F(EtcdE2E, TheRetentionsOwnPutOfAnOwnerIsNoOperation) {
  RetainingPlugin p(shared_->endpoints(), "/" + unique("reput"));
  const Etcdctl ctl = shared_->ctl();
  const std::string owner = p.prefix + "/tasks/x/owner";
  p.push("x", 1, "w");
  ASSERT_TRUE(ctl.claim(owner, "w"));
  ASSERT_TRUE(p.wait_op("claim", "x"));
  ASSERT_TRUE(ctl.put(owner, "completed:w"));
  ASSERT_TRUE(p.wait_op("complete", "x"));
  p.completed("x", "w");  // the supervisor's answer: the owner is put again, under the lease
  const auto leased = [&] {
    const auto r = ctl.run({"get", owner, "-w", "json"});
    return r.out.find("\"lease\":") != std::string::npos;
  };
  ASSERT_TRUE(eventually(leased));
  // The watch hands events over in revision order: once a later put is handed over, the re-put
  // was seen.
  p.push("later", 1, "w");
  ASSERT_TRUE(ctl.claim(p.prefix + "/tasks/later/owner", "w"));
  ASSERT_TRUE(p.wait_op("claim", "later"));
  EXPECT_EQ(p.ops("complete", "x"), 1) << "the retention's own put was taken for a completion";
  // A worker writing its completion again is a completion again (the supervisor answers it).
  ASSERT_TRUE(ctl.put(owner, "completed:w"));
  EXPECT_TRUE(eventually([&] { return p.ops("complete", "x") == 2; }));
}

// Found by review: a final event's body went into both branches of its nested transaction, so
// etcd received it twice against its request limit (--max-request-bytes, 1.5 MiB): a 900 KB
// ExecutionFailed (a worker's long error) was refused as too large, the event dropped and the
// execution's keys never put under the retention lease.
TEST_F(EtcdE2E, ReviewAFinalEventOf900KBIsWrittenAndItsKeysGoAfterTheRetention) {
  RetainingPlugin p(shared_->endpoints(), "/" + unique("bigfinal"));
  const Etcdctl ctl = shared_->ctl();
  p.push("big", 1, "w");
  const std::string body = RetainingPlugin::to_string(MapBuilder()
                                                          .str("type", "ExecutionFailed")
                                                          .str("execution_id", "big")
                                                          .str("user_id", "u")
                                                          .str("worker_id", "w")
                                                          .str("error", std::string(900000, 'e'))
                                                          .boolean("will_retry", false)
                                                          .finish());
  const shmsched_message m{"ExecutionFailed", "big",
                           "ExecutionFailed", reinterpret_cast<const std::uint8_t*>(body.data()),
                           body.size(),       0};
  ASSERT_EQ(p.plugin.api->publish(p.plugin.t, &m, 777), SHMSCHED_OK);
  {
    std::unique_lock lock(p.host.mu);
    ASSERT_TRUE(p.host.cv.wait_for(lock, std::chrono::seconds(20),
                                   [&] { return p.host.delivered.count(777) > 0; }));
    EXPECT_TRUE(p.host.ok[777]) << "a 900 KB final event was refused by etcd";
  }
  EXPECT_TRUE(ctl.get(p.prefix + "/events/big/ExecutionFailed").has_value());
  EXPECT_TRUE(
      eventually([&] { return ctl.keys(p.prefix + "/").empty(); }, std::chrono::seconds(10)))
      << ctl.keys(p.prefix + "/").size() << " keys left, e.g. " << ctl.keys(p.prefix + "/")[0];
}

// Found by review: the batch counted a final event's body once against its 1 MiB, and sent it
// twice: batches of 30 KB final events were refused by etcd and written one event per
// transaction.
TEST_F(EtcdE2E, ReviewFinalEventsOf30KBAreWrittenInAFewTransactions) {
  DirectHost host;
  const std::string prefix = "/" + unique("bytes");
  DirectPlugin plugin(host, {{"endpoints", shared_->endpoints()}, {"prefix", prefix}});
  const Etcdctl ctl = shared_->ctl();
  constexpr int n = 40;
  std::vector<std::string> ids, bodies;
  for (int i = 0; i < n; ++i) {
    ids.push_back("b" + std::to_string(i));
    bodies.push_back(RetainingPlugin::to_string(MapBuilder()
                                                    .str("type", "ExecutionFailed")
                                                    .str("execution_id", ids.back())
                                                    .str("user_id", "u")
                                                    .str("worker_id", "w")
                                                    .str("error", std::string(30000, 'e'))
                                                    .boolean("will_retry", false)
                                                    .finish()));
  }
  std::vector<shmsched_message> msgs;
  std::vector<std::uint64_t> tokens;
  for (int i = 0; i < n; ++i) {
    msgs.push_back({"ExecutionFailed", ids[i].c_str(), "ExecutionFailed",
                    reinterpret_cast<const std::uint8_t*>(bodies[i].data()), bodies[i].size(), 0});
    tokens.push_back(i + 1);
  }
  const std::int64_t before = ctl.revision();
  int refusal = 0;
  ASSERT_EQ(plugin.api->publish_batch(plugin.t, msgs.data(), tokens.data(), n, &refusal),
            static_cast<std::size_t>(n));
  std::unique_lock lock(host.mu);
  ASSERT_TRUE(host.cv.wait_for(lock, std::chrono::seconds(30), [&] { return host.left == n; }));
  for (const auto t : tokens) EXPECT_TRUE(host.ok[t]) << t;
  lock.unlock();
  EXPECT_LE(ctl.revision() - before, 3) << "final events were written one transaction each";
}

// etcd's budget of 128 operations per transaction, with nested ones counted against what the
// outer one leaves: a batch of 100 (the largest batch_size) final events, each with two inbox
// keys (the execution went from w1 to w2: both are retained), one of them missing for half, is
// one transaction, and leaves nothing after the retention.
TEST_F(EtcdE2E, AFullBatchOfFinishesWithTwoInboxesEachIsOneTransaction) {
  DirectHost host;
  const std::string prefix = "/" + unique("fullbatch");
  DirectPlugin plugin(host, {{"endpoints", shared_->endpoints()},
                             {"prefix", prefix},
                             {"batch_size", "100"},
                             {"retention_seconds", "2"}});
  const Etcdctl ctl = shared_->ctl();
  constexpr int n = 100;
  std::vector<std::string> ids, commands, pushes, completions;
  for (int i = 0; i < n; ++i) {
    ids.push_back("f" + std::to_string(i));
    commands.push_back(command_body(ids.back()));
    pushes.push_back(push_body(ids.back(), 1, "w1"));
    completions.push_back(RetainingPlugin::to_string(MapBuilder()
                                                         .str("type", "ExecutionCompleted")
                                                         .str("execution_id", ids.back())
                                                         .str("user_id", "u")
                                                         .str("worker_id", i % 2 ? "w1" : "w2")
                                                         .integer("exit_code", 0)
                                                         .finish()));
  }
  std::uint64_t token = 0;
  auto send = [&](const char* type, const char* topic, const std::vector<std::string>& b,
                  int command) {
    std::vector<shmsched_message> msgs;
    std::vector<std::uint64_t> tokens;
    for (int i = 0; i < n; ++i) {
      msgs.push_back({type, ids[i].c_str(), topic,
                      reinterpret_cast<const std::uint8_t*>(b[i].data()), b[i].size(), command});
      tokens.push_back(++token);
    }
    int refusal = 0;
    ASSERT_EQ(plugin.api->publish_batch(plugin.t, msgs.data(), tokens.data(), n, &refusal),
              static_cast<std::size_t>(n));
    std::unique_lock lock(host.mu);
    ASSERT_TRUE(host.cv.wait_for(lock, std::chrono::seconds(30),
                                 [&] { return host.left == static_cast<int>(token); }));
    for (const auto t : tokens) ASSERT_TRUE(host.ok[t]) << type << " " << t;
  };
  send("CreatePodCommand", "CreatePodCommand", commands, 1);
  send("TaskPush", "TaskPush.w1", pushes, 1);
  const std::int64_t before = ctl.revision();
  send("ExecutionCompleted", "ExecutionCompleted", completions, 0);
  EXPECT_LE(ctl.revision() - before, 2) << "the batch of finishes was split";
  EXPECT_TRUE(eventually([&] { return ctl.keys(prefix + "/").empty(); }, std::chrono::seconds(15)))
      << ctl.keys(prefix + "/").size() << " keys left, e.g. " << ctl.keys(prefix + "/")[0];
}

// etcd's size as etcdctl reports it: keys under every prefix, the database file, the part of it in
// use, and the store's revision.
struct Footprint {
  std::int64_t keys = 0, db_size = 0, db_in_use = 0, revision = 0;
};

Footprint footprint(const Etcdctl& ctl) {
  // etcdctl leaves fields that are zero out of its JSON.
  const auto status = ctl.run({"endpoint", "status", "-w", "json"});
  const auto count = ctl.run({"get", "/", "--prefix", "--keys-only", "--limit=1", "-w", "json"});
  if (status.exit_code != 0 || count.exit_code != 0) {
    throw std::runtime_error("etcdctl: " + status.out + count.out);
  }
  const auto s = nlohmann::json::parse(status.out).at(0).at("Status");
  Footprint f;
  f.db_size = s.value("dbSize", std::int64_t{0});
  f.db_in_use = s.value("dbSizeInUse", std::int64_t{0});
  f.revision = s.at("header").value("revision", std::int64_t{0});
  f.keys = nlohmann::json::parse(count.out).value("count", std::int64_t{0});
  return f;
}

std::string describe(const Footprint& f) {
  return std::to_string(f.keys) + " keys, db " + std::to_string(f.db_size) + " bytes (" +
         std::to_string(f.db_in_use) + " in use), revision " + std::to_string(f.revision);
}

// Hands every message over as the supervisor does: what the plugin refuses as busy is offered
// again.
void publish_all(DirectPlugin& plugin, std::vector<shmsched_message>& msgs,
                 std::vector<std::uint64_t>& tokens) {
  std::size_t at = 0;
  while (at < msgs.size()) {
    int refusal = SHMSCHED_OK;
    const std::size_t n = std::min<std::size_t>(1024, msgs.size() - at);
    at += plugin.api->publish_batch(plugin.t, msgs.data() + at, tokens.data() + at, n, &refusal);
    if (refusal == SHMSCHED_ERR_BUSY) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// etcd's footprint, measured: a run of 100,000 executions (SHMSCHED_FOOTPRINT_EXECUTIONS;
// 0 skips it, as the ASan build does), dispatched and then finished, leaves etcd's key
// count where it started once the retention has passed, and its database, once compacted, holds
// what it held before (bbolt reuses the freed pages; a defragmentation, which etcd's operators
// schedule, gives them back to the filesystem as well).
TEST(EtcdFootprint, ARunOfExecutionsLeavesEtcdsKeysAndDatabaseWhereTheyStarted) {
  const char* env = std::getenv("SHMSCHED_FOOTPRINT_EXECUTIONS");
  const int n = env ? std::atoi(env) : 100000;
  if (n <= 0) GTEST_SKIP() << "SHMSCHED_FOOTPRINT_EXECUTIONS=" << env;
  EtcdCluster etcd;
  const Etcdctl ctl(etcd.endpoints(), {"--command-timeout=120s"});
  const Footprint before = footprint(ctl);
  DirectHost host;
  DirectPlugin plugin(
      host, {{"endpoints", etcd.endpoints()}, {"prefix", "/churn"}, {"retention_seconds", "2"}});
  std::vector<std::string> ids, commands, completions;
  for (int i = 0; i < n; ++i) {
    ids.push_back("x" + std::to_string(i));
    commands.push_back(command_body(ids.back()));
    const auto b = MapBuilder()
                       .str("type", "ExecutionCompleted")
                       .integer("timestamp", 1)
                       .str("execution_id", ids.back())
                       .str("user_id", "u")
                       .str("worker_id", "w")
                       .integer("exit_code", 0)
                       .finish();
    completions.emplace_back(reinterpret_cast<const char*>(b.data()), b.size());
  }
  // Hands the n messages of `type` over and waits until etcd answered every one.
  std::uint64_t token = 0;
  auto send = [&](const char* type, const std::vector<std::string>& bodies, int command) {
    std::vector<shmsched_message> msgs;
    std::vector<std::uint64_t> tokens;
    for (int i = 0; i < n; ++i) {
      msgs.push_back({type, ids[i].c_str(), type,
                      reinterpret_cast<const std::uint8_t*>(bodies[i].data()), bodies[i].size(),
                      command});
      tokens.push_back(++token);
    }
    publish_all(plugin, msgs, tokens);
    std::unique_lock lock(host.mu);
    ASSERT_TRUE(host.cv.wait_for(lock, std::chrono::seconds(240),
                                 [&] { return host.left == static_cast<int>(token); }))
        << host.left << " of " << token << " delivered";
  };
  const auto t0 = Clock::now();
  auto since = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  send("CreatePodCommand", commands, 1);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  const double dispatched_at = since();
  const Footprint dispatched = footprint(ctl);
  // A command and an owner per execution.
  EXPECT_GE(dispatched.keys, before.keys + 2 * n) << describe(dispatched);
  send("ExecutionCompleted", completions, 0);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  const double completed_at = since();
  {
    std::lock_guard lock(host.mu);
    for (const auto& [t, ok] : host.ok) ASSERT_TRUE(ok) << "delivery " << t << " failed";
  }
  Footprint after;
  ASSERT_TRUE(eventually(
      [&] {
        after = footprint(ctl);
        return after.keys == before.keys;
      },
      std::chrono::seconds(60)))
      << "after the retention: " << describe(after) << "; before: " << describe(before);
  const double retention_at = since();
  // A compaction keeps the revision it is given: the deletions of the last lease's expiry (one
  // revision) would stay as tombstones. Compact past them.
  ASSERT_TRUE(ctl.put("/footprint-mark", "x"));
  ASSERT_EQ(ctl.run({"del", "/footprint-mark"}).exit_code, 0);
  ASSERT_EQ(ctl.run({"compact", std::to_string(footprint(ctl).revision), "--physical"}).exit_code,
            0);
  const Footprint compacted = footprint(ctl);
  ASSERT_EQ(ctl.run({"defrag"}).exit_code, 0);
  const Footprint defragmented = footprint(ctl);
  std::printf(
      "etcd footprint of %d executions:\n  before        %s\n  dispatched    %s (%.1f s)\n"
      "  completed at %.1f s\n  retention     %s (%.1f s)\n  compacted     %s\n"
      "  defragmented  %s (%.1f s)\n",
      n, describe(before).c_str(), describe(dispatched).c_str(), dispatched_at, completed_at,
      describe(after).c_str(), retention_at, describe(compacted).c_str(),
      describe(defragmented).c_str(), since());
  // "Near where they started": within 1 MiB (bbolt's pages of a fresh store are ~20 KB; the run's
  // peak is ~1.6 KB per execution).
  constexpr std::int64_t slack = 1 << 20;
  EXPECT_LE(compacted.db_in_use, before.db_in_use + slack) << describe(compacted);
  EXPECT_LE(defragmented.db_size, before.db_size + slack) << describe(defragmented);
}

}  // namespace
}  // namespace shmsched::test
