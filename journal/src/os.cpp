// System calls with errors as values (os.h).
#include "os.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "shmsched/journal/codec.h"

namespace shmsched::journal::detail {

namespace {

std::string errno_name(int err) {
  const char* name = ::strerrordesc_np(err) ? ::strerrorname_np(err) : nullptr;
  return name ? name : "errno " + std::to_string(err);
}

// Closes a descriptor on every path out of a function.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

Error os_error(int err, const std::string& dir, const std::string& what) {
  const std::string cause = std::string(std::strerror(err)) + " (" + errno_name(err) + ")";
  const std::string head = "journal: " + what + ": " + cause + ": ";
  switch (err) {
    case ENOSPC:
    case EDQUOT:
      return {Errc::kNoSpace, head + "the journal directory " + dir +
                                  " is full; free space on its filesystem or move journal_dir "
                                  "to a larger one, then restart"};
    case EROFS:
      return {Errc::kReadOnly, head + "the journal directory " + dir +
                                   " is on a read-only filesystem; remount it read-write or move "
                                   "journal_dir, then restart"};
    case EACCES:
    case EPERM:
      return {Errc::kPermission,
              head + "give the daemon's user write access to " + dir + " or move journal_dir"};
    case EIO:
      return {Errc::kIo, head + "the disk under " + dir +
                             " failed a write or sync (see the kernel log); records after the "
                             "last durable LSN may be lost: move journal_dir to a healthy disk "
                             "and restart"};
    default:
      return {Errc::kIo, head + "check the journal directory " + dir};
  }
}

Error write_all(int fd, std::span<const std::byte> data, const std::string& dir,
                const std::string& path, const FaultHook& hook) {
  if (hook) {
    if (const int err = hook(IoOp::kWrite, path)) return os_error(err, dir, "cannot write " + path);
  }
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return os_error(errno, dir, "cannot write " + path);
    data = data.subspan(static_cast<std::size_t>(n));
  }
  return {};
}

Error sync_data(int fd, const std::string& dir, const std::string& path, const FaultHook& hook) {
  if (hook) {
    if (const int err = hook(IoOp::kSync, path)) return os_error(err, dir, "cannot sync " + path);
  }
  // No retry after a failure: the kernel may have dropped the dirty pages, and a second
  // fdatasync would report success for data that is not on the disk.
  if (::fdatasync(fd) != 0) return os_error(errno, dir, "cannot sync " + path);
  return {};
}

Error sync_dir(int dir_fd, const std::string& dir) {
  if (::fsync(dir_fd) != 0) return os_error(errno, dir, "cannot sync the directory " + dir);
  return {};
}

Error read_prefix(const std::string& dir, const std::string& path, std::size_t n,
                  std::vector<std::byte>& out) {
  out.clear();
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) return os_error(errno, dir, "cannot open " + path);
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return os_error(errno, dir, "cannot stat " + path);
  out.resize(std::min<std::size_t>(n, static_cast<std::size_t>(st.st_size)));
  std::size_t got = 0;
  while (got < out.size()) {
    const ssize_t r = ::pread(f.fd, out.data() + got, out.size() - got, static_cast<off_t>(got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return os_error(errno, dir, "cannot read " + path);
    if (r == 0) break;  // shrunk meanwhile: what was there
    got += static_cast<std::size_t>(r);
  }
  out.resize(got);
  return {};
}

Error read_file(const std::string& dir, const std::string& path, std::vector<std::byte>& out) {
  return read_prefix(dir, path, static_cast<std::size_t>(-1), out);
}

Error truncate_file(const std::string& dir, const std::string& path, std::uint64_t size) {
  Fd f{::open(path.c_str(), O_WRONLY | O_CLOEXEC)};
  if (f.fd < 0) return os_error(errno, dir, "cannot open " + path + " to cut its torn tail");
  if (::ftruncate(f.fd, static_cast<off_t>(size)) != 0) {
    return os_error(errno, dir, "cannot cut the torn tail of " + path);
  }
  if (::fsync(f.fd) != 0) return os_error(errno, dir, "cannot sync " + path);
  return {};
}

Result<int> open_locked_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return os_error(ec.value(), dir, "cannot create the journal directory " + dir);
  ::chmod(dir.c_str(), 0750);  // best effort: an existing directory may belong to someone else
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return os_error(errno, dir, "cannot open the journal directory " + dir);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) {
      return Error{Errc::kLocked, "journal: the journal directory " + dir +
                                      " is in use by another writer (a running shmschedd?); "
                                      "stop it, or give this one another journal_dir"};
    }
    return os_error(err, dir, "cannot lock the journal directory " + dir);
  }
  return fd;
}

Result<std::vector<SegmentFile>> list_segments(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) return os_error(ec.value(), dir, "cannot read the journal directory " + dir);
  std::vector<SegmentFile> files;
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (const auto seq = parse_segment_file_name(name)) {
      files.push_back({*seq, name, it->path().string()});
    }
  }
  if (ec) return os_error(ec.value(), dir, "cannot read the journal directory " + dir);
  std::sort(files.begin(), files.end(),
            [](const SegmentFile& a, const SegmentFile& b) { return a.seq < b.seq; });
  return files;
}

}  // namespace shmsched::journal::detail
