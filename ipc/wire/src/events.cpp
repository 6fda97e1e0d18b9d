#include "shmsched/ipc/events.h"

#include <chrono>

#include "shmsched/ipc/protocol.h"

namespace shmsched::ipc::events {

using protocol::MapBuilder;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {
MapBuilder header(std::string_view type) {
  MapBuilder m;
  m.str("type", type).integer("timestamp", now_ns());
  return m;
}
}  // namespace

std::vector<std::byte> accepted(std::string_view execution_id, std::string_view user_id,
                                Priority priority, std::uint64_t queue_position) {
  return header("ExecutionAccepted")
      .str("execution_id", execution_id)
      .str("user_id", user_id)
      .str("priority", priority_name(priority))
      .integer("queue_position", static_cast<std::int64_t>(queue_position))
      .finish();
}

std::vector<std::byte> rejected(std::string_view execution_id, std::string_view user_id,
                                std::string_view reason, std::string_view message) {
  return header("ExecutionRejected")
      .str("execution_id", execution_id)
      .str("user_id", user_id)
      .str("reason", reason)
      .str("message", message)
      .finish();
}

std::vector<std::byte> dispatch(const ExecutionRecord& e, std::uint32_t attempt,
                                std::optional<std::string_view> worker_id) {
  MapBuilder m = header(worker_id ? "TaskPush" : "CreatePodCommand");
  m.str("execution_id", e.execution_id)
      .str("user_id", e.user_id)
      .str("priority", priority_name(e.priority))
      .bin("payload", e.payload)
      .string_map("metadata", e.metadata)
      .integer("attempt", attempt)
      .strings("required_capabilities", e.required_capabilities)
      .integer("timeout_seconds", e.timeout_seconds)
      .integer("enqueued_at", e.enqueued_at_ns);
  if (worker_id) m.str("worker_id", *worker_id);
  return m.finish();
}

std::vector<std::byte> finished(const Finished& f) {
  MapBuilder m = header(f.type);
  m.str("execution_id", f.execution_id).str("user_id", f.user_id);
  if (f.worker_id) m.str("worker_id", *f.worker_id);
  if (f.exit_code) m.integer("exit_code", *f.exit_code);
  if (f.error) m.str("error", *f.error);
  if (f.reason) m.str("reason", *f.reason);
  if (f.will_retry) m.boolean("will_retry", *f.will_retry);
  if (f.attempt) m.integer("attempt", *f.attempt);
  return m.finish();
}

}  // namespace shmsched::ipc::events
