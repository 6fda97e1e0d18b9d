// libFuzzer target for the audit log's record decoder: `shmschedctl audit` and `audit verify`
// read files anyone with write access may have damaged or forged. Any input must decode to a
// record or to nothing; never a crash, a hang or a sanitizer report. A decoded record encodes
// again and decodes to itself.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "shmsched/audit/record.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace shmsched::audit;
  const auto record =
      decode_record(std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size));
  if (!record) return 0;
  std::vector<std::byte> again;
  encode_record(*record, again);
  const auto back = decode_record(again);
  if (!back || !(*back == *record)) std::abort();
  return 0;
}
