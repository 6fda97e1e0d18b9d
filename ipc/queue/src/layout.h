// The byte layout of a queue segment. Every structure here lives in shared memory, mapped at a
// different address in each process: no pointers, only offsets and indices; every atomic is
// lock-free (hence address-free); every field has a fixed size. docs/architecture.md draws it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "shmsched/core/priority.h"

namespace shmsched::ipc::detail {

inline constexpr std::uint64_t kMagic = 0x3144484353534d53ULL;  // "SMSSCHD1" little-endian
// 2: participants and the maintenance and consumer words name a process identity (pid + start
//    time) instead of an entry index; counters stay with their entry.
// 3: each level keeps the consumer's announce cursor, which a rebuild translates.
inline constexpr std::uint32_t kLayoutVersion = 3;
inline constexpr std::size_t kCacheLine = 64;
inline constexpr std::size_t kMaxIdBytes = 64;  // execution ids and user ids
inline constexpr std::size_t kLevels = kPriorityLevels;

static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::int64_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(std::atomic<std::int32_t>::is_always_lock_free);

// Immutable after creation; attachers rebuild their view of the segment from it.
struct Geometry {
  std::uint64_t max_queue_size;
  std::uint64_t max_payload_bytes;
  std::uint64_t max_extras_bytes;
  std::uint64_t max_users;
  std::uint64_t max_active;
  std::uint64_t max_participants;
  std::uint64_t slot_count;       // queue + active + one per participant + tombstone headroom
  std::uint64_t slot_stride;      // bytes per slot, a multiple of the cache line
  std::uint64_t ring_capacity;    // cells per priority ring, a power of two
  std::uint64_t ring_shift;       // log2(ring_capacity)
  std::uint64_t user_table_size;  // power of two, at least twice max_users
  std::uint64_t dedup_buckets;    // power of two; 8 entries per bucket
  std::uint64_t off_participants;
  std::uint64_t off_rings;
  std::uint64_t off_rank;
  std::uint64_t off_users;
  std::uint64_t off_dedup;
  std::uint64_t off_dedup_overflow;
  std::uint64_t off_slots;
  std::uint64_t total_size;
};

// Counters kept per participant entry (no sharing on the hot path). Only the entry's current
// occupant writes them, and they are never reset: an entry's counters are the sum over all its
// occupants, and the queue's totals are the sum over all entries.
enum Counter : std::size_t {
  kEnqueued = 0,
  kRejectedQueueFull,
  kRejectedUserLimit,
  kRejectedDuplicate,
  kRejectedPayloadTooLarge,
  kRejectedInvalid,
  kDequeued,
  kCancelled,
  kExpired,
  kReleased,
  kCounterCount,
};

struct alignas(kCacheLine) LevelState {
  alignas(kCacheLine) std::atomic<std::uint64_t> head;  // next position the consumer takes
  alignas(kCacheLine) std::atomic<std::uint64_t> tail;  // next position a producer fills (may lag)
  alignas(kCacheLine) std::atomic<std::int64_t> tombstones;  // cancelled/expired cells in the ring
  // The first position the consumer has not announced yet (ExecutionAccepted). Positions move
  // when a rebuild compacts the ring; the rebuild moves this cursor with them.
  std::atomic<std::uint64_t> announced;
};

struct alignas(kCacheLine) Header {
  std::uint64_t magic;  // written last at creation: a zero magic means "not ready yet"
  std::uint32_t layout_version;
  std::uint32_t header_size;
  Geometry geo;
  std::uint32_t mode;

  // Tunables the owner may change while the segment is in use.
  alignas(kCacheLine) std::atomic<std::uint32_t> per_user_limit;
  std::atomic<std::uint32_t> queue_limit;
  // 1 when the supervisor acknowledges submits that name no durability only once on disk: a
  // client library then sends such a submit through the supervisor. (Added in the padding of
  // this cache line: no offset moved; a segment of an older supervisor reads 0, memory.)
  std::atomic<std::uint32_t> default_durability_disk;
  // 1 while the supervisor marks each entry's slot once its accepted record is on disk
  // (Slot::durable_mark): a producer that asked for durability disk then waits for the mark
  // instead of going through the supervisor. 0: no journal, a failed one, no supervisor, or an
  // older one (same padding, same reasoning as above).
  std::atomic<std::uint32_t> durable_marks;

  // Maintenance (recovery and compaction), see docs/architecture.md: 0 when free, else the
  // identity of the process holding it, with kMaintenanceCommitted once the holder has checked
  // that it may maintain (until then the claim is tentative and may be cancelled), and
  // kMaintenanceDirty when a rebuild was cut short and must be redone before anyone operates
  // (alone, it means exactly that with nobody holding the word). maintenance_seq is the futex
  // word waiters sleep on.
  alignas(kCacheLine) std::atomic<std::uint64_t> maintenance;
  std::atomic<std::uint32_t> maintenance_seq;
  std::atomic<std::uint32_t> maintenance_requested;  // a producer asks the consumer to maintain
  std::atomic<std::uint64_t> maintenance_runs;
  std::atomic<std::uint64_t> maintenance_deferred;  // attempts given up: a live process was busy
  std::atomic<std::uint64_t> reclaimed_slots;
  std::atomic<std::uint64_t> reaped_participants;

  // Consumer wake-up: the consumer sets consumer_sleeping before it sleeps on wake_seq; a producer
  // bumps wake_seq and calls futex_wake only when it sees consumer_sleeping set.
  alignas(kCacheLine) std::atomic<std::uint32_t> wake_seq;
  // Producers waiting for durable marks: one sleeps on durable_seq after counting itself in
  // durable_waiters; the supervisor bumps durable_seq after each batch of marks and calls
  // futex_wake only when someone waits. (In this cache line's padding: no offset moved.)
  std::atomic<std::uint32_t> durable_seq;
  std::atomic<std::uint32_t> durable_waiters;
  alignas(kCacheLine) std::atomic<std::uint32_t> consumer_sleeping;
  std::atomic<std::uint64_t> consumer;  // identity of the consumer's process, or 0

  alignas(kCacheLine) std::atomic<std::uint64_t> user_entries;  // claimed user-table entries
  std::atomic<std::uint64_t> inconsistencies;  // impossible states met and repaired (should be 0)
  alignas(kCacheLine) std::atomic<std::int64_t> queued;     // admitted and not yet dequeued
  alignas(kCacheLine) std::atomic<std::int64_t> active;     // dequeued and not yet released
  alignas(kCacheLine) std::atomic<std::uint64_t> free_top;  // Treiber stack: tag << 32 | index+1
  // Slots at or above this index have never been used: they are handed out before they are ever
  // touched, so a large segment costs memory only for the slots it really used.
  alignas(kCacheLine) std::atomic<std::uint64_t> fresh_next;
  LevelState levels[kLevels];
};

// The fields added in padding must stay there: same cache line as their neighbours.
static_assert(offsetof(Header, durable_marks) / kCacheLine ==
              offsetof(Header, per_user_limit) / kCacheLine);
static_assert(offsetof(Header, durable_waiters) / kCacheLine ==
              offsetof(Header, wake_seq) / kCacheLine);

enum class ParticipantRole : std::uint32_t { kProducer = 1, kConsumer = 2 };

struct alignas(kCacheLine) Participant {
  // 0 = free; else the occupant's process identity (see identity.h). Claimed by CAS 0 -> ident,
  // freed by its owner, or by a reaper with one CAS from the identity it found dead.
  std::atomic<std::uint64_t> ident;
  std::atomic<std::uint32_t> busy;  // 1 while inside an operation (see maintenance)
  std::atomic<std::uint32_t> role;
  std::atomic<std::uint64_t> counters[kCounterCount];
};

inline constexpr std::uint64_t kMaintenanceCommitted = 1ULL << 63;
inline constexpr std::uint64_t kMaintenanceDirty = 1ULL << 62;

// Slot states, the low byte of Slot::ctrl.
enum class SlotState : std::uint8_t {
  kFree = 0,
  kPending = 1,     // a producer is filling it; not visible in any ring yet
  kQueued = 2,      // committed: its index is in a priority ring
  kActive = 3,      // dequeued by the consumer, not yet released
  kCancelled = 4,   // cancelled while queued; a tombstone until the consumer passes its cell
  kExpired = 5,     // expired by the consumer's sweep (transient: it is at the head)
  kCancelling = 6,  // cancelled while queued; the canceller is still giving its counts back
  kOrphaned = 7,    // the consumer passed a kCancelling cell; the canceller frees the slot
};

// ctrl = generation << 32 | owner participant << 8 | state. The generation changes every time
// the slot leaves the free stack, so a (index, generation) reference detects reuse.
struct alignas(kCacheLine) Slot {
  std::atomic<std::uint64_t> ctrl;
  std::atomic<std::uint64_t> next_free;  // index+1 of the next free slot (Treiber link)
  std::atomic<std::uint64_t> id_hash;
  std::atomic<std::uint64_t> ring_pos;  // position in its priority ring
  std::int64_t enqueued_at_ns;
  std::uint32_t user_entry;  // index into the user table
  std::uint32_t payload_len;
  std::uint32_t extras_len;
  std::uint32_t attempt;
  std::uint32_t timeout_seconds;
  std::uint8_t priority;
  std::uint8_t id_len;
  std::uint8_t user_len;
  std::uint8_t owner_len;
  // Identity bytes are read by other processes while a slot may be reused; they are accessed as
  // 64-bit relaxed atomics (see slot_text.h) so a torn read is detected, never undefined.
  std::uint64_t id_words[kMaxIdBytes / 8];
  std::uint64_t user_words[kMaxIdBytes / 8];
  // Reserved for the worker that owns a dispatched execution (later layout versions use it).
  std::uint64_t owner_words[kMaxIdBytes / 8];
  // [0]: the owner's annotation (Consumer::annotate); [1]: the claim word (claim_word.h).
  std::uint64_t reserved[2];
  // durable_mark_of(generation) once the supervisor has this occupant's accepted record on
  // disk (Header::durable_marks). Taken from what was reserved[2]: a segment made by an older
  // supervisor reads 0, never a mark, and no other field moved.
  std::atomic<std::uint64_t> durable_mark;
  std::uint64_t spare;
  // payload bytes, then extras bytes, follow the header
};
static_assert(sizeof(Slot) % kCacheLine == 0);
// The durable mark took the third reserved word; the two before it stay where they were.
static_assert(offsetof(Slot, durable_mark) == offsetof(Slot, reserved) + 2 * sizeof(std::uint64_t));

inline constexpr std::uint64_t kSlotHeaderBytes = sizeof(Slot);

constexpr std::uint64_t ctrl_make(std::uint32_t gen, std::uint32_t owner, SlotState st) {
  return (static_cast<std::uint64_t>(gen) << 32) |
         (static_cast<std::uint64_t>(owner & 0xffffff) << 8) | static_cast<std::uint64_t>(st);
}
constexpr std::uint64_t durable_mark_of(std::uint32_t gen) {
  return (1ULL << 32) | gen;  // never 0, whatever the generation
}
constexpr SlotState ctrl_state(std::uint64_t c) {
  return static_cast<SlotState>(c & 0xff);
}
constexpr std::uint32_t ctrl_gen(std::uint64_t c) {
  return static_cast<std::uint32_t>(c >> 32);
}
constexpr std::uint32_t ctrl_owner(std::uint64_t c) {
  return static_cast<std::uint32_t>((c >> 8) & 0xffffff);
}

}  // namespace shmsched::ipc::detail
