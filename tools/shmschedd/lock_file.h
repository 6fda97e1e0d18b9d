// Only one supervisor schedules from a segment: an exclusive flock on <runtime_dir>/<segment>.lock.
// The kernel releases it when the holder dies, which is what --standby waits for.
#pragma once

#include <string>

namespace shmsched::daemon {

class LockFile {
 public:
  // Takes the lock. Without `wait`, throws std::runtime_error naming the holder's pid when it is
  // taken; with `wait`, blocks until the holder exits.
  LockFile(const std::string& path, bool wait);
  ~LockFile();
  LockFile(const LockFile&) = delete;
  LockFile& operator=(const LockFile&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace shmsched::daemon
