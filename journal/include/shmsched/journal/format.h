// The journal's on-disk format (docs/journal.md has the full description). Everything is
// little-endian with a fixed layout, so a file can be read without the library.
//
// Segment file "journal-<seq as 16 lower-case hex digits>.wal":
//
//   file header, 32 bytes:
//     0  u8[8] magic "SHMJRNL1"
//     8  u32   version (1)
//    12  u32   CRC32C of bytes 0..31 with this field taken as zero
//    16  u64   segment sequence number (equals the one in the name)
//    24  u64   LSN of the first record the segment holds (or will hold)
//   then records, back to back:
//     0  u32   CRC32C of bytes 4..19 of this header followed by the payload
//     4  u32   payload length
//     8  u64   LSN (1, 2, 3, ... across segments, no gaps)
//    16  u8    type (1..kMaxUserType for the owner; above for the journal itself)
//    17  u8    flags (kFlagSnapshot, other bits zero)
//    18  u16   reserved, zero
//    20  payload bytes (opaque to the journal)
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace shmsched::journal {

// Log sequence number: the position of a record in the whole journal, from 1. 0 means "none".
using Lsn = std::uint64_t;
// A file header with a first LSN above this is damage (and LSN arithmetic cannot overflow).
inline constexpr Lsn kMaxLsn = Lsn{1} << 62;

inline constexpr std::string_view kSegmentMagic = "SHMJRNL1";
inline constexpr std::uint32_t kFormatVersion = 1;
inline constexpr std::size_t kSegmentHeaderBytes = 32;
inline constexpr std::size_t kRecordHeaderBytes = 20;

// A length above this is damage, not a record: a flipped length bit cannot make a reader
// allocate or skip gigabytes. The writer's own limit (max_record_bytes) is at most this.
inline constexpr std::uint32_t kMaxPayloadBytes = 64u << 20;

// Types 1..kMaxUserType belong to the owner. 0 is never a record (so zeroed blocks are not
// records); the types above kMaxUserType frame snapshots.
inline constexpr std::uint8_t kMaxUserType = 0xEF;
inline constexpr std::uint8_t kTypeSnapshotBegin = 0xF0;  // payload: u64 number of records
inline constexpr std::uint8_t kTypeSnapshotEnd = 0xF1;    // payload: u64 LSN of the begin record

// flags: the record belongs to a snapshot (it restates live state; it is not a new event).
inline constexpr std::uint8_t kFlagSnapshot = 0x01;

// One record as read back: a view into the reader's buffer, valid during the visit only.
struct Record {
  Lsn lsn = 0;
  std::uint8_t type = 0;
  std::uint8_t flags = 0;
  std::span<const std::byte> payload;

  bool in_snapshot() const { return (flags & kFlagSnapshot) != 0; }
};

}  // namespace shmsched::journal
