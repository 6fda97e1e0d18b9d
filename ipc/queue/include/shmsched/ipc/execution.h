// What the queue stores about an execution, as seen by producers and the consumer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shmsched/core/admission.h"
#include "shmsched/core/priority.h"

namespace shmsched::ipc {

using Metadata = std::vector<std::pair<std::string, std::string>>;

struct SubmitRequest {
  std::string_view execution_id;  // 1..64 bytes, unique among queued and active executions
  std::string_view user_id;       // 1..64 bytes
  Priority priority = Priority::kNormal;
  std::span<const std::byte> payload;  // opaque, at most max_payload_bytes
  std::vector<std::string> required_capabilities;
  Metadata metadata;
  std::uint32_t timeout_seconds = 0;
  std::uint32_t attempt = 1;
  std::int64_t enqueued_at_ns = 0;  // 0 means now (CLOCK_REALTIME)
};

struct SubmitResult {
  Admission admission = Admission::kInvalid;
  // The true rank at the moment of the enqueue: how many entries will be dequeued before it.
  std::uint64_t queue_position = 0;
  // For people: why it was rejected.
  std::string message;
  // Where an accepted entry was put (its slot and that slot's generation): what
  // Producer::wait_durable waits on.
  std::uint32_t slot = 0;
  std::uint32_t generation = 0;

  bool accepted() const { return admission == Admission::kAccepted; }
};

enum class ExecutionState : std::uint8_t { kQueued, kActive };

// A snapshot of one execution, copied out of the segment.
struct ExecutionRecord {
  std::string execution_id;
  std::string user_id;
  Priority priority = Priority::kNormal;
  ExecutionState state = ExecutionState::kQueued;
  std::int64_t enqueued_at_ns = 0;
  std::uint32_t attempt = 1;
  std::uint32_t timeout_seconds = 0;
  std::vector<std::byte> payload;
  std::vector<std::string> required_capabilities;
  Metadata metadata;
  std::optional<std::uint64_t> queue_position;  // when queued
  // Its place in its priority's ring (for an active one: where it was queued from). Within one
  // priority it grows in FIFO order and, unlike queue_position (a rank across priorities), does
  // not move while other entries come and go.
  std::uint64_t ring_position = 0;
  std::uint64_t annotation = 0;  // the owner's word (Consumer::annotate), active only
  // The worker number that claimed its current attempt (0: nobody), active only.
  std::uint32_t claimed_by = 0;
};

}  // namespace shmsched::ipc
