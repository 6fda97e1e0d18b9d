// Adversarial tests of shmschedd's HTTP endpoint (metrics_listen): states the observability tests
// (tests/python/test_observability.py) never reach, found in a review of 9cbd664. Each of the
// defects it found failed here before its fix.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <regex>

#include "daemon_support.h"
#include "shmsched/ipc/queue.h"

namespace shmsched::test {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;

// The port the daemon bound (--metrics-listen=127.0.0.1:0), from its start-up log.
std::uint16_t http_port(const Daemon& d) {
  const std::regex re(R"(metrics on http://127\.0\.0\.1:(\d+)/metrics)");
  const auto until = Clock::now() + 10s;
  while (Clock::now() < until) {
    std::smatch m;
    const std::string log = d.log_text();
    if (std::regex_search(log, m, re)) return static_cast<std::uint16_t>(std::stoi(m[1]));
    std::this_thread::sleep_for(20ms);
  }
  throw std::runtime_error("no 'metrics on' line in the log:\n" + d.log_text());
}

// A TCP connection to 127.0.0.1:port, with a receive timeout.
class Conn {
 public:
  explicit Conn(std::uint16_t port, std::chrono::milliseconds timeout = 5s) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{static_cast<time_t>(timeout.count() / 1000),
               static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~Conn() {
    if (fd_ >= 0) ::close(fd_);
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  bool ok() const { return ok_; }
  void send(const std::string& s) { (void)!::send(fd_, s.data(), s.size(), MSG_NOSIGNAL); }
  // Reads until `until` appears, the peer closes, or the timeout passes.
  std::string read_until(const std::string& until = "", std::size_t max = 1 << 26) {
    std::string out;
    char buf[65536];
    while (out.size() < max) {
      const auto n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.append(buf, static_cast<std::size_t>(n));
      if (!until.empty() && out.find(until) != std::string::npos) break;
    }
    return out;
  }

 private:
  int fd_ = -1;
  bool ok_ = false;
};

struct Response {
  int status = 0;
  std::string head;
  std::string body;
};

// One request on its own connection (Connection: close), the whole response read.
Response get(std::uint16_t port, const std::string& target, const std::string& method = "GET",
             const std::string& host = "127.0.0.1") {
  Conn c(port, 10s);
  if (!c.ok()) return {};
  c.send(method + " " + target + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n");
  const std::string all = c.read_until();
  Response r;
  const auto end = all.find("\r\n\r\n");
  r.head = all.substr(0, end);
  if (end != std::string::npos) r.body = all.substr(end + 4);
  if (all.rfind("HTTP/1.1 ", 0) == 0) r.status = std::stoi(all.substr(9, 3));
  return r;
}

std::vector<std::string> with_http(std::vector<std::string> args) {
  args.push_back("--metrics-listen=127.0.0.1:0");
  return args;
}

// The HTTP thread registers a queue Producer on the first dashboard read and keeps it for the
// life of the process: a participant entry the daemon's sizing (consumer + ingress producer + the
// loop's producer) does not count. With one entry to spare for the ingress, opening the
// dashboard first leaves the ingress without one: every submit is refused as queue_full.
TEST(DaemonHttp, DashboardDoesNotTakeTheIngressParticipantEntry) {
  const std::string dir = temp_dir("http-participants");
  const std::string segment = segment_name("http-participants");
  ipc::Segment::remove(segment);
  {
    // The consumer and the ingress's producer: two entries, enough for ZeroMQ submits.
    Daemon d(dir, segment, with_http({"--max-participants=2"}));
    d.start();  // stats: registers nothing
    const auto port = http_port(d);
    const auto state = get(port, "/api/state");  // the dashboard's first poll
    ASSERT_EQ(state.status, 200) << state.head;
    Ingress ingress(d.endpoint());
    const auto r = ingress.submit("after-dashboard-1", "alice");
    EXPECT_TRUE(r.ok()) << "a submit after the dashboard was opened: " << r.str("error") << ": "
                        << r.str("message");
    EXPECT_EQ(d.signal(SIGTERM), 0);
  }
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// Control for the test above: without the dashboard the same daemon takes the submit.
TEST(DaemonHttp, WithoutTheDashboardTwoParticipantEntriesAreEnough) {
  const std::string dir = temp_dir("http-participants-ctl");
  const std::string segment = segment_name("http-participants-ctl");
  ipc::Segment::remove(segment);
  {
    Daemon d(dir, segment, with_http({"--max-participants=2"}));
    d.start();
    const auto port = http_port(d);
    ASSERT_EQ(get(port, "/metrics").status, 200);  // metrics register nothing
    Ingress ingress(d.endpoint());
    const auto r = ingress.submit("no-dashboard-1", "alice");
    EXPECT_TRUE(r.ok()) << r.str("message");
    EXPECT_EQ(d.signal(SIGTERM), 0);
  }
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// Execution ids (and user ids) are the client's bytes: nothing requires UTF-8. nlohmann::json's
// dump() throws on invalid UTF-8, so one such id in the recent events (or in the per-user top)
// turns /api/state into a 500 and the dashboard's stream into error events, until 50 more events
// push it out of the ring (or, for a user id, as long as that user has anything queued).
TEST(DaemonHttp, StateSurvivesAnIdThatIsNotUtf8) {
  DaemonFixture f("http-utf8", with_http({}));
  const auto port = http_port(*f.daemon);
  ASSERT_EQ(get(port, "/api/state").status, 200);
  const auto r = f.ingress->submit("bad-\xff\xfe-id", "mallory");
  ASSERT_TRUE(r.ok()) << r.str("message");
  ASSERT_TRUE(f.events->next("CreatePodCommand"));
  std::this_thread::sleep_for(1200ms);  // the loop publishes its events twice a second
  const auto state = get(port, "/api/state");
  EXPECT_EQ(state.status, 200) << state.body;
  // The live page's stream: each event is data with JSON, never an error event.
  Conn sse(port);
  sse.send("GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  const std::string events = sse.read_until("\n\n");
  EXPECT_THAT(events, Not(HasSubstr("event: error"))) << events;
  EXPECT_THAT(events, Not(HasSubstr("data: data: "))) << events;  // the error's framing, too
}

// The same through a user id: it stays in the per-user top as long as the user has an execution
// queued or running, so the dashboard stays broken for as long as the attacker wishes.
TEST(DaemonHttp, StateSurvivesAUserIdThatIsNotUtf8) {
  DaemonFixture f("http-utf8-user", with_http({"--max-active-executions=1"}));
  const auto port = http_port(*f.daemon);
  ASSERT_TRUE(f.ingress->submit("first", "alice").ok());  // takes the only active place
  const auto r = f.ingress->submit("queued-bad-user", "mallory-\xc3");
  ASSERT_TRUE(r.ok()) << r.str("message");
  // Past the ring of recent events: 60 more events from another user, so only the top holds it.
  for (int i = 0; i < 30; ++i) {
    ASSERT_TRUE(f.ingress->submit("c-" + std::to_string(i), "carol").ok());
    ASSERT_TRUE(f.ingress->op("cancel", "c-" + std::to_string(i)).ok());
  }
  std::this_thread::sleep_for(1200ms);
  const auto state = get(port, "/api/state");
  EXPECT_EQ(state.status, 200) << state.body;
}

// The connection limit was shared by the dashboard's streams, which never end, and by /metrics
// and /healthz: 64 open dashboards (or one client opening 64 streams, from any local user: the
// port is loopback, not a socket with permissions) made every scrape and every health probe fail
// with 503, and a liveness probe would then restart a healthy scheduler. Streams have a share.
TEST(DaemonHttp, HealthzAnswersWhileStreamsFillTheConnections) {
  DaemonFixture f("http-streams", with_http({}));
  const auto port = http_port(*f.daemon);
  std::vector<std::unique_ptr<Conn>> streams;
  int open = 0, refused = 0;
  for (int i = 0; i < 64; ++i) {
    auto c = std::make_unique<Conn>(port);
    ASSERT_TRUE(c->ok());
    c->send("GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    const std::string head = c->read_until("\r\n\r\n");
    if (head.find("text/event-stream") != std::string::npos) ++open;
    if (head.rfind("HTTP/1.1 503", 0) == 0) ++refused;
    streams.push_back(std::move(c));
  }
  EXPECT_EQ(open, 16) << "live streams are capped at 16";
  EXPECT_EQ(refused, 64 - 16);
  const auto health = get(port, "/healthz");
  EXPECT_EQ(health.status, 200) << health.head;
  const auto metrics = get(port, "/metrics");
  EXPECT_EQ(metrics.status, 200) << metrics.head;
}

// HEAD is allowed (Allow: GET, HEAD) but answered with the body: on a kept-alive connection the
// client reads the body as the next response.
TEST(DaemonHttp, HeadCarriesNoBody) {
  DaemonFixture f("http-head", with_http({}));
  const auto port = http_port(*f.daemon);
  Conn c(port);
  c.send("HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  c.send("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  const std::string all = c.read_until();
  const auto first_end = all.find("\r\n\r\n");
  ASSERT_NE(first_end, std::string::npos) << all;
  // Right after the HEAD's header comes the GET's status line.
  EXPECT_EQ(all.substr(first_end + 4, 9), "HTTP/1.1 ") << all;
}

// The per-user top reads at most 100,000 executions (kTopScan) of a queue that may hold more:
// beyond, the counts are silently short. 150,000 queued for one user show as 100,000.
TEST(DaemonHttp, TopUsersCountsEveryQueuedExecution) {
  constexpr int kQueued = 150'000;
  DaemonFixture f("http-top", with_http({"--max-queue-size=200000", "--max-payload-bytes=16",
                                         "--max-extras-bytes=64", "--max-active-executions=1",
                                         "--max-executions-per-user=1000000"}));
  const auto port = http_port(*f.daemon);
  auto seg = ipc::Segment::attach(f.segment);
  {
    ipc::Producer p(seg);
    ipc::protocol::SubmitOp op;
    op.user_id = "bulk";
    for (int i = 0; i < kQueued; ++i) {
      ASSERT_TRUE(
          p.submit(ipc::protocol::to_submit_request(op, "b" + std::to_string(i))).accepted())
          << i;
    }
  }
  std::this_thread::sleep_for(500ms);
  const auto t0 = Clock::now();
  const auto state = get(port, "/api/state");
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  ASSERT_EQ(state.status, 200);
  std::cerr << "/api/state with " << kQueued << " queued took " << ms << " ms\n";
  const std::regex re(R"("active":(\d+),"queued":(\d+),"user_id":"bulk")");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(state.body, m, re)) << state.body.substr(0, 2000);
  EXPECT_EQ(std::stoll(m[1]) + std::stoll(m[2]), kQueued);
  seg.reset();
}

// The per-user top copies every execution out of the segment, payload and extras included
// (QueueHandle::list), to count user ids: with the default limits (10,000 queued, 16 KiB
// payloads) one dashboard poll allocates ~160 MB on the HTTP thread, several times a second with
// the dashboard open.
TEST(DaemonHttp, DashboardPollDoesNotCopyThePayloads) {
  constexpr int kQueued = 4'000;  // 64 MB of payloads: a copy shows above the bound below
  DaemonFixture f("http-top-mem",
                  with_http({"--max-active-executions=1", "--max-executions-per-user=1000000"}));
  const auto port = http_port(*f.daemon);
  auto seg = ipc::Segment::attach(f.segment);
  {
    ipc::Producer p(seg);
    ipc::protocol::SubmitOp op;
    op.user_id = "bulk";
    op.payload.assign(16 * 1024 - 16, std::byte{'x'});
    for (int i = 0; i < kQueued; ++i) {
      ASSERT_TRUE(
          p.submit(ipc::protocol::to_submit_request(op, "m" + std::to_string(i))).accepted())
          << i;
    }
  }
  std::this_thread::sleep_for(500ms);
  const long before = peak_rss_kb(f.daemon->pid());
  const auto t0 = Clock::now();
  ASSERT_EQ(get(port, "/api/state").status, 200);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  const long after = peak_rss_kb(f.daemon->pid());
  std::cerr << "/api/state: " << ms << " ms, peak RSS " << before / 1024 << " -> " << after / 1024
            << " MB\n";
  EXPECT_LT(after - before, 32 * 1024)
      << "one poll raised the peak RSS by " << (after - before) / 1024 << " MB";
  seg.reset();
}

// DNS rebinding: the endpoint answers any Host, so a web page the operator opens can rebind its
// name to 127.0.0.1 and read /api/state (execution ids, user ids, errors) from the browser.
TEST(DaemonHttp, RefusesAForeignHostHeader) {
  DaemonFixture f("http-host", with_http({}));
  const auto port = http_port(*f.daemon);
  const auto r = get(port, "/api/state", "GET", "attacker.example:" + std::to_string(port));
  EXPECT_NE(r.status, 200) << r.body.substr(0, 200);
}

// submit_to_dispatch is observed on every Publish of a CreatePodCommand/TaskPush with attempt 1
// (supervisor.cpp, do_publish), but the scheduler publishes the same first dispatch again after a
// transport's failure (backoff rounds), after a claim timeout (re-offer to another worker) and
// after a claim of a parked push: one execution counts once per round, each later round with a
// longer "latency". One execution, a transport failing a few rounds: _count must be 1.
TEST(DaemonHttp, SubmitToDispatchCountsEachExecutionOnce) {
  const std::string files = temp_dir("http-flaky-files");
  const std::string fail_file = files + "/fail";
  std::ofstream(fail_file).put('x');
  DaemonFixture f(
      "http-flaky",
      with_http({"--transports=zeromq,flaky", "--flaky.fail_file=" + fail_file,
                 "--flaky.log_file=" + files + "/delivered", "--dispatch-backoff-ms=50"}));
  const auto port = http_port(*f.daemon);
  ASSERT_TRUE(f.ingress->submit("once", "u").ok());
  ASSERT_TRUE(f.events->next("CreatePodCommand"));
  auto metric = [&](const std::string& name) {
    const std::regex re("\n" + name + R"( (\S+)\n)");
    std::smatch m;
    const std::string body = "\n" + get(port, "/metrics").body;
    return std::regex_search(body, m, re) ? std::stod(m[1]) : -1.0;
  };
  const auto until = Clock::now() + 10s;
  while (metric("shmsched_publish_failures_total\\{transport=\"flaky\"\\}") < 3 &&
         Clock::now() < until) {
    std::this_thread::sleep_for(50ms);
  }
  std::filesystem::remove(fail_file);
  std::this_thread::sleep_for(1s);
  EXPECT_EQ(metric("shmsched_executions_dispatched_total"), 1);
  EXPECT_EQ(metric("shmsched_submit_to_dispatch_seconds_count"), 1)
      << "one execution, dispatched once";
  std::filesystem::remove_all(files);
}

// shmsched_queue_oldest_wait_seconds (and `stats`) reads the enqueue time of the slot at the
// head of each ring (QueueHandle::head_enqueued_at, ring.peek()); a cancel leaves its ring cell
// (a tombstone, compacted later), so a cancelled head keeps counting as the oldest wait of the
// executions queued behind it.
TEST(DaemonHttp, OldestWaitIgnoresACancelledHead) {
  DaemonFixture f("http-oldest", with_http({"--max-active-executions=1"}));
  const auto port = http_port(*f.daemon);
  ASSERT_TRUE(f.ingress->submit("running", "u").ok());  // the only active place
  ASSERT_TRUE(f.events->next("CreatePodCommand"));
  ASSERT_TRUE(f.ingress->submit("old", "u").ok());
  std::this_thread::sleep_for(3s);
  ASSERT_TRUE(f.ingress->submit("new", "u").ok());
  ASSERT_TRUE(f.ingress->op("cancel", "old").ok());
  std::this_thread::sleep_for(500ms);
  const std::regex re(R"(\nshmsched_queue_oldest_wait_seconds\{priority="normal"\} (\S+)\n)");
  std::smatch m;
  const std::string body = "\n" + get(port, "/metrics").body;
  ASSERT_TRUE(std::regex_search(body, m, re)) << body;
  EXPECT_LT(std::stod(m[1]), 2.0) << "'new' has waited 0.5 s; 'old' (cancelled) 3.5 s";
}

// The accept loop re-arms at once after any error but operation_aborted: out of descriptors
// (EMFILE), the pending connection stays in the backlog and async_accept fails again at once, so
// the HTTP thread spins a core (shared with the scheduling loop) for as long as it lasts.
TEST(DaemonHttp, AcceptDoesNotSpinWhenOutOfDescriptors) {
  DaemonFixture f("http-emfile", with_http({}));
  const auto port = http_port(*f.daemon);
  const pid_t pid = f.daemon->pid();
  std::size_t open_fds = 0;
  for ([[maybe_unused]] const auto& e :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
    ++open_fds;
  }
  rlimit old{};
  rlimit lim{open_fds + 2, open_fds + 2};
  ASSERT_EQ(::prlimit(pid, RLIMIT_NOFILE, &lim, &old), 0);
  std::vector<std::unique_ptr<Conn>> conns;
  const int n = std::getenv("SHMSCHED_REVIEW_NO_CONNS") ? 0 : 6;  // 0: the control
  for (int i = 0; i < n; ++i) conns.push_back(std::make_unique<Conn>(port));
  std::this_thread::sleep_for(300ms);
  const long before = cpu_ticks(pid);
  std::this_thread::sleep_for(2s);
  const long used = cpu_ticks(pid) - before;
  conns.clear();
  ::prlimit(pid, RLIMIT_NOFILE, &old, nullptr);
  EXPECT_LT(used, 40) << "CPU ticks in 2 s, idle but for the HTTP thread";
}

// Cancels from the dashboard run on threads of their own while the io thread serves scrapes
// and streams (under TSan: the action threads, the loop and the io thread together).
TEST(DaemonHttp, CancelsRunBesideScrapesAndEachIsAnswered) {
  DaemonFixture f("http-cancel",
                  with_http({"--dashboard-cancel=true", "--max-active-executions=1"}));
  const auto port = http_port(*f.daemon);
  ASSERT_TRUE(f.ingress->submit("running", "u").ok());
  constexpr int kQueued = 24;
  for (int i = 0; i < kQueued; ++i) {
    ASSERT_TRUE(f.ingress->submit("q" + std::to_string(i), "u").ok());
  }
  Conn stream(port);
  stream.send("GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  ASSERT_THAT(stream.read_until("\n\n"), HasSubstr("text/event-stream"));
  std::atomic<bool> stop{false};
  std::atomic<int> bad_scrapes{0};
  std::thread scraper([&] {
    while (!stop) {
      if (get(port, "/metrics").status != 200) ++bad_scrapes;
    }
  });
  std::vector<std::thread> cancellers;
  std::atomic<int> cancelled{0}, busy{0};
  for (int t = 0; t < 3; ++t) {
    cancellers.emplace_back([&, t] {
      for (int i = t; i < kQueued; i += 3) {
        const std::string body = "{\"execution_id\": \"q" + std::to_string(i) + "\"}";
        for (;;) {
          Conn c(port, 10s);
          c.send(
              "POST /api/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
              "Content-Type: application/json\r\nContent-Length: " +
              std::to_string(body.size()) + "\r\n\r\n" + body);
          const std::string reply = c.read_until();
          if (reply.rfind("HTTP/1.1 503", 0) == 0) {  // four at a time: try again
            ++busy;
            continue;
          }
          if (reply.rfind("HTTP/1.1 200", 0) == 0) ++cancelled;
          break;
        }
      }
    });
  }
  for (auto& c : cancellers) c.join();
  stop = true;
  scraper.join();
  EXPECT_EQ(cancelled, kQueued);
  EXPECT_EQ(bad_scrapes, 0);
  for (int i = 0; i < kQueued; ++i) {
    EXPECT_EQ(f.ingress->op("status", "q" + std::to_string(i)).str("state"), "cancelled") << i;
  }
}

// ---- Found sound (pass) ----------------------------------------------------------------------

// SIGTERM with dashboard streams open, a scrape mid-flight, a client that never reads and one
// that never sends: the process exits 0 and promptly (sessions go with the io_context, the
// handler's `this` is not used after the HTTP thread is joined).
TEST(DaemonHttp, SigtermWithStreamsAndIdleClientsExitsCleanly) {
  DaemonFixture f("http-sigterm", with_http({}));
  const auto port = http_port(*f.daemon);
  std::vector<std::unique_ptr<Conn>> conns;
  for (int i = 0; i < 8; ++i) {
    auto c = std::make_unique<Conn>(port);
    c->send("GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    conns.push_back(std::move(c));
  }
  for (int i = 0; i < 4; ++i) conns.push_back(std::make_unique<Conn>(port));  // never send
  auto half = std::make_unique<Conn>(port);
  half->send("GET /metrics HTTP/1.1\r\nHost: 12");  // half a request
  conns.push_back(std::move(half));
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(f.ingress->submit("s" + std::to_string(i), "u").ok());
  std::atomic<bool> stop{false};
  std::thread scraper([&] {
    while (!stop) get(port, (stop ? "/healthz" : "/metrics"));
  });
  std::this_thread::sleep_for(1500ms);
  const auto t0 = Clock::now();
  EXPECT_EQ(f.daemon->signal(SIGTERM), 0) << f.daemon->log_text();
  EXPECT_LT(Clock::now() - t0, 10s);
  stop = true;
  scraper.join();
}

// A reload mid-scrape: the HTTP thread reads no config_ field (max_active comes from an atomic).
TEST(DaemonHttp, ReloadWhileScrapingKeepsServing) {
  DaemonFixture f("http-reload", with_http({}));
  const auto port = http_port(*f.daemon);
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::thread scraper([&] {
    while (!stop) {
      if (get(port, "/metrics").status != 200) ++bad;
      if (get(port, "/api/state").status != 200) ++bad;
    }
  });
  for (int i = 0; i < 10; ++i) {
    ::kill(f.daemon->pid(), SIGHUP);
    std::this_thread::sleep_for(100ms);
  }
  stop = true;
  scraper.join();
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(f.daemon->signal(SIGTERM), 0);
}

}  // namespace
}  // namespace shmsched::test
