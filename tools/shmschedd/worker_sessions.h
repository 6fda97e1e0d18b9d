// The processes behind local workers. A worker connected over the local ingress socket names its
// process through the kernel (the peer's pid); its session is that pid with the process's start
// time, so that a reused pid is a different session. The loop polls the sessions it knows, and a
// session whose process is gone ends its workers at once (no waiting for the heartbeat timeout).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "shmsched/ipc/protocol.h"

namespace shmsched::daemon {

// The process's start time (clock ticks since boot, /proc/<pid>/stat field 22); nullopt when it
// is gone.
std::optional<std::uint64_t> process_start_time(pid_t pid);

// "pid:<pid>:<start time>", or "" when the process is already gone (or pid is 0).
std::string session_of(pid_t pid);

// Whether a request acts as a worker (and so must come from that worker's process).
bool names_a_worker(const ipc::protocol::Request& request);

// session_of() for the ingress thread, kept a second per pid: a claim does not read /proc each
// time. (A pid reused within that second keeps the old session until the loop has noticed the
// old process's exit and forgotten its workers.)
class SessionCache {
 public:
  std::string of(pid_t pid);

 private:
  struct Entry {
    std::string session;
    std::chrono::steady_clock::time_point at;
  };
  std::map<pid_t, Entry> entries_;
};

class WorkerSessions {
 public:
  void track(const std::string& session, pid_t pid);
  // Sessions whose process has exited since they were tracked (and forgets them).
  std::vector<std::string> gone();
  bool empty() const { return sessions_.empty(); }

 private:
  struct Process {
    pid_t pid;
    std::uint64_t start_time;
  };
  std::map<std::string, Process> sessions_;
};

}  // namespace shmsched::daemon
