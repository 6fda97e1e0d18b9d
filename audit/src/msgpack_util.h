// The bits of msgpack-cxx that the record and header codecs share: a packer that appends to a
// byte vector, and a bounded unpack (a damaged body must not claim a huge allocation).
#pragma once

#include <cstddef>
#include <msgpack.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace shmsched::audit::detail {

struct ByteSink {
  std::vector<std::byte>& out;
  void write(const char* p, std::size_t n) {
    const auto* b = reinterpret_cast<const std::byte*>(p);
    out.insert(out.end(), b, b + n);  // not resize + memcpy: no zero fill per token
  }
};

// The object of `body` (which must be exactly one msgpack map), or nullopt.
inline std::optional<msgpack::object_handle> unpack_map(std::span<const std::byte> body) {
  try {
    const msgpack::unpack_limit limit(/*array=*/64, /*map=*/4096, /*str=*/1 << 20,
                                      /*bin=*/1 << 20, /*ext=*/0, /*depth=*/4);
    std::size_t offset = 0;
    msgpack::object_handle oh = msgpack::unpack(reinterpret_cast<const char*>(body.data()),
                                                body.size(), offset, nullptr, nullptr, limit);
    if (offset != body.size() || oh.get().type != msgpack::type::MAP) return std::nullopt;
    return oh;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

inline std::optional<std::string_view> as_str(const msgpack::object& o) {
  if (o.type != msgpack::type::STR) return std::nullopt;
  return std::string_view(o.via.str.ptr, o.via.str.size);
}

inline void pack_str(msgpack::packer<ByteSink>& pk, std::string_view s) {
  pk.pack_str(static_cast<std::uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<std::uint32_t>(s.size()));
}

}  // namespace shmsched::audit::detail
