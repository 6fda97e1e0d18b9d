#include "identity.h"

#include <unistd.h>

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

bool identity_alive(std::uint64_t identity) {
  identity &= kIdentityMask;
  if (identity == 0) return false;
  const std::uint64_t now = process_start_time(identity_pid(identity));
  return now != 0 && make_identity(identity_pid(identity), now) == identity;
}

}  // namespace shmsched::ipc::detail
