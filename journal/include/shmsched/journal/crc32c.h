// CRC32C (Castagnoli, iSCSI / RFC 3720 polynomial 0x1EDC6F41, reflected), the checksum of every
// record and segment header. Debian 12 packages no C/C++ CRC32C library (only a Python one), so
// the journal carries its own: the SSE4.2 crc32 instruction when the CPU has it, a
// slicing-by-8 table otherwise. crc32c("123456789") == 0xE3069283.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace shmsched::journal {

// Extends `crc` (the value returned for the bytes before) over `data`; start with 0.
std::uint32_t crc32c(std::span<const std::byte> data, std::uint32_t crc = 0);

// The two implementations, for the tests (crc32c() picks one at run time).
std::uint32_t crc32c_portable(std::span<const std::byte> data, std::uint32_t crc = 0);
std::uint32_t crc32c_hardware(std::span<const std::byte> data, std::uint32_t crc = 0);
bool crc32c_hardware_available();

}  // namespace shmsched::journal
