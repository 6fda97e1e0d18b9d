// The byte layout of format.h: file headers, records, and the scan that tells a torn tail from
// damage (codec.h).
#include "shmsched/journal/codec.h"

#include <charconv>
#include <cstdio>
#include <cstring>

#include "le.h"
#include "shmsched/journal/crc32c.h"

namespace shmsched::journal {

namespace {

constexpr std::string_view kNamePrefix = "journal-";
constexpr std::string_view kNameSuffix = ".wal";
constexpr std::size_t kNameDigits = 16;

std::uint32_t header_crc(std::span<const std::byte> header) {
  // Bytes 0..31 with the CRC field (12..15) read as zeros.
  std::uint32_t crc = crc32c(header.first(12));
  const std::byte zeros[4] = {};
  crc = crc32c(zeros, crc);
  return crc32c(header.subspan(16, kSegmentHeaderBytes - 16), crc);
}

bool known_type(std::uint8_t type) {
  return (type >= 1 && type <= kMaxUserType) || type == kTypeSnapshotBegin ||
         type == kTypeSnapshotEnd;
}

// The record at `off` if it is valid and its LSN is in [min_lsn, max_lsn]; otherwise nullopt
// and, when `why` is given, the reason.
std::optional<Record> decode_record_at(std::span<const std::byte> bytes, std::size_t off,
                                       Lsn min_lsn, Lsn max_lsn, std::string* why) {
  const auto fail = [&](std::string reason) -> std::optional<Record> {
    if (why) *why = std::move(reason);
    return std::nullopt;
  };
  const std::size_t left = bytes.size() - off;
  if (left < kRecordHeaderBytes) {
    return fail("an incomplete record header (" + std::to_string(left) + " of " +
                std::to_string(kRecordHeaderBytes) + " bytes)");
  }
  const std::byte* h = bytes.data() + off;
  const std::uint32_t length = load_u32(h + 4);
  if (length > kMaxPayloadBytes) {
    return fail("a record length of " + std::to_string(length) + " bytes, above the maximum");
  }
  if (length > left - kRecordHeaderBytes) {
    return fail("a record of " + std::to_string(length) + " payload bytes that runs past the end");
  }
  Record r;
  r.lsn = load_u64(h + 8);
  r.type = static_cast<std::uint8_t>(h[16]);
  r.flags = static_cast<std::uint8_t>(h[17]);
  const std::uint16_t reserved = load_u16(h + 18);
  const bool lsn_ok = r.lsn >= min_lsn && r.lsn <= max_lsn;
  const bool shape_ok = known_type(r.type) && (r.flags & ~kFlagSnapshot) == 0 && reserved == 0;
  // The resynchronising scan calls this at every offset without a reason: skip the CRC there
  // when the cheap checks already fail.
  if (why == nullptr && (!lsn_ok || !shape_ok)) return std::nullopt;
  const std::uint32_t stored = load_u32(h);
  const std::uint32_t actual = crc32c(bytes.subspan(off + 4, kRecordHeaderBytes - 4 + length));
  if (stored != actual) return fail("a CRC32C mismatch");
  if (!lsn_ok) {
    return fail("LSN " + std::to_string(r.lsn) + " where " + std::to_string(min_lsn) +
                " was expected");
  }
  if (!shape_ok) {
    return fail("an unknown record type or flags (type " + std::to_string(r.type) + ", flags " +
                std::to_string(r.flags) + ")");
  }
  r.payload = bytes.subspan(off + kRecordHeaderBytes, length);
  return r;
}

void put_record_header(Lsn lsn, std::uint8_t type, std::uint8_t flags, std::size_t length,
                       std::byte* h) {
  store_u32(h, 0);
  store_u32(h + 4, static_cast<std::uint32_t>(length));
  store_u64(h + 8, lsn);
  h[16] = static_cast<std::byte>(type);
  h[17] = static_cast<std::byte>(flags);
  store_u16(h + 18, 0);
}

}  // namespace

void encode_segment_header(const SegmentHeader& header, std::vector<std::byte>& out) {
  const std::size_t at = out.size();
  out.resize(at + kSegmentHeaderBytes);
  std::byte* h = out.data() + at;
  std::memcpy(h, kSegmentMagic.data(), 8);
  store_u32(h + 8, kFormatVersion);
  store_u32(h + 12, 0);
  store_u64(h + 16, header.seq);
  store_u64(h + 24, header.first_lsn);
  store_u32(h + 12, header_crc({h, kSegmentHeaderBytes}));
}

std::optional<SegmentHeader> decode_segment_header(std::span<const std::byte> bytes) {
  if (bytes.size() < kSegmentHeaderBytes) return std::nullopt;
  const std::byte* h = bytes.data();
  if (std::memcmp(h, kSegmentMagic.data(), 8) != 0) return std::nullopt;
  if (load_u32(h + 8) != kFormatVersion) return std::nullopt;
  if (load_u32(h + 12) != header_crc(bytes.first(kSegmentHeaderBytes))) return std::nullopt;
  SegmentHeader out;
  out.seq = load_u64(h + 16);
  out.first_lsn = load_u64(h + 24);
  if (out.first_lsn == 0 || out.first_lsn > kMaxLsn) return std::nullopt;
  return out;
}

void encode_unsealed_record(Lsn lsn, std::uint8_t type, std::uint8_t flags,
                            std::span<const std::byte> payload, std::vector<std::byte>& out) {
  const std::size_t at = out.size();
  out.resize(at + kRecordHeaderBytes + payload.size());
  put_record_header(lsn, type, flags, payload.size(), out.data() + at);
  if (!payload.empty()) {
    std::memcpy(out.data() + at + kRecordHeaderBytes, payload.data(), payload.size());
  }
}

void seal_record(std::span<std::byte> record) {
  store_u32(record.data(), crc32c(record.subspan(4)));
}

void encode_record(Lsn lsn, std::uint8_t type, std::uint8_t flags,
                   std::span<const std::byte> payload, std::vector<std::byte>& out) {
  const std::size_t at = out.size();
  encode_unsealed_record(lsn, type, flags, payload, out);
  seal_record(std::span<std::byte>(out).subspan(at));
}

SegmentScan scan_segment(std::span<const std::byte> bytes) {
  SegmentScan scan;
  scan.size = bytes.size();
  scan.header = decode_segment_header(bytes);
  if (!scan.header) {
    scan.tail = SegmentScan::Tail::kCorrupt;
    scan.reason = bytes.size() < kSegmentHeaderBytes
                      ? "a file header of " + std::to_string(bytes.size()) + " of " +
                            std::to_string(kSegmentHeaderBytes) + " bytes"
                      : "a bad file header (magic, version, first LSN or CRC32C)";
    return scan;
  }
  std::size_t off = kSegmentHeaderBytes;
  Lsn expected = scan.header->first_lsn;
  while (off < bytes.size()) {
    std::string why;
    const auto record = decode_record_at(bytes, off, expected, expected, &why);
    if (!record) {
      scan.valid_end = off;
      scan.reason = std::move(why);
      // Any valid record after this point means the bad bytes are not the end of a write that
      // was cut short. LSNs only grow, and a segment cannot hold more records than bytes.
      const Lsn max_lsn = expected + bytes.size();  // no overflow: expected <= 2 * kMaxLsn
      for (std::size_t o = off + 1; o + kRecordHeaderBytes <= bytes.size(); ++o) {
        if (const auto later = decode_record_at(bytes, o, expected, max_lsn, nullptr)) {
          scan.tail = SegmentScan::Tail::kCorrupt;
          scan.reason += ", followed by a valid record (LSN " + std::to_string(later->lsn) +
                         ") at offset " + std::to_string(o);
          return scan;
        }
      }
      scan.tail = SegmentScan::Tail::kTorn;
      return scan;
    }
    scan.records.push_back(*record);
    off += kRecordHeaderBytes + record->payload.size();
    ++expected;
  }
  scan.valid_end = off;
  return scan;
}

std::string segment_file_name(std::uint64_t seq) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "journal-%016llx.wal", static_cast<unsigned long long>(seq));
  return buf;
}

std::optional<std::uint64_t> parse_segment_file_name(std::string_view name) {
  if (name.size() != kNamePrefix.size() + kNameDigits + kNameSuffix.size() ||
      !name.starts_with(kNamePrefix) || !name.ends_with(kNameSuffix)) {
    return std::nullopt;
  }
  const std::string_view digits = name.substr(kNamePrefix.size(), kNameDigits);
  for (const char c : digits) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return std::nullopt;
  }
  std::uint64_t seq = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), seq, 16);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return seq;
}

}  // namespace shmsched::journal
