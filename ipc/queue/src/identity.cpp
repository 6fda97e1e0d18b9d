#include "identity.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "shmsched/ipc/segment.h"

namespace shmsched::ipc::detail {

std::uint64_t process_start_time(pid_t pid) {
  if (pid <= 0) return 0;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return 0;
  // The command name (field 2) is in parentheses and may contain spaces: fields after it are
  // read from the last ')'.
  const auto close = line.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(line.substr(close + 1));
  std::string state;
  rest >> state;  // field 3
  if (state == "Z" || state == "X" || state == "x") return 0;
  std::string field;
  for (int i = 4; i <= 22 && rest >> field; ++i) {
    if (i == 22) return std::strtoull(field.c_str(), nullptr, 10);
  }
  return 0;
}

std::uint64_t self_identity() {
  const pid_t pid = ::getpid();
  const std::uint64_t start = process_start_time(pid);
  if (start == 0 || static_cast<std::uint64_t>(pid) > kPidMask) {
    throw SegmentError("cannot read this process's start time from /proc/" + std::to_string(pid) +
                       "/stat: shmsched needs /proc (mounted, without hidepid for the process "
                       "itself) to tell live participants from dead ones");
  }
  return make_identity(pid, start);
}

namespace {

enum class Stat { kGone, kUnknown, kRead };

// Reads /proc/<pid>/stat: the process state letter and its start time. kGone only when the
// kernel says there is no such process; any other failure (out of file descriptors, no
// permission) is kUnknown.
Stat read_stat(pid_t pid, char& state, std::uint64_t& start) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT || errno == ESRCH ? Stat::kGone : Stat::kUnknown;
  char buf[1024];
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  const int read_errno = errno;
  ::close(fd);
  if (n <= 0) return n < 0 && read_errno == ESRCH ? Stat::kGone : Stat::kUnknown;
  const std::string line(buf, static_cast<std::size_t>(n));
  const auto close = line.rfind(')');
  if (close == std::string::npos) return Stat::kUnknown;
  std::istringstream rest(line.substr(close + 1));
  std::string field;
  rest >> field;  // field 3
  if (field.empty()) return Stat::kUnknown;
  state = field[0];
  for (int i = 4; i <= 22 && rest >> field; ++i) {
    if (i == 22) {
      start = std::strtoull(field.c_str(), nullptr, 10);
      return Stat::kRead;
    }
  }
  return Stat::kUnknown;
}

// A thread-group leader in state Z whose other threads still run is a live process (its main
// thread exited, not the process). False also when that cannot be told (conservative: alive).
bool only_zombie_left(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/task", static_cast<int>(pid));
  DIR* dir = ::opendir(path);
  if (!dir) return errno == ENOENT || errno == ESRCH;
  bool others = false;
  const std::string self = std::to_string(pid);
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.' && self != e->d_name) others = true;
  }
  ::closedir(dir);
  return !others;
}

}  // namespace

bool identity_alive(std::uint64_t identity) {
  identity &= kIdentityMask;
  if (identity == 0) return false;
  const pid_t pid = identity_pid(identity);
  // Dead means: the kernel says so. Anything that cannot be checked counts as alive, because
  // taking a live process for dead lets a rebuild run under its operation.
  if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
  char state = 0;
  std::uint64_t start = 0;
  switch (read_stat(pid, state, start)) {
    case Stat::kGone:
      return false;
    case Stat::kUnknown:
      return true;
    case Stat::kRead:
      break;
  }
  if (make_identity(pid, start) != identity) return false;  // the pid was reused
  if (state == 'X' || state == 'x') return false;
  if (state == 'Z') return !only_zombie_left(pid);
  return true;
}

}  // namespace shmsched::ipc::detail
