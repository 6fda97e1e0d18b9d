// The processes behind local workers. A worker connected over the local ingress socket names its
// process through the kernel (the peer's pid); its session is that pid with the process's start
// time, so that a reused pid is a different session. The loop polls the sessions it knows, and a
// session whose process is gone ends its workers at once (no waiting for the heartbeat timeout).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace shmsched::daemon {

// The process's start time (clock ticks since boot, /proc/<pid>/stat field 22); nullopt when it
// is gone.
std::optional<std::uint64_t> process_start_time(pid_t pid);

// "pid:<pid>:<start time>", or "" when the process is already gone (or pid is 0).
std::string session_of(pid_t pid);

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
