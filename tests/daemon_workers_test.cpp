// Workers end to end: the real shmschedd, workers registering over the ingress (from this process
// and as the example Python worker's processes), TaskPush on the zeromq transport by capability,
// claims with one winner, claim timeouts, blockers, and a SIGKILLed worker whose executions run
// elsewhere.
#include <gtest/gtest.h>

#include <cstdlib>
#include <set>
#include <sstream>

#include "daemon_support.h"
#include "shmsched/ipc/queue.h"

namespace shmsched::test {
namespace {

struct Fixture : DaemonFixture {
  // Every run keeps an audit log (checked where a test reads it).
  Fixture(const std::string& tag, std::vector<std::string> args)
      : DaemonFixture(tag, with_audit(std::move(args))) {}
  static std::vector<std::string> with_audit(std::vector<std::string> args) {
    args.push_back("--audit-dir={dir}/audit");
    return args;
  }

  Map register_worker(Ingress& in, const std::string& id, std::vector<std::string> caps,
                      int capacity = 1) {
    return in.call(MapBuilder()
                       .str("op", "register_worker")
                       .str("worker_id", id)
                       .strings("capabilities", caps)
                       .integer("capacity", capacity)
                       .finish());
  }
  Map submit(const std::string& id, std::vector<std::string> caps,
             const std::string& payload = "x") {
    const auto* b = reinterpret_cast<const std::byte*>(payload.data());
    return ingress->call(MapBuilder()
                             .str("op", "submit")
                             .str("execution_id", id)
                             .str("user_id", "u")
                             .bin("payload", std::vector<std::byte>(b, b + payload.size()))
                             .strings("required_capabilities", caps)
                             .finish());
  }
  Map claim(Ingress& in, const std::string& worker, const std::string& id) {
    return in.call(
        MapBuilder().str("op", "claim").str("worker_id", worker).str("execution_id", id).finish());
  }
  Map complete_as(const std::string& worker, const std::string& id) {
    return ingress->call(MapBuilder()
                             .str("op", "complete")
                             .str("execution_id", id)
                             .str("worker_id", worker)
                             .integer("exit_code", 0)
                             .finish());
  }
  // The topic the event `m` (found by next()) arrived under.
  std::string topic_of(const Map& m) const {
    for (const auto& [topic, e] : events->history())
      if (e.handle == m.handle) return topic;
    return "";
  }
};

std::vector<std::string> strings_of(const Map& m, std::string_view key) {
  std::vector<std::string> out;
  const auto* o = ipc::find_field(m.get(), key);
  if (!o || o->type != msgpack::type::ARRAY) return out;
  for (const auto& item : o->via.array) out.emplace_back(item.via.str.ptr, item.via.str.size);
  return out;
}

// Runs a shell command: (exit code, stdout and stderr).
std::pair<int, std::string> run_command(const std::string& command) {
  std::string out;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (!p) return {-1, ""};
  char buf[4096];
  std::size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::int64_t counter(const Map& stats, const std::string& name) {
  const auto* c = ipc::find_field(stats.get(), "counters");
  if (!c) return -1;
  return ipc::get_int(*c, name).value_or(-1);
}

TEST(DaemonWorkers, CapabilitiesClaimsTimeoutsAndBlockersOverTheIngress) {
  Fixture f("workers", {"--claim-timeout-ms=400", "--worker-timeout-ms=20000"});
  for (const auto& [id, caps] : std::vector<std::pair<std::string, std::vector<std::string>>>{
           {"w1", {"gpu"}}, {"w2", {"gpu", "cuda"}}, {"w3", {"cpu"}}}) {
    auto r = f.register_worker(*f.ingress, id, caps);
    ASSERT_TRUE(r.ok()) << r.str("message");
    auto ev = f.events->next("WorkerRegistered");
    ASSERT_TRUE(ev);
    EXPECT_EQ(ev->str("worker_id"), id);
  }
  EXPECT_EQ(f.ingress->call(MapBuilder().str("op", "stats").finish()).integer("workers"), 3);

  // A TaskPush to a worker that has the capability, on that worker's topic.
  ASSERT_TRUE(f.submit("g1", {"gpu"}).ok());
  auto push = f.events->next("TaskPush");
  ASSERT_TRUE(push);
  const std::string pushed_to = push->str("worker_id");
  EXPECT_TRUE(pushed_to == "w1" || pushed_to == "w2") << pushed_to;
  EXPECT_EQ(f.topic_of(*push), "TaskPush." + pushed_to);
  EXPECT_EQ(push->str("execution_id"), "g1");
  EXPECT_TRUE(push->has("payload"));

  // Two claimants at once: exactly one wins, the other learns who.
  Ingress a(f.daemon->endpoint()), b(f.daemon->endpoint());
  Map ra, rb;
  std::thread ta([&] { ra = f.claim(a, "w1", "g1"); });
  std::thread tb([&] { rb = f.claim(b, "w2", "g1"); });
  ta.join();
  tb.join();
  ASSERT_TRUE(ra.ok() && rb.ok());
  const bool a_won = ipc::get_bool(ra.get(), "claimed").value_or(false);
  const bool b_won = ipc::get_bool(rb.get(), "claimed").value_or(false);
  ASSERT_NE(a_won, b_won) << "exactly one claimant wins";
  const std::string winner = a_won ? "w1" : "w2";
  const std::string loser = a_won ? "w2" : "w1";
  EXPECT_EQ((a_won ? rb : ra).str("owner"), winner);
  // Claimed: it runs on the winner (status and list say so).
  auto st = f.ingress->op("status", "g1");
  EXPECT_EQ(st.str("state"), "running");
  EXPECT_EQ(st.str("worker_id"), winner);
  auto running = f.ingress->call(MapBuilder().str("op", "list").str("state", "running").finish());
  const auto* items = ipc::find_field(running.get(), "executions");
  ASSERT_TRUE(items && items->type == msgpack::type::ARRAY);
  EXPECT_EQ(items->via.array.size, 1u);
  // Only the owner reports.
  EXPECT_EQ(f.complete_as(loser, "g1").str("error"), "not_owner");
  EXPECT_TRUE(f.complete_as(winner, "g1").ok());
  auto done = f.events->next("ExecutionCompleted");
  ASSERT_TRUE(done);
  EXPECT_EQ(done->str("worker_id"), winner);

  // Nobody can run "tpu": it waits, without holding up what can run.
  ASSERT_TRUE(f.submit("t1", {"tpu"}).ok());
  ASSERT_TRUE(f.submit("plain", {}).ok());
  auto cmd = f.events->next("CreatePodCommand");
  ASSERT_TRUE(cmd);
  EXPECT_EQ(cmd->str("execution_id"), "plain");
  auto stats = f.ingress->call(MapBuilder().str("op", "stats").finish());
  EXPECT_EQ(stats.integer("waiting_for_workers"), 1);
  auto workers = f.ingress->call(MapBuilder().str("op", "workers").finish());
  ASSERT_TRUE(workers.ok());
  EXPECT_EQ(workers.integer("waiting.tpu"), 1);
  const auto listing =
      run_command(SHMSCHED_BIN_DIR "/shmschedctl --runtime-dir " + f.dir + " workers").second;
  EXPECT_NE(listing.find("needing tpu"), std::string::npos) << listing;
  EXPECT_NE(listing.find("cpu"), std::string::npos) << listing;  // w3's capabilities
  EXPECT_NE(listing.find("w2"), std::string::npos) << listing;
  // A worker that can arrives: it gets it.
  ASSERT_TRUE(f.register_worker(*f.ingress, "w4", {"tpu"}).ok());
  push = f.events->next("TaskPush");
  ASSERT_TRUE(push);
  EXPECT_EQ(push->str("execution_id"), "t1");
  EXPECT_EQ(push->str("worker_id"), "w4");

  // A push nobody claims goes to another worker that can run it, same attempt.
  ASSERT_TRUE(f.submit("g2", {"gpu"}).ok());
  push = f.events->next("TaskPush");
  ASSERT_TRUE(push);
  const std::string first = push->str("worker_id");
  auto again = f.events->next("TaskPush", std::chrono::seconds(5));
  ASSERT_TRUE(again) << "no second offer after the claim timeout";
  EXPECT_EQ(again->str("execution_id"), "g2");
  EXPECT_NE(again->str("worker_id"), first);
  EXPECT_EQ(again->integer("attempt"), push->integer("attempt"));

  // A blocker reaches exactly the live workers that can help, each on its own topic.
  auto br = f.ingress->call(MapBuilder()
                                .str("op", "report_blocker")
                                .str("worker_id", "w1")
                                .str("type", "dependency")
                                .str("description", "needs a CUDA expert")
                                .str("severity", "high")
                                .strings("required_capabilities", {"cuda"})
                                .str("execution_id", "g2")
                                .finish());
  ASSERT_TRUE(br.ok()) << br.str("message");
  EXPECT_EQ(strings_of(br, "helpers"), std::vector<std::string>{"w2"});
  auto blocker = f.events->next("BlockerReported");
  ASSERT_TRUE(blocker);
  EXPECT_EQ(f.topic_of(*blocker), "BlockerReported.w2");
  EXPECT_EQ(blocker->str("blocker_type"), "dependency");
  EXPECT_EQ(strings_of(*blocker, "helpers"), std::vector<std::string>{"w2"});

  // Unregistering sends its pushed, unclaimed work elsewhere and says so.
  ASSERT_TRUE(
      f.ingress->call(MapBuilder().str("op", "unregister_worker").str("worker_id", "w4").finish())
          .ok());
  auto gone = f.events->next("WorkerUnregistered");
  ASSERT_TRUE(gone);
  EXPECT_EQ(gone->str("worker_id"), "w4");
  EXPECT_EQ(gone->str("reason"), "unregistered");
  EXPECT_EQ(f.ingress->call(MapBuilder().str("op", "heartbeat").str("worker_id", "w4").finish())
                .str("error"),
            "not_found");
  stats = f.ingress->call(MapBuilder().str("op", "stats").finish());
  EXPECT_EQ(stats.integer("workers"), 3);
  EXPECT_GE(counter(stats, "claim_timeouts"), 1);
  EXPECT_EQ(counter(stats, "claims_won"), 1);
  EXPECT_EQ(counter(stats, "claims_lost"), 1);

  // Every state change is in the audit log, in order, and its chain verifies.
  ASSERT_EQ(f.daemon->signal(SIGTERM), 0);
  const std::string ctl = SHMSCHED_BIN_DIR "/shmschedctl audit --dir " + f.dir + "/audit";
  const auto verify = run_command(ctl + " verify");
  EXPECT_EQ(verify.first, 0) << verify.second;
  EXPECT_NE(verify.second.find("chain intact"), std::string::npos) << verify.second;
  const auto g1 = run_command(ctl + " --execution g1").second;
  for (const char* t : {"accepted", "pushed", "claimed", "completed"}) {
    EXPECT_NE(g1.find(t), std::string::npos) << t << " missing from:\n" << g1;
  }
  EXPECT_LT(g1.find("accepted"), g1.find("pushed"));
  EXPECT_LT(g1.find("pushed"), g1.find("claimed"));
  EXPECT_LT(g1.find("claimed"), g1.find("completed"));
  const auto all = run_command(ctl).second;
  for (const char* t : {"worker_registered", "worker_gone", "blocker_reported", "dispatched"}) {
    EXPECT_NE(all.find(t), std::string::npos) << t << " missing";
  }
}

// Runs `argv` with its output in `log`; returns its pid.
pid_t spawn_logged(std::vector<std::string> argv, const std::string& log) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    std::vector<char*> c;
    for (auto& a : argv) c.push_back(a.data());
    c.push_back(nullptr);
    ::execv(c[0], c.data());
    ::_exit(127);
  }
  return pid;
}

// Runs the example Python worker; returns its pid. Debian's interpreter, which has python3-zmq
// and python3-msgpack (not whatever is first on PATH).
pid_t python_worker(const Fixture& f, const std::string& id, const std::string& caps, int capacity,
                    const std::string& log) {
  return spawn_logged(
      {"/usr/bin/python3", SHMSCHED_SOURCE_DIR "/examples/workers/python/shmsched_worker.py",
       "--worker-id", id, "--capabilities", caps, "--capacity", std::to_string(capacity),
       "--ingress", f.daemon->endpoint(), "--events", f.daemon->events_endpoint()},
      log);
}

// Runs the example C++ worker (examples/workers/cpp); returns its pid.
pid_t cpp_worker(const Fixture& f, const std::string& id, const std::string& caps, int capacity,
                 const std::string& log) {
  return spawn_logged(
      {SHMSCHED_BIN_DIR "/shmsched_worker", "--worker-id", id, "--capabilities", caps, "--capacity",
       std::to_string(capacity), "--runtime-dir", f.dir, "--segment", f.segment},
      log);
}

// The example workers, Python (over the ingress) and C++ (claiming through shared memory), run a
// workload together; one is SIGKILLed with work claimed, and nothing is lost or run twice.
TEST(DaemonWorkers, ExampleWorkersRunEverythingAndAKilledWorkerLosesNothing) {
  Fixture f("pyworkers", {"--max-attempts=5", "--max-active-executions=64",
                          "--claim-timeout-ms=2000", "--retry-backoff-ms=10"});
  const pid_t one = python_worker(f, "py-1", "py", 2, f.dir + "/py-1.log");
  const pid_t two = python_worker(f, "py-2", "py,extra", 2, f.dir + "/py-2.log");
  const pid_t three = cpp_worker(f, "cpp-1", "py,cpp", 2, f.dir + "/cpp-1.log");
  std::set<std::string> registered;
  for (int i = 0; i < 3; ++i) {
    auto ev = f.events->next("WorkerRegistered", std::chrono::seconds(20));
    ASSERT_TRUE(ev) << "an example worker did not register";
    registered.insert(ev->str("worker_id"));
  }
  EXPECT_EQ(registered, (std::set<std::string>{"py-1", "py-2", "cpp-1"}));

  // A second registration of a live worker's id from another process is refused.
  const pid_t impostor = python_worker(f, "py-2", "py", 1, f.dir + "/impostor.log");
  int status = 0;
  ::waitpid(impostor, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << status;

  constexpr int kTasks = 40;
  for (int i = 0; i < kTasks; ++i) {
    ASSERT_TRUE(f.submit("job-" + std::to_string(i), {"py"}, "sleep:40").ok());
  }
  // Some work is done; then py-1 dies with work claimed.
  std::map<std::string, int> completed;
  std::map<std::string, int> by_worker;
  while (completed.size() < 6) {
    auto c = f.events->next("ExecutionCompleted", std::chrono::seconds(20));
    ASSERT_TRUE(c) << "the workers completed nothing";
    ++completed[c->str("execution_id")];
    ++by_worker[c->str("worker_id")];
  }
  const auto killed_at = Clock::now();
  ::kill(one, SIGKILL);
  ::waitpid(one, nullptr, 0);
  std::optional<Map> gone;
  while ((gone = f.events->next("WorkerUnregistered", std::chrono::seconds(10)))) {
    if (gone->str("worker_id") == "py-1") break;
  }
  ASSERT_TRUE(gone) << "the dead worker was not noticed";
  const auto noticed_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - killed_at).count();
  EXPECT_EQ(gone->str("reason"), "process_exited");
  // The goal is 100 ms (50 ms polls); the bound leaves room for a loaded machine.
  EXPECT_LT(noticed_ms, 1000) << "noticed after " << noticed_ms << " ms";
  std::printf("[ workers  ] a SIGKILLed worker was noticed after %lld ms\n",
              static_cast<long long>(noticed_ms));

  // Everything completes, exactly once from the submitter's point of view.
  while (completed.size() < kTasks) {
    auto c = f.events->next("ExecutionCompleted", std::chrono::seconds(30));
    ASSERT_TRUE(c) << completed.size() << " of " << kTasks << " completed";
    ++completed[c->str("execution_id")];
    ++by_worker[c->str("worker_id")];
  }
  EXPECT_EQ(f.events->count_for("ExecutionCompleted", std::chrono::milliseconds(300)), 0u);
  for (const auto& [id, n] : completed) EXPECT_EQ(n, 1) << id;
  EXPECT_GT(by_worker["cpp-1"], 0) << "the C++ worker ran nothing";
  EXPECT_GT(by_worker["py-2"], 0) << "the Python worker ran nothing";
  // Nothing is left on any worker: every load came back to 0.
  const auto listing = f.ingress->call(MapBuilder().str("op", "workers").finish());
  ASSERT_TRUE(listing.ok());
  const auto* workers = ipc::find_field(listing.get(), "workers");
  ASSERT_TRUE(workers && workers->type == msgpack::type::ARRAY);
  EXPECT_EQ(workers->via.array.size, 2u);
  for (const auto& w : workers->via.array) {
    EXPECT_EQ(ipc::get_int(w, "load").value_or(-1), 0)
        << ipc::get_string(w, "worker_id").value_or("?");
  }
  for (pid_t p : {two, three}) {
    ::kill(p, SIGKILL);
    ::waitpid(p, nullptr, 0);
  }
}

// A worker registered from one local process is acted for from that process only: another local
// process (here, this test) can neither claim, heartbeat, unregister nor report as it, nor take
// its id (review: every worker operation but register acted for any worker id).
TEST(DaemonWorkers, AWorkerIsActedForByTheProcessThatRegisteredItOnly) {
  Fixture f("identity", {});
  const pid_t worker = python_worker(f, "w1", "gpu", 1, f.dir + "/w1.log");
  auto ev = f.events->next("WorkerRegistered", std::chrono::seconds(20));
  ASSERT_TRUE(ev) << "the Python worker did not register";
  ASSERT_EQ(ev->str("worker_id"), "w1");
  auto as_w1 = [&](MapBuilder m) { return f.ingress->call(m.str("worker_id", "w1").finish()); };
  EXPECT_EQ(as_w1(MapBuilder().str("op", "claim").str("execution_id", "x")).str("error"),
            "unauthorized");
  EXPECT_EQ(as_w1(MapBuilder().str("op", "heartbeat")).str("error"), "unauthorized");
  EXPECT_EQ(as_w1(MapBuilder().str("op", "unregister_worker")).str("error"), "unauthorized");
  EXPECT_EQ(as_w1(MapBuilder()
                      .str("op", "report_blocker")
                      .str("type", "t")
                      .str("description", "d")
                      .str("severity", "low"))
                .str("error"),
            "unauthorized");
  EXPECT_EQ(as_w1(MapBuilder().str("op", "complete").str("execution_id", "x")).str("error"),
            "unauthorized");
  EXPECT_EQ(f.register_worker(*f.ingress, "w1", {"gpu"}).str("error"), "invalid");
  // Its own process still acts for it: it is alive and registered.
  const auto listing = f.ingress->call(MapBuilder().str("op", "workers").finish());
  const auto* workers = ipc::find_field(listing.get(), "workers");
  ASSERT_TRUE(workers && workers->type == msgpack::type::ARRAY);
  EXPECT_EQ(workers->via.array.size, 1u);
  ::kill(worker, SIGKILL);
  ::waitpid(worker, nullptr, 0);
  // Once its process is gone, the id is free.
  auto gone = f.events->next("WorkerUnregistered", std::chrono::seconds(10));
  ASSERT_TRUE(gone);
  EXPECT_TRUE(f.register_worker(*f.ingress, "w1", {"gpu"}).ok());
}

// What a worker brings is bounded: its capabilities and metadata stay in memory while it lives,
// and so do the workers (review: 16 MB registrations were accepted without bound).
TEST(DaemonWorkers, WorkerRegistrationsAreBounded) {
  Fixture f("bounds", {"--max-workers=3"});
  std::vector<std::string> many(65, "c");
  for (std::size_t i = 0; i < many.size(); ++i) many[i] += std::to_string(i);
  auto r = f.register_worker(*f.ingress, "big", many);
  EXPECT_EQ(r.str("error"), "invalid");
  EXPECT_NE(r.str("message").find("more than 64"), std::string::npos) << r.str("message");
  r = f.register_worker(*f.ingress, "long", {std::string(129, 'c')});
  EXPECT_EQ(r.str("error"), "invalid");
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(f.register_worker(*f.ingress, "w" + std::to_string(i), {"a"}).ok());
  }
  r = f.register_worker(*f.ingress, "w3", {"a"});
  EXPECT_EQ(r.str("error"), "invalid");
  EXPECT_NE(r.str("message").find("max_workers"), std::string::npos) << r.str("message");
  EXPECT_TRUE(f.register_worker(*f.ingress, "w0", {"a", "b"}).ok()) << "an update is no new one";
}

// A child process with its stdin and stdout on pipes, read and written a line at a time.
class Piped {
 public:
  explicit Piped(std::vector<std::string> argv) {
    int in[2], out[2];
    if (::pipe(in) != 0 || ::pipe(out) != 0) throw std::runtime_error("pipe");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      ::close(in[1]);
      ::close(out[0]);
      std::vector<char*> c;
      for (auto& a : argv) c.push_back(a.data());
      c.push_back(nullptr);
      ::execv(c[0], c.data());
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    to_ = ::fdopen(in[1], "w");
    from_ = ::fdopen(out[0], "r");
  }
  ~Piped() {
    std::fclose(to_);
    std::fclose(from_);
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  void send(const std::string& line) {
    std::fputs((line + "\n").c_str(), to_);
    std::fflush(to_);
  }
  std::string receive() {
    char buf[512];
    if (!std::fgets(buf, sizeof buf, from_)) return "";
    std::string s(buf);
    if (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  }

 private:
  pid_t pid_ = -1;
  FILE* to_ = nullptr;
  FILE* from_ = nullptr;
};

// Worker processes claim the same execution at the same moment, half through shared memory and
// half over the ingress, round after round: exactly one wins every time, every loser names the
// winner, and only the winner may complete it.
TEST(DaemonWorkers, ClaimRacesOverSharedMemoryAndTheIngressHaveExactlyOneWinner) {
  const char* env = std::getenv("SHMSCHED_CLAIM_ROUNDS");
  const int rounds = env ? std::atoi(env) : 10000;
  Fixture f("claims", {"--max-active-executions=16", "--claim-timeout-ms=60000"});
  struct Racer {
    std::string id;
    bool shm;
    std::unique_ptr<Piped> process;
    std::uint32_t number = 0;
  };
  std::vector<Racer> racers;
  for (int i = 0; i < 4; ++i) {
    Racer r;
    r.shm = i % 2 == 0;
    r.id = std::string(r.shm ? "shm-" : "ingress-") + std::to_string(i);
    r.process = std::make_unique<Piped>(
        std::vector<std::string>{SHMSCHED_BIN_DIR "/claim_racer", f.daemon->endpoint(), f.segment,
                                 r.id, r.shm ? "shm" : "ingress", r.shm ? "400" : "0"});
    const std::string ready = r.process->receive();
    ASSERT_EQ(ready.rfind("ready ", 0), 0u) << r.id << ": " << ready;
    r.number = static_cast<std::uint32_t>(std::stoul(ready.substr(6)));
    racers.push_back(std::move(r));
  }
  int shm_wins = 0;
  for (int round = 0; round < rounds; ++round) {
    const std::string id = "race-" + std::to_string(round);
    ASSERT_TRUE(f.submit(id, {"race"}).ok());
    // Offered (claims are open) ...
    for (;;) {
      auto push = f.events->next("TaskPush", std::chrono::seconds(20));
      ASSERT_TRUE(push) << "no TaskPush for " << id;
      if (push->str("execution_id") == id) break;
    }
    // ... and claimed by everyone at once.
    for (auto& r : racers) r.process->send(id + " 1");
    std::vector<std::string> answers;
    for (auto& r : racers) answers.push_back(r.process->receive());
    int winners = 0;
    Racer* winner = nullptr;
    for (std::size_t i = 0; i < racers.size(); ++i) {
      std::istringstream in(answers[i]);
      std::string outcome, owner, reason;
      std::uint32_t number = 0;
      in >> outcome >> number >> owner >> reason;
      if (outcome == "won") {
        ++winners;
        winner = &racers[i];
      }
    }
    ASSERT_EQ(winners, 1) << "round " << round << ": " << answers[0] << " | " << answers[1] << " | "
                          << answers[2] << " | " << answers[3];
    if (winner->shm) ++shm_wins;
    for (std::size_t i = 0; i < racers.size(); ++i) {
      if (&racers[i] == winner) continue;
      std::istringstream in(answers[i]);
      std::string outcome, owner, reason;
      std::uint32_t number = 0;
      in >> outcome >> number >> owner >> reason;
      if (racers[i].shm) {
        ASSERT_EQ(number, winner->number) << "round " << round << ": " << answers[i];
      } else {
        ASSERT_EQ(owner, winner->id) << "round " << round << ": " << answers[i];
      }
    }
    // Only the winner may report it (each worker reports from its own process).
    if (round % 100 == 0) {
      Racer& loser = &racers[0] == winner ? racers[1] : racers[0];
      loser.process->send("complete " + id);
      ASSERT_EQ(loser.process->receive(), "not_owner") << "round " << round;
    }
    for (auto& r : racers) {
      if (&r != winner) continue;
      r.process->send("complete " + id);
      ASSERT_EQ(r.process->receive(), "ok") << "round " << round;
    }
  }
  std::printf("[ claims   ] %d rounds, one winner each; %d won through shared memory\n", rounds,
              shm_wins);
  // Both ways win sometimes (else the race was not one).
  EXPECT_GT(shm_wins, 0);
  EXPECT_LT(shm_wins, rounds);
}

}  // namespace
}  // namespace shmsched::test
