// Helpers shared by the producer, consumer and maintenance code paths.
#pragma once

#include <cstdint>
#include <string_view>

#include "crash_point.h"
#include "dedup_index.h"
#include "free_stack.h"
#include "index_ring.h"
#include "rank_index.h"
#include "segment_view.h"
#include "user_table.h"

namespace shmsched::ipc::detail {

inline RingRef ring_of(const SegmentView& v, std::size_t level) {
  return RingRef{v.ring(level), &v.level(level).head, &v.level(level).tail,
                 v.geo->ring_capacity - 1, v.geo->ring_shift};
}

inline RankIndex rank_of(const SegmentView& v, std::size_t level) {
  return RankIndex{v.rank_tree(level), v.geo->ring_capacity};
}

// Queued (live) entries of one priority level; exact when nothing runs concurrently.
inline std::uint64_t level_depth(const SegmentView& v, std::size_t level) {
  const auto& L = v.level(level);
  const std::uint64_t head = L.head.load(std::memory_order_acquire);
  const std::uint64_t tail = L.tail.load(std::memory_order_acquire);
  const std::int64_t tomb = L.tombstones.load(std::memory_order_acquire);
  const std::int64_t depth = static_cast<std::int64_t>(tail - head) - tomb;
  return tail < head || depth < 0 ? 0 : static_cast<std::uint64_t>(depth);
}

// How many entries will be dequeued before the entry at `pos` of `level`. O(levels + log
// capacity); exact at any instant nothing else changes.
inline std::uint64_t rank_at(const SegmentView& v, std::size_t level, std::uint64_t pos) {
  std::uint64_t ahead = 0;
  for (std::size_t l = 0; l < level; ++l) ahead += level_depth(v, l);
  const std::uint64_t head = v.level(level).head.load(std::memory_order_acquire);
  if (pos <= head) return ahead;
  const std::int64_t before = static_cast<std::int64_t>(pos - head);
  const std::int64_t tomb = v.level(level).tombstones.load(std::memory_order_acquire) > 0
                                ? rank_of(v, level).between(head, pos)
                                : 0;
  return ahead + static_cast<std::uint64_t>(std::max<std::int64_t>(0, before - tomb));
}

// Claims an unused slot: a recycled one from the free stack, else a never-used one.
inline std::optional<std::uint32_t> take_slot(const SegmentView& v) {
  if (auto s = FreeStack{&v}.pop()) return s;
  auto& fresh = v.hdr->fresh_next;
  std::uint64_t n = fresh.load(std::memory_order_relaxed);
  while (n < v.geo->slot_count) {
    CRASH_POINT("take a never-used slot");
    if (fresh.compare_exchange_weak(n, n + 1, std::memory_order_acq_rel)) {
      return static_cast<std::uint32_t>(n);
    }
  }
  return std::nullopt;
}

// Marks a slot free and returns it to the free stack.
inline void free_slot(const SegmentView& v, std::uint32_t index) {
  auto& ctrl = v.slot(index).ctrl;
  const std::uint64_t c = ctrl.load(std::memory_order_relaxed);
  CRASH_POINT("free a slot: mark it free");
  ctrl.store(ctrl_make(ctrl_gen(c), 0, SlotState::kFree), std::memory_order_release);
  FreeStack{&v}.push(index);
}

// Rebuilds every derived structure from the slots (maintenance.cpp). Every other participant
// must be outside its operations.
void rebuild(const SegmentView& v);

// True when participant entry `index` holds a live process.
bool participant_is_alive(const SegmentView& v, std::uint32_t index);

// Frees participant entry `index` if it still holds `observed`, the identity of a process the
// caller found dead: one CAS, so a reaper killed at any point leaves the entry either taken by
// the dead process (to be reaped again) or free, and never frees a newcomer's entry.
bool reap_participant(const SegmentView& v, std::uint32_t index, std::uint64_t observed);

}  // namespace shmsched::ipc::detail
