// Submission: validation, admission and enqueue as one step, without a lock or a system call.
//
// Order of a submit (each step undoes the previous ones when it refuses):
//   duplicate look-up -> capacity (queued count) -> per-user cap -> take a slot -> fill it ->
//   dedup insert (the identity commit) -> push its index on the priority ring (the queue commit)
//   -> mark it queued -> ring the consumer only if it sleeps.
// A producer killed between any two steps leaves state that maintenance rebuilds from the
// slots (maintenance.cpp); the accepted result is only returned after the queue commit.
#include <time.h>

#include <cstring>

#include "crash_point.h"
#include "futex.h"
#include "queue_internals.h"
#include "shmsched/core/stable_hash.h"
#include "shmsched/ipc/queue.h"
#include "slot_fields.h"
#include "slot_text.h"

namespace shmsched::ipc {

using namespace detail;

namespace {

std::int64_t realtime_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);  // vDSO: no system call
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

SubmitResult reject(Admission a, std::string message) {
  return SubmitResult{a, 0, std::move(message)};
}

std::size_t counter_for(Admission a) {
  switch (a) {
    case Admission::kAccepted:
      return kEnqueued;
    case Admission::kQueueFull:
      return kRejectedQueueFull;
    case Admission::kUserLimit:
      return kRejectedUserLimit;
    case Admission::kDuplicate:
      return kRejectedDuplicate;
    case Admission::kPayloadTooLarge:
      return kRejectedPayloadTooLarge;
    case Admission::kInvalid:
    case Admission::kUnauthorized:  // the queue never refuses so; counted as invalid if it did
      return kRejectedInvalid;
  }
  return kRejectedInvalid;
}

// The result of one attempt inside the operation bracket.
struct Attempt {
  SubmitResult result;
  bool needs_maintenance = false;  // retry after compaction/recovery
};

}  // namespace

Producer::Producer(std::shared_ptr<Segment> segment, ProducerOptions options)
    : QueueHandle(std::move(segment), static_cast<std::uint32_t>(ParticipantRole::kProducer),
                  options.wait.value_or(std::chrono::milliseconds(1000)), options.wait.has_value(),
                  options.ask_consumer_in_process) {}

SubmitResult Producer::submit(const SubmitRequest& req) {
  const SegmentView& v = *view_;
  const Geometry& g = *v.geo;

  auto refuse = [&](Admission a, std::string msg) {
    count(counter_for(a));
    return reject(a, std::move(msg));
  };
  if (req.execution_id.empty() || req.execution_id.size() > kMaxIdBytes) {
    return refuse(Admission::kInvalid, "execution_id must be 1 to 64 bytes");
  }
  if (req.user_id.empty() || req.user_id.size() > kMaxIdBytes) {
    return refuse(Admission::kInvalid, "user_id must be 1 to 64 bytes");
  }
  if (priority_index(req.priority) >= kLevels) {
    return refuse(Admission::kInvalid, "priority must be 0 (critical) to 4 (background)");
  }
  if (req.payload.size() > g.max_payload_bytes) {
    return refuse(Admission::kPayloadTooLarge,
                  "payload is " + std::to_string(req.payload.size()) + " bytes; the limit is " +
                      std::to_string(g.max_payload_bytes) + " (max_payload_bytes)");
  }
  std::vector<std::byte> extras;
  if (!req.required_capabilities.empty() || !req.metadata.empty()) {
    extras = encode_extras(req.required_capabilities, req.metadata);
    if (extras.size() > g.max_extras_bytes) {
      return refuse(Admission::kPayloadTooLarge,
                    "capabilities and metadata take " + std::to_string(extras.size()) +
                        " bytes encoded; the limit is " + std::to_string(g.max_extras_bytes) +
                        " (max_extras_bytes)");
    }
  }

  const std::uint64_t id_hash = stable_hash(req.execution_id);
  const std::uint64_t user_hash = stable_hash(req.user_id);
  const std::int64_t enqueued_at = req.enqueued_at_ns != 0 ? req.enqueued_at_ns : realtime_ns();
  const std::size_t level = priority_index(req.priority);

  auto attempt = [&](bool maintained) -> Attempt {
    if (DedupIndex{&v}.find(id_hash, req.execution_id)) {
      return {reject(Admission::kDuplicate, "execution_id is already queued or active")};
    }
    Header& hdr = *v.hdr;
    const std::int64_t limit = hdr.queue_limit.load(std::memory_order_relaxed);
    CRASH_POINT("submit: take a unit of capacity");
    if (hdr.queued.fetch_add(1, std::memory_order_acq_rel) >= limit) {
      CRASH_POINT("submit: give back the unit over capacity");
      hdr.queued.fetch_sub(1, std::memory_order_acq_rel);
      return {reject(Admission::kQueueFull,
                     "the queue holds max_queue_size = " + std::to_string(limit) + " executions")};
    }
    auto undo_queued = [&] {
      CRASH_POINT("submit: undo the unit of capacity");
      hdr.queued.fetch_sub(1, std::memory_order_acq_rel);
    };

    UserTable users{&v};
    std::optional<std::uint32_t> entry = users.find(user_hash);
    if (!entry) {
      if (hdr.user_entries.load(std::memory_order_relaxed) >= g.max_users) {
        undo_queued();
        if (!maintained) return {{}, true};  // compaction drops users with nothing left
        return {
            reject(Admission::kUserLimit, "more than max_users = " + std::to_string(g.max_users) +
                                              " distinct users have executions queued or active")};
      }
      entry = users.find_or_claim(user_hash);
      if (!entry) {
        undo_queued();
        if (!maintained) return {{}, true};
        return {reject(Admission::kUserLimit, "the user table is full (max_users)")};
      }
      // Counted approximately (a concurrent claim of the same user may count twice); the
      // maintenance pass recounts exactly.
      CRASH_POINT("submit: count a new user entry");
      hdr.user_entries.fetch_add(1, std::memory_order_relaxed);
    }
    const std::uint32_t user_limit = hdr.per_user_limit.load(std::memory_order_relaxed);
    if (!users.acquire(*entry, user_limit)) {
      undo_queued();
      return {reject(Admission::kUserLimit,
                     "user has max_executions_per_user = " + std::to_string(user_limit) +
                         " executions queued or active")};
    }
    auto undo_user = [&] { users.release(*entry); };

    const auto index = take_slot(v);
    if (!index) {
      undo_user();
      undo_queued();
      // Every slot is queued, active or a cancelled tombstone not yet passed by the consumer:
      // compaction gives the tombstones' slots back.
      if (!maintained) return {{}, true};
      return {reject(Admission::kQueueFull, "no free slot (cancelled entries await compaction)")};
    }
    Slot& s = v.slot(*index);
    const std::uint32_t gen = ctrl_gen(s.ctrl.load(std::memory_order_relaxed)) + 1;
    CRASH_POINT("submit: mark the slot pending");
    s.ctrl.store(ctrl_make(gen, self_ + 1, SlotState::kPending), std::memory_order_relaxed);
    // Fields are release stores: a reader that sees any of them sees this generation too.
    CRASH_POINT("submit: fill the slot");
    s.id_hash.store(id_hash, std::memory_order_relaxed);
    store_field(s.enqueued_at_ns, enqueued_at);
    store_field(s.user_entry, *entry);
    store_field(s.payload_len, static_cast<std::uint32_t>(req.payload.size()));
    store_field(s.extras_len, static_cast<std::uint32_t>(extras.size()));
    store_field(s.attempt, req.attempt);
    store_field(s.timeout_seconds, req.timeout_seconds);
    // The consumer's annotation word (the supervisor's dispatch phase) starts clear for every
    // generation: a consumer that dies right after taking the slot leaves it in no phase.
    store_field(s.reserved[0], std::uint64_t{0});
    store_field(s.reserved[1], std::uint64_t{0});  // the claim word: not open
    store_field(s.priority, static_cast<std::uint8_t>(level));
    store_field(s.id_len, static_cast<std::uint8_t>(req.execution_id.size()));
    store_field(s.user_len, static_cast<std::uint8_t>(req.user_id.size()));
    store_field(s.owner_len, std::uint8_t{0});
    store_text(s.id_words, req.execution_id);
    store_text(s.user_words, req.user_id);
    store_data(v.slot_data(*index), req.payload, std::as_bytes(std::span(extras)));

    switch (DedupIndex{&v}.insert(id_hash, req.execution_id, *index, /*looked_up=*/true)) {
      case DedupIndex::Insert::kInserted:
        break;
      case DedupIndex::Insert::kDuplicate:
        free_slot(v, *index);
        undo_user();
        undo_queued();
        return {reject(Admission::kDuplicate, "execution_id is already queued or active")};
      case DedupIndex::Insert::kFull:
        free_slot(v, *index);
        undo_user();
        undo_queued();
        return {reject(Admission::kQueueFull, "the execution id index is full")};
    }

    // The queue commit. The ring has a cell for every slot, so it cannot be full.
    const auto pos = ring_of(v, level).push(*index, &s.ring_pos);
    if (!pos) {
      DedupIndex{&v}.remove(id_hash, *index);
      free_slot(v, *index);
      undo_user();
      undo_queued();
      hdr.inconsistencies.fetch_add(1, std::memory_order_relaxed);
      return {reject(Admission::kQueueFull, "priority ring is full")};
    }
    // Pending -> queued. The consumer may already have taken it (it helps a pending entry it
    // finds in the ring), or a canceller cancelled it, so this is a CAS whose failure is fine.
    std::uint64_t expect = ctrl_make(gen, self_ + 1, SlotState::kPending);
    CRASH_POINT("submit: mark the slot queued");
    s.ctrl.compare_exchange_strong(expect, ctrl_make(gen, self_ + 1, SlotState::kQueued),
                                   std::memory_order_acq_rel);
    return {SubmitResult{Admission::kAccepted, rank_at(v, level, *pos), {}, *index, gen}};
  };

  for (bool maintained = false;; maintained = true) {
    Attempt a;
    {
      Bracket bracket(*this);
      if (!bracket) {
        return refuse(Admission::kQueueFull,
                      "the queue is being repaired and pid " + std::to_string(blocked_by_) +
                          " holds the repair up (stopped inside a queue operation?): retry");
      }
      a = attempt(maintained);
    }
    if (a.needs_maintenance) {
      run_maintenance();
      continue;
    }
    count(counter_for(a.result.admission));
    if (a.result.accepted()) {
      // Ring the consumer only if it is (about to be) asleep; exchange so that one producer
      // rings per sleep.
      Header& hdr = *v.hdr;
      if (hdr.consumer_sleeping.load(std::memory_order_seq_cst) != 0) {
        CRASH_POINT("submit: take the consumer's sleep flag");
        if (hdr.consumer_sleeping.exchange(0, std::memory_order_seq_cst) != 0) {
          CRASH_POINT("submit: ring the consumer");
          hdr.wake_seq.fetch_add(1, std::memory_order_seq_cst);
          futex_wake(&hdr.wake_seq, 1);
        }
      }
    }
    return a.result;
  }
}

}  // namespace shmsched::ipc
