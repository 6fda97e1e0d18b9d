// A full consistency check of a queue segment at quiescence, from its internals: what every
// test that kills or stops processes inside queue operations checks once the queue recovered.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "dedup_index.h"
#include "identity.h"
#include "queue_internals.h"
#include "shmsched/core/stable_hash.h"
#include "shmsched/ipc/segment.h"
#include "slot_text.h"

namespace shmsched::test {

struct Audit {
  std::vector<std::string> problems;
  std::multiset<std::string> queued;  // ids in the rings, in no particular order
  std::multiset<std::string> active;
  std::size_t free_slots = 0;

  bool ok() const { return problems.empty(); }
  std::string text() const {
    std::string out;
    for (const auto& p : problems) out += "  " + p + "\n";
    return out;
  }
  std::set<std::string> live() const {
    std::set<std::string> out(queued.begin(), queued.end());
    out.insert(active.begin(), active.end());
    return out;
  }
};

// Checks every derived structure against the slots. Call only when no operation runs.
inline Audit audit_segment(const ipc::Segment& segment) {
  using namespace ipc::detail;
  const SegmentView& v = ipc::detail::view_of(segment);
  const Geometry& g = *v.geo;
  Audit a;
  auto problem = [&](std::string p) { a.problems.push_back(std::move(p)); };
  const std::uint64_t used = std::min(v.hdr->fresh_next.load(), g.slot_count);
  std::vector<int> seen(used, 0);
  std::map<std::uint32_t, std::int64_t> per_user_entry;
  std::int64_t queued = 0;
  std::int64_t tombstones_total = 0;
  auto id_of = [&](std::uint32_t i) { return load_text(v.slot(i).id_words, v.slot(i).id_len); };

  for (std::size_t l = 0; l < kLevels; ++l) {
    RingRef r = ring_of(v, l);
    const std::uint64_t head = r.head->load();
    const std::uint64_t tail = r.tail->load();
    if (tail < head || tail - head > g.ring_capacity) {
      problem("level " + std::to_string(l) + ": head " + std::to_string(head) + " tail " +
              std::to_string(tail));
      continue;
    }
    // The cell at the tail must be empty for its lap (a lagging tail is repaired by now).
    const std::uint64_t tc = r.cells[tail & r.mask].load();
    if (RingRef::cell_index1(tc) != 0 && RingRef::cell_lap(tc) == r.lap(tail)) {
      problem("level " + std::to_string(l) + ": the tail lags");
    }
    std::int64_t tomb = 0;
    for (std::uint64_t p = head; p < tail; ++p) {
      const std::uint64_t c = r.cells[p & r.mask].load();
      if (RingRef::cell_lap(c) != r.lap(p) || RingRef::cell_index1(c) == 0) {
        problem("level " + std::to_string(l) + ": empty cell at " + std::to_string(p));
        continue;
      }
      const std::uint32_t i = RingRef::cell_index1(c) - 1;
      if (i >= used) {
        problem("ring cell names an unused slot");
        continue;
      }
      ++seen[i];
      const SlotState st = ctrl_state(v.slot(i).ctrl.load());
      if (st == SlotState::kQueued) {
        ++queued;
        a.queued.insert(id_of(i));
        ++per_user_entry[v.slot(i).user_entry];
        if (v.slot(i).ring_pos.load() != p) problem("slot " + id_of(i) + ": ring_pos is wrong");
      } else if (st == SlotState::kCancelled) {
        ++tomb;
      } else {
        problem("slot " + std::to_string(i) + " in a ring in state " +
                std::to_string(static_cast<int>(st)));
      }
    }
    if (v.level(l).tombstones.load() != tomb) {
      problem("level " + std::to_string(l) + ": tombstone count " +
              std::to_string(v.level(l).tombstones.load()) + ", cells " + std::to_string(tomb));
    }
    if (RankIndex{v.rank_tree(l), g.ring_capacity}.between(head, tail) != tomb) {
      problem("level " + std::to_string(l) + ": rank index disagrees with the tombstones");
    }
    tombstones_total += tomb;
  }
  std::int64_t active = 0;
  for (std::uint32_t i = 0; i < used; ++i) {
    const SlotState st = ctrl_state(v.slot(i).ctrl.load());
    if (seen[i] > 1) problem("slot " + std::to_string(i) + " is in the rings twice");
    if (st == SlotState::kActive) {
      ++active;
      a.active.insert(id_of(i));
      ++per_user_entry[v.slot(i).user_entry];
      if (seen[i]) problem("active slot " + id_of(i) + " is still in a ring");
    } else if (st != SlotState::kFree && !seen[i]) {
      problem("slot " + std::to_string(i) + " is in state " + std::to_string(static_cast<int>(st)) +
              " and in no ring: leaked");
    } else if (st == SlotState::kFree && seen[i]) {
      problem("free slot " + std::to_string(i) + " is in a ring");
    }
  }
  if (v.hdr->queued.load() != queued) {
    problem("queued count " + std::to_string(v.hdr->queued.load()) + ", ring entries " +
            std::to_string(queued));
  }
  if (v.hdr->active.load() != active) {
    problem("active count " + std::to_string(v.hdr->active.load()) + ", active slots " +
            std::to_string(active));
  }
  // Per-user counts.
  for (std::uint64_t e = 0; e < g.user_table_size; ++e) {
    const std::uint64_t w = v.users()[e].load();
    if (w == 0) continue;
    const auto want = per_user_entry.count(static_cast<std::uint32_t>(e))
                          ? per_user_entry[static_cast<std::uint32_t>(e)]
                          : 0;
    if (static_cast<std::int64_t>(w & UserTable::kCountMask) != want) {
      problem("user entry " + std::to_string(e) + ": count " +
              std::to_string(w & UserTable::kCountMask) + ", live slots " + std::to_string(want));
    }
  }
  // Dedup: every live id is found at its slot; no entry names a slot that is not live.
  DedupIndex dedup{&v};
  for (std::uint32_t i = 0; i < used; ++i) {
    const SlotState st = ctrl_state(v.slot(i).ctrl.load());
    if (st != SlotState::kQueued && st != SlotState::kActive) continue;
    const auto found = dedup.find(v.slot(i).id_hash.load(), id_of(i));
    if (!found || *found != i) problem("id " + id_of(i) + " is not in the dedup index");
  }
  for (std::uint64_t w = 0; w < g.dedup_buckets * DedupIndex::kWays; ++w) {
    const std::uint64_t word = v.dedup()[w].load();
    if (word == 0) continue;
    const std::uint32_t i = static_cast<std::uint32_t>(word) - 1;
    if (i >= used) {
      problem("dedup entry names an unused slot");
      continue;
    }
    const SlotState st = ctrl_state(v.slot(i).ctrl.load());
    if (st != SlotState::kQueued && st != SlotState::kActive) {
      problem("dedup entry for slot " + std::to_string(i) + " in state " +
              std::to_string(static_cast<int>(st)));
    }
  }
  // Free stack: every free slot below the never-used mark is on it, once.
  std::vector<int> on_stack(used, 0);
  std::uint64_t link = v.hdr->free_top.load() & 0xffffffffULL;
  for (std::uint64_t steps = 0; link != 0 && steps <= used; ++steps) {
    const std::uint32_t i = static_cast<std::uint32_t>(link - 1);
    if (i >= used || on_stack[i]++) {
      problem("free stack is corrupt");
      break;
    }
    link = v.slot(i).next_free.load() & 0xffffffffULL;
  }
  for (std::uint32_t i = 0; i < used; ++i) {
    const bool is_free = ctrl_state(v.slot(i).ctrl.load()) == SlotState::kFree;
    if (is_free != (on_stack[i] != 0)) {
      problem(
          "slot " + std::to_string(i) +
          (is_free ? " is free but not on the free stack" : " is on the free stack but not free"));
    }
    a.free_slots += is_free;
  }
  a.free_slots += g.slot_count - used;
  // Participants and maintenance.
  for (std::uint32_t i = 0; i < g.max_participants; ++i) {
    const std::uint64_t w = v.participant(i).ident.load();
    if (w != 0 && !identity_alive(w)) {
      problem("participant entry " + std::to_string(i) + " is held by dead pid " +
              std::to_string(identity_pid(w)));
    }
  }
  if (v.hdr->maintenance.load() != 0) problem("the maintenance word is still set");
  (void)tombstones_total;
  return a;
}

}  // namespace shmsched::test
