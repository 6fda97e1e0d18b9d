// Bodies of the outbound events of docs/protocol.md, encoded as msgpack maps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shmsched/core/priority.h"
#include "shmsched/ipc/execution.h"

namespace shmsched::ipc::events {

// Unix time in nanoseconds (the protocol's timestamps).
std::int64_t now_ns();

std::vector<std::byte> accepted(std::string_view execution_id, std::string_view user_id,
                                Priority priority, std::uint64_t queue_position);
std::vector<std::byte> rejected(std::string_view execution_id, std::string_view user_id,
                                std::string_view reason, std::string_view message);
// CreatePodCommand (no worker) or TaskPush (with a worker id).
std::vector<std::byte> dispatch(const ExecutionRecord& execution, std::uint32_t attempt,
                                std::optional<std::string_view> worker_id = std::nullopt);

// ExecutionCompleted / ExecutionFailed / ExecutionCancelled / ExecutionExpired.
struct Finished {
  std::string_view type;
  std::string_view execution_id;
  std::string_view user_id;
  std::optional<std::string_view> worker_id = std::nullopt;
  std::optional<std::int64_t> exit_code = std::nullopt;
  std::optional<std::string_view> error = std::nullopt;
  std::optional<std::string_view> reason = std::nullopt;
  std::optional<bool> will_retry = std::nullopt;  // ExecutionFailed: another attempt follows
  std::optional<std::uint32_t> attempt = std::nullopt;
};
std::vector<std::byte> finished(const Finished& f);

}  // namespace shmsched::ipc::events
