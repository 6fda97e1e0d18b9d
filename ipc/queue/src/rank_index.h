// Tombstones per ring position, as a Fenwick tree of atomic counters per priority ring, so the
// exact rank of a queued entry ("how many will be dequeued before it") costs O(log capacity):
//   rank = live entries in higher levels + (pos - head) - tombstones in [head, pos).
// Only cancel/expire (+1) and the consumer passing a tombstone (-1) update it; enqueue and
// dequeue of live entries never touch it. Concurrent adds commute, so no lock is needed; a
// concurrent reader sees a value that was exact at some instant during its read.
#pragma once

#include <atomic>
#include <cstdint>

#include "crash_point.h"

namespace shmsched::ipc::detail {

struct RankIndex {
  std::atomic<std::int32_t>* tree;
  std::uint64_t capacity;  // power of two

  void add(std::uint64_t pos, std::int32_t delta) const {
    for (std::uint64_t i = (pos & (capacity - 1)) + 1; i <= capacity; i += i & (~i + 1)) {
      CRASH_POINT("rank index: add at one node");
      tree[i - 1].fetch_add(delta, std::memory_order_relaxed);
    }
  }

  // Tombstones in cells [0, n).
  std::int64_t prefix(std::uint64_t n) const {
    std::int64_t sum = 0;
    for (std::uint64_t i = n; i > 0; i -= i & (~i + 1)) {
      sum += tree[i - 1].load(std::memory_order_relaxed);
    }
    return sum;
  }

  // Tombstones at positions [from, to), a range shorter than the capacity.
  std::int64_t between(std::uint64_t from, std::uint64_t to) const {
    if (to <= from) return 0;
    const std::uint64_t a = from & (capacity - 1);
    const std::uint64_t b = to & (capacity - 1);
    if (a < b) return prefix(b) - prefix(a);
    return prefix(capacity) - prefix(a) + prefix(b);
  }
};

}  // namespace shmsched::ipc::detail
