// Registration, the operation bracket, maintenance hand-over, and the operations every
// participant may use: cancel, status, stats.
#include <unistd.h>

#include <chrono>
#include <thread>

#include "futex.h"
#include "process_liveness.h"
#include "queue_internals.h"
#include "shmsched/core/stable_hash.h"
#include "shmsched/ipc/queue.h"
#include "slot_text.h"

namespace shmsched::ipc {

using namespace detail;

namespace {

constexpr auto kMaintenancePoll = std::chrono::milliseconds(10);

bool claim_entry(const SegmentView& v, std::uint32_t pid, std::uint32_t& index) {
  for (std::uint32_t i = 0; i < v.geo->max_participants; ++i) {
    std::uint32_t expected = 0;
    if (v.participant(i).pid.compare_exchange_strong(expected, pid, std::memory_order_acq_rel)) {
      index = i;
      return true;
    }
  }
  return false;
}

}  // namespace

QueueHandle::QueueHandle(std::shared_ptr<Segment> segment, std::uint32_t role)
    : segment_(std::move(segment)), view_(&segment_->view()) {
  const SegmentView& v = *view_;
  const auto pid = static_cast<std::uint32_t>(::getpid());
  if (!claim_entry(v, pid, self_)) {
    // Entries of dead processes may be holding the table: reap them and try once more.
    for (std::uint32_t i = 0; i < v.geo->max_participants; ++i) {
      if (!participant_is_alive(v, i) && v.participant(i).busy.load() == 0) reap_participant(v, i);
    }
    if (!claim_entry(v, pid, self_)) {
      throw SegmentError("all " + std::to_string(v.geo->max_participants) +
                         " participant entries of shared memory segment /dev/shm/" +
                         segment_->name() +
                         " are taken by live processes: close unused producers, or recreate "
                         "the segment with a larger max_participants");
    }
  }
  Participant& me = v.participant(self_);
  me.busy.store(0, std::memory_order_relaxed);
  me.role.store(role, std::memory_order_relaxed);
  for (auto& c : me.counters) c.store(0, std::memory_order_relaxed);
  me.start_time.store(process_start_time(static_cast<pid_t>(pid)), std::memory_order_release);
}

QueueHandle::~QueueHandle() {
  const SegmentView& v = *view_;
  Participant& me = v.participant(self_);
  for (std::size_t c = 0; c < kCounterCount; ++c) {
    v.hdr->totals[c].fetch_add(me.counters[c].exchange(0), std::memory_order_relaxed);
  }
  me.busy.store(0, std::memory_order_relaxed);
  me.start_time.store(0, std::memory_order_relaxed);
  me.pid.store(0, std::memory_order_release);
}

void QueueHandle::count(std::size_t counter, std::uint64_t n) {
  auto& c = view_->participant(self_).counters[counter];
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);  // single writer
}

bool QueueHandle::participant_alive(std::uint32_t index) const {
  return participant_is_alive(*view_, index);
}

void QueueHandle::enter() {
  const SegmentView& v = *view_;
  auto& busy = v.participant(self_).busy;
  for (;;) {
    // Dekker-style with the maintainer: it publishes `maintenance` then reads every `busy`;
    // we publish `busy` then read `maintenance`. With seq_cst one of us sees the other.
    busy.store(1, std::memory_order_seq_cst);
    const std::uint64_t m = v.hdr->maintenance.load(std::memory_order_seq_cst);
    if (m == 0) return;
    busy.store(0, std::memory_order_seq_cst);
    wait_for_maintenance(m);
  }
}

void QueueHandle::leave() {
  view_->participant(self_).busy.store(0, std::memory_order_release);
}

bool QueueHandle::acquire_maintenance() {
  const SegmentView& v = *view_;
  auto& word = v.hdr->maintenance;
  for (;;) {
    std::uint64_t m = word.load(std::memory_order_seq_cst);
    const std::uint64_t mine =
        ((v.hdr->maintenance_runs.load(std::memory_order_relaxed) + 1) << 32) | (self_ + 1ULL);
    if (m == 0 || !participant_alive(static_cast<std::uint32_t>(m & 0xffffffffULL) - 1)) {
      // Free, or held by a dead maintainer: take it (a rebuild is idempotent, so starting over
      // after a maintainer died midway is safe).
      if (word.compare_exchange_strong(m, mine, std::memory_order_seq_cst)) return true;
      continue;
    }
    const std::uint32_t seq = v.hdr->maintenance_seq.load(std::memory_order_acquire);
    if (word.load(std::memory_order_seq_cst) != m) return false;
    futex_wait(&v.hdr->maintenance_seq, seq, kMaintenancePoll);
    if (word.load(std::memory_order_seq_cst) != m) return false;  // someone else finished it
  }
}

void QueueHandle::wait_for_maintenance(std::uint64_t seen) {
  const SegmentView& v = *view_;
  const auto owner = static_cast<std::uint32_t>(seen & 0xffffffffULL) - 1;
  if (!participant_alive(owner)) {
    if (acquire_maintenance()) maintain_as_owner();
    return;
  }
  const std::uint32_t seq = v.hdr->maintenance_seq.load(std::memory_order_acquire);
  if (v.hdr->maintenance.load(std::memory_order_seq_cst) != seen) return;
  futex_wait(&v.hdr->maintenance_seq, seq, kMaintenancePoll);
}

void QueueHandle::run_maintenance() {
  if (acquire_maintenance()) maintain_as_owner();
}

void QueueHandle::maintain_as_owner() {
  const SegmentView& v = *view_;
  // Wait until every other live participant is outside its operation. New operations see the
  // maintenance word and wait; a participant that died inside one is simply skipped.
  for (std::uint32_t i = 0; i < v.geo->max_participants; ++i) {
    if (i == self_) continue;
    Participant& p = v.participant(i);
    for (std::uint32_t spins = 0;; ++spins) {
      if (p.pid.load(std::memory_order_acquire) == 0) break;
      if (p.busy.load(std::memory_order_seq_cst) == 0) break;
      if (spins % 64 == 63 && !participant_alive(i)) break;
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }
  rebuild(v, self_);
  v.hdr->maintenance_runs.fetch_add(1, std::memory_order_relaxed);
  v.hdr->maintenance.store(0, std::memory_order_seq_cst);
  v.hdr->maintenance_seq.fetch_add(1, std::memory_order_release);
  futex_wake(&v.hdr->maintenance_seq, INT32_MAX);
}

CancelOutcome QueueHandle::cancel(std::string_view execution_id) {
  if (execution_id.empty() || execution_id.size() > kMaxIdBytes) return CancelOutcome::kNotFound;
  const SegmentView& v = *view_;
  const std::uint64_t h = stable_hash(execution_id);
  for (std::uint32_t attempt = 0;; ++attempt) {
    enter();
    const auto index = DedupIndex{&v}.find(h, execution_id);
    if (!index) {
      leave();
      return CancelOutcome::kNotFound;
    }
    Slot& s = v.slot(*index);
    std::uint64_t c = s.ctrl.load(std::memory_order_acquire);
    const SlotState st = ctrl_state(c);
    if (st == SlotState::kActive) {
      leave();
      return CancelOutcome::kActive;
    }
    if (st == SlotState::kPending) {
      // Its producer is finishing the enqueue (a few instructions); let it, or reclaim it if it
      // died there.
      const std::uint32_t owner = ctrl_owner(c);
      leave();
      if (attempt % 1024 == 1023) {
        if (!participant_alive(owner)) run_maintenance();
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
      std::this_thread::yield();
      continue;
    }
    if (st != SlotState::kQueued) {
      leave();
      return CancelOutcome::kNotFound;
    }
    // Read what we need before the CAS: afterwards the consumer may pass and free the slot.
    const std::uint64_t pos = s.ring_pos.load(std::memory_order_relaxed);
    const std::size_t level = s.priority;
    const std::uint32_t user_entry = s.user_entry;
    const std::uint32_t gen = ctrl_gen(c);
    if (!s.ctrl.compare_exchange_strong(c, ctrl_make(gen, self_ + 1, SlotState::kCancelling),
                                        std::memory_order_acq_rel)) {
      leave();
      continue;  // the consumer took it, or another canceller won: look again
    }
    v.level(level).tombstones.fetch_add(1, std::memory_order_acq_rel);
    rank_of(v, level).add(pos, 1);
    DedupIndex{&v}.remove(h, *index);
    if (!UserTable{&v}.release(user_entry)) {
      v.hdr->inconsistencies.fetch_add(1, std::memory_order_relaxed);
    }
    v.hdr->queued.fetch_sub(1, std::memory_order_acq_rel);
    // Hand the tombstone to the consumer; if it already passed the cell, the slot is ours to free.
    std::uint64_t expect = ctrl_make(gen, self_ + 1, SlotState::kCancelling);
    if (!s.ctrl.compare_exchange_strong(expect, ctrl_make(gen, 0, SlotState::kCancelled),
                                        std::memory_order_acq_rel)) {
      free_slot(v, *index);
    }
    count(kCancelled);
    leave();
    return CancelOutcome::kCancelled;
  }
}

namespace {

// Copies a live slot out; false if it changed under us (then the caller looks again).
bool snapshot(const SegmentView& v, std::uint32_t index, ExecutionRecord& out) {
  Slot& s = v.slot(index);
  const std::uint64_t c = s.ctrl.load(std::memory_order_acquire);
  const SlotState st = ctrl_state(c);
  if (st != SlotState::kQueued && st != SlotState::kActive && st != SlotState::kPending) {
    return false;
  }
  out.execution_id = load_text(s.id_words, s.id_len);
  out.user_id = load_text(s.user_words, s.user_len);
  out.priority = static_cast<Priority>(s.priority % kLevels);
  out.state = st == SlotState::kActive ? ExecutionState::kActive : ExecutionState::kQueued;
  out.enqueued_at_ns = s.enqueued_at_ns;
  out.attempt = s.attempt;
  out.timeout_seconds = s.timeout_seconds;
  const std::uint32_t plen = std::min<std::uint32_t>(s.payload_len, v.geo->max_payload_bytes);
  const std::uint32_t elen = std::min<std::uint32_t>(s.extras_len, v.geo->max_extras_bytes);
  const std::byte* data = v.slot_data(index);
  out.payload.assign(data, data + plen);
  out.required_capabilities.clear();
  out.metadata.clear();
  if (elen > 0) {
    decode_extras(std::span<const std::byte>(data + plen, elen), out.required_capabilities,
                  out.metadata);
  }
  out.annotation =
      st == SlotState::kActive
          ? std::atomic_ref<std::uint64_t>(s.reserved[0]).load(std::memory_order_acquire)
          : 0;
  if (st != SlotState::kActive) {
    out.queue_position =
        rank_at(v, priority_index(out.priority), s.ring_pos.load(std::memory_order_acquire));
  } else {
    out.queue_position.reset();
  }
  return s.ctrl.load(std::memory_order_acquire) == c;
}

}  // namespace

std::optional<ExecutionRecord> QueueHandle::status(std::string_view execution_id) {
  if (execution_id.empty() || execution_id.size() > kMaxIdBytes) return std::nullopt;
  const SegmentView& v = *view_;
  const std::uint64_t h = stable_hash(execution_id);
  for (int attempt = 0; attempt < 100; ++attempt) {
    enter();
    const auto index = DedupIndex{&v}.find(h, execution_id);
    ExecutionRecord rec;
    const bool ok = index && snapshot(v, *index, rec);
    leave();
    if (!index) return std::nullopt;
    if (ok && rec.execution_id == execution_id) return rec;
  }
  return std::nullopt;
}

std::vector<ExecutionRecord> QueueHandle::list(std::optional<std::string_view> user_id,
                                               std::size_t limit) {
  const SegmentView& v = *view_;
  std::vector<ExecutionRecord> out;
  const std::uint64_t used = std::min(v.hdr->fresh_next.load(), v.geo->slot_count);
  for (std::uint32_t i = 0; i < used && out.size() < limit; ++i) {
    const SlotState st = ctrl_state(v.slot(i).ctrl.load(std::memory_order_acquire));
    if (st != SlotState::kQueued && st != SlotState::kActive) continue;
    ExecutionRecord rec;
    enter();
    const bool ok = snapshot(v, i, rec);
    leave();
    if (!ok || (user_id && rec.user_id != *user_id)) continue;
    out.push_back(std::move(rec));
  }
  return out;
}

std::optional<std::uint64_t> QueueHandle::queue_position(std::string_view execution_id) {
  auto rec = status(execution_id);
  if (!rec) return std::nullopt;
  return rec->queue_position;
}

std::uint64_t QueueHandle::user_count(std::string_view user_id) {
  const SegmentView& v = *view_;
  UserTable users{&v};
  const auto entry = users.find(stable_hash(user_id));
  return entry ? users.count(*entry) : 0;
}

std::optional<std::int64_t> QueueHandle::head_enqueued_at(Priority level) const {
  const SegmentView& v = *view_;
  RingRef ring = ring_of(v, priority_index(level) % kLevels);
  const auto index = ring.peek();
  if (!index) return std::nullopt;
  return v.slot(*index).enqueued_at_ns;
}

QueueStats QueueHandle::stats() const {
  const SegmentView& v = *view_;
  QueueStats st;
  for (std::size_t l = 0; l < kLevels; ++l) st.depth[l] = level_depth(v, l);
  st.queued = static_cast<std::uint64_t>(std::max<std::int64_t>(0, v.hdr->queued.load()));
  st.active = static_cast<std::uint64_t>(std::max<std::int64_t>(0, v.hdr->active.load()));
  st.capacity = v.hdr->queue_limit.load();
  st.consumer_sleeping = v.hdr->consumer_sleeping.load() != 0;
  std::uint64_t totals[kCounterCount];
  for (std::size_t c = 0; c < kCounterCount; ++c) totals[c] = v.hdr->totals[c].load();
  for (std::uint32_t i = 0; i < v.geo->max_participants; ++i) {
    const Participant& p = v.participant(i);
    const std::uint32_t pid = p.pid.load();
    if (pid == 0 || pid == UINT32_MAX) continue;
    ++st.participants;
    for (std::size_t c = 0; c < kCounterCount; ++c) totals[c] += p.counters[c].load();
  }
  st.enqueued = totals[kEnqueued];
  st.rejected_queue_full = totals[kRejectedQueueFull];
  st.rejected_user_limit = totals[kRejectedUserLimit];
  st.rejected_duplicate = totals[kRejectedDuplicate];
  st.rejected_payload_too_large = totals[kRejectedPayloadTooLarge];
  st.rejected_invalid = totals[kRejectedInvalid];
  st.dequeued = totals[kDequeued];
  st.cancelled = totals[kCancelled];
  st.expired = totals[kExpired];
  st.released = totals[kReleased];
  st.maintenance_runs = v.hdr->maintenance_runs.load();
  st.reclaimed_slots = v.hdr->reclaimed_slots.load();
  st.reaped_participants = v.hdr->reaped_participants.load();
  return st;
}

}  // namespace shmsched::ipc
