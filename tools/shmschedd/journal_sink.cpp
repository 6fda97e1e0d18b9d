#include "journal_sink.h"

#include <sys/stat.h>
#include <systemd/sd-journal.h>

#include <cstdio>
#include <cstdlib>
#include <limits>

namespace shmsched::daemon {

namespace {
thread_local std::string t_execution;
}

ExecutionLogScope::ExecutionLogScope(std::string_view execution_id) : previous_(t_execution) {
  t_execution.assign(execution_id);
}

ExecutionLogScope::~ExecutionLogScope() {
  t_execution = std::move(previous_);
}

const std::string& ExecutionLogScope::current() {
  return t_execution;
}

void JournalSink::sink_it_(const spdlog::details::log_msg& msg) {
  const std::string& execution = ExecutionLogScope::current();
  if (execution.empty()) {
    spdlog::sinks::systemd_sink<std::mutex>::sink_it_(msg);
    return;
  }
  const auto length =
      static_cast<int>(std::min<std::size_t>(msg.payload.size(), std::numeric_limits<int>::max()));
  const int err = (sd_journal_send)("MESSAGE=%.*s", length, msg.payload.data(), "PRIORITY=%d",
                                    syslog_level(msg.level), "SYSLOG_IDENTIFIER=%s", ident_.c_str(),
                                    "EXECUTION_ID=%s", execution.c_str(), nullptr);
  // As spdlog's own sink does: the logger reports it through its error handler.
  if (err) spdlog::throw_spdlog_ex("failed writing to the systemd journal", -err);
}

bool stderr_is_journal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (!stream) return false;
  unsigned long long dev = 0;
  unsigned long long ino = 0;
  if (std::sscanf(stream, "%llu:%llu", &dev, &ino) != 2) return false;
  struct stat st {};
  if (::fstat(2, &st) != 0) return false;
  return st.st_dev == dev && st.st_ino == ino;
}

}  // namespace shmsched::daemon
