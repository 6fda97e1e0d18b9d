// Claims and blockers: how long a worker waits to learn that it owns a task, and how long a
// blocker takes to reach a helper. Measured in one run, beside the floor of this machine (a
// ZeroMQ REQ/REP round trip) and, when Debian's etcd-server is installed, beside the seeds'
// etcd claim (a transaction: compare owner == "unclaimed", then put the worker id) against a
// real local etcd.
//
//   claim_bench [--bin-dir DIR] [--plugin-dir DIR] [--n N] [--no-etcd]
//
// - shared memory: Producer::claim on a taken execution, one compare-and-swap on its claim word
//   (the consumer opens a new attempt between claims, untimed).
// - ingress: the `claim` op over the ZeroMQ ingress of a real shmschedd, for an execution it
//   has just pushed to the worker (the supervisor does the same compare-and-swap).
// - claims per second through shared memory, one claimant thread, sustained for a second.
// - blocker: report_blocker over the ingress until the helper's SUB socket has its copy.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "bench_support.h"
#include "shm_claims.h"
#include "shmsched/ipc/client.h"
#include "shmsched/ipc/queue.h"
#ifdef SHMSCHED_WITH_ETCD_PEER
#include "etcd_peer.h"
#endif

namespace {

using namespace shmsched;
using namespace shmsched::bench;

double shm_claims_per_second() {
  SharedMemoryClaims s;
  std::uint64_t n = 0;
  const auto until = Clock::now() + std::chrono::seconds(1);
  const auto t0 = Clock::now();
  while (Clock::now() < until) {
    for (int i = 0; i < 1000; ++i, ++n) {
      const auto attempt = static_cast<std::uint32_t>(n + 1);
      s.consumer->open_claims(s.ref, attempt);
      s.producer->claim("claimed", attempt, 7);
    }
  }
  return static_cast<double>(n) / std::chrono::duration<double>(Clock::now() - t0).count();
}

// A real shmschedd with one worker registered over the ingress: pushes, claims, completes.
struct DaemonClaims {
  Daemon d;
  zmq::context_t ctx;
  std::unique_ptr<ipc::Client> client;
  std::unique_ptr<zmq::socket_t> pushes;
  std::uint32_t number = 0;

  DaemonClaims(const std::string& dir, const std::string& bin, const std::string& plugins, int n) {
    d.dir = dir;
    g_daemon_args.push_back("--claim-timeout-ms=60000");
    start_daemon(d, bin, plugins, static_cast<std::uint64_t>(n) + 100);
    ipc::ClientOptions o;
    o.segment = d.segment;
    o.endpoint = "ipc://" + dir + "/ingress.sock";
    client = std::make_unique<ipc::Client>(o);
    pushes = std::make_unique<zmq::socket_t>(ctx, zmq::socket_type::sub);
    pushes->set(zmq::sockopt::subscribe, "TaskPush.bench-worker");
    pushes->connect("ipc://" + dir + "/events.sock");
    auto reg = call(MapBuilder()
                        .str("op", "register_worker")
                        .str("worker_id", "bench-worker")
                        .strings("capabilities", {"bench"})
                        .integer("capacity", 1000000)
                        .finish());
    number = static_cast<std::uint32_t>(ipc::get_int(reg.get(), "worker_number").value_or(0));
  }
  msgpack::object_handle call(const std::vector<std::byte>& req) { return client->call(req); }

  // Submits `id` (needing "bench") and waits until it is pushed to the worker. A SUB socket
  // misses what is published before its subscription is active: the first ids may take a retry.
  bool push(const std::string& id) {
    ipc::protocol::SubmitOp op;
    op.user_id = "bench";
    op.execution_id = id;
    op.required_capabilities = {"bench"};
    if (!client->submit(op).result.accepted()) return false;
    pushes->set(zmq::sockopt::rcvtimeo, 2000);
    for (;;) {
      zmq::message_t topic, body;
      if (!pushes->recv(topic)) return false;
      if (!pushes->recv(body)) return false;
      const auto oh = msgpack::unpack(static_cast<const char*>(body.data()), body.size());
      if (ipc::get_string(oh.get(), "execution_id").value_or("") == id) return true;
    }
  }
  void complete(const std::string& id) {
    call(MapBuilder()
             .str("op", "complete")
             .str("execution_id", id)
             .str("worker_id", "bench-worker")
             .integer("exit_code", 0)
             .finish());
  }
};

// Over the ingress (number 0 makes Client::claim use the ingress) or the daemon's segment.
Percentiles daemon_claim_latency(DaemonClaims& dc, int n, bool shared_memory,
                                 const std::string& prefix) {
  std::vector<double> ns;
  for (int i = 0; i < n; ++i) {
    const std::string id = prefix + std::to_string(i);
    if (!dc.push(id)) {
      if (i == 0) continue;  // the subscription was not active yet
      throw std::runtime_error("no TaskPush for " + id);
    }
    const auto t0 = Clock::now();
    const auto r = dc.client->claim("bench-worker", shared_memory ? dc.number : 0, id, 1);
    ns.push_back(ns_since(t0));
    if (!r.claimed) throw std::runtime_error("claim of " + id + " lost: " + r.reason);
    dc.complete(id);
  }
  return percentiles(ns);
}

// report_blocker until the helper's own copy arrives on its topic.
Percentiles blocker_latency(DaemonClaims& dc, int n) {
  dc.call(MapBuilder()
              .str("op", "register_worker")
              .str("worker_id", "helper")
              .strings("capabilities", {"fix"})
              .finish());
  zmq::socket_t sub(dc.ctx, zmq::socket_type::sub);
  sub.set(zmq::sockopt::subscribe, "BlockerReported.helper");
  sub.connect("ipc://" + dc.d.dir + "/events.sock");
  std::vector<double> ns;
  auto report = [&] {
    return dc.call(MapBuilder()
                       .str("op", "report_blocker")
                       .str("worker_id", "bench-worker")
                       .str("type", "dependency")
                       .str("description", "needs a fix")
                       .str("severity", "high")
                       .strings("required_capabilities", {"fix"})
                       .finish());
  };
  // Until the subscription is active.
  sub.set(zmq::sockopt::rcvtimeo, 100);
  for (int i = 0; i < 200; ++i) {
    report();
    zmq::message_t topic, body;
    if (sub.recv(topic) && sub.recv(body)) break;
  }
  sub.set(zmq::sockopt::rcvtimeo, 2000);
  for (int i = 0; i < n; ++i) {
    const auto t0 = Clock::now();
    report();
    zmq::message_t topic, body;
    if (!sub.recv(topic) || !sub.recv(body)) throw std::runtime_error("the helper got nothing");
    ns.push_back(ns_since(t0));
  }
  return percentiles(ns);
}

void ratio(const char* what, double ours, double peer) {
  if (ours > 0 && peer > 0) std::printf("  %-52s %10.0fx\n", what, peer / ours);
}

}  // namespace

int main(int argc, char** argv) {
  std::string bin = SHMSCHED_BIN_DIR, plugins = SHMSCHED_PLUGIN_DIR;
  int n = 2000;
  bool etcd = true;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--no-etcd") {
      etcd = false;
    } else if (i + 1 < argc && k == "--bin-dir") {
      bin = argv[++i];
    } else if (i + 1 < argc && k == "--plugin-dir") {
      plugins = argv[++i];
    } else if (i + 1 < argc && k == "--n") {
      n = std::atoi(argv[++i]);
    }
  }
  const std::string dir = "/tmp/shmsched-claim-bench-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);

  std::printf("Floor of this machine:\n");
  const auto zrt = zmq_round_trip(n, dir);
  print_latency("ZeroMQ REQ/REP round trip over ipc://", zrt);

  std::printf("\nClaims (%d each):\n", n);
  const auto shm = shm_claim_latency(n * 10);
  print_latency("shared memory (Producer::claim, one CAS)", shm);
  Percentiles ingress, via_daemon_shm, blocker;
  {
    DaemonClaims dc(dir, bin, plugins, 3 * n);
    ingress = daemon_claim_latency(dc, n, false, "ingress-");
    print_latency("ZeroMQ ingress (claim op, a real shmschedd)", ingress);
    via_daemon_shm = daemon_claim_latency(dc, n, true, "shm-");
    print_latency("shared memory, a real shmschedd's segment", via_daemon_shm);
    blocker = blocker_latency(dc, n);
    print_latency("blocker: report_blocker until the helper has it", blocker);
  }
  const double rate = shm_claims_per_second();
  std::printf("  %-52s %10.0f /s\n", "claims through shared memory, sustained (1 thread)", rate);

  Percentiles etcd_claims;
#ifdef SHMSCHED_WITH_ETCD_PEER
  if (etcd) {
    try {
      LocalEtcd server;
      EtcdClaimClient client(server.client_url());
      std::vector<double> ns;
      for (int i = 0; i < n; ++i) {
        const std::string key = "/bench/tasks/t" + std::to_string(i) + "/owner";
        client.reset(key);
        const auto t0 = Clock::now();
        if (!client.claim(key, "bench-worker")) throw std::runtime_error("a lone claim lost");
        ns.push_back(ns_since(t0));
      }
      etcd_claims = percentiles(ns);
      print_latency(
          ("etcd " + server.server_version() + " transaction claim (the seeds' way)").c_str(),
          etcd_claims);
    } catch (const std::exception& e) {
      std::printf("  etcd peer skipped: %s\n", e.what());
    }
  }
#else
  (void)etcd;
  std::printf("  etcd peer not built (bench/etcd_peer needs libcurl and nlohmann-json)\n");
#endif

  std::printf("\nRatios (p99; bigger is better for shmsched):\n");
  ratio("etcd claim / shared-memory claim", shm.p99, etcd_claims.p99);
  ratio("etcd claim / ingress claim", ingress.p99, etcd_claims.p99);
  std::printf("  %-52s %10.2f\n", "ingress claim p99 / ZeroMQ round trip p99",
              ingress.p99 / zrt.p99);
  std::printf("  %-52s %10.2f\n", "ingress claim p50 / ZeroMQ round trip p50",
              ingress.p50 / zrt.p50);
  std::filesystem::remove_all(dir);
  return 0;
}
