// The scheduler's events and replies (core/events.h) as bytes: msgpack maps of docs/protocol.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "shmsched/core/events.h"
#include "shmsched/ipc/queue.h"

namespace shmsched::ipc::events {

// Unix time in nanoseconds (the protocol's timestamps).
std::int64_t now_ns();

// The body of an event. A CreatePodCommand takes its payload, metadata and capabilities from the
// execution's slot (`view`), in place.
std::vector<std::byte> encode_event(const core::Event& event, const ExecutionView* view);

// {ok: true, fields...} or {ok: false, error, message}; with `items`, also executions: [...].
std::vector<std::byte> encode_reply(const core::Reply& reply,
                                    const std::vector<core::Reply>* items);

}  // namespace shmsched::ipc::events
