// Logging to the systemd journal. spdlog's systemd sink sends each line as a native journal entry
// (PRIORITY from the level, so `journalctl -p warning` filters); this one adds the execution a
// line is about as the structured field EXECUTION_ID (`journalctl EXECUTION_ID=...`), taken from
// the ExecutionLogScope of the logging thread.
#pragma once

#include <spdlog/sinks/systemd_sink.h>

#include <mutex>
#include <string>
#include <string_view>

namespace shmsched::daemon {

// Names the execution that the log lines of this thread are about, for the scope's lifetime.
class ExecutionLogScope {
 public:
  explicit ExecutionLogScope(std::string_view execution_id);
  ~ExecutionLogScope();
  ExecutionLogScope(const ExecutionLogScope&) = delete;
  ExecutionLogScope& operator=(const ExecutionLogScope&) = delete;

  // The innermost scope's execution id on this thread, or "".
  static const std::string& current();

 private:
  std::string previous_;
};

class JournalSink : public spdlog::sinks::systemd_sink<std::mutex> {
 public:
  explicit JournalSink(std::string identifier)
      : spdlog::sinks::systemd_sink<std::mutex>(std::move(identifier)) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override;
};

// True when stderr is connected to the journal (systemd's JOURNAL_STREAM names its device and
// inode), so that logs should go to the journal natively.
bool stderr_is_journal();

}  // namespace shmsched::daemon
