// Registration, the operation bracket, maintenance hand-over, and the operations every
// participant may use: cancel, status, stats.
#include <unistd.h>

#include <chrono>
#include <thread>

#include "claim_word.h"
#include "crash_point.h"
#include "futex.h"
#include "identity.h"
#include "queue_internals.h"
#include "shmsched/core/stable_hash.h"
#include "shmsched/ipc/queue.h"
#include "slot_fields.h"
#include "slot_text.h"

namespace shmsched::ipc {

using namespace detail;
using SteadyClock = std::chrono::steady_clock;

namespace {

constexpr auto kMaintenancePoll = std::chrono::milliseconds(10);
// A tentative maintenance claim is settled within a few instructions; one that stays longer
// belongs to a stopped process and is cancelled.
constexpr std::uint32_t kTentativeRounds = 20;

std::uint64_t holder_of(std::uint64_t m) {
  return m & kIdentityMask;
}
bool committed(std::uint64_t m) {
  return (m & kMaintenanceCommitted) != 0;
}

// A rebuild was cut short (a maintainer died in it, or gave up after a takeover): nobody may
// operate until one completes.
bool needs_redo(std::uint64_t m) {
  return (m & kMaintenanceDirty) != 0 || (committed(m) && !identity_alive(holder_of(m)));
}

}  // namespace

bool QueueHandle::claim_entry() {
  const SegmentView& v = *view_;
  for (std::uint32_t i = 0; i < v.geo->max_participants; ++i) {
    auto& ident = v.participant(i).ident;
    std::uint64_t expected = 0;
    if (ident.load(std::memory_order_relaxed) != 0) continue;
    CRASH_POINT("register: claim a participant entry");
    if (ident.compare_exchange_strong(expected, identity_, std::memory_order_acq_rel)) {
      self_ = i;
      return true;
    }
  }
  return false;
}

QueueHandle::QueueHandle(std::shared_ptr<Segment> segment, std::uint32_t role,
                         std::chrono::milliseconds wait, bool bounded, bool ask_consumer_in_process)
    : segment_(std::move(segment)),
      view_(&view_of(*segment_)),
      identity_(self_identity()),
      bounded_(bounded),
      ask_consumer_in_process_(ask_consumer_in_process),
      maintenance_wait_(wait) {
  const SegmentView& v = *view_;
  if (!claim_entry()) {
    // Entries of dead processes may be holding the table. One that died between operations
    // held nothing and is freed at once; one that died inside an operation is freed by a
    // rebuild (by us, or by the consumer on our request).
    bool dead_busy = false;
    for (std::uint32_t i = 0; i < v.geo->max_participants; ++i) {
      Participant& p = v.participant(i);
      const std::uint64_t w = p.ident.load(std::memory_order_seq_cst);
      if (w == 0 || identity_alive(w)) continue;
      if (p.busy.load(std::memory_order_seq_cst) != 0) {
        dead_busy = true;
      } else {
        reap_participant(v, i, w);
      }
    }
    if (!claim_entry() && dead_busy) {
      maintain(SteadyClock::now() + maintenance_wait_);
      claim_entry();
    }
    if (self_ == kNoEntry) {
      throw SegmentError("all " + std::to_string(v.geo->max_participants) +
                         " participant entries of shared memory segment /dev/shm/" +
                         segment_->name() +
                         " are taken by live processes: close unused producers, or recreate "
                         "the segment with a larger max_participants");
    }
  }
  Participant& me = v.participant(self_);
  // A previous occupant that died inside an operation left busy set; the entry is ours now.
  me.busy.store(0, std::memory_order_seq_cst);
  me.role.store(role, std::memory_order_relaxed);
}

bool QueueHandle::owned_by_this_process() const {
  return identity_pid(identity_) == ::getpid();
}

QueueHandle::~QueueHandle() {
  if (self_ == kNoEntry || !owned_by_this_process()) return;
  Participant& me = view_->participant(self_);
  me.busy.store(0, std::memory_order_seq_cst);
  CRASH_POINT("unregister: free our participant entry");
  std::uint64_t mine = identity_;
  me.ident.compare_exchange_strong(mine, 0, std::memory_order_acq_rel);
}

void QueueHandle::count(std::size_t counter, std::uint64_t n) {
  auto& c = view_->participant(self_).counters[counter];
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);  // single writer
}

bool QueueHandle::participant_alive(std::uint32_t index) const {
  return participant_is_alive(*view_, index);
}

bool QueueHandle::may_maintain() const {
  // While a live consumer is attached, only its process maintains: a producer stopped in the
  // middle of a rebuild would otherwise stop the supervisor with it.
  if (is_consumer_) return true;
  const std::uint64_t c = view_->hdr->consumer.load(std::memory_order_seq_cst);
  if (c == identity_) return !ask_consumer_in_process_;
  return c == 0 || !identity_alive(c);
}

bool QueueHandle::rebuild_needed() const {
  const SegmentView& v = *view_;
  if (needs_redo(v.hdr->maintenance.load(std::memory_order_seq_cst))) return true;
  for (std::uint32_t i = 0; i < v.geo->max_participants; ++i) {
    const Participant& p = v.participant(i);
    const std::uint64_t w = p.ident.load(std::memory_order_seq_cst);
    if (w != 0 && p.busy.load(std::memory_order_seq_cst) != 0 && !identity_alive(w)) return true;
  }
  return false;
}

bool QueueHandle::enter() {
  const SegmentView& v = *view_;
  auto& busy = v.participant(self_).busy;
  const auto now = SteadyClock::now();
  if (bounded_ && blocked_word_ != 0 && now < blocked_until_ &&
      v.hdr->maintenance.load(std::memory_order_seq_cst) == blocked_word_) {
    return false;  // still blocked as a moment ago: do not wait again
  }
  blocked_word_ = 0;
  const auto deadline = now + maintenance_wait_;
  for (std::uint32_t round = 0;; ++round) {
    // Dekker-style with the maintainer: it publishes `maintenance` then reads every `busy`;
    // we publish `busy` then read `maintenance`. With seq_cst one of us sees the other.
    CRASH_POINT("enter: announce busy");
    busy.store(1, std::memory_order_seq_cst);
    const std::uint64_t m = v.hdr->maintenance.load(std::memory_order_seq_cst);
    if (m == 0) return true;
    CRASH_POINT("enter: back off for maintenance");
    busy.store(0, std::memory_order_seq_cst);
    if (!wait_for_maintenance(m, round, deadline)) {
      blocked_word_ = v.hdr->maintenance.load(std::memory_order_seq_cst);
      blocked_until_ = SteadyClock::now() + std::chrono::milliseconds(100);
      return false;
    }
  }
}

void QueueHandle::leave() {
  CRASH_POINT("leave: clear busy");
  view_->participant(self_).busy.store(0, std::memory_order_seq_cst);
}

// One round of waiting for the maintenance word `m` to clear. False only for the consumer, when
// a repair it needs could not run before `deadline`.
bool QueueHandle::wait_for_maintenance(std::uint64_t m, std::uint32_t round,
                                       SteadyClock::time_point deadline) {
  const SegmentView& v = *view_;
  auto& word = v.hdr->maintenance;
  const std::uint64_t holder = holder_of(m);
  if (!committed(m) && holder != 0) {
    // Tentative: its holder commits or withdraws within a few instructions. The consumer never
    // waits for it, and nobody waits long (the holder may be stopped): cancel it, keeping the
    // dirty mark. The holder's commit then fails and it starts over.
    if (is_consumer_ || round >= kTentativeRounds || !identity_alive(holder)) {
      CRASH_POINT("maintenance: cancel a tentative claim");
      word.compare_exchange_strong(m, m & kMaintenanceDirty, std::memory_order_seq_cst);
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    return true;
  }
  if (needs_redo(m)) {
    if (may_maintain()) {
      if (maintain(bounded_ ? deadline : SteadyClock::now() + maintenance_wait_)) return true;
      return !bounded_;
    }
    request_from_consumer(SteadyClock::now() + kMaintenancePoll);
    if (bounded_ && SteadyClock::now() >= deadline) {
      blocked_by_ = identity_pid(holder);
      return false;
    }
    return true;
  }
  // Held by a live maintainer. After its start-up, the consumer never meets one (producers do
  // not commit while it is attached, see may_maintain); a bounded handle gives up.
  if (bounded_ && SteadyClock::now() >= deadline) {
    blocked_by_ = identity_pid(holder);
    return false;
  }
  const std::uint32_t seq = v.hdr->maintenance_seq.load(std::memory_order_seq_cst);
  if (word.load(std::memory_order_seq_cst) == m) {
    futex_wait(&v.hdr->maintenance_seq, seq, kMaintenancePoll);
  }
  return true;
}

bool QueueHandle::run_maintenance() {
  return maintain(SteadyClock::now() + maintenance_wait_);
}

bool QueueHandle::maintain(SteadyClock::time_point deadline) {
  blocked_by_ = 0;
  for (;;) {
    if (!may_maintain()) return request_from_consumer(deadline);
    switch (acquire_maintenance(deadline)) {
      case Acquired::kClean:
        return maintain_as_owner(false, deadline);
      case Acquired::kDirty:
        return maintain_as_owner(true, deadline);
      case Acquired::kDoneByOther:
        return true;
      case Acquired::kConsumerAppeared:
        continue;
      case Acquired::kTimedOut:
        return false;
    }
  }
}

QueueHandle::Acquired QueueHandle::acquire_maintenance(SteadyClock::time_point deadline) {
  const SegmentView& v = *view_;
  auto& word = v.hdr->maintenance;
  const std::uint64_t runs = v.hdr->maintenance_runs.load(std::memory_order_seq_cst);
  for (std::uint32_t round = 0;; ++round) {
    std::uint64_t m = word.load(std::memory_order_seq_cst);
    const std::uint64_t holder = holder_of(m);
    const bool free = m == 0 || holder == 0 || !identity_alive(holder) ||
                      (!committed(m) && (is_consumer_ || round >= kTentativeRounds));
    if (free) {
      const std::uint64_t dirty = needs_redo(m) ? kMaintenanceDirty : 0;
      if (is_consumer_) {
        CRASH_POINT("maintenance: the consumer takes the word");
        if (word.compare_exchange_strong(m, identity_ | kMaintenanceCommitted | dirty,
                                         std::memory_order_seq_cst)) {
          return dirty ? Acquired::kDirty : Acquired::kClean;
        }
        continue;
      }
      // Anyone else claims tentatively, then checks that no live consumer is attached (it may
      // have registered since may_maintain() looked): Dekker again, with the consumer's
      // registration store and its own look at the word.
      CRASH_POINT("maintenance: claim the word tentatively");
      if (!word.compare_exchange_strong(m, identity_ | dirty, std::memory_order_seq_cst)) continue;
      if (!may_maintain()) {
        std::uint64_t mine = identity_ | dirty;
        CRASH_POINT("maintenance: withdraw the tentative claim");
        word.compare_exchange_strong(mine, dirty, std::memory_order_seq_cst);
        return Acquired::kConsumerAppeared;
      }
      std::uint64_t mine = identity_ | dirty;
      CRASH_POINT("maintenance: commit the claim");
      if (!word.compare_exchange_strong(mine, identity_ | kMaintenanceCommitted | dirty,
                                        std::memory_order_seq_cst)) {
        continue;  // cancelled (by the consumer, or as stale): look again
      }
      if (!may_maintain()) {
        // A consumer registered between our check and our commit: it maintains, not us.
        release_maintenance(dirty);
        return Acquired::kConsumerAppeared;
      }
      return dirty ? Acquired::kDirty : Acquired::kClean;
    }
    // Held by a live process: wait for it to finish.
    if (SteadyClock::now() >= deadline) {
      blocked_by_ = identity_pid(holder);
      return Acquired::kTimedOut;
    }
    const std::uint32_t seq = v.hdr->maintenance_seq.load(std::memory_order_seq_cst);
    if (word.load(std::memory_order_seq_cst) != m) {
    } else if (committed(m)) {
      futex_wait(&v.hdr->maintenance_seq, seq, kMaintenancePoll);
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    if (v.hdr->maintenance_runs.load(std::memory_order_seq_cst) != runs) {
      return Acquired::kDoneByOther;
    }
  }
}

void QueueHandle::release_maintenance(std::uint64_t value) {
  const SegmentView& v = *view_;
  CRASH_POINT("maintenance: release the word");
  v.hdr->maintenance.store(value, std::memory_order_seq_cst);
  v.hdr->maintenance_seq.fetch_add(1, std::memory_order_seq_cst);
  futex_wake(&v.hdr->maintenance_seq, INT32_MAX);
}

bool QueueHandle::maintain_as_owner(bool dirty, SteadyClock::time_point deadline) {
  const SegmentView& v = *view_;
  // Wait until every other live participant is outside its operation. New operations see the
  // maintenance word and wait; one that died inside an operation is skipped (the rebuild
  // repairs what it left). A live one that does not come out in time (stopped, say) makes us
  // give up for now: nothing has been changed yet, so the queue goes on as it was.
  for (std::uint32_t i = 0; i < v.geo->max_participants; ++i) {
    if (i == self_) continue;
    Participant& p = v.participant(i);
    for (std::uint32_t spins = 0;; ++spins) {
      const std::uint64_t w = p.ident.load(std::memory_order_seq_cst);
      if (w == 0) break;
      if (p.busy.load(std::memory_order_seq_cst) == 0) break;
      // Died inside its operation (looked at first, then now and then, and always before
      // giving up: a dead participant never holds a repair up).
      if (spins % 64 == 0 && !identity_alive(w)) break;
      if (SteadyClock::now() >= deadline) {
        if (!identity_alive(w)) break;
        blocked_by_ = identity_pid(w);
        v.hdr->maintenance_deferred.fetch_add(1, std::memory_order_relaxed);
        release_maintenance(dirty ? kMaintenanceDirty : 0);
        return false;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }
  try {
    rebuild(v);
  } catch (...) {
    // Cut short (an allocation failed): whoever comes next must redo it.
    release_maintenance(kMaintenanceDirty);
    throw;
  }
  // Entries of dead participants are free now: whatever they held was rebuilt.
  for (std::uint32_t i = 0; i < v.geo->max_participants; ++i) {
    const std::uint64_t w = v.participant(i).ident.load(std::memory_order_seq_cst);
    if (i != self_ && w != 0 && !identity_alive(w)) reap_participant(v, i, w);
  }
  CRASH_POINT("maintenance: count the run");
  v.hdr->maintenance_runs.fetch_add(1, std::memory_order_seq_cst);
  release_maintenance(0);
  return true;
}

bool QueueHandle::request_from_consumer(SteadyClock::time_point deadline) {
  const SegmentView& v = *view_;
  Header& hdr = *v.hdr;
  const std::uint64_t runs = hdr.maintenance_runs.load(std::memory_order_seq_cst);
  CRASH_POINT("maintenance: ask the consumer");
  hdr.maintenance_requested.store(1, std::memory_order_seq_cst);
  hdr.wake_seq.fetch_add(1, std::memory_order_seq_cst);
  futex_wake(&hdr.wake_seq, 1);
  for (;;) {
    const std::uint32_t seq = hdr.maintenance_seq.load(std::memory_order_seq_cst);
    if (hdr.maintenance_runs.load(std::memory_order_seq_cst) != runs) return true;
    const auto now = SteadyClock::now();
    if (now >= deadline || may_maintain()) return false;
    futex_wait(&hdr.maintenance_seq, seq,
               std::min<SteadyClock::duration>(deadline - now, kMaintenancePoll));
  }
}

namespace {

// Whether a pending entry is committed: its index is in its ring at the position its producer
// stored (the producer stores ring_pos before the cell CAS that publishes the entry, and fills
// the slot before both).
bool in_its_ring(const SegmentView& v, std::uint32_t index, std::size_t level, std::uint64_t pos) {
  RingRef ring = ring_of(v, level);
  const std::uint64_t cell = ring.cells[pos & ring.mask].load(std::memory_order_seq_cst);
  return cell == RingRef::make(ring.lap(pos), std::uint64_t{index} + 1);
}

}  // namespace

CancelOutcome QueueHandle::cancel(std::string_view execution_id) {
  if (execution_id.empty() || execution_id.size() > kMaxIdBytes) return CancelOutcome::kNotFound;
  const SegmentView& v = *view_;
  const std::uint64_t h = stable_hash(execution_id);
  for (;;) {
    Bracket bracket(*this);
    if (!bracket) return CancelOutcome::kUnavailable;
    const auto found = DedupIndex{&v}.lookup(h, execution_id);
    if (!found) return CancelOutcome::kNotFound;
    const std::uint32_t index = found->index;
    CRASH_POINT("cancel: look up the slot");
    Slot& s = v.slot(index);
    std::uint64_t c = s.ctrl.load(std::memory_order_seq_cst);
    // Released and reused since the look-up: the word belongs to another execution (the CAS
    // below compares the generation too, so this one check covers the whole window).
    if (ctrl_gen(c) != found->generation) continue;
    const SlotState st = ctrl_state(c);
    if (st == SlotState::kActive) return CancelOutcome::kActive;
    // Read what we need before the CAS: afterwards the consumer may pass and free the slot.
    const std::uint64_t pos = s.ring_pos.load(std::memory_order_seq_cst);
    const std::size_t level = load_field(s.priority) % kLevels;
    const std::uint32_t user_entry = load_field(s.user_entry);
    const std::uint32_t gen = ctrl_gen(c);
    if (st == SlotState::kPending) {
      // Its producer is between its dedup insert and marking it queued, and may be stopped or
      // dead there: never wait for it. Once committed it is cancelled like a queued one; before
      // that it was never accepted.
      if (!in_its_ring(v, index, level, pos)) return CancelOutcome::kNotFound;
    } else if (st != SlotState::kQueued) {
      return CancelOutcome::kNotFound;
    }
    CRASH_POINT("cancel: claim the slot (the race with the consumer)");
    if (!s.ctrl.compare_exchange_strong(c, ctrl_make(gen, self_ + 1, SlotState::kCancelling),
                                        std::memory_order_acq_rel)) {
      continue;  // the consumer took it, or another canceller won: look again
    }
    CRASH_POINT("cancel: count the tombstone");
    v.level(level).tombstones.fetch_add(1, std::memory_order_acq_rel);
    rank_of(v, level).add(pos, 1);
    DedupIndex{&v}.remove(h, index);
    if (!UserTable{&v}.release(user_entry)) {
      v.hdr->inconsistencies.fetch_add(1, std::memory_order_relaxed);
    }
    CRASH_POINT("cancel: give the capacity back");
    v.hdr->queued.fetch_sub(1, std::memory_order_acq_rel);
    // Hand the tombstone to the consumer; if it already passed the cell, the slot is ours to free.
    std::uint64_t expect = ctrl_make(gen, self_ + 1, SlotState::kCancelling);
    CRASH_POINT("cancel: hand the tombstone to the consumer");
    if (!s.ctrl.compare_exchange_strong(expect, ctrl_make(gen, 0, SlotState::kCancelled),
                                        std::memory_order_acq_rel)) {
      free_slot(v, index);
    }
    count(kCancelled);
    return CancelOutcome::kCancelled;
  }
}

namespace {

// Copies a live slot out; false if it changed under us (then the caller looks again). A sequence
// lock read: every field is an acquire load (slot_fields.h), then the control word is read again.
bool snapshot(const SegmentView& v, std::uint32_t index, ExecutionRecord& out,
              bool with_data = true) {
  Slot& s = v.slot(index);
  const std::uint64_t c = s.ctrl.load(std::memory_order_acquire);
  const SlotState st = ctrl_state(c);
  if (st != SlotState::kQueued && st != SlotState::kActive && st != SlotState::kPending) {
    return false;
  }
  const std::size_t level = load_field(s.priority) % kLevels;
  const std::uint64_t pos = s.ring_pos.load(std::memory_order_acquire);
  // A pending slot may be half filled; it is an execution only once committed.
  if (st == SlotState::kPending && !in_its_ring(v, index, level, pos)) return false;
  out.execution_id = load_text(s.id_words, load_field(s.id_len));
  out.user_id = load_text(s.user_words, load_field(s.user_len));
  out.priority = static_cast<Priority>(level);
  out.state = st == SlotState::kActive ? ExecutionState::kActive : ExecutionState::kQueued;
  out.enqueued_at_ns = load_field(s.enqueued_at_ns);
  out.attempt = load_field(s.attempt);
  out.timeout_seconds = load_field(s.timeout_seconds);
  const std::uint32_t plen =
      with_data ? std::min<std::uint32_t>(load_field(s.payload_len), v.geo->max_payload_bytes) : 0;
  const std::uint32_t elen =
      with_data ? std::min<std::uint32_t>(load_field(s.extras_len), v.geo->max_extras_bytes) : 0;
  std::vector<std::byte> data(plen + elen);
  if (with_data) load_data(v.slot_data(index), data);
  out.annotation = st == SlotState::kActive ? load_field(s.reserved[0]) : 0;
  const std::uint64_t claim = st == SlotState::kActive ? load_field(s.reserved[1]) : 0;
  out.claimed_by = claim_is_for(claim, ctrl_gen(c), load_field(s.attempt)) ? claim_owner(claim) : 0;
  if (s.ctrl.load(std::memory_order_acquire) != c) return false;
  // Consistent: decode only now (extras of a mixed read could be anything).
  out.payload.assign(data.begin(), data.begin() + plen);
  out.required_capabilities.clear();
  out.metadata.clear();
  if (elen > 0) {
    decode_extras(std::span<const std::byte>(data).subspan(plen), out.required_capabilities,
                  out.metadata);
  }
  out.ring_position = pos;
  if (st != SlotState::kActive) {
    out.queue_position = rank_at(v, level, pos);
  } else {
    out.queue_position.reset();
  }
  return true;
}

}  // namespace

std::optional<ExecutionRecord> QueueHandle::status(std::string_view execution_id) {
  if (execution_id.empty() || execution_id.size() > kMaxIdBytes) return std::nullopt;
  const SegmentView& v = *view_;
  const std::uint64_t h = stable_hash(execution_id);
  for (int attempt = 0; attempt < 100; ++attempt) {
    ExecutionRecord rec;
    std::optional<std::uint32_t> index;
    bool ok = false;
    {
      Bracket bracket(*this);
      if (!bracket) return std::nullopt;
      index = DedupIndex{&v}.find(h, execution_id);
      ok = index && snapshot(v, *index, rec);
    }
    if (!index) return std::nullopt;
    if (ok && rec.execution_id == execution_id) return rec;
  }
  return std::nullopt;
}

std::vector<ExecutionRecord> QueueHandle::list(std::optional<std::string_view> user_id,
                                               std::size_t limit, bool with_data) {
  const SegmentView& v = *view_;
  std::vector<ExecutionRecord> out;
  const std::uint64_t used = std::min(v.hdr->fresh_next.load(), v.geo->slot_count);
  for (std::uint32_t i = 0; i < used && out.size() < limit; ++i) {
    const SlotState st = ctrl_state(v.slot(i).ctrl.load(std::memory_order_acquire));
    if (st != SlotState::kQueued && st != SlotState::kActive) continue;
    ExecutionRecord rec;
    bool ok = false;
    {
      Bracket bracket(*this);
      if (!bracket) break;
      ok = snapshot(v, i, rec, with_data);
    }
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

std::optional<std::int64_t> QueueHandle::head_enqueued_at(Priority level) {
  const SegmentView& v = *view_;
  Bracket bracket(*this);
  if (!bracket) return std::nullopt;
  RingRef ring = ring_of(v, priority_index(level) % kLevels);
  std::uint64_t pos = 0;
  auto index = ring.peek(&pos);
  // Cancelled entries stay in the ring as tombstones until the consumer passes them: the oldest
  // wait is that of the first entry still queued at its place (a slot reused since sits
  // elsewhere). A long run of tombstones is looked through this far.
  for (int step = 0; index && step < 1024; ++step, ++pos) {
    Slot& s = v.slot(*index);
    const std::uint64_t c = s.ctrl.load(std::memory_order_acquire);
    if (ctrl_state(c) == SlotState::kQueued && s.ring_pos.load(std::memory_order_acquire) == pos) {
      const std::int64_t at = load_field(s.enqueued_at_ns);
      if (s.ctrl.load(std::memory_order_acquire) == c) return at;
    }
    const std::uint64_t next = ring.cells[(pos + 1) & ring.mask].load(std::memory_order_acquire);
    if (RingRef::cell_lap(next) != ring.lap(pos + 1) || RingRef::cell_index1(next) == 0) break;
    index = RingRef::cell_index1(next) - 1;
  }
  return std::nullopt;
}

std::map<std::string, UserTally, std::less<>> tally_by_user(const Segment& segment) {
  const SegmentView& v = view_of(segment);
  std::map<std::string, UserTally, std::less<>> out;
  const std::uint64_t used = std::min(v.hdr->fresh_next.load(), v.geo->slot_count);
  for (std::uint32_t i = 0; i < used; ++i) {
    Slot& s = v.slot(i);
    const std::uint64_t c = s.ctrl.load(std::memory_order_acquire);
    const SlotState st = ctrl_state(c);
    if (st != SlotState::kQueued && st != SlotState::kActive) continue;
    std::string user = load_text(s.user_words, load_field(s.user_len));
    if (s.ctrl.load(std::memory_order_acquire) != c) continue;  // reused while read
    auto& t = out[user];
    ++(st == SlotState::kActive ? t.active : t.queued);
  }
  return out;
}

QueueStats queue_stats(const Segment& segment) {
  const SegmentView& v = view_of(segment);
  QueueStats st;
  for (std::size_t l = 0; l < kLevels; ++l) st.depth[l] = level_depth(v, l);
  st.queued = static_cast<std::uint64_t>(std::max<std::int64_t>(0, v.hdr->queued.load()));
  st.active = static_cast<std::uint64_t>(std::max<std::int64_t>(0, v.hdr->active.load()));
  st.capacity = v.hdr->queue_limit.load();
  st.consumer_sleeping = v.hdr->consumer_sleeping.load() != 0;
  std::uint64_t totals[kCounterCount] = {};
  for (std::uint32_t i = 0; i < v.geo->max_participants; ++i) {
    const Participant& p = v.participant(i);
    if (p.ident.load() != 0) ++st.participants;
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
  st.maintenance_deferred = v.hdr->maintenance_deferred.load();
  st.reclaimed_slots = v.hdr->reclaimed_slots.load();
  st.reaped_participants = v.hdr->reaped_participants.load();
  return st;
}

QueueStats QueueHandle::stats() const {
  return queue_stats(*segment_);
}

}  // namespace shmsched::ipc
