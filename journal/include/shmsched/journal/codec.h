// Encoding and decoding of the byte layout in format.h, on memory only (no files): the writer
// and the reader use it, and so do tools and the fuzzer. Decoding never trusts its input: any
// bytes give a result, and a record is returned only if its CRC32C, length and LSN check.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "shmsched/journal/format.h"

namespace shmsched::journal {

struct SegmentHeader {
  std::uint64_t seq = 0;
  Lsn first_lsn = 0;
};

// Appends the 32-byte file header to `out`.
void encode_segment_header(const SegmentHeader& header, std::vector<std::byte>& out);
// The header at the start of `bytes`, or nullopt (too short, wrong magic or version, bad CRC).
std::optional<SegmentHeader> decode_segment_header(std::span<const std::byte> bytes);

// Appends one whole record (header with its CRC, then the payload) to `out`.
void encode_record(Lsn lsn, std::uint8_t type, std::uint8_t flags,
                   std::span<const std::byte> payload, std::vector<std::byte>& out);
// Appends a record header whose CRC is left zero, and the payload: seal_record() fills the CRC
// later (the writer thread does, so appenders do not compute it under the queue's lock).
void encode_unsealed_record(Lsn lsn, std::uint8_t type, std::uint8_t flags,
                            std::span<const std::byte> payload, std::vector<std::byte>& out);
// Computes and stores the CRC of the whole record at the start of `record`.
void seal_record(std::span<std::byte> record);

// What a segment's bytes hold.
struct SegmentScan {
  enum class Tail {
    kClean,    // every byte after the header belongs to a valid record
    kTorn,     // invalid bytes from valid_end on, and no valid record after them: what a crash
               // during a write leaves (a cut, a partly written or zero-filled last write)
    kCorrupt,  // an invalid record with a valid one after it, or a bad file header: damage
  };
  std::optional<SegmentHeader> header;
  std::vector<Record> records;  // views into the scanned bytes, in order
  std::uint64_t size = 0;       // bytes scanned
  std::uint64_t valid_end = 0;  // offset after the header and the last valid record
  Tail tail = Tail::kClean;
  std::string reason;  // when not kClean: what is wrong at valid_end (for messages)
};

// Decodes a whole segment file: its records must carry consecutive LSNs from the header's
// first_lsn. After an invalid record it looks at every later offset for a valid record (any
// LSN above the last valid one) to tell a torn tail from damage.
SegmentScan scan_segment(std::span<const std::byte> bytes);

// "journal-<16 lower-case hex digits>.wal", and back (nullopt for any other name).
std::string segment_file_name(std::uint64_t seq);
std::optional<std::uint64_t> parse_segment_file_name(std::string_view name);

}  // namespace shmsched::journal
