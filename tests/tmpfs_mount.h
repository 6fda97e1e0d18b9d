// A small tmpfs mounted for one test (a full or read-only disk, for real).
#pragma once

#include <sys/mount.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace shmsched::test {

// A small tmpfs of its own (needs CAP_SYS_ADMIN); unmounted on destruction.
class Tmpfs {
 public:
  Tmpfs(const std::string& dir, std::size_t bytes) : dir_(dir) {
    const std::string opts = "size=" + std::to_string(bytes) + ",mode=0755";
    if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, opts.c_str()) == 0) {
      mounted_ = true;
    } else {
      why_ = std::string("cannot mount a tmpfs on ") + dir + ": " + std::strerror(errno) +
             " (the test needs root or CAP_SYS_ADMIN)";
    }
  }
  ~Tmpfs() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  const std::string& why() const { return why_; }
  bool remount_read_only() {
    return ::mount("tmpfs", dir_.c_str(), "tmpfs", MS_REMOUNT | MS_RDONLY, nullptr) == 0;
  }

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string why_;
};

}  // namespace shmsched::test
