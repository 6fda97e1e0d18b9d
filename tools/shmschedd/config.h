// shmschedd's configuration: defaults, a file, SHMSCHED_* environment variables and flags, in
// rising precedence. Key `max_queue_size` is `--max-queue-size` and `SHMSCHED_MAX_QUEUE_SIZE`;
// a transport's key `brokers` of `kafka` is `kafka.brokers` in the file, `--kafka.brokers` on the
// command line and `SHMSCHED_KAFKA_BROKERS` in the environment.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "shmsched/ipc/segment_config.h"

namespace shmsched::daemon {

struct Config {
  std::string config_file;  // empty: defaults, environment and flags only
  std::string segment = "shmsched";
  std::string runtime_dir;  // $RUNTIME_DIRECTORY, else this
  std::string plugin_dir;
  std::vector<std::string> transports = {"zeromq"};
  // Transports whose failure to start is logged and skipped; any other one that cannot start
  // stops the start (a missing audit or billing sink must not go unnoticed).
  std::vector<std::string> optional_transports;
  std::string log_level = "info";
  std::string ingress_tcp;  // optional loopback endpoint, e.g. tcp://127.0.0.1:5555
  bool standby = false;
  // Identity on the local ingress (docs/operations.md, "Who may do what").
  bool check_identity = true;
  std::string trusted_group;  // resolved: shmschedd's own group when not given
  unsigned trusted_gid = 0;
  std::string worker_group;  // resolved: the trusted group when not given
  unsigned worker_gid = 0;

  ipc::SegmentConfig queue;  // max_queue_size, max_payload_bytes, max_users, ...
  std::uint64_t max_active_executions = 10;
  std::uint32_t max_attempts = 1;
  std::uint64_t retry_backoff_ms = 1000;    // first retry of a failed execution
  std::uint64_t dispatch_backoff_ms = 100;  // first re-dispatch after a transport failure
  std::uint64_t max_backoff_ms = 60000;
  std::uint64_t stale_timeout_seconds = 3600;
  std::uint64_t aging_seconds = 0;               // 0 = off
  std::uint64_t default_timeout_seconds = 3600;  // for executions that name none; 0 = none
  std::uint64_t timeout_grace_seconds = 30;
  std::uint64_t finished_retention_count = 100000;
  std::uint64_t finished_retention_seconds = 3600;
  std::uint64_t worker_timeout_ms = 30000;  // a worker not heard from this long is gone
  std::uint64_t claim_timeout_ms = 5000;    // a push not claimed this long goes to another worker
  std::uint64_t max_workers = 10000;        // live workers at most
  // The audit log (docs/audit.md); fixed at start. Empty: off.
  std::string audit_dir;
  std::string audit_fsync = "batch";  // batch, interval or none
  std::uint64_t audit_fsync_interval_ms = 1000;
  std::uint64_t audit_max_file_bytes = 64ull << 20;
  std::uint32_t audit_max_files = 16;
  std::uint64_t audit_max_pending = 16384;  // records handed over, not yet written
  // The journal of executions on disk (docs/operations.md, "Durability"); fixed at start. Empty:
  // off (the queue lives in /dev/shm only). Default: $STATE_DIRECTORY/journal under systemd.
  std::string journal_dir;
  // When a submit is acknowledged unless it names its own: "memory" (in the segment) or "disk"
  // (also synced to the journal; needs journal_dir).
  std::string durability = "memory";
  // Start over damage in the middle of the journal, keeping what precedes it (set aside, not
  // deleted, what follows).
  bool journal_salvage = false;
  // Journal written between two snapshots, at least (fixed at start).
  std::uint64_t journal_snapshot_min_bytes = 64ull << 20;
  // The HTTP endpoint of metrics and the dashboard (docs/operations.md). "off" or empty: none.
  std::string metrics_listen = "127.0.0.1:9464";
  // The dashboard may cancel (for local users, by the ingress's identity rules); else read-only.
  bool dashboard_cancel = false;
  std::uint64_t reap_interval_ms = 100;
  std::uint64_t idle_spin_us = 200;  // spin this long after work before sleeping
  std::uint64_t flush_timeout_ms = 5000;

  // "<transport>.<key>" -> value, for every transport.
  std::map<std::string, std::map<std::string, std::string>> transport_options;

  std::string ingress_endpoint() const { return "ipc://" + runtime_dir + "/ingress.sock"; }
};

// What load_config() wants the caller to do.
struct LoadResult {
  Config config;
  bool show_help = false;
  bool show_version = false;
  bool check_only = false;  // --check-config: validate, report, exit
  std::string help_text;
  // Settings that were given but take no effect (options of a transport that is not listed, a
  // SHMSCHED_* variable that names no option): logged at start, printed by --check-config.
  std::vector<std::string> warnings;
};

// Parses argv, the environment and the configuration file. Throws ipc::ConfigError with a
// message naming the key and the problem for any bad value.
LoadResult load_config(int argc, const char* const* argv);

}  // namespace shmsched::daemon
