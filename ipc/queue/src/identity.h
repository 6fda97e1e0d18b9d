// Who is a participant, and is it still alive? A pid alone is not enough (pids are reused), so a
// process is named by its pid together with the kernel's start time of that process, packed in
// one 64-bit word so that claiming, freeing and naming a holder are each a single atomic step:
//
//   identity = (start time in clock ticks since boot, low 40 bits) << 22 | pid
//
// pid_max is at most 2^22 on Linux; 40 bits of 100 Hz ticks last about 350 years of uptime.
// Bits 62 and 63 stay free for the maintenance word's flags. 0 names nobody.
#pragma once

#include <sys/types.h>

#include <cstdint>

namespace shmsched::ipc::detail {

inline constexpr unsigned kPidBits = 22;
inline constexpr std::uint64_t kPidMask = (1ULL << kPidBits) - 1;
inline constexpr std::uint64_t kStartMask = (1ULL << 40) - 1;
inline constexpr std::uint64_t kIdentityMask = (1ULL << 62) - 1;

// The start time (clock ticks since boot) of a running process, or 0 when the process does not
// exist or has already died (a zombie counts as dead).
std::uint64_t process_start_time(pid_t pid);

constexpr std::uint64_t make_identity(pid_t pid, std::uint64_t start_time) {
  return ((start_time & kStartMask) << kPidBits) | (static_cast<std::uint64_t>(pid) & kPidMask);
}

constexpr pid_t identity_pid(std::uint64_t identity) {
  return static_cast<pid_t>(identity & kPidMask);
}

// The identity of the calling process (computed each time: a forked child has its own). Throws
// SegmentError when /proc cannot tell the process's start time.
std::uint64_t self_identity();

// True when the process named by `identity` (bits 62 and 63 ignored) is running. False for 0,
// and for a process the kernel reports gone, a reused pid, or a zombie with no running thread;
// true when it cannot be told (no file descriptor left, no permission to read /proc): taking a
// live process for dead would let a rebuild run under its operation.
bool identity_alive(std::uint64_t identity);

}  // namespace shmsched::ipc::detail
