// The crash-point hook of test builds (crash_point.h). Single-threaded use per process: a test
// arms a forked child that runs one operation.
#include "crash_point.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <new>

#include "shmsched/ipc/crash_points.h"

namespace shmsched::ipc {
namespace {

std::atomic<std::uint64_t> g_target{0};
std::atomic<std::uint64_t> g_passed{0};
std::atomic<bool> g_armed{false};
int g_signal = SIGKILL;
int g_fd = -1;
std::string g_match;  // fire at the first crash point whose description contains it

std::string describe(const detail::CrashSite& s) {
  const char* file = std::strrchr(s.file, '/');
  return std::string(file ? file + 1 : s.file) + ":" + std::to_string(s.line) + " " + s.what;
}

}  // namespace

namespace detail {

void crash_point_hit(const CrashSite& site) {
  if (!g_armed.load(std::memory_order_relaxed)) return;
  const std::uint64_t n = g_passed.fetch_add(1, std::memory_order_relaxed) + 1;
  if (!g_match.empty()) {
    if (describe(site).find(g_match) == std::string::npos) return;
    g_armed.store(false);
  } else if (n != g_target.load(std::memory_order_relaxed)) {
    return;
  }
  if (g_fd >= 0) {
    const std::string line = describe(site) + "\n";
    const ssize_t w = ::write(g_fd, line.data(), line.size());
    (void)w;
  }
  if (g_signal == 0) throw std::bad_alloc();  // as an allocation failing right there
  ::raise(g_signal);
}

}  // namespace detail

namespace crash_points {

void arm(std::uint64_t target, int signal, int report_fd) {
  g_match.clear();
  g_signal = signal;
  g_fd = report_fd;
  g_passed.store(0);
  g_target.store(target);
  g_armed.store(true);
}

void arm_at(const std::string& what, int signal, int report_fd) {
  g_match = what;
  g_signal = signal;
  g_fd = report_fd;
  g_passed.store(0);
  g_target.store(0);
  g_armed.store(true);
}

void disarm() {
  g_armed.store(false);
}

std::uint64_t passed() {
  return g_passed.load();
}

}  // namespace crash_points
}  // namespace shmsched::ipc
