#include "lock_file.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace shmsched::daemon {

namespace {
std::string holder(int fd) {
  char buf[32] = {0};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string s = n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string("?");
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s.empty() ? "?" : s;
}
}  // namespace

LockFile::LockFile(const std::string& path, bool wait) {
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    throw std::runtime_error("cannot open lock file " + path + ": " + std::strerror(errno) +
                             " (check runtime_dir and its permissions)");
  }
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) {
      throw std::runtime_error("cannot lock " + path + ": " + std::strerror(errno));
    }
    if (!wait) {
      const std::string pid = holder(fd_);
      ::close(fd_);
      fd_ = -1;
      throw std::runtime_error("another shmschedd (pid " + pid + ") is already scheduling (lock " +
                               path +
                               "); stop it first, or start this one with --standby to "
                               "take over when it exits");
    }
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno != EINTR)
        throw std::runtime_error("cannot lock " + path + ": " + std::strerror(errno));
    }
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) == 0) {
    const ssize_t n = ::pwrite(fd_, pid.data(), pid.size(), 0);
    (void)n;
  }
}

LockFile::~LockFile() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace shmsched::daemon
