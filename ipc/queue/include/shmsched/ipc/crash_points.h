// Test-only control of the crash points compiled into shmsched::ipc_crash_points (see
// ipc/src/crash_point.h). Not available in the normal library.
#pragma once

#include <cstdint>
#include <string>

namespace shmsched::ipc::crash_points {

// From now on, count crash points passed by this process; at the `target`-th (1-based), write
// "<file>:<line> <what>\n" to `report_fd` (if >= 0) and raise `signal` (SIGKILL or SIGSTOP), or
// with signal 0 throw std::bad_alloc (an allocation failing there). target 0 counts only.
void arm(std::uint64_t target, int signal, int report_fd);
// Fires once, at the first crash point whose "<file>:<line> <what>" contains `what`.
void arm_at(const std::string& what, int signal, int report_fd);
void disarm();
// Crash points passed since the last arm().
std::uint64_t passed();

}  // namespace shmsched::ipc::crash_points
