// A 64-bit hash that is identical in every process and every build: shared-memory tables are
// probed by producers compiled separately, so std::hash (implementation-defined) will not do.
#pragma once

#include <cstdint>
#include <string_view>

namespace shmsched {

// FNV-1a over the bytes, followed by the murmur3 finaliser so that every output bit depends on
// every input bit (table indices and tags are taken from different bit ranges).
constexpr std::uint64_t stable_hash(std::string_view bytes) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : bytes) {
    h ^= static_cast<std::uint8_t>(c);
    h *= 0x100000001b3ULL;
  }
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

}  // namespace shmsched
