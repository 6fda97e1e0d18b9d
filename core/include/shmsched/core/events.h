// What the scheduler asks to be published and answered: the outbound events and the replies of
// docs/protocol.md, as plain values. The shell encodes them (msgpack) and hands them to the
// transports or the requester; the scheduler never sees bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "shmsched/core/priority.h"

namespace shmsched::core {

// A dequeued execution's place in the queue's segment, opaque to the scheduler (the shell packs
// its slot reference into it).
using SlotRef = std::uint64_t;

enum class EventType : std::uint8_t {
  kAccepted,
  kRejected,
  kCreatePodCommand,
  kCompleted,
  kFailed,
  kCancelled,
  kExpired,
  kTaskPush,  // a CreatePodCommand for one worker (worker_id)
  kWorkerRegistered,
  kWorkerUnregistered,
  kBlockerReported,
};

std::string_view event_name(EventType t);

// One outbound event. Which fields mean something depends on the type (docs/protocol.md).
struct Event {
  EventType type = EventType::kAccepted;
  std::string execution_id;
  std::string user_id;
  Priority priority = Priority::kNormal;
  std::uint64_t queue_position = 0;  // kAccepted
  std::string reason;                // kRejected; kFailed, kCancelled, kExpired (why)
  std::string message;               // kRejected
  SlotRef slot = 0;                  // kCreatePodCommand: the body is read from the segment
  std::uint32_t attempt = 0;         // kCreatePodCommand, kFailed
  // kCreatePodCommand, kTaskPush: the execution's first dispatch (not a retry, a re-offer, a
  // republish after a transport's failure, or one a previous supervisor had sent).
  bool first_dispatch = false;
  std::optional<std::string> worker_id;
  std::optional<std::int64_t> exit_code;
  std::optional<std::string> error;
  std::optional<bool> will_retry;  // kFailed: another attempt follows
  // kTaskPush: worker_id. kWorkerRegistered / kWorkerUnregistered: worker_id, capabilities,
  // reason (why it is gone). kBlockerReported: worker_id (the reporter), capabilities (required),
  // helpers and the blocker's description.
  std::vector<std::string> capabilities;
  std::vector<std::string> helpers;
  std::string blocker_type, description, severity;
  // The one worker this copy is for: its topic is "<type>.<target>" (a TaskPush's worker, a
  // blocker's helper). Empty: the type is the topic.
  std::string target;
};

// A reply to one operation: {ok: true, ...fields} or {ok: false, error, message}.
struct Reply {
  using Value = std::variant<std::int64_t, std::string, bool, std::vector<std::string>>;
  bool ok = true;
  std::string error;
  std::string message;
  std::vector<std::pair<std::string, Value>> fields;

  static Reply success() { return Reply{}; }
  static Reply failure(std::string code, std::string text) {
    Reply r;
    r.ok = false;
    r.error = std::move(code);
    r.message = std::move(text);
    return r;
  }
  Reply& with(std::string key, Value v) {
    fields.emplace_back(std::move(key), std::move(v));
    return *this;
  }
};

}  // namespace shmsched::core
