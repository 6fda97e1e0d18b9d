// A process-local view of a mapped segment: typed access to each region by offset.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "layout.h"
#include "shmsched/ipc/segment.h"
#include "shmsched/ipc/segment_config.h"

namespace shmsched::ipc::detail {

// Lays out a segment for `cfg` (which must be valid): region sizes, offsets, total size.
Geometry compute_geometry(const SegmentConfig& cfg);

struct SegmentView {
  std::byte* base = nullptr;
  Header* hdr = nullptr;
  const Geometry* geo = nullptr;

  SegmentView() = default;
  explicit SegmentView(void* mapping)
      : base(static_cast<std::byte*>(mapping)),
        hdr(static_cast<Header*>(mapping)),
        geo(&static_cast<Header*>(mapping)->geo) {}

  template <typename T>
  T* at(std::uint64_t offset) const {
    return reinterpret_cast<T*>(base + offset);
  }

  Participant* participants() const { return at<Participant>(geo->off_participants); }
  Participant& participant(std::uint32_t index) const { return participants()[index]; }

  std::atomic<std::uint64_t>* ring(std::size_t level) const {
    return at<std::atomic<std::uint64_t>>(geo->off_rings) + level * geo->ring_capacity;
  }
  std::atomic<std::int32_t>* rank_tree(std::size_t level) const {
    return at<std::atomic<std::int32_t>>(geo->off_rank) + level * geo->ring_capacity;
  }
  std::atomic<std::uint64_t>* users() const {
    return at<std::atomic<std::uint64_t>>(geo->off_users);
  }
  std::atomic<std::uint64_t>* dedup() const {
    return at<std::atomic<std::uint64_t>>(geo->off_dedup);
  }
  std::atomic<std::uint32_t>* dedup_overflow() const {
    return at<std::atomic<std::uint32_t>>(geo->off_dedup_overflow);
  }
  Slot& slot(std::uint32_t index) const {
    return *at<Slot>(geo->off_slots + static_cast<std::uint64_t>(index) * geo->slot_stride);
  }
  std::byte* slot_data(std::uint32_t index) const {
    return base + geo->off_slots + static_cast<std::uint64_t>(index) * geo->slot_stride +
           kSlotHeaderBytes;
  }
  LevelState& level(std::size_t l) const { return hdr->levels[l]; }
};

}  // namespace shmsched::ipc::detail
