// Helpers for queue tests: a uniquely named segment removed at the end, and request builders.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "shmsched/ipc/queue.h"

namespace shmsched::test {

inline std::string unique_segment_name(const std::string& tag) {
  static std::atomic<int> counter{0};
  return "shmsched-test-" + tag + "-" + std::to_string(::getpid()) + "-" +
         std::to_string(counter++);
}

inline ipc::SegmentConfig small_config() {
  ipc::SegmentConfig c;
  c.max_queue_size = 64;
  c.max_payload_bytes = 256;
  c.max_extras_bytes = 256;
  c.max_users = 16;
  c.max_active = 16;
  c.max_participants = 16;
  c.max_executions_per_user = 100;
  c.mode = 0600;
  return c;
}

class TempSegment {
 public:
  explicit TempSegment(const ipc::SegmentConfig& cfg = small_config(), const std::string& tag = "q")
      : name_(unique_segment_name(tag)) {
    ipc::Segment::remove(name_);
    segment_ = ipc::Segment::create(name_, cfg);
  }
  ~TempSegment() { ipc::Segment::remove(name_); }
  TempSegment(const TempSegment&) = delete;
  TempSegment& operator=(const TempSegment&) = delete;

  const std::string& name() const { return name_; }
  const std::shared_ptr<ipc::Segment>& segment() const { return segment_; }

 private:
  std::string name_;
  std::shared_ptr<ipc::Segment> segment_;
};

// A request whose payload is the bytes of `payload`; the strings must outlive the call.
struct Req {
  Req(std::string id_, std::string user_, Priority priority_ = Priority::kNormal,
      std::string payload_ = "print('hello')")
      : id(std::move(id_)),
        user(std::move(user_)),
        priority(priority_),
        payload(std::move(payload_)) {}

  std::string id;
  std::string user;
  Priority priority = Priority::kNormal;
  std::string payload = "print('hello')";
  std::vector<std::string> capabilities;
  ipc::Metadata metadata;
  std::int64_t enqueued_at_ns = 0;

  ipc::SubmitRequest get() const {
    ipc::SubmitRequest r;
    r.execution_id = id;
    r.user_id = user;
    r.priority = priority;
    r.payload = std::span<const std::byte>(reinterpret_cast<const std::byte*>(payload.data()),
                                           payload.size());
    r.required_capabilities = capabilities;
    r.metadata = metadata;
    r.enqueued_at_ns = enqueued_at_ns;
    return r;
  }
};

// A producer that may also cancel directly in the segment, as the supervisor does: tests race
// cancels from other processes against everything else (the public API keeps cancel to the
// consumer, which publishes and counts it).
struct CancellingProducer : ipc::Producer {
  using ipc::Producer::Producer;
  using ipc::QueueHandle::cancel;
};

inline ipc::SubmitResult submit(ipc::Producer& p, const std::string& id, const std::string& user,
                                Priority prio = Priority::kNormal) {
  Req r{id, user, prio};
  return p.submit(r.get());
}

// Dequeues one execution and returns its id ("" when empty), leaving it active.
inline std::string take(ipc::Consumer& c, ipc::ActiveRef* ref_out = nullptr) {
  auto ref = c.dequeue();
  if (!ref) return "";
  auto view = c.view(*ref);
  if (ref_out) *ref_out = *ref;
  return view ? std::string(view->execution_id) : std::string("<no view>");
}

// Dequeues and releases one execution, returning its id ("" when empty).
inline std::string take_and_release(ipc::Consumer& c) {
  ipc::ActiveRef ref;
  std::string id = take(c, &ref);
  if (!id.empty()) c.release(ref);
  return id;
}

}  // namespace shmsched::test
