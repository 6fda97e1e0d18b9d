#include "segment_view.h"

#include <algorithm>
#include <bit>

namespace shmsched::ipc::detail {
namespace {

std::uint64_t round_up(std::uint64_t v, std::uint64_t to) {
  return (v + to - 1) / to * to;
}

}  // namespace

Geometry compute_geometry(const SegmentConfig& cfg) {
  Geometry g{};
  g.max_queue_size = cfg.max_queue_size;
  g.max_payload_bytes = cfg.max_payload_bytes;
  g.max_extras_bytes = cfg.max_extras_bytes;
  g.max_users = cfg.max_users;
  g.max_active = cfg.max_active;
  g.max_participants = cfg.max_participants;
  // Every slot is queued, active, being filled by one participant, or a cancelled tombstone
  // waiting for the consumer to pass it. Tombstones get a quarter of the queue as headroom;
  // when they use it all, a compaction (see maintenance.cpp) gives their slots back.
  const std::uint64_t headroom = std::max<std::uint64_t>(64, cfg.max_queue_size / 4);
  g.slot_count = cfg.max_queue_size + cfg.max_active + cfg.max_participants + headroom;
  g.slot_stride =
      round_up(kSlotHeaderBytes + cfg.max_payload_bytes + cfg.max_extras_bytes, kCacheLine);
  // A ring cell always refers to a distinct non-free slot, so a ring of slot_count cells can
  // never be full.
  g.ring_capacity = std::bit_ceil(g.slot_count);
  g.ring_shift = static_cast<std::uint64_t>(std::countr_zero(g.ring_capacity));
  g.user_table_size = std::bit_ceil(2 * cfg.max_users);
  // 8 entries per bucket, at most a quarter full.
  g.dedup_buckets = std::max<std::uint64_t>(16, std::bit_ceil((g.slot_count + 1) / 2));

  std::uint64_t off = round_up(sizeof(Header), 4096);
  g.off_participants = off;
  off = round_up(off + cfg.max_participants * sizeof(Participant), 4096);
  g.off_rings = off;
  off = round_up(off + kLevels * g.ring_capacity * sizeof(std::uint64_t), 4096);
  g.off_rank = off;
  off = round_up(off + kLevels * g.ring_capacity * sizeof(std::int32_t), 4096);
  g.off_users = off;
  off = round_up(off + g.user_table_size * sizeof(std::uint64_t), 4096);
  g.off_dedup = off;
  off = round_up(off + g.dedup_buckets * 8 * sizeof(std::uint64_t), 4096);
  g.off_dedup_overflow = off;
  off = round_up(off + g.dedup_buckets * sizeof(std::uint32_t), 4096);
  g.off_slots = off;
  off = round_up(off + g.slot_count * g.slot_stride, 4096);
  g.total_size = off;
  return g;
}

}  // namespace shmsched::ipc::detail
