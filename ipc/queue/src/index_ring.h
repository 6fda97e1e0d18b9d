// A bounded FIFO of slot indices in which every step is one CAS on a word that already holds the
// data, so a process killed at any instruction never leaves a half-published cell.
//
// cell = lap << 32 | (index + 1); index + 1 == 0 means empty. Position p lives in cell
// p % capacity with lap p / capacity (truncated to 32 bits; the lap defeats ABA for a producer
// that read an old tail).
//   push at tail t: CAS cell (lap(t), empty) -> (lap(t), index), then CAS tail t -> t + 1.
//   pop at head h:  CAS cell (lap(h), index) -> (lap(h) + 1, empty), then CAS head h -> h + 1.
// head and tail only advance by CAS from the value read, and anyone who finds the cell at tail
// (head) already filled (emptied) helps move it on. A process that dies after its cell CAS and
// before moving tail (head) is therefore helped by the next one: nothing wedges.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>

#include "crash_point.h"

namespace shmsched::ipc::detail {

struct RingRef {
  std::atomic<std::uint64_t>* cells;
  std::atomic<std::uint64_t>* head;
  std::atomic<std::uint64_t>* tail;
  std::uint64_t mask;   // capacity - 1
  std::uint64_t shift;  // log2(capacity)

  static constexpr std::uint64_t make(std::uint32_t lap, std::uint64_t index_plus_one) {
    return (static_cast<std::uint64_t>(lap) << 32) | index_plus_one;
  }
  std::uint32_t lap(std::uint64_t pos) const { return static_cast<std::uint32_t>(pos >> shift); }
  static std::uint32_t cell_lap(std::uint64_t cell) {
    return static_cast<std::uint32_t>(cell >> 32);
  }
  static std::uint32_t cell_index1(std::uint64_t cell) { return static_cast<std::uint32_t>(cell); }

  // Appends `index`; returns its position, or nullopt if the ring is full. `pos_out` (the
  // slot's ring_pos) receives each candidate position before the cell CAS that would publish
  // the index there, so whoever finds the index in a cell also finds its position.
  std::optional<std::uint64_t> push(std::uint32_t index,
                                    std::atomic<std::uint64_t>* pos_out = nullptr) const {
    for (;;) {
      const std::uint64_t t = tail->load(std::memory_order_acquire);
      auto& cell = cells[t & mask];
      std::uint64_t c = cell.load(std::memory_order_acquire);
      const std::uint32_t l = lap(t);
      if (c == make(l, 0)) {
        CRASH_POINT("ring push: store the candidate position");
        if (pos_out) pos_out->store(t, std::memory_order_relaxed);
        CRASH_POINT("ring push: cell CAS (the queue commit)");
        if (cell.compare_exchange_strong(c, make(l, std::uint64_t{index} + 1),
                                         std::memory_order_seq_cst)) {
          CRASH_POINT("ring push: tail CAS");
          std::uint64_t expected = t;
          tail->compare_exchange_strong(expected, t + 1, std::memory_order_release);
          return t;
        }
        continue;
      }
      if ((cell_lap(c) == l && cell_index1(c) != 0) || c == make(l + 1, 0)) {
        // Filled at this lap, or filled and already taken by the consumer: the tail lags (its
        // owner may have died between the two CASes). Help it on.
        CRASH_POINT("ring push: help a lagging tail");
        std::uint64_t expected = t;
        tail->compare_exchange_strong(expected, t + 1, std::memory_order_release);
        continue;
      }
      if (cell_lap(c) == l - 1 && cell_index1(c) != 0) {
        // Still holds the previous lap's entry: full, unless our tail is stale.
        if (tail->load(std::memory_order_acquire) == t) return std::nullopt;
        continue;
      }
      // Any other value means `t` is stale (the cell has moved on); read the tail again.
    }
  }

  // The index at the head without removing it, or nullopt if the ring is empty. The loads are
  // sequentially consistent: the consumer's last look before it sleeps must not be ordered
  // before its store of consumer_sleeping (the producers' side of that handshake).
  std::optional<std::uint32_t> peek(std::uint64_t* pos_out = nullptr) const {
    for (;;) {
      const std::uint64_t h = head->load(std::memory_order_seq_cst);
      const std::uint64_t c = cells[h & mask].load(std::memory_order_seq_cst);
      const std::uint32_t l = lap(h);
      if (cell_lap(c) == l && cell_index1(c) != 0) {
        if (pos_out) *pos_out = h;
        return cell_index1(c) - 1;
      }
      if (c == make(l, 0)) return std::nullopt;
      if (c == make(l + 1, 0)) {
        // Popped but the head lags: help it on.
        CRASH_POINT("ring peek: help a lagging head");
        std::uint64_t expected = h;
        head->compare_exchange_strong(expected, h + 1, std::memory_order_release);
        continue;
      }
      // Stale head; read again.
    }
  }

  // Removes the entry at `pos` if it still holds `index` (the caller peeked it).
  bool pop_at(std::uint64_t pos, std::uint32_t index) const {
    std::uint64_t c = make(lap(pos), std::uint64_t{index} + 1);
    CRASH_POINT("ring pop: cell CAS");
    const bool won = cells[pos & mask].compare_exchange_strong(c, make(lap(pos) + 1, 0),
                                                               std::memory_order_seq_cst);
    CRASH_POINT("ring pop: head CAS");
    std::uint64_t expected = pos;
    head->compare_exchange_strong(expected, pos + 1, std::memory_order_release);
    return won;
  }

  // Removes and returns the head entry.
  std::optional<std::uint32_t> pop() const {
    for (;;) {
      std::uint64_t pos = 0;
      const auto index = peek(&pos);
      if (!index) return std::nullopt;
      if (pop_at(pos, *index)) return index;
    }
  }

  bool empty() const { return !peek().has_value(); }
};

}  // namespace shmsched::ipc::detail
