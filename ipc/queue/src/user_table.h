// Per-user counts of queued + active executions, for the per-user cap.
//
// An open-addressing table of 64-bit words: tag << 24 | count. The tag (40 bits of the user id's
// stable hash, never 0) names the user; the count is changed with one atomic add, so the check
// and the increment of the cap are a single step. Entries are claimed by CAS 0 -> tag << 24 and
// never removed while the segment is in use (removal would break probe chains for concurrent
// lookups); the maintenance pass rebuilds the table with only the users that still count, which
// is how a full table makes room again.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>

#include "crash_point.h"
#include "segment_view.h"

namespace shmsched::ipc::detail {

struct UserTable {
  const SegmentView* seg;

  static constexpr std::uint64_t kCountMask = (1ULL << 24) - 1;

  static std::uint64_t tag_of(std::uint64_t hash) {
    const std::uint64_t tag = (hash >> 24) & ((1ULL << 40) - 1);
    return tag == 0 ? 1 : tag;
  }

  std::atomic<std::uint64_t>* words() const { return seg->users(); }
  std::uint64_t mask() const { return seg->geo->user_table_size - 1; }

  // The entry of the user with this hash, claiming a free one if needed; nullopt if full.
  std::optional<std::uint32_t> find_or_claim(std::uint64_t hash) const {
    const std::uint64_t tag = tag_of(hash);
    std::uint64_t i = hash & mask();
    for (std::uint64_t probes = 0; probes <= mask(); ++probes, i = (i + 1) & mask()) {
      std::uint64_t w = words()[i].load(std::memory_order_acquire);
      if (w == 0) {
        CRASH_POINT("user table: claim an entry");
        if (words()[i].compare_exchange_strong(w, tag << 24, std::memory_order_acq_rel)) {
          return static_cast<std::uint32_t>(i);
        }
        // Lost the race for this entry: fall through and look at what was written.
      }
      if ((w >> 24) == tag) return static_cast<std::uint32_t>(i);
    }
    return std::nullopt;
  }

  // The entry of the user with this hash, if present.
  std::optional<std::uint32_t> find(std::uint64_t hash) const {
    const std::uint64_t tag = tag_of(hash);
    std::uint64_t i = hash & mask();
    for (std::uint64_t probes = 0; probes <= mask(); ++probes, i = (i + 1) & mask()) {
      const std::uint64_t w = words()[i].load(std::memory_order_acquire);
      if (w == 0) return std::nullopt;
      if ((w >> 24) == tag) return static_cast<std::uint32_t>(i);
    }
    return std::nullopt;
  }

  // Takes one unit of the user's cap; false (and nothing taken) when the user is at `limit`.
  bool acquire(std::uint32_t entry, std::uint64_t limit) const {
    CRASH_POINT("user table: take a unit of the cap");
    const std::uint64_t before = words()[entry].fetch_add(1, std::memory_order_acq_rel);
    if ((before & kCountMask) < limit) return true;
    CRASH_POINT("user table: give back the unit over the cap");
    words()[entry].fetch_sub(1, std::memory_order_acq_rel);
    return false;
  }

  // Gives one unit back. Never takes the count below zero (which would corrupt the tag); returns
  // false if it was already zero, an inconsistency the caller reports.
  bool release(std::uint32_t entry) const {
    std::uint64_t w = words()[entry].load(std::memory_order_acquire);
    do {
      if ((w & kCountMask) == 0) return false;
      CRASH_POINT("user table: give a unit back");
    } while (!words()[entry].compare_exchange_weak(w, w - 1, std::memory_order_acq_rel,
                                                   std::memory_order_acquire));
    return true;
  }

  std::uint64_t count(std::uint32_t entry) const {
    return words()[entry].load(std::memory_order_acquire) & kCountMask;
  }
};

}  // namespace shmsched::ipc::detail
