// The events and commands the loop decided in one pass, encoded into one reused buffer and handed
// to each transport as one batch (the plugin ABI's publish_batch) when the pass ends, or earlier
// when an action must follow them (see Supervisor::carry_out). Nothing on this path allocates
// per message once the buffers have grown.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "shmsched/core/scheduler.h"
#include "shmsched/ipc/queue.h"
#include "transport_host.h"

namespace shmsched::daemon {

// Tokens of lifecycle events (their delivery results are only logged) have this bit; the
// scheduler's command tokens never do.
constexpr std::uint64_t kEventTokenBit = 1ULL << 63;

class Outbound {
 public:
  using Transports = std::map<core::TransportId, std::unique_ptr<Transport>>;
  // A transport refused a message: (transport, its name, message type, execution id, token,
  // the plugin's code).
  using Refused = std::function<void(core::TransportId, const std::string&, std::string_view,
                                     std::string_view, std::uint64_t, int)>;

  // Encodes `event` (a command with its slot's data, `view`) for the transports `to` (empty:
  // every one), with `token` (0: an event's own).
  void add(const core::Event& event, const ipc::ExecutionView* view, std::int64_t timestamp,
           std::span<const core::TransportId> to, std::uint64_t token);
  bool empty() const { return items_.empty(); }
  // Hands every message to its transports, in order, and forgets them.
  void flush(Transports& transports, const Refused& refused);

 private:
  struct Item {
    std::string_view type;  // a static name, NUL-terminated
    std::size_t key_at = 0, key_len = 0;
    std::size_t topic_at = 0;  // its own NUL-terminated topic in arena_ (0: the type)
    std::size_t body_at = 0, body_len = 0;
    bool command = false;
    std::uint64_t token = 0;
    std::size_t to_at = 0, to_len = 0;  // its transports in to_ids_ (none: every one)
  };

  std::vector<std::byte> arena_;  // bodies and NUL-terminated keys
  std::vector<Item> items_;
  std::vector<core::TransportId> to_ids_;
  std::vector<shmsched_message> messages_;  // one transport's batch (scratch)
  std::vector<std::uint64_t> tokens_;
  std::vector<std::size_t> which_;  // items_ index of each of messages_
  std::uint64_t next_event_token_ = 1;
};

}  // namespace shmsched::daemon
