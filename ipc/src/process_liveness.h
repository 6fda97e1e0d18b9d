// Is a process that once attached still alive? A pid alone is not enough (pids are reused), so a
// participant is identified by pid plus the kernel's start time of that process.
#pragma once

#include <sys/types.h>

#include <cstdint>

namespace shmsched::ipc::detail {

// The start time (clock ticks since boot) of a running process, or 0 when the process does not
// exist or has already died (a zombie counts as dead).
std::uint64_t process_start_time(pid_t pid);

// True when `pid` is running and is the same process that recorded `start_time`.
bool process_alive(pid_t pid, std::uint64_t start_time);

}  // namespace shmsched::ipc::detail
