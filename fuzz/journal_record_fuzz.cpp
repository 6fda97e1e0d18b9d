// libFuzzer target for the journal's segment and record decoder: recovery reads files that a
// crash, a failing disk or a person may have damaged. Any input must scan to records that pass
// their checks, or to a torn tail or damage; never a crash, a hang or a sanitizer report. A
// record that was yielded encodes back to the very bytes it was read from.
//
// An input whose first byte is odd gets a valid file header in front of the rest, so that the
// fuzzer spends its time in the records rather than in the header's CRC.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "shmsched/journal/codec.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace shmsched::journal;
  std::vector<std::byte> bytes;
  if (size > 0 && (data[0] & 1u)) {
    encode_segment_header({1, Lsn{1} + (data[0] >> 1u)}, bytes);
    bytes.insert(bytes.end(), reinterpret_cast<const std::byte*>(data) + 1,
                 reinterpret_cast<const std::byte*>(data) + size);
  } else {
    bytes.assign(reinterpret_cast<const std::byte*>(data),
                 reinterpret_cast<const std::byte*>(data) + size);
  }
  const SegmentScan scan = scan_segment(bytes);
  if (scan.valid_end > scan.size || scan.size != bytes.size()) std::abort();
  if (!scan.header && !scan.records.empty()) std::abort();
  if (scan.tail == SegmentScan::Tail::kClean && scan.valid_end != scan.size) std::abort();
  std::size_t off = kSegmentHeaderBytes;
  Lsn expected = scan.header ? scan.header->first_lsn : 0;
  for (const Record& r : scan.records) {
    if (r.lsn != expected++) std::abort();
    std::vector<std::byte> again;
    encode_record(r.lsn, r.type, r.flags, r.payload, again);
    if (off + again.size() > bytes.size() ||
        std::memcmp(again.data(), bytes.data() + off, again.size()) != 0) {
      std::abort();
    }
    off += again.size();
  }
  if (scan.header && off != scan.valid_end) std::abort();
  return 0;
}
