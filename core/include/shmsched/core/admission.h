// The outcome of offering an execution to the queue. Each rejection is a distinct value so that
// callers (and the wire protocol) can tell capacity, fairness and identity problems apart.
#pragma once

#include <cstdint>
#include <string_view>

namespace shmsched {

enum class Admission : std::uint8_t {
  kAccepted = 0,
  kQueueFull,        // the queue holds max_queue_size entries
  kUserLimit,        // the user has max_executions_per_user queued + active
  kDuplicate,        // that execution id is already queued or active
  kPayloadTooLarge,  // payload (or its capabilities/metadata) exceeds the configured size
  kInvalid,          // malformed request: empty or over-long id, unknown priority, ...
  kUnauthorized,     // the ingress: this local client may not submit for that user
};

// The protocol's reason string: "accepted", "queue_full", "user_limit", ...
std::string_view admission_name(Admission a);

}  // namespace shmsched
