// Messages from other threads (ingress, transport callbacks, signals) to the supervisor's loop.
// Posting wakes the loop through the queue segment's futex word, so the loop sleeps in exactly
// one place whatever it waits for.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "shmsched/ipc/protocol.h"
#include "shmsched/ipc/queue.h"
#include "shmsched/transport.h"

namespace shmsched::daemon {

// Where the answer to an operation goes: a deferred ingress reply, or a transport's callbacks.
struct ReplyTo {
  std::uint64_t ingress_token = 0;  // 0: not from the ingress
  std::optional<shmsched_inbound_done> transport;
};

struct OpMessage {
  ipc::protocol::Request request;
  ReplyTo reply_to;
  // A local client that is not trusted: cancel, complete and fail act for this user only, and
  // the loop (which alone removes executions) checks the owner where it acts. nullopt: anyone.
  std::optional<std::string> as_user = std::nullopt;
  // A register_worker over the local socket: the process behind it (worker_sessions.h).
  std::string session = {};
  std::int32_t pid = 0;
};
struct DeliveryMessage {
  std::uint64_t transport;  // the instance (core::TransportId)
  std::string name;
  std::uint64_t token;
  bool ok;
  std::string error;
};
struct RejectedMessage {
  std::string execution_id;
  std::string user_id;
  std::string reason;
  std::string message;
};
struct SignalMessage {
  int signal;
};

// A submit accepted with durability disk, or an execution ended with durability = disk
// configured: `body` (its reply) goes to `to` once the journal has it on disk.
struct DurableWaitMessage {
  std::string execution_id;
  ReplyTo to;
  std::vector<std::byte> body;
  // The answer to a cancel, complete or fail (its effect is done; only its record is awaited),
  // not to a submit.
  bool ending = false;
};
// The journal's answer for one DurableWaitMessage.
struct DurableDoneMessage {
  DurableWaitMessage wait;
  bool ok = false;
  std::string error;
};
// The journal made more records durable (slots waiting for their end to be on disk).
struct JournalWakeMessage {};

using Message = std::variant<OpMessage, DeliveryMessage, RejectedMessage, SignalMessage,
                             DurableWaitMessage, DurableDoneMessage, JournalWakeMessage>;

class Inbox {
 public:
  explicit Inbox(std::shared_ptr<ipc::Segment> segment) : segment_(std::move(segment)) {}

  void post(Message m) {
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(m));
      // The hand-off the loop's `ready` check reads (seq_cst, for kick()'s Dekker).
      pending_.fetch_add(1, std::memory_order_seq_cst);
    }
    ipc::kick(*segment_);
  }

  std::deque<Message> take() {
    std::lock_guard lock(mutex_);
    std::deque<Message> out;
    out.swap(queue_);
    pending_.fetch_sub(static_cast<std::int64_t>(out.size()), std::memory_order_seq_cst);
    return out;
  }

  bool empty() const { return pending_.load(std::memory_order_seq_cst) == 0; }

 private:
  std::shared_ptr<ipc::Segment> segment_;
  mutable std::mutex mutex_;
  std::deque<Message> queue_;
  std::atomic<std::int64_t> pending_{0};  // messages in queue_
};

}  // namespace shmsched::daemon
