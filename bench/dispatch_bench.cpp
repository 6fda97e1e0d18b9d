// End-to-end load generator: submit-to-dispatch latency and sustained throughput of a real
// shmschedd, over the ZeroMQ ingress and over shared memory, beside a Redis priority queue (one
// sorted set per priority, admission and a pop under a max-active cap in Lua) on a
// redis-server started here on loopback, and beside the floor of this machine (a loopback TCP
// round trip and a ZeroMQ REQ/REP round trip). Everything is measured in the same run.
//
//   dispatch_bench [--bin-dir DIR] [--plugin-dir DIR] [--latency N] [--throughput N]
//                  [--daemon-arg --idle-spin-us=200 ...]
//                  [--baseline-bin-dir DIR [--baseline-plugin-dir DIR]] (bench/compare-baseline.sh)
//                  [--only shm]   (the shared-memory throughput phase alone, e.g. under perf)
//
// Submit-to-dispatch latency is the CreatePodCommand's own timestamp (taken by shmschedd when it
// publishes) minus the submit's start, both CLOCK_REALTIME on this host: it excludes the hop to
// the event subscriber. For Redis it is the scheduler's pop time minus the submit's start.
#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <linux/futex.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <msgpack.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "bench_support.h"
#include "shmsched/ipc/client.h"
#include "shmsched/ipc/protocol.h"
#include "shmsched/ipc/queue.h"

namespace {

using namespace shmsched;
using namespace shmsched::bench;

// ---- The floor --------------------------------------------------------------------------------

Percentiles tcp_round_trip(int n) {
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  ::listen(listener, 1);
  std::thread server([&] {
    const int c = ::accept(listener, nullptr, nullptr);
    int one = 1;
    ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char b[64];
    for (int i = 0; i < n; ++i) {
      if (::read(c, b, 64) <= 0 || ::write(c, b, 64) != 64) break;
    }
    ::close(c);
  });
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  std::vector<double> ns;
  char b[64] = {0};
  for (int i = 0; i < n; ++i) {
    const auto t0 = Clock::now();
    if (::write(s, b, 64) != 64) break;
    std::size_t got = 0;
    while (got < 64) {
      const ssize_t r = ::read(s, b + got, 64 - got);
      if (r <= 0) break;
      got += static_cast<std::size_t>(r);
    }
    ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count());
  }
  ::close(s);
  server.join();
  ::close(listener);
  return percentiles(ns);
}

// Waking a thread that sleeps on a futex (after a pause, so its core may have gone idle): the
// floor under any "wake the sleeping supervisor" latency on this machine.
Percentiles futex_wake(int n) {
  std::atomic<std::uint32_t> word{0};
  std::atomic<std::int64_t> woke_at{0};
  std::thread sleeper([&] {
    for (std::uint32_t i = 0; i < static_cast<std::uint32_t>(n); ++i) {
      while (word.load() == i) {
        syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT_PRIVATE, i, nullptr,
                nullptr, 0);
      }
      woke_at.store(wall_ns());
    }
  });
  std::vector<double> ns;
  for (int i = 0; i < n; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    woke_at.store(0);
    const std::int64_t t0 = wall_ns();
    word.fetch_add(1);
    syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE_PRIVATE, 1, nullptr,
            nullptr, 0);
    while (woke_at.load() == 0) {
    }
    ns.push_back(static_cast<double>(woke_at.load() - t0));
  }
  sleeper.join();
  return percentiles(ns);
}

// ---- shmschedd --------------------------------------------------------------------------------

std::vector<std::byte> submit_request(const std::string& id) {
  static const std::vector<std::byte> payload(64, std::byte{'x'});
  return MapBuilder()
      .str("op", "submit")
      .str("execution_id", id)
      .str("user_id", "bench")
      .bin("payload", payload)
      .finish();
}

// Pipelined ZeroMQ submits from `clients` DEALER sockets, each keeping `window` in flight.
double zmq_throughput(const std::string& ep, const std::string& prefix, std::uint64_t n,
                      int clients, int window) {
  std::atomic<std::uint64_t> accepted{0};
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      zmq::context_t ctx;
      zmq::socket_t s(ctx, zmq::socket_type::dealer);
      s.set(zmq::sockopt::sndhwm, 0);
      s.set(zmq::sockopt::rcvhwm, 0);
      s.connect(ep);
      const std::uint64_t mine = n / static_cast<std::uint64_t>(clients);
      std::uint64_t sent = 0, got = 0;
      while (got < mine) {
        while (sent < mine && sent - got < static_cast<std::uint64_t>(window)) {
          const auto req =
              submit_request(prefix + std::to_string(c) + "-" + std::to_string(sent++));
          s.send(zmq::message_t(), zmq::send_flags::sndmore);
          s.send(zmq::buffer(req.data(), req.size()), zmq::send_flags::none);
        }
        zmq::message_t delim, body;
        if (!s.recv(delim) || !s.recv(body)) break;
        auto oh = msgpack::unpack(static_cast<const char*>(body.data()), body.size());
        if (ipc::get_bool(oh.get(), "ok").value_or(false)) accepted.fetch_add(1);
        ++got;
      }
    });
  }
  for (auto& t : threads) t.join();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (accepted.load() <
      n / static_cast<std::uint64_t>(clients) * static_cast<std::uint64_t>(clients)) {
    std::printf("  (warning: only %llu accepted)\n",
                static_cast<unsigned long long>(accepted.load()));
  }
  return static_cast<double>(accepted.load()) / secs;
}

struct Latencies {
  Percentiles reply, zmq, shm, shm_wake;
};
struct LatencySamples {
  std::vector<double> reply, zmq, shm, shm_wake;
  Latencies percentiles() const {
    return {::percentiles(reply), ::percentiles(zmq), ::percentiles(shm), ::percentiles(shm_wake)};
  }
};

// Submit-to-CreatePodCommand latencies of the daemon `d`: over ZeroMQ, over shared memory back to
// back (the supervisor still spins after the previous dispatch), and over shared memory after a
// pause (it sleeps on the futex and the submit wakes it). `round` keeps ids of repeated rounds
// apart.
void measure_latencies(Daemon& d, Commands& commands, int n, int round, LatencySamples& out) {
  ipc::ClientOptions zo;
  zo.endpoint = "ipc://" + d.dir + "/ingress.sock";
  zo.use_shared_memory = false;
  ipc::Client zclient(zo);
  // Warm up (and make sure the subscription is live).
  const std::string r = std::to_string(round) + "-";
  for (int i = 0; i < 50; ++i) {
    const std::string id = "warm-" + r + std::to_string(i);
    zclient.call(submit_request(id));
    commands.wait_for(id);
  }
  auto& zmq_ns = out.zmq;
  auto& shm_ns = out.shm;
  auto& reply_ns = out.reply;
  auto& wake_ns = out.shm_wake;
  for (int i = 0; i < n; ++i) {
    const std::string id = "lz-" + r + std::to_string(i);
    const std::int64_t t0 = wall_ns();
    const auto s0 = Clock::now();
    zclient.call(submit_request(id));
    reply_ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - s0).count());
    const std::int64_t ts = commands.wait_for(id);
    if (ts) zmq_ns.push_back(static_cast<double>(ts - t0));
  }
  ipc::ClientOptions so;
  so.segment = d.segment;
  so.endpoint = zo.endpoint;
  ipc::Client sclient(so);
  if (!sclient.shared_memory()) throw std::runtime_error("cannot attach to the segment");
  ipc::protocol::SubmitOp op;
  op.user_id = "bench";
  op.payload.assign(64, std::byte{'x'});
  for (int i = 0; i < n; ++i) {
    op.execution_id = "ls-" + r + std::to_string(i);
    const std::int64_t t0 = wall_ns();
    sclient.submit(op);
    const std::int64_t ts = commands.wait_for(op.execution_id);
    if (ts) shm_ns.push_back(static_cast<double>(ts - t0));
  }
  for (int i = 0; i < n / 4; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    op.execution_id = "lw-" + r + std::to_string(i);
    const std::int64_t t0 = wall_ns();
    sclient.submit(op);
    const std::int64_t ts = commands.wait_for(op.execution_id);
    if (ts) wake_ns.push_back(static_cast<double>(ts - t0));
  }
}

void print_latencies(const Latencies& l) {
  print_latency("submit reply over ZeroMQ (REQ round trip)", l.reply);
  print_latency("submit-to-CreatePodCommand over ZeroMQ", l.zmq);
  print_latency("submit-to-CreatePodCommand, shared memory, back to back", l.shm);
  print_latency("submit-to-CreatePodCommand, shared memory, futex wake", l.shm_wake);
}

// What ZeroMQ alone moves on this machine: one PUB thread publishing, per execution, an
// ExecutionAccepted (nobody subscribes: dropped at the PUB) and a CreatePodCommand of the size
// shmschedd sends, to one SUB socket that receives the commands; nothing else runs.
double pubsub_floor(std::uint64_t n, std::size_t body_size, const std::string& dir) {
  zmq::context_t ctx;
  const std::string ep = "ipc://" + dir + "/floor.sock";
  zmq::socket_t pub(ctx, zmq::socket_type::pub);
  pub.set(zmq::sockopt::sndhwm, 0);
  pub.bind(ep);
  zmq::context_t sub_ctx;
  zmq::socket_t sub(sub_ctx, zmq::socket_type::sub);
  sub.set(zmq::sockopt::subscribe, "CreatePodCommand");
  sub.set(zmq::sockopt::rcvhwm, 0);
  sub.connect(ep);
  // Until the subscription is live.
  const std::vector<char> body(body_size, 'x'), accepted(120, 'x');
  for (;;) {
    pub.send(zmq::buffer("CreatePodCommand", 16), zmq::send_flags::sndmore);
    pub.send(zmq::buffer(body.data(), body.size()), zmq::send_flags::none);
    zmq::message_t m;
    if (sub.recv(m, zmq::recv_flags::dontwait)) {
      (void)sub.recv(m);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  while (true) {  // drain the warm-up
    zmq::message_t m;
    if (!sub.recv(m, zmq::recv_flags::dontwait)) break;
  }
  const auto t0 = Clock::now();
  std::thread receiver([&] {
    for (std::uint64_t i = 0; i < n; ++i) {
      zmq::message_t topic, b;
      if (!sub.recv(topic) || !sub.recv(b)) break;
    }
  });
  for (std::uint64_t i = 0; i < n; ++i) {
    pub.send(zmq::buffer("ExecutionAccepted", 17), zmq::send_flags::sndmore);
    pub.send(zmq::buffer(accepted.data(), accepted.size()), zmq::send_flags::none);
    pub.send(zmq::buffer("CreatePodCommand", 16), zmq::send_flags::sndmore);
    pub.send(zmq::buffer(body.data(), body.size()), zmq::send_flags::none);
  }
  receiver.join();
  return static_cast<double>(n) / std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---- The Redis peer ---------------------------------------------------------------------------

const char* kRedisSubmit = R"(
local n = redis.call('HINCRBY', 'users', ARGV[2], 1)
if n > tonumber(ARGV[5]) then redis.call('HINCRBY', 'users', ARGV[2], -1) return 'user_limit' end
if redis.call('HSETNX', 'payloads', ARGV[1], ARGV[4]) == 0 then
  redis.call('HINCRBY', 'users', ARGV[2], -1) return 'duplicate' end
local seq = redis.call('INCR', 'seq')
redis.call('ZADD', 'q:' .. ARGV[3], seq, ARGV[1])
return 'ok')";

const char* kRedisSchedule = R"(
if tonumber(redis.call('GET', 'active') or '0') >= tonumber(ARGV[1]) then return false end
for p = 0, 4 do
  local r = redis.call('ZPOPMIN', 'q:' .. p)
  if r[1] then redis.call('INCR', 'active') return r[1] end
end
return false)";

struct Redis {
  pid_t pid = -1;
  int port = 0;
  ~Redis() {
    if (pid > 0) {
      ::kill(pid, SIGTERM);
      ::waitpid(pid, nullptr, 0);
    }
  }
};

redisContext* redis_connect(int port) {
  for (int i = 0; i < 200; ++i) {
    redisContext* c = redisConnect("127.0.0.1", port);
    if (c && !c->err) return c;
    if (c) redisFree(c);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  throw std::runtime_error("redis-server did not start");
}

std::string load_script(redisContext* c, const char* script) {
  auto* r = static_cast<redisReply*>(redisCommand(c, "SCRIPT LOAD %s", script));
  std::string sha = r && r->type == REDIS_REPLY_STRING ? r->str : "";
  freeReplyObject(r);
  return sha;
}

}  // namespace

int main(int argc, char** argv) {
  std::string bin = SHMSCHED_BIN_DIR, plugins = SHMSCHED_PLUGIN_DIR;
  int n_latency = 2000;
  std::uint64_t n_throughput = 200000;
  // "shm": only the shared-memory throughput (for profiling); "latency": only the floor and the
  // latency phases (with --baseline-bin-dir, this build's against another's).
  std::string only;
  // Another build's shmschedd and plugins: its latencies are measured in the same run.
  std::string baseline_bin, baseline_plugins;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--bin-dir")
      bin = argv[i + 1];
    else if (k == "--plugin-dir")
      plugins = argv[i + 1];
    else if (k == "--latency")
      n_latency = std::atoi(argv[i + 1]);
    else if (k == "--throughput")
      n_throughput = std::strtoull(argv[i + 1], nullptr, 10);
    else if (k == "--daemon-arg")
      g_daemon_args.push_back(argv[i + 1]);
    else if (k == "--only")
      only = argv[i + 1];
    else if (k == "--baseline-bin-dir")
      baseline_bin = argv[i + 1];
    else if (k == "--baseline-plugin-dir")
      baseline_plugins = argv[i + 1];
  }
  const std::string dir = "/tmp/shmsched-dispatch-bench-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);

  if (only == "shm") {
    // The shared-memory throughput phase alone, e.g. under perf.
    Daemon d;
    d.dir = dir;
    start_daemon(d, bin, plugins, n_throughput + 100);
    zmq::context_t ctx;
    Commands commands(ctx, "ipc://" + dir + "/events.sock");
    auto load = warmed_shm_load(d, commands);
    ipc::Client& client = *load.client;
    ipc::protocol::SubmitOp& op = load.op;
    const auto t0 = Clock::now();
    for (std::uint64_t i = 0; i < n_throughput; ++i) {
      op.execution_id = "ts-" + std::to_string(i);
      client.submit(op);
    }
    const double submit_s = std::chrono::duration<double>(Clock::now() - t0).count();
    commands.count(n_throughput);
    const double all_s = std::chrono::duration<double>(Clock::now() - t0).count();
    std::printf("  %-52s %10.0f /s\n", "shared-memory submits (1 producer)",
                static_cast<double>(n_throughput) / submit_s);
    std::printf("  %-52s %10.0f /s\n", "shared memory, submitted and dispatched",
                static_cast<double>(n_throughput) / all_s);
    std::filesystem::remove_all(dir);
    return 0;
  }

  std::printf("Floor of this machine:\n");
  const auto tcp = tcp_round_trip(5000);
  print_latency("loopback TCP round trip (blocking)", tcp);
  const auto zrt = zmq_round_trip(5000, dir);
  print_latency("ZeroMQ REQ/REP round trip over ipc://", zrt);
  const auto fw = futex_wake(n_latency / 4);
  print_latency("futex wake of a sleeping thread (after a 2 ms pause)", fw);

  std::printf("\nshmschedd (zeromq transport), %d sequential submits each:\n", n_latency);
  Daemon d;
  d.dir = dir;
  // Sized for the throughput phases too; a baseline gets the same sizes (a larger segment alone
  // changes the latencies).
  const std::uint64_t capacity = n_throughput * 2 + static_cast<std::uint64_t>(n_latency) * 2 + 10;
  start_daemon(d, bin, plugins, capacity);
  zmq::context_t ctx;
  Commands commands(ctx, "ipc://" + dir + "/events.sock");
  ipc::ClientOptions zo;
  zo.endpoint = "ipc://" + dir + "/ingress.sock";
  zo.use_shared_memory = false;
  // With a baseline build, the two are measured in turns (this, baseline, baseline, this), so
  // that neither gets the quieter half of the run.
  std::unique_ptr<Daemon> b;
  std::unique_ptr<Commands> baseline_commands;
  LatencySamples ours, theirs;
  if (!baseline_bin.empty()) {
    b = std::make_unique<Daemon>();
    b->dir = dir + "/baseline";
    b->segment = "shmsched-bench-baseline-" + std::to_string(::getpid());
    std::filesystem::create_directories(b->dir);
    start_daemon(*b, baseline_bin, baseline_plugins.empty() ? baseline_bin : baseline_plugins,
                 capacity);
    baseline_commands = std::make_unique<Commands>(ctx, "ipc://" + b->dir + "/events.sock");
    measure_latencies(d, commands, n_latency / 2, 0, ours);
    measure_latencies(*b, *baseline_commands, n_latency / 2, 0, theirs);
    measure_latencies(*b, *baseline_commands, n_latency / 2, 1, theirs);
    measure_latencies(d, commands, n_latency / 2, 1, ours);
  } else {
    measure_latencies(d, commands, n_latency, 0, ours);
  }
  const Latencies now_lat = ours.percentiles();
  print_latencies(now_lat);
  ipc::ClientOptions so;
  so.segment = d.segment;
  so.endpoint = zo.endpoint;
  ipc::Client sclient(so);
  ipc::protocol::SubmitOp op;
  op.user_id = "bench";
  op.payload.assign(64, std::byte{'x'});
  const auto& zl = now_lat.zmq;
  const auto& sl = now_lat.shm;
  const auto& sw = now_lat.shm_wake;

  if (b) {
    std::printf("\nbaseline shmschedd (%s), the same phases in turns with the above:\n",
                baseline_bin.c_str());
    const Latencies base = theirs.percentiles();
    print_latencies(base);
    std::printf(
        "  p50 of this build / baseline: ZeroMQ %.2fx, shm back to back %.2fx, "
        "shm futex wake %.2fx\n",
        zl.p50 / base.zmq.p50, sl.p50 / base.shm.p50, sw.p50 / base.shm_wake.p50);
    baseline_commands.reset();
    b.reset();
  }

  if (only == "latency") {
    std::filesystem::remove_all(dir);
    return 0;
  }
  std::printf("\nshmschedd sustained throughput, %llu submits:\n",
              static_cast<unsigned long long>(n_throughput));
  const double zmq_tp = zmq_throughput(zo.endpoint, "tz", n_throughput, 2, 512);
  commands.count(n_throughput);
  std::printf("  %-52s %10.0f /s\n", "ZeroMQ submits (2 pipelined DEALER clients)", zmq_tp);
  const auto t0 = Clock::now();
  for (std::uint64_t i = 0; i < n_throughput; ++i) {
    op.execution_id = "ts-" + std::to_string(i);
    if (!sclient.submit(op).result.accepted())
      std::printf("  (rejected %llu)\n", static_cast<unsigned long long>(i));
  }
  const double shm_submit =
      static_cast<double>(n_throughput) / std::chrono::duration<double>(Clock::now() - t0).count();
  commands.count(n_throughput);
  const double shm_e2e =
      static_cast<double>(n_throughput) / std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("  %-52s %10.0f /s\n", "shared-memory submits (1 producer)", shm_submit);
  std::printf("  %-52s %10.0f /s\n", "shared memory, submitted and dispatched", shm_e2e);
  const double floor_tp = pubsub_floor(n_throughput, commands.body_size(), dir);
  std::printf("  %-52s %10.0f /s\n", "floor: ZeroMQ PUB->SUB of the same messages alone", floor_tp);

  std::printf("\nRedis peer (sorted set per priority, Lua admission + pop under a cap):\n");
  Redis redis;
  redis.port = 20000 + ::getpid() % 20000;
  redis.pid = ::fork();
  if (redis.pid == 0) {
    const std::string port = std::to_string(redis.port);
    ::execlp("redis-server", "redis-server", "--port", port.c_str(), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--loglevel", "warning", nullptr);
    ::_exit(127);
  }
  redisContext* rc = redis_connect(redis.port);
  const std::string submit_sha = load_script(rc, kRedisSubmit);
  const std::string sched_sha = load_script(rc, kRedisSchedule);
  std::vector<double> redis_ns;
  {
    std::atomic<bool> stop{false};
    std::atomic<std::int64_t> popped_at{0};
    std::atomic<int> popped_seq{-1};
    std::thread scheduler([&] {
      redisContext* c = redis_connect(redis.port);
      while (!stop) {
        auto* r = static_cast<redisReply*>(
            redisCommand(c, "EVALSHA %s 0 %s", sched_sha.c_str(), "1000000000"));
        if (r && r->type == REDIS_REPLY_STRING) {
          popped_at = wall_ns();
          popped_seq = std::atoi(r->str + 3);
        }
        freeReplyObject(r);
      }
      redisFree(c);
    });
    for (int i = 0; i < n_latency; ++i) {
      const std::string id = "lr-" + std::to_string(i);
      const std::int64_t t0 = wall_ns();
      freeReplyObject(redisCommand(rc, "EVALSHA %s 0 %s %s %s %s %s", submit_sha.c_str(),
                                   id.c_str(), "bench", "2", "payload", "1000000000"));
      while (popped_seq.load() != i) {
      }
      redis_ns.push_back(static_cast<double>(popped_at.load() - t0));
    }
    stop = true;
    scheduler.join();
  }
  const auto rl = percentiles(redis_ns);
  print_latency("submit-to-pop (scheduler polling EVALSHA)", rl);
  // Throughput: pipelined submits, then the scheduler popping as fast as it can.
  freeReplyObject(redisCommand(rc, "FLUSHALL"));
  const std::string submit_sha2 = load_script(rc, kRedisSubmit);
  const auto r0 = Clock::now();
  const std::uint64_t window = 512;
  std::uint64_t sent = 0, got = 0;
  while (got < n_throughput) {
    while (sent < n_throughput && sent - got < window) {
      const std::string id = "tr-" + std::to_string(sent++);
      redisAppendCommand(rc, "EVALSHA %s 0 %s %s %s %s %s", submit_sha2.c_str(), id.c_str(),
                         "bench", "2", "payload", "1000000000");
    }
    void* reply = nullptr;
    if (redisGetReply(rc, &reply) != REDIS_OK) break;
    freeReplyObject(reply);
    ++got;
  }
  const double redis_submit =
      static_cast<double>(got) / std::chrono::duration<double>(Clock::now() - r0).count();
  const std::string sched_sha2 = load_script(rc, kRedisSchedule);
  const auto p0 = Clock::now();
  std::uint64_t pops = 0;
  for (;;) {
    auto* r = static_cast<redisReply*>(
        redisCommand(rc, "EVALSHA %s 0 %s", sched_sha2.c_str(), "1000000000"));
    const bool ok = r && r->type == REDIS_REPLY_STRING;
    freeReplyObject(r);
    if (!ok) break;
    ++pops;
  }
  const double redis_pop =
      static_cast<double>(pops) / std::chrono::duration<double>(Clock::now() - p0).count();
  const double redis_e2e =
      static_cast<double>(n_throughput) /
      (static_cast<double>(n_throughput) / redis_submit + static_cast<double>(pops) / redis_pop);
  redisFree(rc);
  std::printf("  %-52s %10.0f /s\n", "pipelined submits (EVALSHA, window 512)", redis_submit);
  std::printf("  %-52s %10.0f /s\n", "schedules (EVALSHA pop under the cap)", redis_pop);
  std::printf("  %-52s %10.0f /s\n", "submitted and scheduled (sequential phases)", redis_e2e);

  std::printf("\nRatios (same run):\n");
  std::printf(
      "  ZeroMQ submit-to-dispatch p50 / TCP round trip p50        %6.2fx  (goal <= 1.5x)\n",
      zl.p50 / tcp.p50);
  std::printf("  ZeroMQ submit-to-dispatch p50 / ZeroMQ REQ/REP p50        %6.2fx\n",
              zl.p50 / zrt.p50);
  std::printf(
      "  shared-memory submit-to-dispatch p50, back to back        %6.1f us (goal < 20 us)\n",
      sl.p50 / 1000);
  std::printf(
      "  shared-memory submit-to-dispatch p50, futex wake incl.    %6.1f us (goal < 20 us; "
      "the bare wake is %.1f us here)\n",
      sw.p50 / 1000, fw.p50 / 1000);
  std::printf(
      "  ZeroMQ submits/s                                          %8.0f (goal >= 100,000)\n",
      zmq_tp);
  std::printf(
      "  shared-memory submits/s                                   %8.0f (goal >= 1,000,000)\n",
      shm_submit);
  std::printf("  shmschedd vs Redis, submit-to-dispatch p50 (Redis/ours)   %6.2fx\n",
              rl.p50 / zl.p50);
  std::printf("  shmschedd vs Redis, submits/s over ZeroMQ (ours/Redis)    %6.2fx\n",
              zmq_tp / redis_submit);
  std::printf("  shmschedd vs Redis, submits/s over shm (ours/Redis)       %6.2fx\n",
              shm_submit / redis_submit);
  std::printf("  shmschedd vs Redis, submit+dispatch/s, shm (ours/Redis)   %6.2fx (goal >= 30x)\n",
              shm_e2e / redis_e2e);
  std::printf(
      "  shm submitted and dispatched / PUB->SUB floor               %6.2fx (goal: 1,000,000/s; "
      "the floor is what ZeroMQ alone moves here)\n",
      shm_e2e / floor_tp);
  std::filesystem::remove_all(dir);
  return 0;
}
