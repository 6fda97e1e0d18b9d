// The free slots: a Treiber stack (LIFO, so recently used, cache-warm slots are reused first).
// top = tag << 32 | (index + 1); the tag changes on every push and pop, which defeats ABA.
// A pop is one CAS; a process that dies just after it holds a slot nobody can see, which the
// maintenance pass (maintenance.cpp) gives back.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>

#include "crash_point.h"
#include "segment_view.h"

namespace shmsched::ipc::detail {

struct FreeStack {
  const SegmentView* seg;

  void push(std::uint32_t index) const {
    auto& top = seg->hdr->free_top;
    std::uint64_t old = top.load(std::memory_order_acquire);
    for (;;) {
      seg->slot(index).next_free.store(old & 0xffffffffULL, std::memory_order_relaxed);
      const std::uint64_t next = (((old >> 32) + 1) << 32) | (std::uint64_t{index} + 1);
      CRASH_POINT("free stack: push CAS");
      if (top.compare_exchange_weak(old, next, std::memory_order_release,
                                    std::memory_order_acquire)) {
        return;
      }
    }
  }

  std::optional<std::uint32_t> pop() const {
    auto& top = seg->hdr->free_top;
    std::uint64_t old = top.load(std::memory_order_acquire);
    for (;;) {
      const std::uint32_t first = static_cast<std::uint32_t>(old);
      if (first == 0) return std::nullopt;
      // May read a link that is being rewritten by a concurrent pop/push of the same slot; the
      // tag makes the CAS below fail in that case.
      const std::uint64_t link =
          seg->slot(first - 1).next_free.load(std::memory_order_relaxed) & 0xffffffffULL;
      const std::uint64_t next = (((old >> 32) + 1) << 32) | link;
      CRASH_POINT("free stack: pop CAS");
      if (top.compare_exchange_weak(old, next, std::memory_order_acquire,
                                    std::memory_order_acquire)) {
        return first - 1;
      }
    }
  }

  // Single-threaded rebuild helper (maintenance): empties the stack.
  void clear() const { seg->hdr->free_top.store(0, std::memory_order_relaxed); }
};

}  // namespace shmsched::ipc::detail
