// Real child processes for crash tests: fork, run a function, report through a pipe.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace shmsched::test {

// A fixed-size record, written with one write() (atomic for a pipe: below PIPE_BUF), so a child
// killed mid-report leaves either the whole record or nothing.
struct Report {
  char kind = 0;     // 'A' accepted, 'C' cancelled, 'D' dequeued, 'R' rejected, ...
  char outcome = 0;  // op-specific detail
  char priority = 0;
  char pad = 0;
  std::array<char, 44> id{};
  std::array<char, 16> user{};

  static Report make(char kind, const std::string& id, const std::string& user = "",
                     char outcome = 0, char priority = 0) {
    Report r;
    r.kind = kind;
    r.outcome = outcome;
    r.priority = priority;
    std::memcpy(r.id.data(), id.data(), std::min(id.size(), r.id.size() - 1));
    std::memcpy(r.user.data(), user.data(), std::min(user.size(), r.user.size() - 1));
    return r;
  }
  std::string id_str() const { return std::string(id.data()); }
  std::string user_str() const { return std::string(user.data()); }
};
static_assert(sizeof(Report) == 64);

class Pipe {
 public:
  Pipe() {
    if (::pipe2(fds_, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    ::fcntl(fds_[0], F_SETFL, O_NONBLOCK);
  }
  ~Pipe() {
    close_write();
    if (fds_[0] >= 0) ::close(fds_[0]);
  }
  int read_fd() const { return fds_[0]; }
  int write_fd() const { return fds_[1]; }
  void close_write() {
    if (fds_[1] >= 0) ::close(fds_[1]);
    fds_[1] = -1;
  }
  // Appends every complete record available now.
  void drain(std::vector<Report>& out) {
    for (;;) {
      Report buf[64];
      const ssize_t n = ::read(fds_[0], buf, sizeof buf);
      if (n <= 0) return;
      for (ssize_t i = 0; i < n / static_cast<ssize_t>(sizeof(Report)); ++i) out.push_back(buf[i]);
    }
  }

 private:
  int fds_[2] = {-1, -1};
};

inline void send(int fd, const Report& r) {
  const ssize_t n = ::write(fd, &r, sizeof r);
  (void)n;
}

// Forks a child that runs `body` and exits (0 on return, 1 on an exception).
inline pid_t spawn(const std::function<void()>& body) {
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    // A child outlives no test: if the test process dies (an abort, a timeout), so does the
    // child, even one stopped on purpose.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    int code = 0;
    try {
      body();
    } catch (...) {
      code = 1;
    }
    ::_exit(code);
  }
  return pid;
}

inline void kill_and_reap(pid_t pid) {
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
}

inline int wait_exit_code(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace shmsched::test
