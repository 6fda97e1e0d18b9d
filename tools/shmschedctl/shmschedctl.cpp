// shmschedctl: the command line for people (and scripts, with --json).
//
//   shmschedctl submit --user alice [--priority high] [--payload 'print(1)'] [--id ID] ...
//   shmschedctl cancel ID | status ID | list [--state queued] | stats | top | watch
//   shmschedctl complete ID [--exit-code 0] | fail ID --error text [--retry]
//   shmschedctl audit [--dir DIR] [--execution ID] [--worker W] [--type T] [--follow]
//   shmschedctl audit verify [--dir DIR]
#include <algorithm>
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <thread>
#include <zmq.hpp>

#include "shmsched/audit/format.h"
#include "shmsched/audit/reader.h"
#include "shmsched/audit/verifier.h"
#include "shmsched/ipc/client.h"

namespace po = boost::program_options;
using namespace shmsched;
using ipc::protocol::MapBuilder;

namespace {

// ---- Printing msgpack values ----------------------------------------------------------------

void json_string(std::ostream& os, std::string_view s) {
  os << '"';
  for (unsigned char ch : s) {
    switch (ch) {
      case '"':
        os << "\\\"";
        break;
      case '\\':
        os << "\\\\";
        break;
      case '\n':
        os << "\\n";
        break;
      case '\r':
        os << "\\r";
        break;
      case '\t':
        os << "\\t";
        break;
      default:
        if (ch < 0x20) {
          os << "\\u" << std::hex << std::setw(4) << std::setfill('0') << static_cast<int>(ch)
             << std::dec << std::setfill(' ');
        } else {
          os << ch;
        }
    }
  }
  os << '"';
}

void json(std::ostream& os, const msgpack::object& o) {
  switch (o.type) {
    case msgpack::type::NIL:
      os << "null";
      break;
    case msgpack::type::BOOLEAN:
      os << (o.via.boolean ? "true" : "false");
      break;
    case msgpack::type::POSITIVE_INTEGER:
      os << o.via.u64;
      break;
    case msgpack::type::NEGATIVE_INTEGER:
      os << o.via.i64;
      break;
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64:
      os << o.via.f64;
      break;
    case msgpack::type::STR:
      json_string(os, std::string_view(o.via.str.ptr, o.via.str.size));
      break;
    case msgpack::type::BIN:
      json_string(os, std::string_view(o.via.bin.ptr, o.via.bin.size));
      break;
    case msgpack::type::ARRAY: {
      os << '[';
      for (std::uint32_t i = 0; i < o.via.array.size; ++i) {
        if (i) os << ',';
        json(os, o.via.array.ptr[i]);
      }
      os << ']';
      break;
    }
    case msgpack::type::MAP: {
      os << '{';
      for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
        if (i) os << ',';
        const auto& kv = o.via.map.ptr[i];
        if (kv.key.type == msgpack::type::STR) {
          json(os, kv.key);
        } else {
          std::ostringstream k;
          json(k, kv.key);
          json_string(os, k.str());
        }
        os << ':';
        json(os, kv.val);
      }
      os << '}';
      break;
    }
    default:
      os << "null";
  }
}

std::string text(const msgpack::object& o) {
  if (o.type == msgpack::type::STR) return std::string(o.via.str.ptr, o.via.str.size);
  if (o.type == msgpack::type::BIN) return "<" + std::to_string(o.via.bin.size) + " bytes>";
  std::ostringstream os;
  json(os, o);
  return os.str();
}

// ---- Commands -------------------------------------------------------------------------------

struct Globals {
  std::string runtime_dir;
  std::string segment = "shmsched";
  bool json = false;
  int timeout_ms = 5000;
};

ipc::ClientOptions client_options(const Globals& g, bool use_shm) {
  ipc::ClientOptions o;
  o.segment = g.segment;
  o.endpoint = "ipc://" + ipc::resolve_runtime_dir(g.runtime_dir) + "/ingress.sock";
  o.use_shared_memory = use_shm;
  o.timeout = std::chrono::milliseconds(g.timeout_ms);
  return o;
}

// Prints a reply; returns the exit code (0 ok, 1 refused).
int print_reply(const Globals& g, const msgpack::object& r, const std::string& what) {
  const bool ok = ipc::get_bool(r, "ok").value_or(false);
  if (g.json) {
    json(std::cout, r);
    std::cout << "\n";
  } else if (!ok) {
    std::cerr << what << ": " << ipc::get_string(r, "error").value_or("error") << ": "
              << ipc::get_string(r, "message").value_or("") << "\n";
  } else {
    // Keys in a column as wide as the longest, with a space after it.
    std::size_t width = 0;
    for (const auto& kv : r.via.map) width = std::max(width, text(kv.key).size() + 1);
    for (const auto& kv : r.via.map) {
      const std::string key = text(kv.key);
      if (key == "ok") continue;
      std::cout << std::left << std::setw(static_cast<int>(width)) << key << text(kv.val) << "\n";
    }
  }
  return ok ? 0 : 1;
}

int cmd_submit(const Globals& g, const po::variables_map& vm) {
  ipc::protocol::SubmitOp op;
  op.user_id = vm["user"].as<std::string>();
  if (vm.count("id")) op.execution_id = vm["id"].as<std::string>();
  const std::string prio = vm["priority"].as<std::string>();
  auto p = parse_priority(prio);
  if (!p && prio.size() == 1 && prio[0] >= '0' && prio[0] <= '4')
    p = priority_from_int(prio[0] - '0');
  if (!p) {
    std::cerr << "submit: --priority must be critical, high, normal, low, background or 0..4\n";
    return 2;
  }
  op.priority = *p;
  std::string payload;
  if (vm.count("payload-file")) {
    std::ifstream in(vm["payload-file"].as<std::string>(), std::ios::binary);
    if (!in) {
      std::cerr << "submit: cannot read " << vm["payload-file"].as<std::string>() << "\n";
      return 2;
    }
    payload.assign(std::istreambuf_iterator<char>(in), {});
  } else {
    payload = vm["payload"].as<std::string>();
  }
  const auto* b = reinterpret_cast<const std::byte*>(payload.data());
  op.payload.assign(b, b + payload.size());
  if (vm.count("capability"))
    op.required_capabilities = vm["capability"].as<std::vector<std::string>>();
  if (vm.count("meta")) {
    for (const auto& kv : vm["meta"].as<std::vector<std::string>>()) {
      const auto eq = kv.find('=');
      if (eq == std::string::npos) {
        std::cerr << "submit: --meta takes key=value, not '" << kv << "'\n";
        return 2;
      }
      op.metadata.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
    }
  }
  op.timeout_seconds = vm["timeout-seconds"].as<std::uint32_t>();
  if (vm.count("durability")) {
    const std::string d = vm["durability"].as<std::string>();
    if (d != "memory" && d != "disk") {
      std::cerr << "submit: --durability takes memory or disk, not '" << d << "'\n";
      return 2;
    }
    op.durability =
        d == "disk" ? ipc::protocol::Durability::kDisk : ipc::protocol::Durability::kMemory;
  }
  ipc::Client client(client_options(g, !vm.count("via-ingress")));
  const auto r = client.submit(op);
  const bool ok = r.result.accepted();
  if (g.json) {
    std::cout << "{\"ok\":" << (ok ? "true" : "false") << ",\"execution_id\":";
    json_string(std::cout, r.execution_id);
    if (ok) {
      std::cout << ",\"queue_position\":" << r.result.queue_position;
    } else {
      std::cout << ",\"error\":";
      json_string(std::cout, admission_name(r.result.admission));
      std::cout << ",\"message\":";
      json_string(std::cout, r.result.message);
    }
    std::cout << ",\"via\":\"" << (r.via_shared_memory ? "shared_memory" : "ingress") << "\"}\n";
  } else if (ok) {
    std::cout << "accepted " << r.execution_id << " at queue position " << r.result.queue_position
              << (r.via_shared_memory ? " (shared memory)" : " (ingress)") << "\n";
  } else {
    std::cerr << "rejected " << r.execution_id << ": " << admission_name(r.result.admission) << ": "
              << r.result.message << "\n";
  }
  return ok ? 0 : 1;
}

int cmd_simple(const Globals& g, const std::vector<std::byte>& request, const std::string& what) {
  ipc::Client client(client_options(g, false));
  auto oh = client.call(request);
  return print_reply(g, oh.get(), what);
}

int cmd_list(const Globals& g, const po::variables_map& vm) {
  MapBuilder m;
  m.str("op", "list").integer("limit", vm["limit"].as<std::int64_t>());
  if (vm.count("state")) m.str("state", vm["state"].as<std::string>());
  if (vm.count("user")) m.str("user_id", vm["user"].as<std::string>());
  ipc::Client client(client_options(g, false));
  auto oh = client.call(m.finish());
  const auto& r = oh.get();
  if (g.json || !ipc::get_bool(r, "ok").value_or(false)) return print_reply(g, r, "list");
  const auto* items = ipc::find_field(r, "executions");
  std::printf("%-38s %-10s %-10s %-16s %7s %8s\n", "EXECUTION", "STATE", "PRIORITY", "USER",
              "ATTEMPT", "POSITION");
  if (items && items->type == msgpack::type::ARRAY) {
    for (const auto& e : items->via.array) {
      const auto pos = ipc::get_int(e, "queue_position");
      std::printf("%-38s %-10s %-10s %-16s %7lld %8s\n",
                  ipc::get_string(e, "execution_id").value_or("").c_str(),
                  ipc::get_string(e, "state").value_or("").c_str(),
                  ipc::get_string(e, "priority").value_or("").c_str(),
                  ipc::get_string(e, "user_id").value_or("").c_str(),
                  static_cast<long long>(ipc::get_int(e, "attempt").value_or(0)),
                  pos ? std::to_string(*pos).c_str() : "-");
    }
  }
  return 0;
}

// The live workers: capabilities, capacity, load, last heartbeat; then what waits for a worker.
int cmd_workers(const Globals& g) {
  ipc::Client client(client_options(g, false));
  auto oh = client.call(MapBuilder().str("op", "workers").finish());
  const auto& r = oh.get();
  if (g.json || !ipc::get_bool(r, "ok").value_or(false)) return print_reply(g, r, "workers");
  const auto* items = ipc::find_field(r, "workers");
  std::printf("%-24s %-30s %8s %6s %14s %5s\n", "WORKER", "CAPABILITIES", "CAPACITY", "LOAD",
              "HEARTBEAT AGO", "LOCAL");
  if (items && items->type == msgpack::type::ARRAY) {
    for (const auto& w : items->via.array) {
      std::string caps;
      if (const auto* c = ipc::find_field(w, "capabilities");
          c && c->type == msgpack::type::ARRAY) {
        for (const auto& cap : c->via.array) {
          if (cap.type != msgpack::type::STR) continue;
          if (!caps.empty()) caps += ",";
          caps.append(cap.via.str.ptr, cap.via.str.size);
        }
      }
      std::printf("%-24s %-30s %8lld %6lld %11lld ms %5s\n",
                  ipc::get_string(w, "worker_id").value_or("").c_str(),
                  caps.empty() ? "-" : caps.c_str(),
                  static_cast<long long>(ipc::get_int(w, "capacity").value_or(0)),
                  static_cast<long long>(ipc::get_int(w, "load").value_or(0)),
                  static_cast<long long>(ipc::get_int(w, "last_heartbeat_ms_ago").value_or(0)),
                  ipc::get_bool(w, "local").value_or(false) ? "yes" : "no");
    }
  }
  std::printf("\nwaiting for a worker: %lld\n",
              static_cast<long long>(ipc::get_int(r, "waiting").value_or(0)));
  if (r.type == msgpack::type::MAP) {
    for (const auto& kv : r.via.map) {
      if (kv.key.type != msgpack::type::STR) continue;
      const std::string key(kv.key.via.str.ptr, kv.key.via.str.size);
      if (key.rfind("waiting.", 0) != 0 || kv.val.type != msgpack::type::POSITIVE_INTEGER) continue;
      std::printf("  needing %-40s %lld\n", key.substr(8).c_str(),
                  static_cast<long long>(kv.val.via.u64));
    }
  }
  return 0;
}

std::int64_t counter(const msgpack::object& r, const char* name) {
  const auto* c = ipc::find_field(r, "counters");
  return c ? ipc::get_int(*c, name).value_or(0) : 0;
}

int cmd_top(const Globals& g, const po::variables_map& vm) {
  ipc::Client client(client_options(g, false));
  const auto interval = std::chrono::milliseconds(vm["interval"].as<int>());
  const int iterations = vm["iterations"].as<int>();
  std::int64_t last_sub = -1, last_disp = -1, last_done = -1;
  auto last_t = std::chrono::steady_clock::now();
  for (int i = 0; iterations <= 0 || i < iterations; ++i) {
    auto oh = client.call(MapBuilder().str("op", "stats").finish());
    const auto& r = oh.get();
    if (g.json) {
      json(std::cout, r);
      std::cout << std::endl;
    } else {
      const auto now = std::chrono::steady_clock::now();
      const double secs = std::chrono::duration<double>(now - last_t).count();
      auto rate = [&](std::int64_t cur, std::int64_t& last) {
        const double v = last < 0 || secs <= 0 ? 0 : (cur - last) / secs;
        last = cur;
        return v;
      };
      const double sub = rate(counter(r, "submitted"), last_sub);
      const double disp = rate(counter(r, "dispatched"), last_disp);
      const double done = rate(counter(r, "completed") + counter(r, "failed"), last_done);
      last_t = now;
      if (iterations != 1) std::cout << "\x1b[H\x1b[2J";
      std::cout << "shmsched top   (every " << interval.count() << " ms, Ctrl-C to quit)\n\n";
      std::cout << "active " << ipc::get_int(r, "active").value_or(0) << " / "
                << ipc::get_int(r, "capacity").value_or(0) << "    queued " << counter(r, "queued")
                << " / " << ipc::get_int(r, "queue_capacity").value_or(0) << "\n\n";
      std::cout << "priority       queued  oldest wait\n";
      const auto* d = ipc::find_field(r, "queue_depth");
      const auto* w = ipc::find_field(r, "oldest_wait_ms");
      for (std::size_t l = 0; l < kPriorityLevels; ++l) {
        const auto n = d ? ipc::get_int(*d, kPriorityNames[l]).value_or(0) : 0;
        const auto ms = w ? ipc::get_int(*w, kPriorityNames[l]).value_or(0) : 0;
        std::cout << "  " << std::left << std::setw(11) << kPriorityNames[l] << std::right
                  << std::setw(8) << n << std::setw(11) << (n ? std::to_string(ms) + " ms" : "-")
                  << "  "
                  << std::string(static_cast<std::size_t>(std::min<std::int64_t>(n, 40)), '#')
                  << "\n";
      }
      std::cout << std::fixed << std::setprecision(1) << "\nrates/s: submitted " << sub
                << "  dispatched " << disp << "  finished " << done << "\n";
      std::cout << "totals: completed " << counter(r, "completed") << "  failed "
                << counter(r, "failed") << "  cancelled " << counter(r, "cancelled") << "  expired "
                << counter(r, "expired") << "  retried " << counter(r, "retried")
                << "  publish failures " << counter(r, "publish_failures") << "\n";
      std::cout << std::flush;
    }
    if (iterations <= 0 || i + 1 < iterations) std::this_thread::sleep_for(interval);
  }
  return 0;
}

int cmd_watch(const Globals& g, const po::variables_map& vm) {
  zmq::context_t ctx;
  zmq::socket_t sub(ctx, zmq::socket_type::sub);
  const std::string ep = vm.count("endpoint")
                             ? vm["endpoint"].as<std::string>()
                             : "ipc://" + ipc::resolve_runtime_dir(g.runtime_dir) + "/events.sock";
  sub.connect(ep);
  sub.set(zmq::sockopt::subscribe, vm.count("topic") ? vm["topic"].as<std::string>() : "");
  const int count = vm["count"].as<int>();
  for (int n = 0; count <= 0 || n < count; ++n) {
    zmq::message_t topic, body;
    if (!sub.recv(topic) || !sub.recv(body)) return 1;
    auto oh = msgpack::unpack(static_cast<const char*>(body.data()), body.size());
    if (g.json) {
      json(std::cout, oh.get());
      std::cout << std::endl;
    } else {
      std::cout << std::left << std::setw(20) << topic.to_string() << " "
                << ipc::get_string(oh.get(), "execution_id").value_or("") << " ";
      json(std::cout, oh.get());
      std::cout << std::endl;
    }
  }
  return 0;
}

// ---- The audit log (read from its directory; shmschedd need not run) -------------------------

std::string utc_time(std::int64_t ns) {
  const std::time_t secs = static_cast<std::time_t>(ns / 1'000'000'000);
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  char buf[64];
  const std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%09lldZ", static_cast<long long>(ns % 1'000'000'000));
  return buf;
}

// A value as it is, unless a reader could not tell where it ends: then as a JSON string.
void field(std::ostream& os, std::string_view key, std::string_view value) {
  os << ' ' << key << '=';
  const bool plain = !value.empty() && value.find_first_of(" \t\n\r\"=") == std::string::npos;
  if (plain) {
    os << value;
  } else {
    json_string(os, value);
  }
}

void print_audit_record(const Globals& g, const audit::AuditRecord& r) {
  if (g.json) {
    std::cout << "{\"seq\":" << r.seq << ",\"time_ns\":" << r.time_ns << ",\"time\":\""
              << utc_time(r.time_ns) << "\",\"type\":";
    json_string(std::cout, r.type);
    std::cout << ",\"execution_id\":";
    json_string(std::cout, r.execution_id);
    std::cout << ",\"worker_id\":";
    json_string(std::cout, r.worker_id);
    std::cout << ",\"user_id\":";
    json_string(std::cout, r.user_id);
    std::cout << ",\"detail\":{";
    bool first = true;
    for (const auto& [k, v] : r.detail) {
      if (!first) std::cout << ',';
      first = false;
      json_string(std::cout, k);
      std::cout << ':';
      json_string(std::cout, v);
    }
    std::cout << "}}\n";
    return;
  }
  std::cout << std::left << std::setw(8) << r.seq << ' ' << utc_time(r.time_ns) << ' '
            << std::setw(18) << r.type << std::right;
  if (!r.execution_id.empty()) field(std::cout, "execution", r.execution_id);
  if (!r.worker_id.empty()) field(std::cout, "worker", r.worker_id);
  if (!r.user_id.empty()) field(std::cout, "user", r.user_id);
  for (const auto& [k, v] : r.detail) field(std::cout, k, v);
  std::cout << '\n';
}

int cmd_audit_verify(const Globals& g, const std::string& dir) {
  const auto r = audit::verify_audit_dir(dir);
  if (g.json) {
    std::cout << "{\"ok\":" << (r.ok() ? "true" : "false") << ",\"records\":" << r.records
              << ",\"files\":" << r.files << ",\"first_seq\":" << r.first_seq
              << ",\"last_seq\":" << r.last_seq;
    if (r.ok()) {
      std::cout << ",\"last_hash\":\"" << audit::to_hex(r.last_hash) << "\"";
    } else {
      std::cout << ",\"error\":\"" << audit::verify_problem_name(r.problem)
                << "\",\"seq\":" << r.seq << ",\"file\":";
      json_string(std::cout, r.file);
      std::cout << ",\"offset\":" << r.offset;
    }
    std::cout << ",\"message\":";
    json_string(std::cout, r.message);
    std::cout << "}\n";
  } else if (r.ok()) {
    std::cout << "ok: " << r.message << "\n";
  } else {
    std::cerr << "audit verify: " << dir << ": " << r.message << "\n";
  }
  return r.ok() ? 0 : 1;
}

int cmd_audit(const Globals& g, const po::variables_map& vm, const std::vector<std::string>& args) {
  const std::string dir =
      vm.count("dir") ? vm["dir"].as<std::string>() : std::string(audit::kDefaultDir);
  if (args.size() == 1 && args[0] == "verify") return cmd_audit_verify(g, dir);
  if (!args.empty()) throw std::invalid_argument("audit takes no argument but 'verify'");
  audit::AuditFilter filter;
  if (vm.count("execution")) filter.execution_id = vm["execution"].as<std::string>();
  if (vm.count("worker")) filter.worker_id = vm["worker"].as<std::string>();
  if (vm.count("type")) filter.type = vm["type"].as<std::string>();
  audit::AuditReader reader(dir, filter);
  const bool follow = vm.count("follow") > 0;
  for (;;) {
    const auto r = follow ? reader.wait_next(std::chrono::seconds(1)) : reader.next();
    if (r) {
      print_audit_record(g, *r);
      if (follow) std::cout << std::flush;
    } else if (!follow) {
      return 0;
    }
  }
}

void usage(const po::options_description& globals) {
  std::cout
      << "shmschedctl: talk to a running shmschedd\n\n"
         "usage: shmschedctl [global options] <command> [command options]\n\n"
         "commands:\n"
         "  submit    --user U [--priority P] [--payload S | --payload-file F] [--id ID]\n"
         "            [--capability C]... [--meta k=v]... [--timeout-seconds N] [--via-ingress]\n"
         "            [--durability memory|disk]   disk: answered once on shmschedd's journal\n"
         "  cancel    ID [--reason R]\n"
         "  status    ID\n"
         "  list      [--state queued|dispatched|running] [--user U] [--limit N]\n"
         "  stats\n"
         "  workers                                     live workers, their load, what waits\n"
         "  top       [--interval MS] [--iterations N]   live view of depths, rates, totals\n"
         "  watch     [--topic T] [--count N]             print events as they are published\n"
         "  complete  ID [--exit-code N] [--worker W]\n"
         "  fail      ID --error TEXT [--retry] [--worker W]\n"
         "  audit     [--dir D] [--execution ID] [--worker W] [--type T] [--follow]\n"
         "            print the audit log (default D: "
      << audit::kDefaultDir
      << ")\n"
         "  audit verify [--dir D]                     check the audit log's hash chain\n\n"
      << globals << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  Globals g;
  po::options_description globals("global options");
  globals.add_options()("help,h", "this help")(
      "runtime-dir", po::value<std::string>(&g.runtime_dir),
      "where shmschedd's sockets are (default: $RUNTIME_DIRECTORY, else /run/shmsched)")(
      "segment", po::value<std::string>(&g.segment)->default_value(g.segment),
      "shared-memory segment name")("json", po::bool_switch(&g.json), "machine-readable output")(
      "timeout-ms", po::value<int>(&g.timeout_ms)->default_value(g.timeout_ms),
      "how long to wait for an answer")("command", po::value<std::string>(), "")(
      "args", po::value<std::vector<std::string>>(), "");
  po::options_description cmd("command options");
  cmd.add_options()("user", po::value<std::string>(), "")(
      "priority", po::value<std::string>()->default_value("normal"), "")(
      "payload", po::value<std::string>()->default_value(""), "")(
      "payload-file", po::value<std::string>(), "")("id", po::value<std::string>(), "")(
      "capability", po::value<std::vector<std::string>>(), "")(
      "meta", po::value<std::vector<std::string>>(), "")(
      "timeout-seconds", po::value<std::uint32_t>()->default_value(0), "")("via-ingress", "")(
      "durability", po::value<std::string>(), "")("reason",
                                                  po::value<std::string>()->default_value(""),
                                                  "")("state", po::value<std::string>(), "")(
      "limit", po::value<std::int64_t>()->default_value(100), "")(
      "interval", po::value<int>()->default_value(1000), "")(
      "iterations", po::value<int>()->default_value(0), "")("topic", po::value<std::string>(), "")(
      "count", po::value<int>()->default_value(0), "")("endpoint", po::value<std::string>(), "")(
      "exit-code", po::value<std::int64_t>(), "")("worker", po::value<std::string>(), "")(
      "error", po::value<std::string>(), "")("retry", "")("dir", po::value<std::string>(), "")(
      "execution", po::value<std::string>(), "")("type", po::value<std::string>(), "")("follow",
                                                                                       "");
  po::options_description all;
  all.add(globals).add(cmd);
  po::positional_options_description pos;
  pos.add("command", 1).add("args", -1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(all).positional(pos).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "shmschedctl: " << e.what() << " (see shmschedctl --help)\n";
    return 2;
  }
  if (vm.count("help") || !vm.count("command")) {
    usage(globals);
    return vm.count("help") ? 0 : 2;
  }
  const std::string command = vm["command"].as<std::string>();
  const auto args =
      vm.count("args") ? vm["args"].as<std::vector<std::string>>() : std::vector<std::string>{};
  auto need_id = [&]() -> std::string {
    if (args.size() != 1) throw std::invalid_argument(command + " takes exactly one execution id");
    return args[0];
  };
  try {
    if (command == "submit") {
      if (!vm.count("user")) throw std::invalid_argument("submit needs --user");
      return cmd_submit(g, vm);
    }
    if (command == "cancel") {
      MapBuilder m;
      m.str("op", "cancel").str("execution_id", need_id());
      if (!vm["reason"].as<std::string>().empty()) m.str("reason", vm["reason"].as<std::string>());
      return cmd_simple(g, m.finish(), "cancel");
    }
    if (command == "status")
      return cmd_simple(g, MapBuilder().str("op", "status").str("execution_id", need_id()).finish(),
                        "status");
    if (command == "stats") return cmd_simple(g, MapBuilder().str("op", "stats").finish(), "stats");
    if (command == "list") return cmd_list(g, vm);
    if (command == "workers") return cmd_workers(g);
    if (command == "top") return cmd_top(g, vm);
    if (command == "watch") return cmd_watch(g, vm);
    if (command == "audit") return cmd_audit(g, vm, args);
    if (command == "complete") {
      MapBuilder m;
      m.str("op", "complete").str("execution_id", need_id());
      if (vm.count("exit-code")) m.integer("exit_code", vm["exit-code"].as<std::int64_t>());
      if (vm.count("worker")) m.str("worker_id", vm["worker"].as<std::string>());
      return cmd_simple(g, m.finish(), "complete");
    }
    if (command == "fail") {
      if (!vm.count("error")) throw std::invalid_argument("fail needs --error");
      MapBuilder m;
      m.str("op", "fail")
          .str("execution_id", need_id())
          .str("error", vm["error"].as<std::string>());
      if (vm.count("retry")) m.boolean("retry", true);
      if (vm.count("worker")) m.str("worker_id", vm["worker"].as<std::string>());
      return cmd_simple(g, m.finish(), "fail");
    }
    std::cerr << "shmschedctl: unknown command '" << command << "' (see shmschedctl --help)\n";
    return 2;
  } catch (const std::invalid_argument& e) {
    std::cerr << "shmschedctl: " << e.what() << " (see shmschedctl --help)\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "shmschedctl: " << e.what() << "\n";
    return 1;
  }
}
