#include "worker_sessions.h"

#include <fstream>
#include <sstream>

namespace shmsched::daemon {

std::optional<std::uint64_t> process_start_time(pid_t pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  // The command name (field 2) may hold spaces and parentheses: fields after it follow the
  // last ')'. Field 3 (state) is the first after it; the start time is field 22.
  const auto close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 1));
  std::string field;
  char state = 0;
  rest >> state;
  if (state == 'Z' || state == 'X') return std::nullopt;  // exited, not yet reaped
  for (int i = 4; i < 22 && (rest >> field); ++i) {
  }
  std::uint64_t start = 0;
  if (!(rest >> start)) return std::nullopt;
  return start;
}

std::string session_of(pid_t pid) {
  const auto start = process_start_time(pid);
  if (!start) return "";
  return "pid:" + std::to_string(pid) + ":" + std::to_string(*start);
}

bool names_a_worker(const ipc::protocol::Request& request) {
  namespace protocol = ipc::protocol;
  if (const auto* c = std::get_if<protocol::CompleteOp>(&request)) return c->worker_id.has_value();
  if (const auto* f = std::get_if<protocol::FailOp>(&request)) return f->worker_id.has_value();
  return std::holds_alternative<protocol::RegisterWorkerOp>(request) ||
         std::holds_alternative<protocol::HeartbeatOp>(request) ||
         std::holds_alternative<protocol::UnregisterWorkerOp>(request) ||
         std::holds_alternative<protocol::ClaimOp>(request) ||
         std::holds_alternative<protocol::ReportBlockerOp>(request);
}

std::string SessionCache::of(pid_t pid) {
  const auto now = std::chrono::steady_clock::now();
  auto it = entries_.find(pid);
  if (it != entries_.end() && now - it->second.at < std::chrono::seconds(1)) {
    return it->second.session;
  }
  if (entries_.size() > 4096) entries_.clear();  // bounded: many short-lived clients
  Entry e{session_of(pid), now};
  entries_[pid] = e;
  return e.session;
}

void WorkerSessions::track(const std::string& session, pid_t pid) {
  if (session.empty() || sessions_.count(session)) return;
  const auto start = process_start_time(pid);
  if (!start) return;
  sessions_[session] = Process{pid, *start};
}

std::vector<std::string> WorkerSessions::gone() {
  std::vector<std::string> out;
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    const auto start = process_start_time(it->second.pid);
    if (start && *start == it->second.start_time) {
      ++it;
      continue;
    }
    out.push_back(it->first);
    it = sessions_.erase(it);
  }
  return out;
}

}  // namespace shmsched::daemon
