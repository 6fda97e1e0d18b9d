// Durable submits and recovery (issue 12): what the journal costs a submit, against the Redis
// queue the seeds' successor kept, and how long a supervisor takes to rebuild a large queue from
// it after a reboot. Everything runs in one process, on one disk:
//
//   1. shmschedd (journal on, durability disk): C client threads, each its own ipc::Client (a REQ
//      socket to the ingress), each submitting its next execution once the last one's reply came,
//      which is sent only once its record is fdatasync'ed: durably acknowledged submits per
//      second, p50 and p99 of a submit;
//   2. the same through shared memory: each client thread submits into the segment and waits for
//      its durable mark (set by the supervisor after the fdatasync that covers the record);
//   3. durability memory (answered once the execution is in the segment), through the ingress:
//      what the disk costs;
//   4. redis-server with appendonly yes and appendfsync always, then everysec: C threads, each a
//      blocking hiredis connection doing LPUSH of the same size (the execution id and payload);
//   5. recovery: N executions (1,000,000) queued with durability memory through shared memory
//      (the last one with disk, so that its answer says the journal holds them all), shmschedd
//      stopped with SIGTERM, its segment removed (/dev/shm is empty after a reboot), and started
//      again: the time from exec to the log line "rebuilt it from the journal" and to the ingress
//      answering, with the journal's files in the page cache and dropped from it (fadvise).
//
//   durable_bench [--dir DIR] [--clients C] [--seconds S] [--rounds R] [--payload BYTES]
//                 [--recovery N] [--only submits|recovery]
//                 [--bin-dir DIR] [--plugin-dir DIR] [--daemon-arg ARG ...]
//
// DIR (default /var/tmp) holds the journal, Redis's append-only file and the sockets; it must be
// on the disk to measure, not tmpfs. Phases 1-3 run in turns, R rounds of S seconds each, a fresh
// shmschedd or redis-server each; the figures are medians over the rounds.
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.h"

namespace {

using namespace shmsched;
using namespace shmsched::bench;
namespace fs = std::filesystem;

double ms_since(Clock::time_point t0, Clock::time_point t1) {
  return std::chrono::duration<double, std::milli>(t1 - t0).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Waits for `pid` up to `timeout`; SIGKILLs it after that. Returns false if it had to.
bool reap(pid_t pid, std::chrono::seconds timeout) {
  const auto until = Clock::now() + timeout;
  while (Clock::now() < until) {
    if (::waitpid(pid, nullptr, WNOHANG) == pid) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  return false;
}

std::uint64_t dir_bytes(const std::string& dir, std::size_t* files = nullptr) {
  std::uint64_t total = 0;
  std::size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    total += e.file_size();
    ++n;
  }
  if (files) *files = n;
  return total;
}

// Drops the directory's files from the page cache (they are clean: synced), as a reboot would;
// only these files, nothing else on the machine.
void drop_from_cache(const std::string& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const int fd = ::open(e.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

// CPU time (user + system) in seconds and the command name of a /proc/.../stat file: a
// process's (all its threads) or a thread's.
double stat_cpu_s(const std::string& path, std::string* comm = nullptr) {
  std::ifstream in(path);
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto open = stat.find('('), close = stat.rfind(')');
  if (open == std::string::npos || close == std::string::npos) return 0;
  if (comm) *comm = stat.substr(open + 1, close - open - 1);
  // After the command's ')': field 3 (state) ... field 14 (utime), 15 (stime), in clock ticks.
  const char* p = stat.c_str() + close + 2;
  char* end = nullptr;
  for (int field = 3; field < 14; ++field) {
    p = std::strchr(p, ' ');
    if (!p) return 0;
    ++p;
  }
  const double utime = std::strtod(p, &end);
  const double stime = std::strtod(end, nullptr);
  return (utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

double process_cpu_s(pid_t pid) {
  return stat_cpu_s("/proc/" + std::to_string(pid) + "/stat");
}

// Each thread's CPU time so far: tid -> (name, seconds). The supervisor's loop is its main
// thread; ZeroMQ names its own threads (ZMQbg/IO/0, ...).
std::map<int, std::pair<std::string, double>> thread_cpu(pid_t pid) {
  std::map<int, std::pair<std::string, double>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    const int tid = std::atoi(e.path().filename().c_str());
    std::string comm;
    const double s = stat_cpu_s(e.path().string() + "/stat", &comm);
    out[tid] = {tid == pid ? std::string("loop") : comm, s};
  }
  return out;
}

// The busiest threads between two thread_cpu() readings, in CPUs (seconds per second).
std::string busiest(const std::map<int, std::pair<std::string, double>>& before,
                    const std::map<int, std::pair<std::string, double>>& after, double elapsed) {
  std::vector<std::pair<double, std::string>> v;
  for (const auto& [tid, a] : after) {
    const auto it = before.find(tid);
    const double d = a.second - (it == before.end() ? 0 : it->second.second);
    if (d > 0) v.emplace_back(d / elapsed, a.first);
  }
  std::sort(v.rbegin(), v.rend());
  std::string out;
  for (std::size_t i = 0; i < v.size() && i < 5; ++i) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "%s%s %.2f", i ? ", " : "", v[i].second.c_str(), v[i].first);
    out += buf;
  }
  return out;
}

double self_cpu_s() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// ---- The disk's floor -------------------------------------------------------------------------

// One thread appending 100 bytes and calling fdatasync, for `seconds`: what one sync costs here.
Percentiles fdatasync_floor(const std::string& dir, double seconds, double& per_second) {
  const std::string path = dir + "/floor.dat";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) throw std::runtime_error("cannot create " + path + ": " + std::strerror(errno));
  const std::vector<char> rec(100, 'f');
  std::vector<double> ns;
  const auto t0 = Clock::now();
  const auto until = t0 + std::chrono::duration<double>(seconds);
  while (Clock::now() < until) {
    const auto s = Clock::now();
    if (::write(fd, rec.data(), rec.size()) != static_cast<ssize_t>(rec.size()) ||
        ::fdatasync(fd) != 0) {
      throw std::runtime_error("write/fdatasync failed on " + path);
    }
    ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - s).count());
  }
  per_second =
      static_cast<double>(ns.size()) / std::chrono::duration<double>(Clock::now() - t0).count();
  ::close(fd);
  fs::remove(path);
  return percentiles(ns);
}

// ---- shmschedd --------------------------------------------------------------------------------

// shmschedd's stderr, line by line, with the time each line arrived.
class LogWatch {
 public:
  explicit LogWatch(int fd) : fd_(fd), reader_([this] { read(); }) {}
  ~LogWatch() {
    if (reader_.joinable()) reader_.join();  // EOF once the daemon is gone
    ::close(fd_);
  }
  // The arrival time of the first line containing `text`, waiting up to `timeout`.
  std::optional<std::pair<Clock::time_point, std::string>> wait_for(const std::string& text,
                                                                    std::chrono::seconds timeout) {
    std::unique_lock lk(mu_);
    std::optional<std::pair<Clock::time_point, std::string>> found;
    cv_.wait_for(lk, timeout, [&] {
      for (const auto& l : lines_) {
        if (l.second.find(text) != std::string::npos) {
          found = l;
          return true;
        }
      }
      return eof_;
    });
    return found;
  }
  // Every line containing `text`, so far.
  std::vector<std::string> matching(const std::string& text) {
    std::lock_guard lk(mu_);
    std::vector<std::string> out;
    for (const auto& l : lines_) {
      if (l.second.find(text) != std::string::npos) out.push_back(l.second);
    }
    return out;
  }
  void dump(const char* why) {
    std::lock_guard lk(mu_);
    std::fprintf(stderr, "durable_bench: %s; shmschedd said:\n", why);
    for (const auto& l : lines_) std::fprintf(stderr, "  | %s\n", l.second.c_str());
  }

 private:
  void read() {
    std::string pending;
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(fd_, buf, sizeof buf);
      if (n <= 0) break;
      const auto now = Clock::now();
      pending.append(buf, static_cast<std::size_t>(n));
      std::size_t nl;
      std::lock_guard lk(mu_);
      while ((nl = pending.find('\n')) != std::string::npos) {
        lines_.emplace_back(now, pending.substr(0, nl));
        pending.erase(0, nl + 1);
      }
      cv_.notify_all();
    }
    std::lock_guard lk(mu_);
    if (!pending.empty()) lines_.emplace_back(Clock::now(), pending);
    eof_ = true;
    cv_.notify_all();
  }

  int fd_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<Clock::time_point, std::string>> lines_;
  bool eof_ = false;
  std::thread reader_;
};

struct Setup {
  std::string bin, plugins;
  std::string work;  // on the disk to measure
  std::uint64_t capacity = 0;
  std::size_t payload = 64;
  std::vector<std::string> daemon_args;  // --daemon-arg
};

// A running shmschedd; stopped with SIGTERM (which syncs the journal) when destroyed.
struct Shmschedd {
  Daemon d;  // removes the segment when destroyed
  std::unique_ptr<LogWatch> log;
  Clock::time_point exec_at;
  std::string journal;

  // Stops it with SIGTERM; returns the time it took to exit, in ms (negative if killed).
  double stop() {
    if (d.pid <= 0) return 0;
    const auto t0 = Clock::now();
    ::kill(d.pid, SIGTERM);
    const bool clean = reap(d.pid, std::chrono::seconds(120));
    d.pid = -1;
    log.reset();
    if (!clean) return -1;
    return ms_since(t0, Clock::now());
  }
  ~Shmschedd() { stop(); }
};

// Starts shmschedd with its journal in `journal` and `durability` as the default; the queue
// holds `capacity` executions and dispatches one at a time (max_active_executions = 1: what is
// submitted stays queued, as in a Redis list). Returns once the ingress answers.
void start(Shmschedd& s, const Setup& setup, const std::string& segment, const std::string& journal,
           const char* durability, const char* log_level = "warn") {
  s.d.dir = setup.work + "/run";
  s.d.segment = segment;
  s.journal = journal;
  fs::create_directories(s.d.dir);
  ipc::Segment::remove(segment);
  const std::string cap = std::to_string(setup.capacity);
  std::vector<std::string> args = {
      setup.bin + "/shmschedd",    "--runtime-dir=" + s.d.dir,
      "--segment=" + segment,      "--plugin-dir=" + setup.plugins,
      "--max-queue-size=" + cap,   "--max-active=1024",
      "--max-active-executions=1", "--max-executions-per-user=" + cap,
      "--max-payload-bytes=256",   "--max-extras-bytes=64",
      "--max-participants=256",    "--zeromq.sndhwm=10000000",
      "--metrics-listen=off",      std::string("--log-level=") + log_level,
      "--journal-dir=" + journal,  std::string("--durability=") + durability};
  args.insert(args.end(), setup.daemon_args.begin(), setup.daemon_args.end());
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  s.exec_at = Clock::now();
  s.d.pid = ::fork();
  if (s.d.pid == 0) {
    ::dup2(pipefd[1], 2);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(pipefd[1]);
  s.log = std::make_unique<LogWatch>(pipefd[0]);
}

// Waits until the ingress of `s` answers a stats request (a REQ socket that reconnects every
// millisecond); returns that moment, or nullopt if it did not within `timeout`.
std::optional<Clock::time_point> wait_ingress(Shmschedd& s, std::chrono::seconds timeout) {
  zmq::context_t ctx;
  zmq::socket_t req(ctx, zmq::socket_type::req);
  req.set(zmq::sockopt::linger, 0);
  req.set(zmq::sockopt::reconnect_ivl, 1);
  req.set(zmq::sockopt::reconnect_ivl_max, 1);
  req.set(zmq::sockopt::rcvtimeo, static_cast<int>(timeout.count() * 1000));
  req.connect("ipc://" + s.d.dir + "/ingress.sock");
  const auto stats = MapBuilder().str("op", "stats").finish();
  req.send(zmq::buffer(stats.data(), stats.size()), zmq::send_flags::none);
  zmq::message_t m;
  if (!req.recv(m)) return std::nullopt;
  return Clock::now();
}

struct Figures {
  double per_second = 0;
  Percentiles latency;
  std::uint64_t errors = 0;
  double server_us = 0;  // the server's CPU time per acknowledged operation
  double client_us = 0;  // the clients' (this process's)
  double busy = 0;       // server and clients together, in CPUs (of nproc)
};

// C threads, each its own client, submitting back to back for `seconds`; each call of `submit`
// acknowledges `batch` operations (the latency is the call's).
// `at_go` and `at_end` are called as the measured window opens and once it closed.
template <class MakeClient, class Submit>
Figures closed_loop(int clients, int batch, double seconds, pid_t server, MakeClient make_client,
                    Submit submit, const std::function<void()>& at_go = {},
                    const std::function<void()>& at_end = {}) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false}, stop{false};
  std::atomic<std::uint64_t> errors{0};
  std::vector<std::vector<double>> ns(static_cast<std::size_t>(clients));
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      auto client = make_client(c);
      auto& mine = ns[static_cast<std::size_t>(c)];
      mine.reserve(1 << 14);
      std::uint64_t i = 0;
      for (int w = 0; w < 3; ++w) submit(*client, c, i++);  // connect and warm up
      ready.fetch_add(1);
      while (!go.load()) std::this_thread::sleep_for(std::chrono::microseconds(200));
      while (!stop.load(std::memory_order_relaxed)) {
        const auto t0 = Clock::now();
        if (!submit(*client, c, i++)) {
          errors.fetch_add(1);
          continue;
        }
        mine.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count());
      }
    });
  }
  while (ready.load() < clients) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (at_go) at_go();
  const double server0 = process_cpu_s(server), client0 = self_cpu_s();
  const auto t0 = Clock::now();
  go = true;
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  if (at_end) at_end();
  const double server_s = process_cpu_s(server) - server0, client_s = self_cpu_s() - client0;
  std::vector<double> all;
  for (auto& v : ns) all.insert(all.end(), v.begin(), v.end());
  Figures f;
  const double ops = static_cast<double>(std::max<std::size_t>(all.size(), 1)) * batch;
  f.server_us = server_s / ops * 1e6;
  f.client_us = client_s / ops * 1e6;
  f.busy = (server_s + client_s) / elapsed;
  f.per_second = static_cast<double>(all.size()) * batch / elapsed;
  f.latency = percentiles(std::move(all));
  f.errors = errors.load();
  return f;
}

// `shm`: the clients submit through shared memory (a disk submit waits for its durable mark)
// instead of the ingress.
Figures shmschedd_round(const Setup& setup, const std::string& tag, bool disk, bool shm,
                        int clients, int batch, double seconds) {
  const std::string journal = setup.work + "/journal-" + tag;
  fs::remove_all(journal);
  Shmschedd s;
  const std::string segment = "shmsched-durbench-" + std::to_string(::getpid());
  start(s, setup, segment, journal, disk ? "disk" : "memory");
  if (!wait_ingress(s, std::chrono::seconds(30))) {
    s.log->dump("shmschedd did not answer within 30 s");
    throw std::runtime_error("shmschedd did not start");
  }
  const std::string endpoint = "ipc://" + s.d.dir + "/ingress.sock";
  std::atomic<std::uint64_t> rejected{0};
  std::mutex first_error_mu;
  std::string first_error;
  std::map<int, std::pair<std::string, double>> threads_before;
  std::string threads;
  Clock::time_point window_start;
  const auto f = closed_loop(
      clients, batch, seconds, s.d.pid,
      [&](int) {
        ipc::ClientOptions o;
        o.endpoint = endpoint;
        o.segment = segment;
        o.use_shared_memory = shm;
        o.timeout = std::chrono::milliseconds(10000);
        return std::make_unique<ipc::Client>(o);
      },
      [&](ipc::Client& c, int thread, std::uint64_t i) -> bool {
        std::vector<ipc::protocol::SubmitOp> ops(static_cast<std::size_t>(batch));
        for (std::size_t k = 0; k < ops.size(); ++k) {
          auto& op = ops[k];
          op.user_id = "bench";
          op.payload.assign(setup.payload, std::byte{'x'});
          op.durability =
              disk ? ipc::protocol::Durability::kDisk : ipc::protocol::Durability::kMemory;
          op.execution_id = tag + "-" + std::to_string(thread) + "-" + std::to_string(i) + "-" +
                            std::to_string(k);
        }
        try {
          const auto results = batch == 1
                                   ? std::vector<ipc::ClientSubmitResult>{c.submit(ops.front())}
                                   : c.submit_many(ops);
          for (const auto& r : results) {
            if (r.result.accepted() && r.via_shared_memory == shm) continue;
            std::lock_guard lk(first_error_mu);
            if (r.result.accepted()) {
              if (first_error.empty()) first_error = "a submit did not go the way measured";
              return false;
            }
            rejected.fetch_add(1);
            if (first_error.empty()) first_error = r.result.message;
            return false;
          }
          return true;
        } catch (const ipc::ClientError& e) {
          std::lock_guard lk(first_error_mu);
          if (first_error.empty()) first_error = e.what();
        }
        return false;
      },
      [&] {
        threads_before = thread_cpu(s.d.pid);
        window_start = Clock::now();
      },
      [&] {
        const double elapsed = std::chrono::duration<double>(Clock::now() - window_start).count();
        threads = busiest(threads_before, thread_cpu(s.d.pid), elapsed);
      });
  std::printf("           shmschedd's busiest threads, CPUs: %s\n", threads.c_str());
  if (f.errors) {
    std::printf("  (%s: %llu submits failed, %llu of them rejected; the first: %s)\n", tag.c_str(),
                static_cast<unsigned long long>(f.errors),
                static_cast<unsigned long long>(rejected.load()), first_error.c_str());
  }
  if (s.stop() < 0)
    std::printf("  (%s: shmschedd did not exit on SIGTERM within 120 s)\n", tag.c_str());
  fs::remove_all(journal);
  return f;
}

// ---- Redis ------------------------------------------------------------------------------------

struct RedisServer {
  pid_t pid = -1;
  int port = 0;
  ~RedisServer() {
    if (pid > 0) {
      ::kill(pid, SIGTERM);
      reap(pid, std::chrono::seconds(30));
    }
  }
};

redisContext* redis_connect(int port) {
  for (int i = 0; i < 500; ++i) {
    redisContext* c = redisConnect("127.0.0.1", port);
    if (c && !c->err) return c;
    if (c) redisFree(c);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  throw std::runtime_error("redis-server did not start");
}

std::string redis_version() {
  std::string out;
  if (FILE* p = ::popen("redis-server --version", "r")) {
    char buf[256];
    if (std::fgets(buf, sizeof buf, p)) out = buf;
    ::pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

// `batch` > 1: one LPUSH with that many elements per call (Redis's cheapest durable batch: one
// command, one append to its file).
Figures redis_round(const Setup& setup, const char* fsync_policy, int clients, int batch,
                    double seconds) {
  const std::string dir = setup.work + "/redis-" + fsync_policy;
  fs::remove_all(dir);
  fs::create_directories(dir);
  RedisServer r;
  r.port = free_port();
  r.pid = ::fork();
  if (r.pid == 0) {
    const std::string port = std::to_string(r.port);
    ::execlp("redis-server", "redis-server", "--port", port.c_str(), "--bind", "127.0.0.1", "--dir",
             dir.c_str(), "--save", "", "--appendonly", "yes", "--appendfsync", fsync_policy,
             "--maxclients", "10000", "--loglevel", "warning", "--logfile",
             (dir + "/redis.log").c_str(), nullptr);
    ::_exit(127);
  }
  redisFree(redis_connect(r.port));
  std::atomic<std::uint64_t> failed{0};
  const std::string payload(setup.payload, 'x');
  auto f = closed_loop(
      clients, batch, seconds, r.pid,
      [&](int) {
        struct Conn {
          redisContext* c = nullptr;
          ~Conn() {
            if (c) redisFree(c);
          }
        };
        auto conn = std::make_unique<Conn>();
        conn->c = redis_connect(r.port);
        return conn;
      },
      [&](auto& conn, int thread, std::uint64_t i) -> bool {
        // The execution's id and its payload, as one list element: a durable enqueue.
        std::vector<std::string> args{"LPUSH", "queue"};
        for (int k = 0; k < batch; ++k) {
          args.push_back("r-" + std::to_string(thread) + "-" + std::to_string(i) + "-" +
                         std::to_string(k) + ":" + payload);
        }
        std::vector<const char*> argv;
        std::vector<std::size_t> lens;
        for (const auto& a : args) {
          argv.push_back(a.data());
          lens.push_back(a.size());
        }
        auto* reply = static_cast<redisReply*>(
            redisCommandArgv(conn.c, static_cast<int>(argv.size()), argv.data(), lens.data()));
        const bool ok = reply && reply->type == REDIS_REPLY_INTEGER;
        if (!ok) failed.fetch_add(1);
        freeReplyObject(reply);
        return ok;
      });
  if (f.errors) {
    std::printf("  (redis %s: %llu LPUSHes failed)\n", fsync_policy,
                static_cast<unsigned long long>(f.errors));
  }
  ::kill(r.pid, SIGTERM);
  reap(r.pid, std::chrono::seconds(30));
  r.pid = -1;
  fs::remove_all(dir);
  return f;
}

// ---- Recovery ---------------------------------------------------------------------------------

struct Restart {
  double to_log_ms = -1;      // exec -> "rebuilt it from the journal"
  double to_ingress_ms = -1;  // exec -> the ingress answers
  std::uint64_t restored = 0;
  std::string phases;  // what shmschedd says of its phases: "(journal read in ..., ...)"
};

// Starts shmschedd on the journal after its segment was removed; times the rebuild.
Restart restart(Shmschedd& s, const Setup& setup, const std::string& segment,
                const std::string& journal) {
  Restart r;
  start(s, setup, segment, journal, "memory");
  const auto ingress = wait_ingress(s, std::chrono::seconds(600));
  const auto line = s.log->wait_for("rebuilt it from the journal", std::chrono::seconds(5));
  if (!ingress || !line) {
    s.log->dump(ingress ? "no log line says the queue was rebuilt from the journal"
                        : "the ingress did not answer within 600 s of the restart");
    throw std::runtime_error("restore from the journal failed");
  }
  r.to_ingress_ms = ms_since(s.exec_at, *ingress);
  if (const auto at = line->second.find("(journal read in"); at != std::string::npos) {
    r.phases = line->second.substr(at);
  }
  r.to_log_ms = ms_since(s.exec_at, line->first);
  // "... rebuilt it from the journal DIR: N execution(s), ..."
  const auto at = line->second.find(journal + ": ");
  if (at != std::string::npos) {
    r.restored = std::strtoull(line->second.c_str() + at + journal.size() + 2, nullptr, 10);
  }
  return r;
}

int run(int argc, char** argv) {
  Setup setup;
  setup.bin = SHMSCHED_BIN_DIR;
  setup.plugins = SHMSCHED_PLUGIN_DIR;
  std::string base = "/var/tmp";
  int clients = 64;
  int batch = 1;  // executions per submit call (shared memory: Client::submit_many)
  double seconds = 3;
  int rounds = 3;
  std::uint64_t recovery_n = 1000000;
  std::string only;  // "submits" (phases 1-3) or "recovery" (phase 4)
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--dir")
      base = v;
    else if (k == "--clients")
      clients = std::max(1, std::atoi(v));
    else if (k == "--batch")
      batch = std::max(1, std::atoi(v));
    else if (k == "--seconds")
      seconds = std::atof(v);
    else if (k == "--rounds")
      rounds = std::max(1, std::atoi(v));
    else if (k == "--payload")
      setup.payload = std::strtoull(v, nullptr, 10);
    else if (k == "--recovery")
      recovery_n = std::strtoull(v, nullptr, 10);
    else if (k == "--bin-dir")
      setup.bin = v;
    else if (k == "--plugin-dir")
      setup.plugins = v;
    else if (k == "--daemon-arg")
      setup.daemon_args.push_back(v);
    else if (k == "--only")
      only = v;
    else {
      std::fprintf(stderr, "durable_bench: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (only == "submits") recovery_n = 0;
  if (setup.payload > 256) {
    std::fprintf(stderr, "durable_bench: --payload is at most 256 (max_payload_bytes)\n");
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  setup.work =
      fs::absolute(base).string() + "/shmsched-durable-bench-" + std::to_string(::getpid());
  fs::create_directories(setup.work);
  struct statfs sf {};
  if (::statfs(setup.work.c_str(), &sf) == 0 && sf.f_type == 0x01021994 /* TMPFS_MAGIC */) {
    std::fprintf(stderr,
                 "durable_bench: %s is on tmpfs, where fdatasync costs nothing: give --dir on "
                 "the disk to measure\n",
                 setup.work.c_str());
    fs::remove_all(setup.work);
    return 2;
  }
  // Room for the recovery's queue, and for what a round submits (it stays queued).
  // Batches fill the queue (nothing is dispatched) at a few hundred thousand a second.
  setup.capacity = std::max<std::uint64_t>(recovery_n + 1000, batch > 1 ? 3000000 : 1000000);
  const std::string segment = "shmsched-durbench-" + std::to_string(::getpid());
  struct stat st {};
  ::stat(setup.work.c_str(), &st);
  std::printf("Journal, Redis's append-only file and sockets under %s (device %u:%u)\n",
              setup.work.c_str(), major(st.st_dev), minor(st.st_dev));
  std::printf("%s; %u CPUs\n", redis_version().c_str(), std::thread::hardware_concurrency());

  double floor_rate = 0;
  const auto floor = fdatasync_floor(setup.work, 1.0, floor_rate);
  std::printf("\nFloor of this disk:\n");
  print_latency("write 100 B + fdatasync, one thread", floor);
  std::printf("  %-52s %10.0f /s\n", "... syncs per second", floor_rate);

  if (only != "recovery") {
    std::printf(
        "\n%d concurrent clients, each waiting for its reply; %d rounds of %.1f s, a "
        "%zu-byte payload%s:\n",
        clients, rounds, seconds, setup.payload,
        batch > 1 ? (", batches of " + std::to_string(batch) +
                     " (shared memory: Client::submit_many; Redis: one LPUSH of as many "
                     "elements; the ingress modes are left out, it takes one per request; "
                     "latency is a batch's)")
                        .c_str()
                  : "");
  }
  struct Mode {
    explicit Mode(const char* n) : name(n) {}
    const char* name;
    std::vector<double> rate, p50, p99, server_us, client_us, busy;
    std::uint64_t errors = 0;
  };
  Mode disk{"shmschedd, durability disk (ingress)"};
  Mode disk_shm{"shmschedd, durability disk (shared memory)"};
  Mode memory{"shmschedd, durability memory (ingress)"};
  Mode always{"Redis LPUSH, appendfsync always"};
  Mode everysec{"Redis LPUSH, appendfsync everysec"};
  auto note = [](Mode& m, const Figures& f, int round) {
    m.rate.push_back(f.per_second);
    m.p50.push_back(f.latency.p50 / 1e3);
    m.p99.push_back(f.latency.p99 / 1e3);
    m.server_us.push_back(f.server_us);
    m.client_us.push_back(f.client_us);
    m.busy.push_back(f.busy);
    m.errors += f.errors;
    std::printf(
        "  round %d  %-40s %8.0f /s  p50 %7.1f us  p99 %8.1f us  CPU/op: server %5.1f us, "
        "clients %5.1f us; %.2f CPUs busy\n",
        round, m.name, f.per_second, f.latency.p50 / 1e3, f.latency.p99 / 1e3, f.server_us,
        f.client_us, f.busy);
    std::fflush(stdout);
  };
  for (int r = 1; r <= rounds && only != "recovery"; ++r) {
    const std::string n = std::to_string(r);
    if (batch == 1)
      note(disk, shmschedd_round(setup, "d" + n, true, false, clients, 1, seconds), r);
    note(always, redis_round(setup, "always", clients, batch, seconds), r);
    note(disk_shm, shmschedd_round(setup, "s" + n, true, true, clients, batch, seconds), r);
    if (batch == 1) {
      note(memory, shmschedd_round(setup, "m" + n, false, false, clients, 1, seconds), r);
    }
    note(everysec, redis_round(setup, "everysec", clients, batch, seconds), r);
  }
  if (only != "recovery") std::printf("\nMedians over %d rounds:\n", rounds);
  for (Mode* m : {&disk, &disk_shm, &memory, &always, &everysec}) {
    if (m->rate.empty()) continue;
    std::printf(
        "  %-40s %8.0f /s  p50 %7.1f us  p99 %8.1f us  CPU/op: server %5.1f us, clients %5.1f "
        "us; %.2f CPUs busy%s\n",
        m->name, median(m->rate), median(m->p50), median(m->p99), median(m->server_us),
        median(m->client_us), median(m->busy), m->errors ? "  (with failures, see above)" : "");
  }

  bool restore_ok = true;
  std::vector<double> warm_log, warm_ingress, cold_log, cold_ingress;
  double fill_s = 0, stop_ms = 0, first_start_ms = 0;
  std::uint64_t journal_size = 0;
  std::size_t journal_files = 0;
  if (recovery_n > 0) {
    std::printf("\nRecovery of %llu queued executions (%zu-byte payloads):\n",
                static_cast<unsigned long long>(recovery_n), setup.payload);
    const std::string journal = setup.work + "/journal-recovery";
    fs::remove_all(journal);
    {
      Shmschedd s;
      start(s, setup, segment, journal, "memory", "info");  // info: its snapshots' lines
      const auto up = wait_ingress(s, std::chrono::seconds(60));
      if (!up) {
        s.log->dump("shmschedd did not answer within 60 s");
        return 1;
      }
      first_start_ms = ms_since(s.exec_at, *up);
      ipc::ClientOptions o;
      o.segment = segment;
      o.endpoint = "ipc://" + s.d.dir + "/ingress.sock";
      o.timeout = std::chrono::milliseconds(120000);
      ipc::Client client(o);
      if (!client.shared_memory()) throw std::runtime_error("cannot attach to the segment");
      ipc::protocol::SubmitOp op;
      op.user_id = "bench";
      op.payload.assign(setup.payload, std::byte{'r'});
      const auto t0 = Clock::now();
      for (std::uint64_t i = 0; i + 1 < recovery_n; ++i) {
        op.execution_id = "q-" + std::to_string(i);
        const auto res = client.submit(op);
        if (!res.result.accepted()) {
          std::printf("  fill: submit %llu refused: %s\n", static_cast<unsigned long long>(i),
                      res.result.message.c_str());
          return 1;
        }
      }
      // The last one with durability disk: answered once everything recorded before it, the
      // whole queue, is on disk.
      op.execution_id = "q-last";
      op.durability = ipc::protocol::Durability::kDisk;
      const auto last = client.submit(op);
      if (!last.result.accepted()) {
        std::printf("  fill: the disk submit was refused: %s\n", last.result.message.c_str());
        return 1;
      }
      fill_s = std::chrono::duration<double>(Clock::now() - t0).count();
      // Snapshots are taken on the loop: how long each held it up.
      for (const auto& line : s.log->matching("snapshot of")) {
        std::printf("  during the fill: %s\n", line.c_str());
      }
      stop_ms = s.stop();
      if (stop_ms < 0) {
        std::printf("  shmschedd did not exit on SIGTERM within 120 s\n");
        return 1;
      }
    }  // the segment is removed here, as a reboot empties /dev/shm
    journal_size = dir_bytes(journal, &journal_files);
    std::printf("  %-52s %10.0f /s (%.2f s)\n",
                "filled: shared-memory submits, journaled, last synced",
                static_cast<double>(recovery_n) / fill_s, fill_s);
    std::printf("  %-52s %10.0f ms\n", "stop (SIGTERM) to exit", stop_ms);
    std::printf("  %-52s %10.1f MB in %zu file(s)\n", "journal",
                static_cast<double>(journal_size) / 1e6, journal_files);
    std::printf("  %-52s %10.0f ms\n", "start with an empty journal: exec to ingress",
                first_start_ms);
    for (int r = 1; r <= rounds && restore_ok; ++r) {
      for (bool cold : {false, true}) {
        if (cold) drop_from_cache(journal);
        Shmschedd s;
        const Restart x = restart(s, setup, segment, journal);
        (cold ? cold_log : warm_log).push_back(x.to_log_ms);
        (cold ? cold_ingress : warm_ingress).push_back(x.to_ingress_ms);
        std::printf(
            "  round %d, journal %s page cache: rebuilt %llu in %7.0f ms (log line), "
            "ingress answers at %7.0f ms %s\n",
            r, cold ? "dropped from the" : "in the   ", static_cast<unsigned long long>(x.restored),
            x.to_log_ms, x.to_ingress_ms, x.phases.c_str());
        std::fflush(stdout);
        if (x.restored != recovery_n) {
          std::printf("  the journal gave back %llu executions, not %llu\n",
                      static_cast<unsigned long long>(x.restored),
                      static_cast<unsigned long long>(recovery_n));
          restore_ok = false;
          break;
        }
        if (s.stop() < 0) {
          std::printf("  shmschedd did not exit on SIGTERM within 120 s\n");
          restore_ok = false;
          break;
        }
      }
    }
    std::printf("  %-52s %7.0f ms to the log line, %7.0f ms to the ingress\n",
                "median, journal in the page cache", median(warm_log), median(warm_ingress));
    std::printf("  %-52s %7.0f ms to the log line, %7.0f ms to the ingress\n",
                "median, journal dropped from the page cache", median(cold_log),
                median(cold_ingress));
    fs::remove_all(journal);
  }

  if (only != "recovery") {
    const double d = median(disk.rate), m = median(memory.rate), a = median(always.rate),
                 e = median(everysec.rate), ds = median(disk_shm.rate);
    auto ratio = [](double x, double y) { return y > 0 ? x / y : 0; };
    std::printf("\nRatios (same run, medians):\n");
    std::printf("  disk submits/s through shared memory / Redis always      %6.2fx (goal >= 10x)\n",
                ratio(ds, a));
    std::printf("  disk submits/s through shared memory / Redis everysec    %6.2fx\n",
                ratio(ds, e));
    std::printf("  p50, Redis always / shmschedd disk (shared memory)       %6.2fx\n",
                ratio(median(always.p50), median(disk_shm.p50)));
    if (!disk.rate.empty()) {  // the ingress modes ran (batches of one)
      std::printf(
          "  disk submits/s, shmschedd / Redis appendfsync always     %6.2fx (goal >= 10x)\n",
          ratio(d, a));
      std::printf("  disk submits/s, shmschedd / Redis appendfsync everysec   %6.2fx\n",
                  ratio(d, e));
      std::printf("  shmschedd submits/s, disk / memory                       %6.2fx\n",
                  ratio(d, m));
      std::printf("  shmschedd p50, disk / memory                             %6.2fx\n",
                  ratio(median(disk.p50), median(memory.p50)));
      std::printf("  p50, Redis always / shmschedd disk                       %6.2fx\n",
                  ratio(median(always.p50), median(disk.p50)));
    }
  }
  fs::remove_all(setup.work);
  const bool failures =
      disk.errors || disk_shm.errors || memory.errors || always.errors || everysec.errors;
  return restore_ok && !failures ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    // The servers were stopped on the way out; their files are left for a look.
    std::fprintf(stderr, "durable_bench: %s\n", e.what());
    return 1;
  }
}
