#include "audit_trail.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

namespace shmsched::daemon {

namespace {

// What happened, in the audit log's words.
std::string_view audit_type(const core::Event& e) {
  switch (e.type) {
    case core::EventType::kAccepted:
      return "accepted";
    case core::EventType::kRejected:
      return "rejected";
    case core::EventType::kCreatePodCommand:
      return "dispatched";
    case core::EventType::kTaskPush:
      return "pushed";
    case core::EventType::kCompleted:
      return "completed";
    case core::EventType::kFailed:
      return e.will_retry.value_or(false) ? "retried" : "failed";
    case core::EventType::kCancelled:
      return "cancelled";
    case core::EventType::kExpired:
      return "expired";
    case core::EventType::kWorkerRegistered:
      return "worker_registered";
    case core::EventType::kWorkerUnregistered:
      return "worker_gone";
    case core::EventType::kBlockerReported:
      return "blocker_reported";
  }
  return "event";
}

}  // namespace

AuditTrail::AuditTrail(audit::AuditWriterOptions options) {
  const std::string dir = options.dir;
  options.on_error = [](std::string_view message) { spdlog::error("audit log: {}", message); };
  writer_ = std::make_unique<audit::AuditWriter>(std::move(options));
  const auto& r = writer_->open_report();
  if (r.cut_bytes > 0) {
    spdlog::warn("audit log: cut a torn tail of {} bytes from {} at offset {} (a crash mid-write)",
                 r.cut_bytes, r.cut_file, r.cut_offset);
  }
  spdlog::info("audit log in {}: {} file(s), continuing at record {}", dir, r.files, r.next_seq);
}

void AuditTrail::event(const core::Event& e) {
  if (e.type == core::EventType::kBlockerReported && !e.target.empty()) return;
  audit::AuditRecord r;
  r.type = audit_type(e);
  r.execution_id = e.execution_id;
  r.user_id = e.user_id;
  if (e.worker_id) r.worker_id = *e.worker_id;
  auto& d = r.detail;
  switch (e.type) {
    case core::EventType::kAccepted:
      d["priority"] = priority_name(e.priority);
      d["queue_position"] = std::to_string(e.queue_position);
      break;
    case core::EventType::kRejected:
      d["reason"] = e.reason;
      break;
    case core::EventType::kCreatePodCommand:
    case core::EventType::kTaskPush:
      d["attempt"] = std::to_string(e.attempt);
      break;
    case core::EventType::kCompleted:
    case core::EventType::kFailed:
    case core::EventType::kCancelled:
    case core::EventType::kExpired:
      if (e.type == core::EventType::kFailed) d["attempt"] = std::to_string(e.attempt);
      if (!e.reason.empty()) d["reason"] = e.reason;
      if (e.error) d["error"] = *e.error;
      if (e.exit_code) d["exit_code"] = std::to_string(*e.exit_code);
      break;
    case core::EventType::kWorkerRegistered:
    case core::EventType::kWorkerUnregistered:
      d["capabilities"] = fmt::format("{}", fmt::join(e.capabilities, ","));
      if (!e.reason.empty()) d["reason"] = e.reason;
      break;
    case core::EventType::kBlockerReported:
      d["blocker_type"] = e.blocker_type;
      d["severity"] = e.severity;
      d["required_capabilities"] = fmt::format("{}", fmt::join(e.capabilities, ","));
      d["helpers"] = fmt::format("{}", fmt::join(e.helpers, ","));
      break;
  }
  writer_->append(std::move(r));
}

void AuditTrail::record(const core::action::Audit& a) {
  audit::AuditRecord r;
  r.type = a.type;
  r.execution_id = a.execution_id;
  r.worker_id = a.worker_id;
  if (a.attempt) r.detail["attempt"] = std::to_string(a.attempt);
  if (!a.via.empty()) r.detail["via"] = a.via;
  writer_->append(std::move(r));
}

}  // namespace shmsched::daemon
