// The scheduler's events and replies as bytes: msgpack maps of docs/protocol.md.
#pragma once

#include <cstddef>
#include <vector>

#include "shmsched/core/events.h"
#include "shmsched/ipc/queue.h"

namespace shmsched::daemon {

// The body of an event. A CreatePodCommand takes its payload, metadata and capabilities from the
// execution's slot (`view`), in place.
std::vector<std::byte> encode_event(const core::Event& event, const ipc::ExecutionView* view);

// {ok: true, fields...} or {ok: false, error, message}; with `items`, also executions: [...].
std::vector<std::byte> encode_reply(const core::Reply& reply,
                                    const std::vector<core::Reply>* items);

}  // namespace shmsched::daemon
