#include "config.h"

#include <grp.h>
#include <unistd.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <type_traits>

#include "http_server.h"
#include "shmsched/ipc/client.h"

extern char** environ;

namespace po = boost::program_options;

// Unsigned settings: boost's own conversion (lexical_cast) takes "-1" for 2^64-1, which would
// pass every "at least" check (a huge queue, snapshots off). Found by argument-dependent lookup
// (boost::any's namespace) before boost's generic validate, for every unsigned option.
namespace boost {
template <class T>
requires(std::is_unsigned_v<T> &&
         !std::is_same_v<T, bool>) void validate(boost::any& v,
                                                 const std::vector<std::string>& values, T*, int) {
  // As boost's own: a setting given twice is refused, not silently the last one.
  program_options::validators::check_first_occurrence(v);
  const std::string& s = program_options::validators::get_single_string(values);
  if (!s.empty() && s.front() == '-') {
    throw program_options::invalid_option_value(s);
  }
  try {
    v = boost::any(boost::lexical_cast<T>(s));
  } catch (const boost::bad_lexical_cast&) {
    throw program_options::invalid_option_value(s);
  }
}
}  // namespace boost

namespace shmsched::daemon {
namespace {

using ipc::ConfigError;
using group_entry_t = struct ::group;

// Flags are spelled with dashes (--max-queue-size), keys with underscores (max_queue_size):
// rewrite the option name of each "--name[=value]" argument to the key.
std::vector<std::string> normalise_flags(int argc, const char* const* argv) {
  std::vector<std::string> out;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) == 0) {
      const auto eq = a.find('=');
      std::replace(a.begin() + 2,
                   eq == std::string::npos ? a.end() : a.begin() + static_cast<std::ptrdiff_t>(eq),
                   '-', '_');
    }
    out.push_back(a);
  }
  return out;
}

struct Raw {
  std::string check_identity = "true";
  std::string dashboard_cancel = "false";
  std::string journal_salvage = "false";
  std::string journal_dir;  // empty: $STATE_DIRECTORY/journal under systemd, else off
  std::string mode = "0660";
  std::string transports = "zeromq";
  std::string optional_transports;
};

po::options_description describe(Config& c, Raw& raw) {
  po::options_description general("General");
  general.add_options()("help", "print this help and exit")("version",
                                                            "print the version and exit")(
      "check_config",
      "check the configuration (values, transports' plugin files) and exit: 0 if it is good, 2 "
      "if not")("config", po::value<std::string>(&c.config_file),
                "configuration file (INI: key = value, [transport] sections)")(
      "segment", po::value<std::string>(&c.segment)->default_value(c.segment),
      "name of the shared-memory segment (/dev/shm/<name>)")(
      "runtime_dir", po::value<std::string>(&c.runtime_dir),
      "directory for sockets and the lock file (default: $RUNTIME_DIRECTORY, else /run/shmsched)")(
      "plugin_dir", po::value<std::string>(&c.plugin_dir),
      "directory of transport plugins (libshmsched_transport_<name>.so)")(
      "transports", po::value<std::string>(&raw.transports)->default_value(raw.transports),
      "comma-separated transports to run, e.g. zeromq,kafka")(
      "optional_transports",
      po::value<std::string>(&raw.optional_transports)->default_value(raw.optional_transports),
      "those of the transports that may fail to start: logged and skipped (any other stops the "
      "start)")("log_level", po::value<std::string>(&c.log_level)->default_value(c.log_level),
                "trace, debug, info, warn, error")(
      "ingress_tcp", po::value<std::string>(&c.ingress_tcp),
      "optional extra ingress endpoint, e.g. tcp://127.0.0.1:5555")(
      "standby", po::bool_switch(&c.standby),
      "if another shmschedd holds the lock, wait and take over when it exits")(
      "check_identity",
      po::value<std::string>(&raw.check_identity)->default_value(raw.check_identity),
      "local ingress clients act only for their own user (true, false)")(
      "trusted_group", po::value<std::string>(&c.trusted_group),
      "members act for any user (default: shmschedd's own group)")(
      "worker_group", po::value<std::string>(&c.worker_group),
      "members may use worker operations (default: the trusted group)");
  po::options_description queue("Queue (fixed when the segment is created)");
  queue.add_options()(
      "max_queue_size",
      po::value<std::uint64_t>(&c.queue.max_queue_size)->default_value(c.queue.max_queue_size),
      "queued executions at most")("max_payload_bytes",
                                   po::value<std::uint64_t>(&c.queue.max_payload_bytes)
                                       ->default_value(c.queue.max_payload_bytes),
                                   "largest payload")(
      "max_extras_bytes",
      po::value<std::uint64_t>(&c.queue.max_extras_bytes)->default_value(c.queue.max_extras_bytes),
      "room for capabilities and metadata")(
      "max_users", po::value<std::uint64_t>(&c.queue.max_users)->default_value(c.queue.max_users),
      "distinct users with work at once")(
      "max_active",
      po::value<std::uint64_t>(&c.queue.max_active)->default_value(c.queue.max_active),
      "room for active executions (>= max_active_executions)")(
      "max_participants",
      po::value<std::uint64_t>(&c.queue.max_participants)->default_value(c.queue.max_participants),
      "producers attached at once")(
      "segment_mode", po::value<std::string>(&raw.mode)->default_value(raw.mode),
      "file mode of the segment (octal); its group may submit directly");
  po::options_description sched("Scheduling (reloaded on SIGHUP)");
  sched.add_options()("max_executions_per_user",
                      po::value<std::uint64_t>(&c.queue.max_executions_per_user)
                          ->default_value(c.queue.max_executions_per_user),
                      "per-user cap, queued + active")(
      "max_active_executions",
      po::value<std::uint64_t>(&c.max_active_executions)->default_value(c.max_active_executions),
      "dispatched and unfinished executions at most")(
      "max_attempts", po::value<std::uint32_t>(&c.max_attempts)->default_value(c.max_attempts),
      "attempts per execution (1 = no retry)")(
      "retry_backoff_ms",
      po::value<std::uint64_t>(&c.retry_backoff_ms)->default_value(c.retry_backoff_ms),
      "first delay before a retry; doubles per attempt")(
      "dispatch_backoff_ms",
      po::value<std::uint64_t>(&c.dispatch_backoff_ms)->default_value(c.dispatch_backoff_ms),
      "first delay after a failed publish; doubles per failure")(
      "max_backoff_ms",
      po::value<std::uint64_t>(&c.max_backoff_ms)->default_value(c.max_backoff_ms),
      "upper bound of both backoffs")(
      "stale_timeout_seconds",
      po::value<std::uint64_t>(&c.stale_timeout_seconds)->default_value(c.stale_timeout_seconds),
      "queued executions older than this expire")(
      "aging_seconds", po::value<std::uint64_t>(&c.aging_seconds)->default_value(c.aging_seconds),
      "lift an entry one priority level per this many seconds of waiting (0 = off)")(
      "default_timeout_seconds",
      po::value<std::uint64_t>(&c.default_timeout_seconds)
          ->default_value(c.default_timeout_seconds),
      "timeout of a dispatched execution that names no timeout_seconds (0 = none)")(
      "timeout_grace_seconds",
      po::value<std::uint64_t>(&c.timeout_grace_seconds)->default_value(c.timeout_grace_seconds),
      "added to every timeout before a dispatched execution fails with reason timeout")(
      "finished_retention_count",
      po::value<std::uint64_t>(&c.finished_retention_count)
          ->default_value(c.finished_retention_count),
      "finished executions remembered for status, list and duplicate detection, at most")(
      "finished_retention_seconds",
      po::value<std::uint64_t>(&c.finished_retention_seconds)
          ->default_value(c.finished_retention_seconds),
      "... and for at most this long")(
      "worker_timeout_ms",
      po::value<std::uint64_t>(&c.worker_timeout_ms)->default_value(c.worker_timeout_ms),
      "a worker not heard from (heartbeat) this long is gone; its executions go back (0 = never)")(
      "claim_timeout_ms",
      po::value<std::uint64_t>(&c.claim_timeout_ms)->default_value(c.claim_timeout_ms),
      "a TaskPush not claimed this long is offered to another worker, same attempt (0 = never)")(
      "max_workers", po::value<std::uint64_t>(&c.max_workers)->default_value(c.max_workers),
      "live workers at most; a registration beyond is refused")(
      "audit_dir", po::value<std::string>(&c.audit_dir)->default_value(c.audit_dir),
      "directory of the hash-chained audit log of every state change (empty = off; fixed at "
      "start)")("audit_fsync", po::value<std::string>(&c.audit_fsync)->default_value(c.audit_fsync),
                "when the audit log is synced: batch (every write), interval, none")(
      "audit_fsync_interval_ms",
      po::value<std::uint64_t>(&c.audit_fsync_interval_ms)
          ->default_value(c.audit_fsync_interval_ms),
      "with audit_fsync = interval: sync at least this often")(
      "audit_max_file_bytes",
      po::value<std::uint64_t>(&c.audit_max_file_bytes)->default_value(c.audit_max_file_bytes),
      "an audit log file is closed before it passes this size")(
      "audit_max_files",
      po::value<std::uint32_t>(&c.audit_max_files)->default_value(c.audit_max_files),
      "audit log files kept, the current one included (0 = all)")(
      "audit_max_pending",
      po::value<std::uint64_t>(&c.audit_max_pending)->default_value(c.audit_max_pending),
      "audit records handed to the writer and not yet written, at most: beyond, the loop "
      "waits (a sync in progress is absorbed up to this)")(
      "journal_dir", po::value<std::string>(&raw.journal_dir),
      "directory of the journal of executions, so that a reboot loses no accepted execution "
      "(off = none; default: $STATE_DIRECTORY/journal under systemd, else off; fixed at start)")(
      "durability", po::value<std::string>(&c.durability)->default_value(c.durability),
      "when a submit that names no durability is acknowledged: memory (in the shared-memory "
      "queue) or disk (also synced to the journal)")(
      "journal_salvage",
      po::value<std::string>(&raw.journal_salvage)->default_value(raw.journal_salvage),
      "start over damage in the middle of the journal: keep the records before it, set the rest "
      "aside (true, false)")(
      "journal_snapshot_min_bytes",
      po::value<std::uint64_t>(&c.journal_snapshot_min_bytes)
          ->default_value(c.journal_snapshot_min_bytes),
      "journal written between two snapshots, at least; a snapshot rewrites the live executions "
      "and lets older files go (also due at twice the last snapshot)")(
      "metrics_listen", po::value<std::string>(&c.metrics_listen)->default_value(c.metrics_listen),
      "host:port of the HTTP endpoint: /metrics (Prometheus), /healthz and the dashboard (off or "
      "empty = none; fixed at start)")(
      "dashboard_cancel",
      po::value<std::string>(&raw.dashboard_cancel)->default_value(raw.dashboard_cancel),
      "the dashboard may cancel executions, for local users by the ingress's identity rules "
      "(true, false; fixed at start)")(
      "reap_interval_ms",
      po::value<std::uint64_t>(&c.reap_interval_ms)->default_value(c.reap_interval_ms),
      "how often dead producers are looked for")(
      "idle_spin_us", po::value<std::uint64_t>(&c.idle_spin_us)->default_value(c.idle_spin_us),
      "spin this long after work before sleeping (latency vs CPU)")(
      "flush_timeout_ms",
      po::value<std::uint64_t>(&c.flush_timeout_ms)->default_value(c.flush_timeout_ms),
      "how long shutdown waits for transports to deliver");
  po::options_description all(
      "shmschedd: the shmsched supervisor\n\n"
      "Options may be given as --key-name=value, as key_name = value in the\n"
      "configuration file, or as SHMSCHED_KEY_NAME in the environment.\n"
      "Transport options: <transport>.<key> in the file, --<transport>.<key>\n"
      "on the command line, SHMSCHED_<TRANSPORT>_<KEY> in the environment");
  all.add(general).add(queue).add(sched);
  return all;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

bool valid_transport_name(const std::string& n) {
  return !n.empty() && std::all_of(n.begin(), n.end(), [](char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9');
  });
}

void add_transport_option(Config& c, const std::string& dotted, const std::string& value,
                          const std::string& source) {
  const auto dot = dotted.find('.');
  if (dot == std::string::npos || dot == 0 || dot + 1 == dotted.size()) {
    throw ConfigError("unknown option '" + dotted + "' (" + source + "); see --help");
  }
  const std::string name = dotted.substr(0, dot);
  if (!valid_transport_name(name)) {
    throw ConfigError("'" + dotted + "' (" + source +
                      "): transport names are lowercase letters and digits");
  }
  c.transport_options[name][dotted.substr(dot + 1)] = value;
}

template <typename T>
void require(bool ok, const char* key, const T& value, const std::string& allowed) {
  if (!ok) {
    std::ostringstream os;
    os << key << " = " << value << " is out of range: " << allowed;
    throw ConfigError(os.str());
  }
}

// Installed, the plugins are in <prefix>/<libdir>/shmsched/plugins, and this executable in
// <prefix>/<bindir>; in a build tree, in the build's plugins/.
std::string default_plugin_dir() {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    fs::path prefix = exe.parent_path();
    for (const auto& part : fs::path(SHMSCHED_INSTALL_BINDIR)) {
      (void)part;
      prefix = prefix.parent_path();
    }
    const fs::path installed = prefix / SHMSCHED_INSTALL_PLUGIN_DIR;
    if (fs::is_directory(installed, ec)) return installed.string();
  }
  return SHMSCHED_DEFAULT_PLUGIN_DIR;
}

void validate(Config& c, const Raw& raw) {
  c.queue.validate();
  require(c.max_active_executions >= 1 && c.max_active_executions <= c.queue.max_active,
          "max_active_executions", c.max_active_executions,
          "use 1 .. max_active (" + std::to_string(c.queue.max_active) + ")");
  require(c.max_attempts >= 1 && c.max_attempts <= 1000, "max_attempts", c.max_attempts,
          "use 1 .. 1000");
  require(c.retry_backoff_ms <= c.max_backoff_ms, "retry_backoff_ms", c.retry_backoff_ms,
          "at most max_backoff_ms");
  require(c.dispatch_backoff_ms >= 1 && c.dispatch_backoff_ms <= c.max_backoff_ms,
          "dispatch_backoff_ms", c.dispatch_backoff_ms, "use 1 .. max_backoff_ms");
  // Durations are bounded (ten years) so that no arithmetic on them overflows.
  constexpr std::uint64_t kTenYears = 10ULL * 366 * 24 * 3600;
  require(c.stale_timeout_seconds >= 1 && c.stale_timeout_seconds <= kTenYears,
          "stale_timeout_seconds", c.stale_timeout_seconds, "use 1 .. 316224000 (ten years)");
  require(c.default_timeout_seconds <= kTenYears, "default_timeout_seconds",
          c.default_timeout_seconds, "use 0 .. 316224000 (ten years)");
  require(c.timeout_grace_seconds <= kTenYears, "timeout_grace_seconds", c.timeout_grace_seconds,
          "use 0 .. 316224000 (ten years)");
  require(c.finished_retention_seconds <= kTenYears, "finished_retention_seconds",
          c.finished_retention_seconds, "use 0 .. 316224000 (ten years)");
  require(c.aging_seconds <= kTenYears, "aging_seconds", c.aging_seconds,
          "use 0 .. 316224000 (ten years)");
  require(c.max_backoff_ms <= kTenYears * 1000, "max_backoff_ms", c.max_backoff_ms,
          "at most ten years");
  require(c.reap_interval_ms >= 1 && c.reap_interval_ms <= 60000, "reap_interval_ms",
          c.reap_interval_ms, "use 1 .. 60000");
  require(c.worker_timeout_ms <= 86'400'000, "worker_timeout_ms", c.worker_timeout_ms,
          "use 0 .. 86400000 (a day)");
  require(c.claim_timeout_ms <= 86'400'000, "claim_timeout_ms", c.claim_timeout_ms,
          "use 0 .. 86400000 (a day)");
  require(c.audit_fsync == "batch" || c.audit_fsync == "interval" || c.audit_fsync == "none",
          "audit_fsync", c.audit_fsync, "use batch, interval or none");
  require(c.max_workers >= 1 && c.max_workers <= 1'000'000, "max_workers", c.max_workers,
          "use 1 .. 1000000");
  require(c.audit_max_pending >= 1024 && c.audit_max_pending <= 16'777'216, "audit_max_pending",
          c.audit_max_pending, "use 1024 .. 16777216");
  require(c.audit_max_file_bytes >= 4096, "audit_max_file_bytes", c.audit_max_file_bytes,
          "use 4096 or more");
  if (c.metrics_listen == "off") c.metrics_listen.clear();
  if (!c.metrics_listen.empty()) {
    try {
      split_host_port(c.metrics_listen);
    } catch (const std::invalid_argument& e) {
      throw ConfigError(std::string("metrics_listen: ") + e.what() + " (off turns it off)");
    }
  }
  require(c.idle_spin_us <= 10000, "idle_spin_us", c.idle_spin_us, "use 0 .. 10000");
  require(c.finished_retention_count <= 10'000'000, "finished_retention_count",
          c.finished_retention_count, "use 0 .. 10000000 (memory: about 200 bytes each)");
  static const std::set<std::string> levels = {"trace", "debug",    "info", "warn",
                                               "error", "critical", "off"};
  require(levels.count(c.log_level) == 1, "log_level", c.log_level,
          "trace, debug, info, warn, error, critical or off");
  try {
    std::size_t used = 0;
    const unsigned long mode = std::stoul(raw.mode, &used, 8);
    if (used != raw.mode.size()) throw std::invalid_argument("trailing");
    c.queue.mode = static_cast<std::uint32_t>(mode);
  } catch (const std::exception&) {
    throw ConfigError("segment_mode = " + raw.mode + " is not an octal file mode such as 0660");
  }
  c.queue.validate();
  c.transports = split_list(raw.transports);
  require(!c.transports.empty(), "transports", raw.transports,
          "name at least one transport, e.g. zeromq");
  for (const auto& t : c.transports) {
    require(valid_transport_name(t), "transports", t,
            "transport names are lowercase letters and digits");
  }
  c.optional_transports = split_list(raw.optional_transports);
  for (const auto& t : c.optional_transports) {
    require(std::find(c.transports.begin(), c.transports.end(), t) != c.transports.end(),
            "optional_transports", t,
            "name transports of the transports list (" + raw.transports + ")");
  }
  c.runtime_dir = ipc::resolve_runtime_dir(c.runtime_dir);
  require(raw.check_identity == "true" || raw.check_identity == "false", "check_identity",
          raw.check_identity, "true or false");
  c.check_identity = raw.check_identity == "true";
  require(raw.dashboard_cancel == "true" || raw.dashboard_cancel == "false", "dashboard_cancel",
          raw.dashboard_cancel, "true or false");
  c.dashboard_cancel = raw.dashboard_cancel == "true";
  require(raw.journal_salvage == "true" || raw.journal_salvage == "false", "journal_salvage",
          raw.journal_salvage, "true or false");
  c.journal_salvage = raw.journal_salvage == "true";
  require(c.journal_snapshot_min_bytes >= 4096 && c.journal_snapshot_min_bytes <= (1ull << 40),
          "journal_snapshot_min_bytes", c.journal_snapshot_min_bytes,
          "use 4096 .. 1099511627776 (1 TiB)");
  if (raw.journal_dir.empty()) {
    const char* state = std::getenv("STATE_DIRECTORY");  // systemd's StateDirectory=
    c.journal_dir = state && *state ? std::string(state) + "/journal" : "";
  } else if (raw.journal_dir != "off") {
    c.journal_dir = raw.journal_dir;
  }
  require(c.durability == "memory" || c.durability == "disk", "durability", c.durability,
          "memory or disk");
  require(c.durability == "memory" || !c.journal_dir.empty(), "durability", c.durability,
          "disk needs a journal: set journal_dir");
  auto group = [](std::string& name, unsigned& gid, const char* key) {
    std::vector<char> buf(16384);
    group_entry_t g{};
    group_entry_t* found = nullptr;
    if (name.empty()) {
      gid = ::getegid();
      if (::getgrgid_r(gid, &g, buf.data(), buf.size(), &found) == 0 && found)
        name = found->gr_name;
      if (name.empty()) name = std::to_string(gid);
      return;
    }
    if (::getgrnam_r(name.c_str(), &g, buf.data(), buf.size(), &found) != 0 || !found) {
      throw ConfigError(std::string(key) + " = " + name + ": no such group");
    }
    gid = found->gr_gid;
  };
  group(c.trusted_group, c.trusted_gid, "trusted_group");
  if (c.worker_group.empty()) {
    c.worker_group = c.trusted_group;
    c.worker_gid = c.trusted_gid;
  } else {
    group(c.worker_group, c.worker_gid, "worker_group");
  }
  if (c.plugin_dir.empty()) c.plugin_dir = default_plugin_dir();
}

std::string env_to_key(const std::string& name, const po::options_description& desc) {
  // SHMSCHED_MAX_QUEUE_SIZE -> max_queue_size, for registered keys only.
  if (name.rfind("SHMSCHED_", 0) != 0) return "";
  std::string key = name.substr(9);
  std::transform(key.begin(), key.end(), key.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  // Actions, not settings: one such line in an EnvironmentFile would turn every start into one.
  if (key == "help" || key == "version" || key == "check_config") return "";
  return desc.find_nothrow(key, false) ? key : "";
}

LoadResult load(int argc, const char* const* argv) {
  LoadResult out;
  Config& c = out.config;
  Raw raw;
  po::options_description desc = describe(c, raw);
  po::variables_map vm;
  const std::vector<std::string> args = normalise_flags(argc, argv);
  // Transport options, lowest precedence first: (dotted key, value, where it came from).
  struct Extra {
    std::string key, value, source;
  };
  std::vector<Extra> extra;
  try {
    // Highest precedence is stored first: flags, then environment, then the file.
    auto parsed = po::command_line_parser(args).options(desc).allow_unregistered().run();
    for (const auto& opt : parsed.options) {
      if (opt.unregistered) {
        if (opt.string_key.rfind("--", 0) == 0 || opt.string_key.empty() || opt.value.size() != 1) {
          throw ConfigError(
              "unrecognised argument '" +
              (opt.original_tokens.empty() ? opt.string_key : opt.original_tokens[0]) +
              "'; transport options are --<transport>.<key>=<value>; see --help");
        }
      }
    }
    po::store(parsed, vm);
    po::store(
        po::parse_environment(desc, [&](const std::string& n) { return env_to_key(n, desc); }), vm);
    const std::string file = vm.count("config") ? vm["config"].as<std::string>() : "";
    if (!file.empty()) {
      std::ifstream in(file);
      if (!in) throw ConfigError("config = " + file + ": cannot read the file");
      auto from_file = po::parse_config_file(in, desc, true);
      for (const auto& opt : from_file.options) {
        if (opt.unregistered && !opt.value.empty()) {
          extra.push_back({opt.string_key, opt.value[0], "in " + file});
        }
      }
      po::store(from_file, vm);
    }
    // Transport options from the environment (middle) and flags (highest) override the file.
    for (char** e = environ; *e; ++e) {
      const std::string kv = *e;
      const auto eq = kv.find('=');
      const std::string name = kv.substr(0, eq);
      if (name.rfind("SHMSCHED_", 0) != 0 || !env_to_key(name, desc).empty()) continue;
      std::string rest = name.substr(9);
      std::transform(rest.begin(), rest.end(), rest.begin(),
                     [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
      const auto us = rest.find('_');
      if (us == std::string::npos) {
        extra.push_back({rest, kv.substr(eq + 1), "environment " + name});  // warned about
        continue;
      }
      extra.push_back({rest.substr(0, us) + "." + rest.substr(us + 1), kv.substr(eq + 1),
                       "environment " + name});
    }
    for (const auto& opt : parsed.options) {
      if (opt.unregistered) extra.push_back({opt.string_key, opt.value[0], "--" + opt.string_key});
    }
    po::notify(vm);
  } catch (const po::error& e) {
    std::string msg = e.what();
    throw ConfigError(msg + " (see shmschedd --help)");
  }
  if (vm.count("help")) {
    out.show_help = true;
    std::ostringstream os;
    os << desc;
    out.help_text = os.str();
    return out;
  }
  if (vm.count("version")) {
    out.show_version = true;
    return out;
  }
  out.check_only = vm.count("check_config") > 0;
  for (const auto& e : extra) {
    if (e.source.rfind("environment ", 0) == 0 && e.key.find('.') == std::string::npos) continue;
    add_transport_option(c, e.key, e.value, e.source);
  }
  validate(c, raw);
  // Given but without effect: say so (a typo in a key must not pass for a setting).
  for (const auto& e : extra) {
    const std::string name = e.key.substr(0, e.key.find('.'));
    if (std::find(c.transports.begin(), c.transports.end(), name) != c.transports.end()) continue;
    if (e.source.rfind("environment ", 0) == 0) {
      out.warnings.push_back(e.source + " is ignored: it names no option and no option of a " +
                             "listed transport (transports = " + raw.transports +
                             "); see shmschedd --help");
    } else {
      out.warnings.push_back("option " + e.key + " (" + e.source + ") is ignored: transport '" +
                             name + "' is not in transports (" + raw.transports + ")");
    }
  }
  return out;
}

}  // namespace

LoadResult load_config(int argc, const char* const* argv) {
  return load(argc, argv);
}

}  // namespace shmsched::daemon
