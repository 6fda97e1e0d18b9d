// The etcd transport, measured in one run against a real local etcd (Debian's etcd-server):
//
//   etcd_transport_bench [--n N] [--claims M] [--plugin-dir DIR] [--bin-dir DIR] [--no-footprint]
//
// - acknowledged dispatches per second: N CreatePodCommands handed to the plugin (loaded with
//   dlopen, driven through the plugin ABI exactly as shmschedd drives it: publish_batch of up to
//   1024 messages, the supervisor's pass) until every one's delivery callback said ok, which the
//   plugin reports only once etcd answered the transaction that wrote it. Batched (the defaults:
//   64 executions per transaction, 8 transactions in flight) beside unbatched (one execution per
//   transaction, one at a time: what a transaction per dispatch gives). Then the whole path: a
//   real shmschedd (transports zeromq,etcd) takes N submits through shared memory and counts
//   each dispatch once etcd acknowledged it; with and without lifecycle events written to etcd.
// - claim latency through etcd: a worker claims a dispatched execution with the seeds'
//   transaction (compare owner == "unclaimed", put the worker id; over etcd's JSON gateway, a
//   keep-alive connection), timed until etcd answered (the worker knows it won) and until the
//   plugin's watch handed the claim to the supervisor (the host's inbound callback). Beside the
//   shared-memory claim (one compare-and-swap), measured in the same run.
// - etcd's footprint: N executions dispatched then completed with a retention of 2 s; the key
//   count and database size before, at the peak, after the retention, and after a compaction and
//   defragmentation (which etcd's operators schedule; the transport does neither).
#include <dlfcn.h>

#include <filesystem>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "bench_support.h"
#include "etcd_peer.h"
#include "shm_claims.h"
#include "shmsched/transport.h"

namespace {

using namespace shmsched;
using namespace shmsched::bench;

// What the plugin reports to its host.
struct Host {
  std::atomic<std::uint64_t> delivered{0}, failed{0};
  std::mutex mu;
  std::condition_variable claimed_cv;
  std::map<std::string, Clock::time_point> claimed;  // execution id -> when the claim arrived
  std::string first_error;

  static void log(void*, shmsched_log_level level, const char* m) {
    if (level >= SHMSCHED_LOG_WARN) std::fprintf(stderr, "  plugin: %s\n", m);
  }
  static void delivery(void* ctx, std::uint64_t, int ok, const char* error) {
    auto* h = static_cast<Host*>(ctx);
    if (ok) {
      h->delivered++;
    } else {
      std::lock_guard lock(h->mu);
      if (h->failed++ == 0) h->first_error = error ? error : "";
    }
  }
  static int inbound(void* ctx, const std::uint8_t* body, std::size_t len,
                     shmsched_inbound_done done) {
    auto* h = static_cast<Host*>(ctx);
    const auto now = Clock::now();
    auto oh = msgpack::unpack(reinterpret_cast<const char*>(body), len);
    if (ipc::get_string(oh.get(), "op").value_or("") == "claim") {
      std::lock_guard lock(h->mu);
      h->claimed[ipc::get_string(oh.get(), "execution_id").value_or("")] = now;
      h->claimed_cv.notify_all();
    }
    if (done.ack) done.ack(done.op_ctx);
    return SHMSCHED_OK;
  }
};

class Plugin {
 public:
  Plugin(const std::string& dir, std::map<std::string, std::string> options, Host& host) {
    const std::string path = dir + "/libshmsched_transport_etcd.so";
    lib_ = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib_) throw std::runtime_error(std::string("dlopen: ") + ::dlerror());
    auto entry = reinterpret_cast<shmsched_transport_entry_fn>(
        ::dlsym(lib_, SHMSCHED_TRANSPORT_ENTRY_SYMBOL));
    api_ = entry();
    shmsched_host h{&host, Host::log, Host::delivery, Host::inbound};
    std::vector<shmsched_kv> kv;
    for (const auto& [k, v] : options) kv.push_back({k.c_str(), v.c_str()});
    char err[512] = {};
    t_ = api_->create(kv.data(), kv.size(), &h, err, sizeof err);
    if (!t_ || api_->start(t_, err, sizeof err) != SHMSCHED_OK) {
      throw std::runtime_error(std::string("etcd plugin: ") + err);
    }
  }
  ~Plugin() {
    api_->stop(t_);
    api_->destroy(t_);
  }
  // Hands every message over as the supervisor does, offering the rest again after a refusal.
  void publish(std::vector<shmsched_message>& msgs, std::vector<std::uint64_t>& tokens) {
    std::size_t at = 0;
    while (at < msgs.size()) {
      int refusal = SHMSCHED_OK;
      const std::size_t n = std::min<std::size_t>(1024, msgs.size() - at);
      at += api_->publish_batch(t_, msgs.data() + at, tokens.data() + at, n, &refusal);
      if (refusal == SHMSCHED_ERR_BUSY) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

 private:
  void* lib_ = nullptr;
  const shmsched_transport_api* api_ = nullptr;
  shmsched_transport* t_ = nullptr;
};

// A CreatePodCommand as shmschedd encodes it, with a 64-byte payload (about 230 bytes).
std::string command_body(const std::string& id) {
  const std::string payload(64, 'p');
  const auto* p = reinterpret_cast<const std::byte*>(payload.data());
  const auto b = MapBuilder()
                     .str("type", "CreatePodCommand")
                     .integer("timestamp", wall_ns())
                     .str("execution_id", id)
                     .str("user_id", "bench")
                     .str("priority", "normal")
                     .bin("payload", std::vector<std::byte>(p, p + payload.size()))
                     .string_map("metadata", {})
                     .integer("attempt", 1)
                     .strings("required_capabilities", {})
                     .integer("timeout_seconds", 0)
                     .finish();
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// Dispatches n executions named <tag><i>; returns acknowledged dispatches per second.
double dispatch_rate(const std::string& plugin_dir, const std::string& url, const std::string& tag,
                     int n, std::map<std::string, std::string> extra) {
  Host host;
  extra["endpoints"] = url;
  extra["prefix"] = "/bench";
  extra["write_events"] = "false";
  Plugin plugin(plugin_dir, extra, host);
  std::vector<std::string> ids, bodies;
  for (int i = 0; i < n; ++i) {
    ids.push_back(tag + std::to_string(i));
    bodies.push_back(command_body(ids.back()));
  }
  std::vector<shmsched_message> msgs;
  std::vector<std::uint64_t> tokens;
  for (int i = 0; i < n; ++i) {
    msgs.push_back({"CreatePodCommand", ids[i].c_str(), "CreatePodCommand",
                    reinterpret_cast<const std::uint8_t*>(bodies[i].data()), bodies[i].size(), 1});
    tokens.push_back(static_cast<std::uint64_t>(i + 1));
  }
  const auto t0 = Clock::now();
  plugin.publish(msgs, tokens);
  while (host.delivered + host.failed < static_cast<std::uint64_t>(n)) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (host.failed) {
    std::printf("  %llu deliveries failed, first: %s\n",
                static_cast<unsigned long long>(host.failed.load()), host.first_error.c_str());
  }
  return static_cast<double>(host.delivered) / secs;
}

// etcdctl's output for `args` against `endpoint`.
std::string etcdctl(const std::string& endpoint, const std::string& args) {
  const std::string cmd = "/usr/bin/etcdctl --endpoints=" + endpoint + " " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("popen " + cmd);
  std::string out;
  char buf[65536];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  ::pclose(p);
  return out;
}

// A number after `"<field>":` in etcdctl's JSON output.
// Absent: zero (etcd's JSON leaves zero fields out), unless the output is not JSON at all.
std::int64_t json_number(const std::string& json, const std::string& field) {
  const auto at = json.find("\"" + field + "\":");
  if (at == std::string::npos && json.find("\"header\"") != std::string::npos) return 0;
  if (at == std::string::npos) throw std::runtime_error("no " + field + " in " + json);
  return std::stoll(json.substr(at + field.size() + 3));
}

struct Footprint {
  std::int64_t keys = 0, db_size = 0, revision = 0;
};

Footprint footprint(const std::string& endpoint) {
  Footprint f;
  const std::string status = etcdctl(endpoint, "endpoint status -w json");
  f.db_size = json_number(status, "dbSize");
  f.revision = json_number(status, "revision");
  // etcd 3.4's etcdctl has no --count-only; the JSON of a keys-only read has the count.
  f.keys = json_number(etcdctl(endpoint, "get --prefix / --keys-only --limit=1 -w json"), "count");
  return f;
}

void print_footprint(const char* when, const Footprint& f) {
  std::printf("  %-52s keys %7lld  db size %8.2f MB  revision %lld\n", when,
              static_cast<long long>(f.keys), static_cast<double>(f.db_size) / 1e6,
              static_cast<long long>(f.revision));
}

// n executions dispatched, then finished (ExecutionCompleted), with a retention of 2 s: etcd's
// key count and database size before, at the peak, after the retention, and after the
// compaction and defragmentation that etcd's operators schedule (the transport does neither).
void churn(const std::string& plugin_dir, int n) {
  LocalEtcd etcd;  // a fresh member: "before" is an empty store
  const std::string url = etcd.client_url();
  const std::string endpoint = url.substr(url.find("//") + 2);
  std::printf("etcd footprint of %d executions, dispatched then completed (retention 2 s):\n", n);
  const Footprint before = footprint(endpoint);
  print_footprint("before", before);
  Host host;
  Plugin plugin(plugin_dir, {{"endpoints", url}, {"prefix", "/churn"}, {"retention_seconds", "2"}},
                host);
  std::vector<std::string> ids, commands, completions;
  for (int i = 0; i < n; ++i) {
    ids.push_back("x" + std::to_string(i));
    commands.push_back(command_body(ids.back()));
    const auto b = MapBuilder()
                       .str("type", "ExecutionCompleted")
                       .integer("timestamp", wall_ns())
                       .str("execution_id", ids.back())
                       .str("user_id", "bench")
                       .str("worker_id", "w")
                       .integer("exit_code", 0)
                       .finish();
    completions.emplace_back(reinterpret_cast<const char*>(b.data()), b.size());
  }
  auto send = [&](const char* type, const std::vector<std::string>& bodies, int command) {
    std::vector<shmsched_message> msgs;
    std::vector<std::uint64_t> tokens;
    for (int i = 0; i < n; ++i) {
      msgs.push_back({type, ids[i].c_str(), type,
                      reinterpret_cast<const std::uint8_t*>(bodies[i].data()), bodies[i].size(),
                      command});
      tokens.push_back(static_cast<std::uint64_t>(i + 1));
    }
    const std::uint64_t want = host.delivered + static_cast<std::uint64_t>(n);
    plugin.publish(msgs, tokens);
    while (host.delivered + host.failed < want) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  };
  send("CreatePodCommand", commands, 1);
  print_footprint("dispatched", footprint(endpoint));
  send("ExecutionCompleted", completions, 0);
  print_footprint("completed (keys under the retention lease)", footprint(endpoint));
  const auto t0 = Clock::now();
  Footprint after = footprint(endpoint);
  while (after.keys > before.keys && Clock::now() - t0 < std::chrono::seconds(60)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    after = footprint(endpoint);
  }
  print_footprint("after the retention", after);
  for (const std::string& c :
       {"compact " + std::to_string(after.revision) + " --physical", std::string("defrag")}) {
    const std::string out = etcdctl(endpoint, "--command-timeout=120s " + c);
    if (out.find("rror") != std::string::npos)
      std::printf("  etcdctl %s: %s", c.c_str(), out.c_str());
  }
  print_footprint("after etcdctl compact + defrag", footprint(endpoint));
}

// The whole path: a real shmschedd (transports zeromq,etcd) takes n submits through shared memory
// and counts a dispatch only once every transport acknowledged it (etcd: answered the
// transaction). Returns acknowledged dispatches per second.
double through_shmschedd(const std::string& bin_dir, const std::string& plugin_dir,
                         const std::string& url, int n, bool events) {
  Daemon d;
  d.dir = "/tmp/shmsched-etcd-bench-" + std::to_string(::getpid());
  std::filesystem::create_directories(d.dir);
  g_daemon_args = {"--transports=zeromq,etcd", "--etcd.endpoints=" + url,
                   "--etcd.prefix=/e2e" + std::string(events ? "-events" : ""),
                   "--etcd.write_events=" + std::string(events ? "true" : "false")};
  start_daemon(d, bin_dir, plugin_dir, static_cast<std::uint64_t>(n));
  ipc::ClientOptions o;
  o.segment = d.segment;
  o.endpoint = "ipc://" + d.dir + "/ingress.sock";
  ipc::Client client(o);
  auto dispatched = [&] {
    auto oh = client.call(MapBuilder().str("op", "stats").finish());
    return ipc::get_int(*ipc::find_field(oh.get(), "counters"), "dispatched").value_or(0);
  };
  ipc::protocol::SubmitOp op;
  op.user_id = "bench";
  op.payload.assign(64, std::byte{'x'});
  const auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    op.execution_id = "e" + std::to_string(i);
    if (!client.submit(op).result.accepted()) throw std::runtime_error("a submit was refused");
  }
  while (dispatched() < n && Clock::now() - t0 < std::chrono::seconds(300)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  const auto acked = dispatched();
  std::filesystem::remove_all(d.dir);
  return static_cast<double>(acked) / secs;
}

}  // namespace

int main(int argc, char** argv) {
  int n = 100000, claims = 1000;
  bool footprint_run = true;
  std::string plugin_dir = SHMSCHED_PLUGIN_DIR;
  std::string bin_dir = SHMSCHED_BIN_DIR;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--n" && i + 1 < argc)
      n = std::atoi(argv[++i]);
    else if (a == "--claims" && i + 1 < argc)
      claims = std::atoi(argv[++i]);
    else if (a == "--plugin-dir" && i + 1 < argc)
      plugin_dir = argv[++i];
    else if (a == "--bin-dir" && i + 1 < argc)
      bin_dir = argv[++i];
    else if (a == "--no-footprint")
      footprint_run = false;
    else {
      std::fprintf(
          stderr,
          "usage: %s [--n N] [--claims M] [--plugin-dir DIR] [--bin-dir DIR] [--no-footprint]\n",
          argv[0]);
      return 2;
    }
  }
  LocalEtcd etcd;
  std::printf("etcd %s at %s (single member, fsync on; its log: %s)\n",
              etcd.server_version().c_str(), etcd.client_url().c_str(), etcd.log_path().c_str());

  std::printf("acknowledged dispatches (CreatePodCommand, ~230 B, ack = etcd answered the txn):\n");
  const double batched = dispatch_rate(plugin_dir, etcd.client_url(), "b", n, {});
  std::printf("  %-52s %10.0f /s  (%d executions)\n", "batched: 64 per transaction, 8 in flight",
              batched, n);
  const int m = std::min(n, 3000);
  const double single = dispatch_rate(plugin_dir, etcd.client_url(), "s", m,
                                      {{"batch_size", "1"}, {"max_in_flight", "1"}});
  std::printf("  %-52s %10.0f /s  (%d executions)\n", "unbatched: 1 per transaction, 1 in flight",
              single, m);
  std::printf("  batched / unbatched: %.1fx\n", batched / single);
  std::printf("through shmschedd (submits through shared memory, counted once acknowledged):\n");
  for (const bool events : {false, true}) {
    const double rate = through_shmschedd(bin_dir, plugin_dir, etcd.client_url(), n, events);
    std::printf("  %-52s %10.0f /s  (%d executions)\n",
                events ? "etcd.write_events = true (the default)"
                       : "etcd.write_events = false (commands only)",
                rate, n);
  }

  // Claims: the executions c0.. dispatched by a running plugin whose watch reports claims.
  std::printf("claim latency (%d claims):\n", claims);
  Host host;
  Plugin plugin(plugin_dir,
                {{"endpoints", etcd.client_url()}, {"prefix", "/bench"}, {"write_events", "false"}},
                host);
  {
    std::vector<std::string> ids, bodies;
    std::vector<shmsched_message> msgs;
    std::vector<std::uint64_t> tokens;
    for (int i = 0; i < claims; ++i) {
      ids.push_back("c" + std::to_string(i));
      bodies.push_back(command_body(ids.back()));
    }
    for (int i = 0; i < claims; ++i) {
      msgs.push_back({"CreatePodCommand", ids[i].c_str(), "CreatePodCommand",
                      reinterpret_cast<const std::uint8_t*>(bodies[i].data()), bodies[i].size(),
                      1});
      tokens.push_back(static_cast<std::uint64_t>(i + 1));
    }
    plugin.publish(msgs, tokens);
    while (host.delivered < static_cast<std::uint64_t>(claims)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  EtcdClaimClient worker(etcd.client_url());
  // The first claim also waits for the plugin's start-up read of every task key (above: those of
  // the dispatch runs), which it finishes before it watches.
  std::vector<double> answered, seen;
  for (int i = 0; i < claims; ++i) {
    const std::string id = "c" + std::to_string(i);
    const auto t0 = Clock::now();
    if (!worker.claim("/bench/tasks/" + id + "/owner", "bench-worker")) {
      std::fprintf(stderr, "claim of %s lost\n", id.c_str());
      return 1;
    }
    answered.push_back(ns_since(t0));
    std::unique_lock lock(host.mu);
    if (!host.claimed_cv.wait_for(lock, std::chrono::seconds(10),
                                  [&] { return host.claimed.count(id) > 0; })) {
      std::fprintf(stderr, "the plugin never reported the claim of %s\n", id.c_str());
      return 1;
    }
    seen.push_back(std::chrono::duration<double, std::nano>(host.claimed[id] - t0).count());
  }
  const auto slowest = std::max_element(seen.begin(), seen.end());
  std::printf("  slowest claim through the watch: #%d of %d, %.1f ms\n",
              static_cast<int>(slowest - seen.begin()) + 1, claims, *slowest / 1e6);
  const auto shm = shm_claim_latency(claims * 10);
  print_latency("shared memory: Producer::claim (one CAS)", shm);
  const auto a = percentiles(answered);
  const auto s = percentiles(seen);
  print_latency("etcd: claim transaction answered (worker knows)", a);
  print_latency("etcd: claim handed to the supervisor (watch)", s);
  std::printf("  etcd claim (watch) / shared-memory claim at p50: %.0fx, at p99: %.0fx\n",
              s.p50 / shm.p50, s.p99 / shm.p99);
  if (footprint_run) churn(plugin_dir, n);
  return 0;
}
