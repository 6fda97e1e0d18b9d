// Short strings (execution and user ids) stored in a slot as 64-bit atomic words: another process
// may read them while the slot is being reused, and must then see old or new words (which the
// caller detects by re-reading the slot's generation), never undefined behaviour. Release stores
// and acquire loads, for the reason given in slot_fields.h.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "layout.h"

namespace shmsched::ipc::detail {

inline constexpr std::size_t kIdWords = kMaxIdBytes / 8;

inline void store_text(std::uint64_t (&words)[kIdWords], std::string_view text) {
  for (std::size_t w = 0; w < kIdWords; ++w) {
    std::uint64_t v = 0;
    const std::size_t at = w * 8;
    if (at < text.size())
      std::memcpy(&v, text.data() + at, std::min<std::size_t>(8, text.size() - at));
    std::atomic_ref<std::uint64_t>(words[w]).store(v, std::memory_order_release);
  }
}

inline bool text_equals(std::uint64_t (&words)[kIdWords], std::size_t len, std::string_view text) {
  if (len != text.size()) return false;
  for (std::size_t w = 0; w * 8 < len; ++w) {
    std::uint64_t expect = 0;
    std::memcpy(&expect, text.data() + w * 8, std::min<std::size_t>(8, len - w * 8));
    if (std::atomic_ref<std::uint64_t>(words[w]).load(std::memory_order_acquire) != expect) {
      return false;
    }
  }
  return true;
}

inline std::string load_text(std::uint64_t (&words)[kIdWords], std::size_t len) {
  std::string out(std::min(len, kMaxIdBytes), '\0');
  for (std::size_t w = 0; w * 8 < out.size(); ++w) {
    const std::uint64_t v =
        std::atomic_ref<std::uint64_t>(words[w]).load(std::memory_order_acquire);
    std::memcpy(out.data() + w * 8, &v, std::min<std::size_t>(8, out.size() - w * 8));
  }
  return out;
}

}  // namespace shmsched::ipc::detail
