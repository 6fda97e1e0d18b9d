// What the end-to-end benchmarks share: percentiles, the ZeroMQ round-trip floor, and a real
// shmschedd started for the run.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <msgpack.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "shmsched/ipc/client.h"
#include "shmsched/ipc/protocol.h"
#include "shmsched/ipc/queue.h"

namespace shmsched::bench {

using Clock = std::chrono::steady_clock;
using ipc::protocol::MapBuilder;

// A free loopback port (bound and released; a server binds it a moment later).
inline int free_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(s);
  return ntohs(a.sin_port);
}

inline std::int64_t wall_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct Percentiles {
  double p50 = 0, p99 = 0, p999 = 0;
};

inline Percentiles percentiles(std::vector<double> v) {
  if (v.empty()) return {};
  std::sort(v.begin(), v.end());
  auto at = [&](double q) {
    return v[std::min(v.size() - 1, static_cast<std::size_t>(q * v.size()))];
  };
  return {at(0.5), at(0.99), at(0.999)};
}

inline void print_latency(const char* what, const Percentiles& p) {
  std::printf("  %-52s p50 %8.1f us  p99 %8.1f us  p99.9 %8.1f us\n", what, p.p50 / 1000,
              p.p99 / 1000, p.p999 / 1000);
}

inline Percentiles zmq_round_trip(int n, const std::string& dir) {
  zmq::context_t ctx;
  const std::string ep = "ipc://" + dir + "/reqrep.sock";
  zmq::socket_t rep(ctx, zmq::socket_type::rep);
  rep.bind(ep);
  std::thread server([&] {
    for (int i = 0; i < n; ++i) {
      zmq::message_t m;
      if (!rep.recv(m)) break;
      rep.send(m, zmq::send_flags::none);
    }
  });
  zmq::socket_t req(ctx, zmq::socket_type::req);
  req.connect(ep);
  std::vector<double> ns;
  for (int i = 0; i < n; ++i) {
    const auto t0 = Clock::now();
    req.send(zmq::buffer("ping", 4), zmq::send_flags::none);
    zmq::message_t m;
    if (!req.recv(m)) break;
    ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count());
  }
  server.join();
  return percentiles(ns);
}

// ---- shmschedd --------------------------------------------------------------------------------

// Receives CreatePodCommands and records each one's publish timestamp by execution id.
class Commands {
 public:
  Commands(zmq::context_t& ctx, const std::string& ep) : sub_(ctx, zmq::socket_type::sub) {
    sub_.set(zmq::sockopt::subscribe, "CreatePodCommand");
    sub_.set(zmq::sockopt::rcvhwm, 0);
    sub_.set(zmq::sockopt::rcvtimeo, 5000);
    sub_.connect(ep);
  }
  // Waits for the command of `id`; returns its publish timestamp (0 on timeout).
  std::int64_t wait_for(const std::string& id) {
    for (;;) {
      zmq::message_t topic, body;
      if (!sub_.recv(topic) || !sub_.recv(body)) return 0;
      auto oh = msgpack::unpack(static_cast<const char*>(body.data()), body.size());
      if (ipc::get_string(oh.get(), "execution_id").value_or("") == id) {
        return ipc::get_int(oh.get(), "timestamp").value_or(0);
      }
    }
  }
  // Counts commands until `n` arrived; returns false on a 5 s silence.
  bool count(std::uint64_t n) {
    for (std::uint64_t i = 0; i < n; ++i) {
      zmq::message_t topic, body;
      if (!sub_.recv(topic) || !sub_.recv(body)) return false;
      body_size_ = body.size();
    }
    return true;
  }
  std::size_t body_size() const { return body_size_; }

 private:
  zmq::socket_t sub_;
  std::size_t body_size_ = 200;
};

struct Daemon {
  pid_t pid = -1;
  std::string dir, segment;
  ~Daemon() {
    if (pid > 0) {
      ::kill(pid, SIGTERM);
      ::waitpid(pid, nullptr, 0);
    }
    ipc::Segment::remove(segment);
  }
};

inline std::vector<std::string> g_daemon_args;  // --daemon-arg, passed through to shmschedd

inline void start_daemon(Daemon& d, const std::string& bin, const std::string& plugins,
                         std::uint64_t n) {
  if (d.segment.empty()) d.segment = "shmsched-bench-" + std::to_string(::getpid());
  ipc::Segment::remove(d.segment);
  const std::string cap = std::to_string(n + 1000);
  std::vector<std::string> args = {bin + "/shmschedd",
                                   "--runtime-dir=" + d.dir,
                                   "--segment=" + d.segment,
                                   "--plugin-dir=" + plugins,
                                   "--max-queue-size=" + cap,
                                   "--max-active=" + cap,
                                   "--max-active-executions=" + cap,
                                   "--max-executions-per-user=" + cap,
                                   "--max-payload-bytes=256",
                                   "--max-extras-bytes=64",
                                   "--max-participants=64",
                                   "--zeromq.sndhwm=10000000",
                                   "--log-level=warn"};
  args.insert(args.end(), g_daemon_args.begin(), g_daemon_args.end());
  if (std::none_of(g_daemon_args.begin(), g_daemon_args.end(),
                   [](const std::string& a) { return a.rfind("--metrics-listen", 0) == 0; })) {
    args.push_back("--metrics-listen=off");  // off unless asked for (--daemon-arg)
  }
  d.pid = ::fork();
  if (d.pid == 0) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ipc::ClientOptions o;
  o.endpoint = "ipc://" + d.dir + "/ingress.sock";
  o.use_shared_memory = false;
  o.timeout = std::chrono::milliseconds(200);
  for (int i = 0; i < 100; ++i) {
    try {
      ipc::Client c(o);
      c.call(MapBuilder().str("op", "stats").finish());
      return;
    } catch (const std::exception&) {
    }
  }
  throw std::runtime_error("shmschedd did not start (see --bin-dir)");
}

// A shared-memory client of the supervisor `d`, with the submit the load generators send (user
// "bench", a 64-byte payload), warmed up: 50 submits, each waited for as a command.
struct ShmLoad {
  std::unique_ptr<ipc::Client> client;
  ipc::protocol::SubmitOp op;
};

inline ShmLoad warmed_shm_load(const Daemon& d, Commands& commands) {
  ShmLoad load;
  ipc::ClientOptions o;
  o.segment = d.segment;
  o.endpoint = "ipc://" + d.dir + "/ingress.sock";
  load.client = std::make_unique<ipc::Client>(o);
  load.op.user_id = "bench";
  load.op.payload.assign(64, std::byte{'x'});
  for (int i = 0; i < 50; ++i) {
    load.op.execution_id = "warm-" + std::to_string(i);
    load.client->submit(load.op);
    commands.wait_for(load.op.execution_id);
  }
  return load;
}

}  // namespace shmsched::bench
