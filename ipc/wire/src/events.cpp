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

void add_fields(MapBuilder& m, const core::Reply& r) {
  for (const auto& [key, value] : r.fields) {
    if (const auto* i = std::get_if<std::int64_t>(&value)) {
      m.integer(key, *i);
    } else if (const auto* s = std::get_if<std::string>(&value)) {
      m.str(key, *s);
    } else if (const auto* b = std::get_if<bool>(&value)) {
      m.boolean(key, *b);
    } else if (const auto* v = std::get_if<std::vector<std::string>>(&value)) {
      m.strings(key, *v);
    }
  }
}

}  // namespace

std::vector<std::byte> encode_event(const core::Event& e, const ExecutionView* view) {
  std::vector<std::byte> out;
  const std::size_t start = encode_event_into(out, e, view, now_ns());
  out.erase(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(start));
  return out;
}

std::size_t encode_event_into(std::vector<std::byte>& out, const core::Event& e,
                              const ExecutionView* view, std::int64_t timestamp) {
  MapBuilder m(out);
  m.str("type", core::event_name(e.type)).integer("timestamp", timestamp);
  switch (e.type) {
    case core::EventType::kWorkerRegistered:
    case core::EventType::kWorkerUnregistered:
      m.str("worker_id", e.worker_id.value_or("")).strings("capabilities", e.capabilities);
      if (!e.reason.empty()) m.str("reason", e.reason);
      return m.complete();
    case core::EventType::kBlockerReported:
      m.str("worker_id", e.worker_id.value_or(""))
          .str("execution_id", e.execution_id)
          // `type` names the event, as in every event: the blocker's own type is blocker_type.
          .str("blocker_type", e.blocker_type)
          .str("description", e.description)
          .str("severity", e.severity)
          .strings("required_capabilities", e.capabilities)
          .strings("helpers", e.helpers);
      if (!e.target.empty()) m.str("helper", e.target);
      return m.complete();
    default:
      break;
  }
  m.str("execution_id", e.execution_id).str("user_id", e.user_id);
  switch (e.type) {
    case core::EventType::kAccepted:
      m.str("priority", priority_name(e.priority))
          .integer("queue_position", static_cast<std::int64_t>(e.queue_position));
      break;
    case core::EventType::kRejected:
      m.str("reason", e.reason).str("message", e.message);
      break;
    case core::EventType::kTaskPush:
      m.str("worker_id", e.worker_id.value_or(""));
      [[fallthrough]];
    case core::EventType::kCreatePodCommand: {
      std::vector<std::string> capabilities;
      Metadata metadata;
      if (view && !view->extras.empty()) decode_extras(view->extras, capabilities, metadata);
      m.str("priority", priority_name(e.priority))
          .bin("payload", view ? view->payload : std::span<const std::byte>())
          .string_map("metadata", metadata)
          .integer("attempt", e.attempt)
          .strings("required_capabilities", capabilities)
          .integer("timeout_seconds", view ? view->timeout_seconds : 0)
          .integer("enqueued_at", view ? view->enqueued_at_ns : 0);
      break;
    }
    case core::EventType::kCompleted:
    case core::EventType::kFailed:
    case core::EventType::kCancelled:
    case core::EventType::kExpired:
      if (e.worker_id) m.str("worker_id", *e.worker_id);
      if (e.exit_code) m.integer("exit_code", *e.exit_code);
      if (e.error) m.str("error", *e.error);
      if (!e.reason.empty()) m.str("reason", e.reason);
      if (e.will_retry) m.boolean("will_retry", *e.will_retry);
      if (e.type == core::EventType::kFailed) m.integer("attempt", e.attempt);
      break;
    case core::EventType::kWorkerRegistered:
    case core::EventType::kWorkerUnregistered:
    case core::EventType::kBlockerReported:
      break;  // encoded above
  }
  return m.complete();
}

std::vector<std::byte> encode_reply(const core::Reply& r, const std::vector<core::Reply>* items,
                                    std::string_view items_key) {
  if (!r.ok) return protocol::error_reply(r.error, r.message);
  MapBuilder m;
  m.boolean("ok", true);
  add_fields(m, r);
  if (items) {
    std::vector<std::vector<std::byte>> encoded;
    encoded.reserve(items->size());
    for (const auto& item : *items) {
      MapBuilder one;
      add_fields(one, item);
      encoded.push_back(one.finish());
    }
    m.raw_array(items_key, encoded);
  }
  return m.finish();
}

}  // namespace shmsched::ipc::events
