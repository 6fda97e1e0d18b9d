// Maintenance: rebuild every derived structure of the segment from the slots.
//
// The slots are the source of truth: each is free, pending (being filled), queued (its index is
// in a priority ring), active, or a cancelled/expired tombstone. Rings, counts, the dedup index,
// the user table, the rank index and the free stack are all functions of that. Run while every
// other participant is outside its operations, a rebuild therefore repairs whatever a process
// killed at any instruction left half done, and it is idempotent: a maintainer that dies midway
// is replaced by another that starts again from the slots.
#include <algorithm>
#include <vector>

#include "identity.h"
#include "queue_internals.h"
#include "shmsched/core/stable_hash.h"
#include "slot_fields.h"
#include "slot_text.h"

namespace shmsched::ipc::detail {

bool participant_is_alive(const SegmentView& v, std::uint32_t index) {
  return identity_alive(v.participant(index).ident.load(std::memory_order_seq_cst));
}

bool reap_participant(const SegmentView& v, std::uint32_t index, std::uint64_t observed) {
  if (observed == 0) return false;
  CRASH_POINT("reap: free a dead participant's entry");
  std::uint64_t expected = observed;
  if (!v.participant(index).ident.compare_exchange_strong(expected, 0, std::memory_order_acq_rel)) {
    return false;  // freed or reaped by someone else, perhaps already taken by a newcomer
  }
  v.hdr->reaped_participants.fetch_add(1, std::memory_order_relaxed);
  return true;
}

namespace {

bool is_tombstone(SlotState s) {
  return s == SlotState::kCancelled || s == SlotState::kCancelling || s == SlotState::kExpired ||
         s == SlotState::kOrphaned;
}

void set_state(Slot& s, SlotState st) {
  const std::uint64_t c = s.ctrl.load(std::memory_order_relaxed);
  CRASH_POINT("rebuild: set a slot's state");
  s.ctrl.store(ctrl_make(ctrl_gen(c), st == SlotState::kFree ? 0 : ctrl_owner(c), st),
               std::memory_order_relaxed);
}

// Compacts one ring: keeps the queued entries in order, drops tombstones and cells of
// executions the consumer had already taken, and resets every other cell for its next lap.
void rebuild_ring(const SegmentView& v, std::size_t level, std::vector<std::uint8_t>& in_ring,
                  std::uint64_t used) {
  RingRef r = ring_of(v, level);
  const std::uint64_t cap = v.geo->ring_capacity;
  std::uint64_t h = r.head->load(std::memory_order_relaxed);
  for (std::uint64_t k = 0; k < cap && r.cells[h & r.mask].load() == RingRef::make(r.lap(h) + 1, 0);
       ++k) {
    ++h;  // popped, head not yet moved on
  }
  std::vector<std::uint32_t> keep;
  // The announce cursor follows its entries: it ends up after the kept ones it was after.
  const std::uint64_t announced = v.level(level).announced.load(std::memory_order_relaxed);
  std::uint64_t kept_before_cursor = 0;
  for (std::uint64_t t = h; t - h < cap; ++t) {
    const std::uint64_t c = r.cells[t & r.mask].load(std::memory_order_relaxed);
    if (RingRef::cell_lap(c) != r.lap(t) || RingRef::cell_index1(c) == 0) break;
    const std::uint32_t index = RingRef::cell_index1(c) - 1;
    if (index >= used || in_ring[index]) {
      v.hdr->inconsistencies.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    Slot& s = v.slot(index);
    const SlotState st = ctrl_state(s.ctrl.load(std::memory_order_relaxed));
    if (st == SlotState::kPending || st == SlotState::kQueued) {
      // A pending slot found in a ring was committed by a producer that stopped just before
      // marking it queued.
      set_state(s, SlotState::kQueued);
      in_ring[index] = 1;
      keep.push_back(index);
      if (t < announced) ++kept_before_cursor;
    } else if (!is_tombstone(st) && st != SlotState::kActive) {
      v.hdr->inconsistencies.fetch_add(1, std::memory_order_relaxed);
    }
    // Tombstones and already-taken entries are dropped; the slot pass frees the former.
  }
  CRASH_POINT("rebuild: rewrite a ring's cells");
  for (std::uint64_t k = 0; k < cap; ++k) {
    const std::uint64_t pos = h + k;
    const std::uint64_t cell =
        k < keep.size() ? RingRef::make(r.lap(pos), keep[k] + 1ULL) : RingRef::make(r.lap(pos), 0);
    r.cells[pos & r.mask].store(cell, std::memory_order_relaxed);
    if (k < keep.size()) v.slot(keep[k]).ring_pos.store(pos, std::memory_order_relaxed);
  }
  CRASH_POINT("rebuild: normalise a ring's head and tail");
  r.head->store(h, std::memory_order_relaxed);
  r.tail->store(h + keep.size(), std::memory_order_relaxed);
  CRASH_POINT("rebuild: move the announce cursor");
  v.level(level).announced.store(h + kept_before_cursor, std::memory_order_relaxed);
  v.level(level).tombstones.store(0, std::memory_order_relaxed);
  auto* tree = v.rank_tree(level);
  for (std::uint64_t i = 0; i < cap; ++i) tree[i].store(0, std::memory_order_relaxed);
}

}  // namespace

void rebuild(const SegmentView& v) {
  Header& hdr = *v.hdr;
  const Geometry& g = *v.geo;

  const std::uint64_t used = std::min(hdr.fresh_next.load(), g.slot_count);
  CRASH_POINT("rebuild: clamp the never-used mark");
  hdr.fresh_next.store(used);
  std::vector<std::uint8_t> in_ring(used, 0);
  for (std::size_t l = 0; l < kLevels; ++l) rebuild_ring(v, l, in_ring, used);

  UserTable users{&v};
  DedupIndex dedup{&v};
  FreeStack free{&v};
  CRASH_POINT("rebuild: clear the user table, dedup index and free stack");
  for (std::uint64_t i = 0; i < g.user_table_size; ++i) v.users()[i].store(0);
  dedup.clear();
  free.clear();

  std::int64_t queued = 0;
  std::int64_t active = 0;
  std::uint64_t user_entries = 0;
  std::vector<std::uint32_t> freed;
  for (std::uint32_t i = 0; i < used; ++i) {
    Slot& s = v.slot(i);
    const SlotState st = ctrl_state(s.ctrl.load(std::memory_order_relaxed));
    const bool live = in_ring[i] || st == SlotState::kActive;
    if (!live) {
      if (st != SlotState::kFree) {
        hdr.reclaimed_slots.fetch_add(1, std::memory_order_relaxed);
        set_state(s, SlotState::kFree);
      }
      freed.push_back(i);
      continue;
    }
    (in_ring[i] ? queued : active) += 1;
    const std::string user = load_text(s.user_words, s.user_len);
    const std::uint64_t uh = stable_hash(user);
    const auto before = users.find(uh);
    const auto entry = users.find_or_claim(uh);
    if (!entry) {  // cannot happen: the table has room for twice max_users
      hdr.inconsistencies.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    if (!before) ++user_entries;
    CRASH_POINT("rebuild: count a live slot for its user");
    v.users()[*entry].fetch_add(1, std::memory_order_relaxed);
    store_field(s.user_entry, *entry);
    const std::string id = load_text(s.id_words, s.id_len);
    if (dedup.insert(s.id_hash.load(), id, i) != DedupIndex::Insert::kInserted) {
      hdr.inconsistencies.fetch_add(1, std::memory_order_relaxed);
    }
  }
  // Push in reverse so that the lowest (warmest) slots are handed out first.
  for (auto it = freed.rbegin(); it != freed.rend(); ++it) free.push(*it);
  CRASH_POINT("rebuild: store the queued and active counts");
  hdr.queued.store(queued);
  hdr.active.store(active);
  hdr.user_entries.store(user_entries);
}

}  // namespace shmsched::ipc::detail
