// Execution id -> slot, for duplicate detection, cancel by id and status, in O(1).
//
// Buckets of 8 words (one cache line); word = tag << 32 | (slot index + 1), 0 = empty. An id
// lives in its first bucket, or in its second when the first is full (the first then carries an
// overflow mark so lookups know to look there too). Insert claims an empty word by CAS and then
// re-scans: if another live entry for the same id appeared meanwhile, the inserter withdraws.
// So two concurrent inserts of one id never both succeed (in a narrow race both may withdraw,
// which reports "duplicate" for an id that is not queued: safe, and the client may retry).
// Removal is one CAS back to 0.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string_view>

#include "crash_point.h"
#include "segment_view.h"
#include "slot_text.h"

namespace shmsched::ipc::detail {

struct DedupIndex {
  const SegmentView* seg;

  static constexpr std::size_t kWays = 8;

  enum class Insert { kInserted, kDuplicate, kFull };

  std::uint64_t mask() const { return seg->geo->dedup_buckets - 1; }
  std::uint64_t first_bucket(std::uint64_t h) const { return h & mask(); }
  std::uint64_t second_bucket(std::uint64_t h) const {
    return ((h >> 29) ^ (h * 0x9e3779b97f4a7c15ULL >> 35)) & mask();
  }
  static std::uint64_t word_of(std::uint64_t h, std::uint32_t slot) {
    return (h >> 32) << 32 | (std::uint64_t{slot} + 1);
  }
  std::atomic<std::uint64_t>* bucket(std::uint64_t b) const { return seg->dedup() + b * kWays; }

  static bool live(std::uint64_t ctrl) {
    const SlotState st = ctrl_state(ctrl);
    return st == SlotState::kPending || st == SlotState::kQueued || st == SlotState::kActive;
  }

  // The generation in which the entry `w` refers to a live execution with this id, if it does.
  // A slot's identity is fixed for one generation, so a state change within the generation
  // (pending -> queued -> active) does not matter; a new generation means the slot was reused
  // and is read again.
  std::optional<std::uint32_t> live_generation(std::uint64_t w, std::uint64_t h,
                                               std::string_view id) const {
    if (w == 0 || (w >> 32) != (h >> 32)) return std::nullopt;
    const std::uint32_t index = static_cast<std::uint32_t>(w) - 1;
    if (index >= seg->geo->slot_count) return std::nullopt;
    Slot& s = seg->slot(index);
    for (int attempt = 0; attempt < 4; ++attempt) {
      const std::uint64_t c1 = s.ctrl.load(std::memory_order_acquire);
      if (!live(c1)) return std::nullopt;
      const bool same =
          s.id_hash.load(std::memory_order_acquire) == h &&
          text_equals(s.id_words,
                      std::atomic_ref<std::uint8_t>(s.id_len).load(std::memory_order_relaxed), id);
      const std::uint64_t c2 = s.ctrl.load(std::memory_order_acquire);
      if (ctrl_gen(c2) == ctrl_gen(c1)) {
        if (same && live(c2)) return ctrl_gen(c2);
        return std::nullopt;
      }
    }
    return std::nullopt;
  }

  struct Found {
    std::uint32_t index;
    std::uint32_t generation;  // the slot holds this id only while its generation is this one
  };

  // The slot holding the live execution with this id, and the generation in which it does.
  // The slot may be released and reused as soon as this returns: whoever acts on it must check
  // the generation in the same compare-and-swap.
  std::optional<Found> lookup(std::uint64_t h, std::string_view id,
                              std::uint64_t ignore_word = 0) const {
    const std::uint64_t b1 = first_bucket(h);
    for (int pass = 0; pass < 2; ++pass) {
      const std::uint64_t b = pass == 0 ? b1 : second_bucket(h);
      if (pass == 1 && seg->dedup_overflow()[b1].load(std::memory_order_seq_cst) == 0) break;
      auto* words = bucket(b);
      for (std::size_t i = 0; i < kWays; ++i) {
        // seq_cst: an insert's re-scan must not be ordered before its own seq_cst claim.
        const std::uint64_t w = words[i].load(std::memory_order_seq_cst);
        if (w == ignore_word) continue;
        if (const auto gen = live_generation(w, h, id)) {
          return Found{static_cast<std::uint32_t>(w) - 1, *gen};
        }
      }
    }
    return std::nullopt;
  }

  // The slot index alone, for callers that only ask whether the id is live or that re-check
  // the slot's identity themselves.
  std::optional<std::uint32_t> find(std::uint64_t h, std::string_view id,
                                    std::uint64_t ignore_word = 0) const {
    if (const auto f = lookup(h, id, ignore_word)) return f->index;
    return std::nullopt;
  }

  // `looked_up`: the caller has just done find() itself (the re-scan below catches any insert
  // of the same id since).
  Insert insert(std::uint64_t h, std::string_view id, std::uint32_t slot,
                bool looked_up = false) const {
    if (!looked_up && find(h, id)) return Insert::kDuplicate;
    const std::uint64_t mine = word_of(h, slot);
    const std::uint64_t b1 = first_bucket(h);
    std::atomic<std::uint64_t>* placed = claim_empty(bucket(b1), mine);
    if (!placed) {
      CRASH_POINT("dedup insert: mark the first bucket overflowed");
      seg->dedup_overflow()[b1].store(1, std::memory_order_seq_cst);
      placed = claim_empty(bucket(second_bucket(h)), mine);
      if (!placed) return Insert::kFull;
    }
    if (find(h, id, mine)) {
      CRASH_POINT("dedup insert: withdraw after a concurrent duplicate");
      std::uint64_t expected = mine;
      placed->compare_exchange_strong(expected, 0, std::memory_order_acq_rel);
      return Insert::kDuplicate;
    }
    return Insert::kInserted;
  }

  // Removes the entry of `slot` for hash h (no-op if absent).
  void remove(std::uint64_t h, std::uint32_t slot) const {
    const std::uint64_t mine = word_of(h, slot);
    for (std::uint64_t b : {first_bucket(h), second_bucket(h)}) {
      auto* words = bucket(b);
      for (std::size_t i = 0; i < kWays; ++i) {
        if (words[i].load(std::memory_order_relaxed) != mine) continue;
        CRASH_POINT("dedup remove: CAS the entry to empty");
        std::uint64_t expected = mine;
        if (words[i].compare_exchange_strong(expected, 0, std::memory_order_acq_rel)) return;
      }
    }
  }

  // Single-threaded rebuild helper (maintenance).
  void clear() const {
    for (std::uint64_t i = 0; i < seg->geo->dedup_buckets * kWays; ++i) {
      seg->dedup()[i].store(0, std::memory_order_relaxed);
    }
    for (std::uint64_t b = 0; b < seg->geo->dedup_buckets; ++b) {
      seg->dedup_overflow()[b].store(0, std::memory_order_relaxed);
    }
  }

 private:
  static std::atomic<std::uint64_t>* claim_empty(std::atomic<std::uint64_t>* words,
                                                 std::uint64_t mine) {
    for (std::size_t i = 0; i < kWays; ++i) {
      std::uint64_t expected = 0;
      if (words[i].load(std::memory_order_relaxed) != 0) continue;
      CRASH_POINT("dedup insert: claim an empty entry (the identity commit)");
      if (words[i].compare_exchange_strong(expected, mine, std::memory_order_seq_cst)) {
        return &words[i];
      }
    }
    return nullptr;
  }
};

}  // namespace shmsched::ipc::detail
