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
// The same, appended to `out` with `timestamp` (the caller reads the clock once for a batch);
// the body is out[start .. out.size()) for the returned start.
std::size_t encode_event_into(std::vector<std::byte>& out, const core::Event& event,
                              const ExecutionView* view, std::int64_t timestamp);

// {ok: true, fields...} or {ok: false, error, message}; with `items`, also <items_key>: [...].
std::vector<std::byte> encode_reply(const core::Reply& reply, const std::vector<core::Reply>* items,
                                    std::string_view items_key = "executions");

}  // namespace shmsched::ipc::events
