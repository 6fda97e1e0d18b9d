// The system calls the journal makes, each turning a failure into an Error whose message names
// the file, the cause and the fix.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "shmsched/journal/error.h"
#include "shmsched/journal/writer.h"

namespace shmsched::journal::detail {

// `what` says what failed ("cannot write /var/lib/shmsched/journal/journal-...wal"); `dir` is
// the journal directory the fix refers to.
Error os_error(int err, const std::string& dir, const std::string& what);

// A faulty-disk hook (WriterOptions::fault_injector) consulted before each operation.
using FaultHook = std::function<int(IoOp op, const std::string& path)>;

Error write_all(int fd, std::span<const std::byte> data, const std::string& dir,
                const std::string& path, const FaultHook& hook);
Error sync_data(int fd, const std::string& dir, const std::string& path, const FaultHook& hook);
// fsync of the directory itself, so that created, renamed and deleted names are durable.
Error sync_dir(int dir_fd, const std::string& dir);
// The whole file in memory.
Error read_file(const std::string& dir, const std::string& path, std::vector<std::byte>& out);
// Up to `n` bytes from the start of the file (fewer if it is shorter).
Error read_prefix(const std::string& dir, const std::string& path, std::size_t n,
                  std::vector<std::byte>& out);
Error truncate_file(const std::string& dir, const std::string& path, std::uint64_t size);

// Creates `dir` (mode 0750) if missing, opens it and takes the exclusive lock that keeps a
// second writer (or a repairing recovery) out. Returns the directory's descriptor.
Result<int> open_locked_dir(const std::string& dir);

// The segment files of `dir` (by sequence number), and the leftovers of creations cut short.
struct SegmentFile {
  std::uint64_t seq = 0;
  std::string name;
  std::string path;
};
Result<std::vector<SegmentFile>> list_segments(const std::string& dir);

}  // namespace shmsched::journal::detail
