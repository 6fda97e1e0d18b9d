#include "outbound.h"

#include <algorithm>
#include <cstring>

#include "shmsched/ipc/events.h"

namespace shmsched::daemon {

void Outbound::add(const core::Event& event, const ipc::ExecutionView* view, std::int64_t timestamp,
                   std::span<const core::TransportId> to, std::uint64_t token) {
  Item item;
  item.type = core::event_name(event.type);
  item.command =
      event.type == core::EventType::kCreatePodCommand || event.type == core::EventType::kTaskPush;
  item.token = token;
  item.to_at = to_ids_.size();
  item.to_len = to.size();
  to_ids_.insert(to_ids_.end(), to.begin(), to.end());
  item.key_at = arena_.size();
  item.key_len = event.execution_id.size();
  const auto* key = reinterpret_cast<const std::byte*>(event.execution_id.data());
  arena_.insert(arena_.end(), key, key + event.execution_id.size());
  arena_.push_back(std::byte{0});
  // The topic: the type, or "<type>.<worker>" for a message meant for one worker.
  if (!event.target.empty()) {
    item.topic_at = arena_.size();
    const auto* t = reinterpret_cast<const std::byte*>(item.type.data());
    arena_.insert(arena_.end(), t, t + item.type.size());
    arena_.push_back(std::byte{'.'});
    const auto* w = reinterpret_cast<const std::byte*>(event.target.data());
    arena_.insert(arena_.end(), w, w + event.target.size());
    arena_.push_back(std::byte{0});
  }
  item.body_at = ipc::events::encode_event_into(arena_, event, view, timestamp);
  item.body_len = arena_.size() - item.body_at;
  items_.push_back(std::move(item));
}

void Outbound::flush(Transports& transports, const Refused& refused) {
  if (items_.empty()) return;
  // Forgotten however this ends: an exception out of a transport stops the loop, and the
  // shutdown that follows must not hand the same messages out again.
  struct Forget {
    Outbound& o;
    ~Forget() {
      o.items_.clear();
      o.arena_.clear();
      o.to_ids_.clear();
    }
  } forget{*this};
  for (auto& [id, transport] : transports) {
    if (!transport) continue;
    messages_.clear();
    tokens_.clear();
    which_.clear();
    for (std::size_t i = 0; i < items_.size(); ++i) {
      const Item& it = items_[i];
      const auto to_begin = to_ids_.begin() + static_cast<std::ptrdiff_t>(it.to_at);
      const auto to_end = to_begin + static_cast<std::ptrdiff_t>(it.to_len);
      if (it.to_len > 0 && std::find(to_begin, to_end, id) == to_end) continue;
      const char* key = reinterpret_cast<const char*>(arena_.data() + it.key_at);
      const char* topic =
          it.topic_at ? reinterpret_cast<const char*>(arena_.data() + it.topic_at) : it.type.data();
      messages_.push_back(
          shmsched_message{it.type.data(), key, topic,
                           reinterpret_cast<const std::uint8_t*>(arena_.data() + it.body_at),
                           it.body_len, it.command ? 1 : 0});
      tokens_.push_back(it.token ? it.token : kEventTokenBit | next_event_token_++);
      which_.push_back(i);
    }
    std::size_t done = 0;
    while (done < messages_.size()) {
      int refusal = SHMSCHED_OK;
      done += transport->publish_batch(messages_.data() + done, tokens_.data() + done,
                                       messages_.size() - done, &refusal);
      if (done == messages_.size()) break;
      const Item& it = items_[which_[done]];
      refused(
          id, transport->name(), it.type,
          std::string_view(reinterpret_cast<const char*>(arena_.data() + it.key_at), it.key_len),
          tokens_[done], refusal);
      ++done;  // the rest is offered again
    }
  }
}

}  // namespace shmsched::daemon
