// Crash points: in a test build (SHMSCHED_CRASH_POINTS), every shared-memory store or CAS of a
// producer, the consumer, the maintainer and the reaper is preceded by CRASH_POINT("what"). A
// test arms the process to raise SIGKILL (or SIGSTOP) at the N-th crash point it passes, and so
// enumerates every instruction boundary of an operation where another process can see a
// half-done state (tests/queue_crash_point_test.cpp). In other builds the macro is empty.
// A test lists every site that exists by reading the sources for the macro, and checks that
// each one was hit.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shmsched::ipc::detail {

struct CrashSite {
  const char* file;
  int line;
  const char* what;
};

}  // namespace shmsched::ipc::detail

#if defined(SHMSCHED_CRASH_POINTS)

namespace shmsched::ipc::detail {
void crash_point_hit(const CrashSite& site);
}  // namespace shmsched::ipc::detail

#define CRASH_POINT(what_)                                                                      \
  do {                                                                                          \
    static constexpr ::shmsched::ipc::detail::CrashSite shmsched_crash_site{__FILE__, __LINE__, \
                                                                            what_};             \
    ::shmsched::ipc::detail::crash_point_hit(shmsched_crash_site);                              \
  } while (0)

#else

#define CRASH_POINT(what_) \
  do {                     \
  } while (0)

#endif
