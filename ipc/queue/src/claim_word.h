// The claim word of a taken execution: Slot::reserved[1], one 64-bit atomic.
//
//   generation (low 24 bits of the slot's) << 40 | attempt (low 8 bits) << 32 | owner worker
//
// The supervisor opens claims for an attempt (owner 0); a claim is one compare-and-swap from
// owner 0 to the claimant's number, so exactly one claimant wins however many race, in whatever
// processes, and a claimant killed at any instruction either owns it or does not. The generation
// ties the word to one use of the slot (a claimant that read a slot since reused cannot claim the
// new execution); the attempt to one attempt (a claim for an attempt that failed meanwhile does
// not take the next one).
#pragma once

#include <atomic>
#include <cstdint>

#include "layout.h"

namespace shmsched::ipc::detail {

inline std::atomic_ref<std::uint64_t> claim_word(Slot& s) {
  return std::atomic_ref<std::uint64_t>(s.reserved[1]);
}

// 1 .. 255, never 0 (a word with attempt bits 0 is not open: a fresh slot's word is 0).
constexpr std::uint64_t attempt_bits(std::uint32_t attempt) {
  return attempt % 255 + 1;
}
constexpr std::uint64_t claim_open(std::uint32_t generation, std::uint32_t attempt) {
  return (static_cast<std::uint64_t>(generation & 0xffffff) << 40) | (attempt_bits(attempt) << 32);
}
constexpr bool claim_is_for(std::uint64_t w, std::uint32_t generation, std::uint32_t attempt) {
  return (w & ~0xffffffffULL) == claim_open(generation, attempt);
}
constexpr bool claim_is_open_for(std::uint64_t w, std::uint32_t generation) {
  return (w >> 40) == (generation & 0xffffff) && ((w >> 32) & 0xff) != 0;
}
constexpr std::uint32_t claim_owner(std::uint64_t w) {
  return static_cast<std::uint32_t>(w);
}

}  // namespace shmsched::ipc::detail
