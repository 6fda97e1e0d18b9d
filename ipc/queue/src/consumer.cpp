// The single consumer: dequeue in priority order, release, stale sweep, sleep/wake, reaping.
#include <time.h>
#include <unistd.h>

#include <algorithm>

#include <thread>

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

namespace {

std::int64_t realtime_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// The consumer passes a tombstone cell at the head of `level`: it frees the slot, or leaves that
// to a canceller still giving counts back.
void pass_tombstone(const SegmentView& v, std::size_t level, std::uint64_t pos,
                    std::uint32_t index) {
  RingRef ring = ring_of(v, level);
  if (!ring.pop_at(pos, index)) return;
  CRASH_POINT("pass a tombstone: uncount it");
  v.level(level).tombstones.fetch_sub(1, std::memory_order_acq_rel);
  rank_of(v, level).add(pos, -1);
  Slot& s = v.slot(index);
  std::uint64_t c = s.ctrl.load(std::memory_order_acquire);
  for (;;) {
    if (ctrl_state(c) == SlotState::kCancelling) {
      CRASH_POINT("pass a tombstone: orphan it to its canceller");
      if (s.ctrl.compare_exchange_weak(c,
                                       ctrl_make(ctrl_gen(c), ctrl_owner(c), SlotState::kOrphaned),
                                       std::memory_order_acq_rel)) {
        return;  // the canceller frees it when done
      }
      continue;
    }
    free_slot(v, index);
    return;
  }
}

ExecutionView make_view(const SegmentView& v, std::uint32_t index) {
  Slot& s = v.slot(index);
  ExecutionView out;
  const auto* id = reinterpret_cast<const char*>(s.id_words);
  const auto* user = reinterpret_cast<const char*>(s.user_words);
  out.execution_id = std::string_view(id, std::min<std::size_t>(s.id_len, kMaxIdBytes));
  out.user_id = std::string_view(user, std::min<std::size_t>(s.user_len, kMaxIdBytes));
  out.priority = static_cast<Priority>(s.priority % kLevels);
  out.enqueued_at_ns = s.enqueued_at_ns;
  out.attempt = s.attempt;
  out.timeout_seconds = s.timeout_seconds;
  const std::uint32_t plen = std::min<std::uint32_t>(s.payload_len, v.geo->max_payload_bytes);
  const std::uint32_t elen = std::min<std::uint32_t>(s.extras_len, v.geo->max_extras_bytes);
  const std::byte* data = v.slot_data(index);
  out.payload = std::span<const std::byte>(data, plen);
  out.extras = std::span<const std::byte>(data + plen, elen);
  out.slot = index;
  out.generation = ctrl_gen(s.ctrl.load(std::memory_order_acquire));
  return out;
}

}  // namespace

Consumer::Consumer(std::shared_ptr<Segment> segment, ConsumerOptions options)
    : QueueHandle(std::move(segment), static_cast<std::uint32_t>(ParticipantRole::kConsumer),
                  options.start_wait, true) {
  const SegmentView& v = *view_;
  auto& consumer = v.hdr->consumer;
  const auto takeover_until = std::chrono::steady_clock::now() + options.takeover_wait;
  for (;;) {
    std::uint64_t current = consumer.load(std::memory_order_seq_cst);
    if (current != 0 && identity_alive(current)) {
      if (std::chrono::steady_clock::now() < takeover_until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));  // dying, perhaps
        continue;
      }
      throw SegmentError("shared memory segment /dev/shm/" + segment_->name() +
                         " already has a live consumer (pid " +
                         std::to_string(identity_pid(current)) +
                         "): only one supervisor may schedule from a queue");
    }
    CRASH_POINT("consumer: register as the consumer");
    if (consumer.compare_exchange_strong(current, identity_, std::memory_order_seq_cst)) break;
  }
  is_consumer_ = true;
  // Whatever a previous consumer (or any dead producer) left half done is repaired before we
  // start: a rebuild from the slots. A maintainer that started before we registered is waited
  // for; a live process that stays inside an operation (stopped) only matters when a repair is
  // really needed.
  auto give_up_registration = [&] {
    std::uint64_t me = identity_;
    consumer.compare_exchange_strong(me, 0, std::memory_order_seq_cst);
  };
  bool maintained = false;
  try {
    maintained = maintain(std::chrono::steady_clock::now() + options.start_wait);
  } catch (...) {
    give_up_registration();
    throw;
  }
  // Not maintained: fine when nothing needs repairing, unless a live process still holds the
  // maintenance word (a producer that began a rebuild before we registered, and stopped in it):
  // then we could not operate at all.
  const std::uint64_t held = v.hdr->maintenance.load(std::memory_order_seq_cst);
  if (!maintained && (rebuild_needed() || (held & kIdentityMask) != 0)) {
    const pid_t blocker =
        (held & kIdentityMask) != 0 ? identity_pid(held & kIdentityMask) : blocked_by_;
    give_up_registration();
    throw SegmentError("cannot recover shared memory segment /dev/shm/" + segment_->name() +
                       ": pid " + std::to_string(blocker) +
                       " stayed inside a queue operation for " +
                       std::to_string(options.start_wait.count()) +
                       " ms (stopped by a signal or a debugger?). Let it continue (kill -CONT " +
                       std::to_string(blocker) + ") or end it, then start again");
  }
  maintenance_wait_ = options.maintenance_wait;
}

Consumer::~Consumer() {
  if (!owned_by_this_process()) return;
  std::uint64_t me = identity_;
  CRASH_POINT("consumer: unregister");
  view_->hdr->consumer.compare_exchange_strong(me, 0, std::memory_order_seq_cst);
}

bool Consumer::has_work() {
  const SegmentView& v = *view_;
  Bracket bracket(*this);
  if (!bracket) return false;
  bool work = false;
  for (std::size_t l = 0; l < kLevels && !work; ++l) work = !ring_of(v, l).empty();
  return work;
}

bool Consumer::maintenance_requested() const {
  return view_->hdr->maintenance_requested.load(std::memory_order_seq_cst) != 0;
}

namespace {

// Takes the head of one level: a live entry becomes active; tombstones are passed on the way.
std::optional<ActiveRef> take_from_level(const SegmentView& v, std::size_t level,
                                         std::uint64_t* pos_out = nullptr) {
  RingRef ring = ring_of(v, level);
  for (;;) {
    std::uint64_t pos = 0;
    const auto index = ring.peek(&pos);
    if (!index) return std::nullopt;
    Slot& s = v.slot(*index);
    std::uint64_t c = s.ctrl.load(std::memory_order_acquire);
    const SlotState st = ctrl_state(c);
    if (st == SlotState::kQueued || st == SlotState::kPending) {
      // A pending slot in the ring is committed; its producer has only to mark it queued, and
      // we may do that for it.
      // The owner's annotation word starts at 0 (the producer cleared it when it filled the
      // slot): a consumer that dies right after the CAS leaves an active entry in no phase.
      CRASH_POINT("dequeue: claim the slot (the race with cancel)");
      if (!s.ctrl.compare_exchange_strong(c, ctrl_make(ctrl_gen(c), 0, SlotState::kActive),
                                          std::memory_order_acq_rel)) {
        continue;  // a canceller or the producer changed it: look again
      }
      ring.pop_at(pos, *index);
      CRASH_POINT("dequeue: move the count from queued to active");
      v.hdr->queued.fetch_sub(1, std::memory_order_acq_rel);
      // Only the consumer (or maintenance, which excludes it) writes `active`: no RMW needed.
      v.hdr->active.store(v.hdr->active.load(std::memory_order_relaxed) + 1,
                          std::memory_order_relaxed);
      if (pos_out) *pos_out = pos;
      return ActiveRef{*index, ctrl_gen(c)};
    }
    if (st == SlotState::kCancelled || st == SlotState::kCancelling) {
      pass_tombstone(v, level, pos, *index);
      continue;
    }
    // Any other state cannot be in a ring; drop the cell rather than stall on it.
    CRASH_POINT("dequeue: drop an impossible cell");
    v.hdr->inconsistencies.fetch_add(1, std::memory_order_relaxed);
    ring.pop_at(pos, *index);
  }
}

}  // namespace

std::optional<ActiveRef> Consumer::dequeue() {
  Bracket bracket(*this);
  if (!bracket) return std::nullopt;
  for (std::size_t level = 0; level < kLevels; ++level) {
    if (auto ref = take_from_level(*view_, level)) {
      count(kDequeued);
      return ref;
    }
  }
  return std::nullopt;
}

std::optional<ActiveRef> Consumer::dequeue(Priority level, std::uint64_t* pos_out) {
  Bracket bracket(*this);
  if (!bracket) return std::nullopt;
  auto ref = take_from_level(*view_, priority_index(level) % kLevels, pos_out);
  if (ref) count(kDequeued);
  return ref;
}

Consumer::ScanItem Consumer::scan_at(std::size_t level, std::uint64_t pos) const {
  const SegmentView& v = *view_;
  RingRef ring = ring_of(v, level);
  const std::uint64_t head = ring.head->load(std::memory_order_acquire);
  if (pos < head) pos = head;
  const std::uint64_t c = ring.cells[pos & ring.mask].load(std::memory_order_acquire);
  if (RingRef::cell_lap(c) != ring.lap(pos) || RingRef::cell_index1(c) == 0) {
    return ScanItem{pos, false, true};
  }
  const SlotState st =
      ctrl_state(v.slot(RingRef::cell_index1(c) - 1).ctrl.load(std::memory_order_acquire));
  return ScanItem{pos, st == SlotState::kQueued || st == SlotState::kPending, false};
}

std::uint32_t Consumer::slot_at(std::size_t level, std::uint64_t pos) const {
  RingRef ring = ring_of(*view_, level);
  return RingRef::cell_index1(ring.cells[pos & ring.mask].load(std::memory_order_acquire)) - 1;
}

ExecutionView Consumer::view_at(std::uint32_t slot) const {
  return make_view(*view_, slot);
}

std::uint64_t Consumer::rank_of(std::size_t level, std::uint64_t pos) const {
  return rank_at(*view_, level, pos);
}

std::uint64_t Consumer::announce_cursor(Priority level) const {
  return view_->level(priority_index(level) % kLevels).announced.load(std::memory_order_acquire);
}

void Consumer::mark_announced(Priority level, std::uint64_t next) {
  auto& cursor = view_->level(priority_index(level) % kLevels).announced;
  if (next <= cursor.load(std::memory_order_relaxed)) return;
  CRASH_POINT("announce: move the cursor");
  cursor.store(next, std::memory_order_release);  // only the consumer (or a rebuild) writes it
}

bool Consumer::has_unannounced() {
  Bracket bracket(*this);
  if (!bracket) return false;
  for (std::size_t l = 0; l < kLevels; ++l) {
    if (!scan_at(l, announce_cursor(static_cast<Priority>(l))).end) return true;
  }
  return false;
}

std::uint64_t Consumer::level_tail(Priority level) const {
  return view_->level(priority_index(level) % kLevels).tail.load(std::memory_order_acquire);
}

void Consumer::annotate(ActiveRef ref, std::uint64_t value) {
  if (ref.slot >= view_->geo->slot_count) return;
  CRASH_POINT("annotate an active execution");
  std::atomic_ref<std::uint64_t>(view_->slot(ref.slot).reserved[0])
      .store(value, std::memory_order_release);
}

std::uint64_t Consumer::annotation(ActiveRef ref) const {
  if (ref.slot >= view_->geo->slot_count) return 0;
  return std::atomic_ref<std::uint64_t>(view_->slot(ref.slot).reserved[0])
      .load(std::memory_order_acquire);
}

void Consumer::set_attempt(ActiveRef ref, std::uint32_t attempt) {
  if (ref.slot >= view_->geo->slot_count) return;
  CRASH_POINT("set an active execution's attempt");
  store_field(view_->slot(ref.slot).attempt, attempt);
}

std::uint32_t Consumer::announce_sleep() {
  Header& hdr = *view_->hdr;
  hdr.consumer_sleeping.store(1, std::memory_order_seq_cst);
  return hdr.wake_seq.load(std::memory_order_seq_cst);
}

void Consumer::finish_sleep(std::uint32_t seq, bool sleep, std::chrono::nanoseconds timeout) {
  Header& hdr = *view_->hdr;
  if (sleep) futex_wait(&hdr.wake_seq, seq, timeout);
  hdr.consumer_sleeping.store(0, std::memory_order_seq_cst);
}

void kick(const Segment& segment) {
  Header& hdr = *view_of(segment).hdr;
  // Dekker, as for producers: the caller made its hand-off visible with a seq_cst store that the
  // consumer's `ready` check reads, and the consumer stores the flag before that check.
  if (hdr.consumer_sleeping.load(std::memory_order_seq_cst) == 0) return;  // awake: it will see it
  hdr.wake_seq.fetch_add(1, std::memory_order_seq_cst);
  futex_wake(&hdr.wake_seq, 1);
}

std::uint64_t Consumer::depth(Priority level) {
  const SegmentView& v = *view_;
  const std::size_t l = priority_index(level) % kLevels;
  Bracket bracket(*this);
  if (!bracket) return level_depth(v, l);
  // A producer stopped between its cell CAS and its tail CAS leaves the tail behind its entry:
  // help the tail on (as the next push would), so the count includes it.
  RingRef ring = ring_of(v, l);
  for (int i = 0; i < 8; ++i) {
    std::uint64_t t = ring.tail->load(std::memory_order_seq_cst);
    const std::uint64_t c = ring.cells[t & ring.mask].load(std::memory_order_seq_cst);
    const bool filled = RingRef::cell_lap(c) == ring.lap(t) && RingRef::cell_index1(c) != 0;
    const bool taken = c == RingRef::make(ring.lap(t) + 1, 0);
    if (!filled && !taken) break;
    CRASH_POINT("depth: help a lagging tail");
    ring.tail->compare_exchange_strong(t, t + 1, std::memory_order_seq_cst);
  }
  return level_depth(v, l);
}

std::optional<ExecutionView> Consumer::view(ActiveRef ref) const {
  const SegmentView& v = *view_;
  if (ref.slot >= v.geo->slot_count) return std::nullopt;
  const std::uint64_t c = v.slot(ref.slot).ctrl.load(std::memory_order_acquire);
  if (ctrl_state(c) != SlotState::kActive || ctrl_gen(c) != ref.generation) return std::nullopt;
  return make_view(v, ref.slot);
}

std::optional<ExecutionRecord> Consumer::record(ActiveRef ref) const {
  const auto view = this->view(ref);
  if (!view) return std::nullopt;
  ExecutionRecord r;
  r.execution_id = std::string(view->execution_id);
  r.user_id = std::string(view->user_id);
  r.priority = view->priority;
  r.state = ExecutionState::kActive;
  r.enqueued_at_ns = view->enqueued_at_ns;
  r.attempt = view->attempt;
  r.timeout_seconds = view->timeout_seconds;
  r.payload.assign(view->payload.begin(), view->payload.end());
  if (!view->extras.empty()) decode_extras(view->extras, r.required_capabilities, r.metadata);
  return r;
}

bool Consumer::release(ActiveRef ref) {
  const SegmentView& v = *view_;
  if (ref.slot >= v.geo->slot_count) return false;
  Bracket bracket(*this);
  if (!bracket) return false;
  blocked_by_ = 0;
  Slot& s = v.slot(ref.slot);
  const std::uint64_t c = s.ctrl.load(std::memory_order_acquire);
  if (ctrl_state(c) != SlotState::kActive || ctrl_gen(c) != ref.generation) return false;
  // Identity first, then counts, then the slot: once the slot is free it may be reused at once.
  DedupIndex{&v}.remove(s.id_hash.load(std::memory_order_relaxed), ref.slot);
  if (!UserTable{&v}.release(s.user_entry)) {
    v.hdr->inconsistencies.fetch_add(1, std::memory_order_relaxed);
  }
  CRASH_POINT("release: uncount the active execution");
  v.hdr->active.store(v.hdr->active.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  free_slot(v, ref.slot);
  count(kReleased);
  return true;
}

std::vector<ActiveRef> Consumer::active() const {
  const SegmentView& v = *view_;
  std::vector<ActiveRef> out;
  const std::uint64_t used = std::min(v.hdr->fresh_next.load(), v.geo->slot_count);
  for (std::uint32_t i = 0; i < used; ++i) {
    const std::uint64_t c = v.slot(i).ctrl.load(std::memory_order_acquire);
    if (ctrl_state(c) == SlotState::kActive) out.push_back(ActiveRef{i, ctrl_gen(c)});
  }
  return out;
}

std::vector<ExecutionRecord> Consumer::sweep_stale(std::chrono::seconds timeout,
                                                   std::int64_t now_ns) {
  const SegmentView& v = *view_;
  if (now_ns == 0) now_ns = realtime_ns();
  const std::int64_t cutoff =
      now_ns - std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count();
  std::vector<ExecutionRecord> expired;
  Bracket bracket(*this);
  if (!bracket) return expired;
  for (std::size_t level = 0; level < kLevels; ++level) {
    RingRef ring = ring_of(v, level);
    for (;;) {
      std::uint64_t pos = 0;
      const auto index = ring.peek(&pos);
      if (!index) break;
      Slot& s = v.slot(*index);
      std::uint64_t c = s.ctrl.load(std::memory_order_acquire);
      const SlotState st = ctrl_state(c);
      if (st == SlotState::kCancelled || st == SlotState::kCancelling) {
        pass_tombstone(v, level, pos, *index);
        continue;
      }
      // FIFO within a level: the first entry that is not stale ends the sweep of that level.
      if ((st != SlotState::kQueued && st != SlotState::kPending) || s.enqueued_at_ns >= cutoff) {
        break;
      }
      // Copied out (and room made for it) before the slot is claimed: nothing that may throw
      // happens between the claim and the slot's release.
      ExecutionRecord rec;
      const ExecutionView view = make_view(v, *index);
      rec.execution_id = std::string(view.execution_id);
      rec.user_id = std::string(view.user_id);
      rec.priority = view.priority;
      rec.enqueued_at_ns = view.enqueued_at_ns;
      rec.attempt = view.attempt;
      rec.timeout_seconds = view.timeout_seconds;
      rec.payload.assign(view.payload.begin(), view.payload.end());
      if (!view.extras.empty()) decode_extras(view.extras, rec.required_capabilities, rec.metadata);
      expired.reserve(expired.size() + 1);
      CRASH_POINT("sweep: claim a stale slot");
      if (!s.ctrl.compare_exchange_strong(c, ctrl_make(ctrl_gen(c), 0, SlotState::kExpired),
                                          std::memory_order_acq_rel)) {
        continue;
      }
      expired.push_back(std::move(rec));
      ring.pop_at(pos, *index);
      DedupIndex{&v}.remove(s.id_hash.load(std::memory_order_relaxed), *index);
      if (!UserTable{&v}.release(s.user_entry)) {
        v.hdr->inconsistencies.fetch_add(1, std::memory_order_relaxed);
      }
      CRASH_POINT("sweep: give the capacity back");
      v.hdr->queued.fetch_sub(1, std::memory_order_acq_rel);
      free_slot(v, *index);
      count(kExpired);
    }
  }
  return expired;
}

bool Consumer::wait_for_work(std::chrono::nanoseconds timeout) {
  if (has_work()) return true;
  Header& hdr = *view_->hdr;
  CRASH_POINT("sleep: announce it");
  hdr.consumer_sleeping.store(1, std::memory_order_seq_cst);
  const std::uint32_t seq = hdr.wake_seq.load(std::memory_order_seq_cst);
  if (!has_work()) futex_wait(&hdr.wake_seq, seq, timeout);
  hdr.consumer_sleeping.store(0, std::memory_order_seq_cst);
  return has_work();
}

std::uint64_t Consumer::reap_dead() {
  const SegmentView& v = *view_;
  std::uint64_t dead = 0;
  // Reaping is one CAS from the identity found dead (reap_participant), safe at any time, so it
  // needs no bracket. An entry whose process died inside an operation is left to the rebuild,
  // which repairs what it held first.
  bool needs_rebuild = false;
  for (std::uint32_t i = 0; i < v.geo->max_participants; ++i) {
    if (i == self_) continue;
    Participant& p = v.participant(i);
    const std::uint64_t w = p.ident.load(std::memory_order_seq_cst);
    if (w == 0 || identity_alive(w)) continue;
    ++dead;
    if (p.busy.load(std::memory_order_seq_cst) != 0) {
      needs_rebuild = true;
    } else {
      reap_participant(v, i, w);
    }
  }
  CRASH_POINT("reap: take a producer's maintenance request");
  if (v.hdr->maintenance_requested.exchange(0, std::memory_order_seq_cst) != 0) {
    needs_rebuild = true;
  }
  // A deferred repair (a live process stayed inside an operation) is tried again next time: the
  // dead entry, or the dirty maintenance word, is still there to say so.
  blocked_by_ = 0;
  blocked_word_ = 0;
  if (needs_rebuild || rebuild_needed()) run_maintenance();
  return dead;
}

}  // namespace shmsched::ipc
