// The reader: frames of each file in chain order, headers skipped, records decoded and filtered;
// following waits on inotify events of the directory.
#include "shmsched/audit/reader.h"

#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <thread>

#include "frame.h"
#include "log_file.h"

namespace shmsched::audit {

using namespace detail;

bool AuditFilter::matches(const AuditRecord& r) const {
  return (execution_id.empty() || r.execution_id == execution_id) &&
         (worker_id.empty() || r.worker_id == worker_id) && (type.empty() || r.type == type);
}

struct AuditReader::State {
  std::string dir;
  AuditFilter filter;
  std::unique_ptr<FrameCursor> cursor;
  std::uint64_t file_seq = 0;  // first seq of the current file (0 before the first)
  std::string file_name;
  bool header_read = false;
  bool saw_newer = false;  // the end of this file was seen while a newer file existed
  int inotify_fd = -1;
  bool inotify_tried = false;

  ~State() {
    if (inotify_fd >= 0) ::close(inotify_fd);
  }

  std::string where() const {
    return dir + "/" + file_name + " offset " + std::to_string(cursor ? cursor->offset() : 0);
  }

  // The oldest file after the current one, if any.
  std::optional<LogFile> newer_file() const {
    for (auto& f : list_log_files(dir))
      if (f.first_seq > file_seq) return f;
    return std::nullopt;
  }

  bool open_newer_file() {
    for (;;) {
      const auto f = newer_file();
      if (!f) return false;
      try {
        cursor = std::make_unique<FrameCursor>(f->path);
      } catch (const AuditError&) {
        if (std::filesystem::exists(f->path)) throw;
        continue;  // deleted by retention since the listing
      }
      file_seq = f->first_seq;
      file_name = f->name;
      header_read = false;
      saw_newer = false;
      return true;
    }
  }

  void watch() {
    if (inotify_tried) return;
    inotify_tried = true;
    inotify_fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (inotify_fd < 0) return;
    const auto mask = IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE;
    if (::inotify_add_watch(inotify_fd, dir.c_str(), mask) < 0) {
      ::close(inotify_fd);
      inotify_fd = -1;
    }
  }

  // Waits for a change in the directory, or `ms` at most.
  void wait_for_change(int ms) {
    if (inotify_fd < 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min(ms, 100)));
      return;
    }
    pollfd p{inotify_fd, POLLIN, 0};
    if (::poll(&p, 1, ms) > 0) {
      alignas(inotify_event) char buf[4096];
      while (::read(inotify_fd, buf, sizeof buf) > 0) {
      }
    }
  }
};

AuditReader::AuditReader(std::string dir, AuditFilter filter) : s_(std::make_unique<State>()) {
  s_->dir = std::move(dir);
  s_->filter = std::move(filter);
  list_log_files(s_->dir);  // throws if the directory cannot be read
}

AuditReader::~AuditReader() = default;

std::optional<AuditRecord> AuditReader::next() {
  State& s = *s_;
  for (;;) {
    if (!s.cursor && !s.open_newer_file()) return std::nullopt;
    Frame f;
    const FrameStatus st = s.cursor->next(f);
    if (st == FrameStatus::kFrame) {
      s.saw_newer = false;
      if (!s.header_read) {
        s.header_read = true;
        if (!decode_header(f.body))
          throw AuditError("audit: " + s.where() + ": the file does not start with a header");
        continue;
      }
      auto record = decode_record(f.body);
      if (!record) throw AuditError("audit: " + s.where() + ": a frame that is not a record");
      if (s.filter.matches(*record)) return record;
      continue;
    }
    if (st == FrameStatus::kBadLength)
      throw AuditError("audit: " + s.where() + ": bad frame length " +
                       std::to_string(s.cursor->declared_length()));
    // At the end of what is written. A newer file means this one is complete: the writer
    // creates it only after its last write here. Read once more after seeing it, though: that
    // last write may have landed between the read above and the listing.
    if (!s.saw_newer) {
      if (!s.newer_file()) return std::nullopt;
      s.saw_newer = true;
      continue;
    }
    if (st == FrameStatus::kIncomplete)
      throw AuditError("audit: " + s.where() + ": the file ends inside a record");
    s.cursor.reset();
  }
}

std::optional<AuditRecord> AuditReader::wait_next(std::chrono::milliseconds timeout) {
  using Clock = std::chrono::steady_clock;
  const auto deadline =
      timeout >= std::chrono::hours(24 * 365) ? Clock::time_point::max() : Clock::now() + timeout;
  s_->watch();  // before reading, so that nothing appended after the read goes unnoticed
  for (;;) {
    if (auto r = next()) return r;
    const auto now = Clock::now();
    if (now >= deadline) return std::nullopt;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
    // The cap bounds what a missed event (a file system without inotify) can cost.
    s_->wait_for_change(static_cast<int>(std::min<long long>(left, 1000)));
  }
}

}  // namespace shmsched::audit
