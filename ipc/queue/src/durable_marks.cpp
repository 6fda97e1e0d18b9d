// Durable marks: how a producer that asked for durability disk learns, through shared memory,
// that the supervisor has its entry on disk. The supervisor journals an entry when it first
// sees it; once the record is synced it stores durable_mark_of(generation) in the entry's slot,
// then bumps Header::durable_seq and wakes the waiters. A slot identifies one occupancy by its
// generation, so a mark left from an earlier occupant never answers for a later one, and a
// slot that has moved on (another generation, or free) means the entry ended: it needs no mark.
//
// No wake-up is lost: a waiter counts itself in durable_waiters and reads durable_seq before it
// checks its mark (all sequentially consistent); the supervisor stores marks, then bumps
// durable_seq, then reads durable_waiters. Either the waiter's check sees the mark, or its
// futex_wait sees the new sequence, or the supervisor sees the waiter and wakes it.
//
// No crash points here: each store is whole by itself and no state is half done between them.
// A supervisor killed between a mark and the wake leaves a waiter asleep for at most one of
// its bounded sleeps.
#include <time.h>

#include "futex.h"
#include "queue_internals.h"
#include "shmsched/ipc/queue.h"

namespace shmsched::ipc {

using namespace detail;

std::string_view durable_outcome_name(DurableOutcome o) {
  switch (o) {
    case DurableOutcome::kDurable:
      return "durable";
    case DurableOutcome::kEnded:
      return "ended";
    case DurableOutcome::kUnavailable:
      return "unavailable";
    case DurableOutcome::kTimedOut:
      return "timed_out";
  }
  return "unknown";
}

namespace {

std::chrono::steady_clock::time_point deadline_after(std::chrono::nanoseconds timeout) {
  const auto now = std::chrono::steady_clock::now();
  if (timeout > std::chrono::hours(24 * 365)) return std::chrono::steady_clock::time_point::max();
  return now + timeout;
}

}  // namespace

bool Producer::durable_marks() const {
  return view_->hdr->durable_marks.load(std::memory_order_acquire) != 0;
}

DurableOutcome Producer::wait_durable(const SubmitResult& submitted,
                                      std::chrono::nanoseconds timeout) {
  const SegmentView& v = *view_;
  Header& hdr = *v.hdr;
  if (!submitted.accepted() || submitted.slot >= v.geo->slot_count) return DurableOutcome::kEnded;
  Slot& s = v.slot(submitted.slot);
  const std::uint64_t mark = durable_mark_of(submitted.generation);
  // What the slot says, checked in this order: a mark answers for this very occupancy; a slot
  // that moved on answers that the entry ended.
  const auto settled = [&]() -> std::optional<DurableOutcome> {
    if (s.durable_mark.load(std::memory_order_acquire) == mark) return DurableOutcome::kDurable;
    const std::uint64_t c = s.ctrl.load(std::memory_order_acquire);
    if (ctrl_gen(c) != submitted.generation || ctrl_state(c) == SlotState::kFree) {
      return DurableOutcome::kEnded;
    }
    return std::nullopt;
  };
  if (auto done = settled()) return *done;
  const auto deadline = deadline_after(timeout);
  hdr.durable_waiters.fetch_add(1, std::memory_order_seq_cst);
  struct Uncount {
    std::atomic<std::uint32_t>& waiters;
    ~Uncount() { waiters.fetch_sub(1, std::memory_order_seq_cst); }
  } uncount{hdr.durable_waiters};
  for (;;) {
    const std::uint32_t seq = hdr.durable_seq.load(std::memory_order_seq_cst);
    if (auto done = settled()) return *done;
    if (hdr.durable_marks.load(std::memory_order_seq_cst) == 0) {
      // A last mark may have landed between the check above and the flag's clearing.
      if (auto done = settled()) return *done;
      return DurableOutcome::kUnavailable;
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return DurableOutcome::kTimedOut;
    // Bounded sleeps: a supervisor killed mid-batch never wakes anyone; its successor marks
    // what its journal holds and wakes, and the deadline is checked in between.
    futex_wait(&hdr.durable_seq, seq,
               std::min<std::chrono::nanoseconds>(deadline - now, std::chrono::milliseconds(100)));
  }
}

void Consumer::set_durable_marks(bool on) {
  view_->hdr->durable_marks.store(on ? 1 : 0, std::memory_order_seq_cst);
  wake_durable_waiters();
}

void Consumer::mark_durable(std::uint32_t slot, std::uint32_t generation) {
  const SegmentView& v = *view_;
  if (slot >= v.geo->slot_count) return;
  v.slot(slot).durable_mark.store(durable_mark_of(generation), std::memory_order_release);
}

void Consumer::wake_durable_waiters() {
  Header& hdr = *view_->hdr;
  hdr.durable_seq.fetch_add(1, std::memory_order_seq_cst);
  if (hdr.durable_waiters.load(std::memory_order_seq_cst) != 0) {
    futex_wake(&hdr.durable_seq, INT32_MAX);
  }
}

std::uint32_t Consumer::durable_waiters() const {
  return view_->hdr->durable_waiters.load(std::memory_order_relaxed);
}

std::vector<ActiveRef> Consumer::occupied() const {
  const SegmentView& v = *view_;
  std::vector<ActiveRef> out;
  const std::uint64_t used = std::min(v.hdr->fresh_next.load(), v.geo->slot_count);
  for (std::uint32_t i = 0; i < used; ++i) {
    const std::uint64_t c = v.slot(i).ctrl.load(std::memory_order_acquire);
    const SlotState st = ctrl_state(c);
    if (st == SlotState::kQueued || st == SlotState::kActive) {
      out.push_back(ActiveRef{i, ctrl_gen(c)});
    }
  }
  return out;
}

}  // namespace shmsched::ipc
