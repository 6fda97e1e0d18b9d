// Slot fields and data bytes that another process may read while the slot is being filled or
// reused (cancel, status, list read slots they do not own). They are atomics: such a reader sees
// old or new values, never undefined behaviour, and detects a mix by reading the slot's control
// word again afterwards (a sequence lock; see snapshot()). Stores release and loads acquire, so a
// reader that saw any new value also sees the new generation the producer stored before it (the
// same as a fence pair, which ThreadSanitizer cannot check; on x86 both are plain moves).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace shmsched::ipc::detail {

template <class T>
T load_field(T& field) {
  return std::atomic_ref<T>(field).load(std::memory_order_acquire);
}

template <class T>
void store_field(T& field, T value) {
  std::atomic_ref<T>(field).store(value, std::memory_order_release);
}

// Writes `first` then `second` contiguously at `data` as 64-bit words (the last one zero padded).
// `data` is 8-byte aligned and has room for the sizes rounded up to 8 (a slot's data area is a
// whole number of cache lines).
inline void store_data(std::byte* data, std::span<const std::byte> first,
                       std::span<const std::byte> second) {
  const std::size_t total = first.size() + second.size();
  auto* words = reinterpret_cast<std::uint64_t*>(data);
  const std::size_t split = first.size();
  for (std::size_t at = 0; at < total; at += 8) {
    std::uint64_t w = 0;
    if (at + 8 <= split) {
      std::memcpy(&w, first.data() + at, 8);
    } else if (at >= split && at + 8 <= total) {
      std::memcpy(&w, second.data() + (at - split), 8);
    } else {  // the word that straddles the two, or the last one
      std::byte word[8] = {};
      for (std::size_t i = 0; i < 8 && at + i < total; ++i) {
        word[i] = at + i < split ? first[at + i] : second[at + i - split];
      }
      std::memcpy(&w, word, 8);
    }
    std::atomic_ref<std::uint64_t>(words[at / 8]).store(w, std::memory_order_release);
  }
}

// Copies `out.size()` bytes from the start of `data`, word by word.
inline void load_data(const std::byte* data, std::span<std::byte> out) {
  auto* words = reinterpret_cast<std::uint64_t*>(const_cast<std::byte*>(data));
  for (std::size_t at = 0; at < out.size(); at += 8) {
    const std::uint64_t w =
        std::atomic_ref<std::uint64_t>(words[at / 8]).load(std::memory_order_acquire);
    std::memcpy(out.data() + at, &w, std::min<std::size_t>(8, out.size() - at));
  }
}

}  // namespace shmsched::ipc::detail
