// Capabilities and metadata of an execution, stored in its slot as a msgpack map
// {"c": [str, ...], "m": {str: str, ...}}.
#include <msgpack.hpp>

#include "shmsched/ipc/queue.h"

namespace shmsched::ipc {

std::vector<std::byte> encode_extras(const std::vector<std::string>& capabilities,
                                     const Metadata& metadata) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_map(2);
  pk.pack(std::string_view("c"));
  pk.pack_array(static_cast<std::uint32_t>(capabilities.size()));
  for (const auto& c : capabilities) pk.pack(c);
  pk.pack(std::string_view("m"));
  pk.pack_map(static_cast<std::uint32_t>(metadata.size()));
  for (const auto& [k, val] : metadata) {
    pk.pack(k);
    pk.pack(val);
  }
  const auto* p = reinterpret_cast<const std::byte*>(buf.data());
  return std::vector<std::byte>(p, p + buf.size());
}

bool decode_extras(std::span<const std::byte> bytes, std::vector<std::string>& capabilities,
                   Metadata& metadata) {
  capabilities.clear();
  metadata.clear();
  try {
    const msgpack::object_handle oh =
        msgpack::unpack(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    const msgpack::object& root = oh.get();
    if (root.type != msgpack::type::MAP) return false;
    for (const auto& kv : root.via.map) {
      if (kv.key.type != msgpack::type::STR) return false;
      const std::string_view key(kv.key.via.str.ptr, kv.key.via.str.size);
      if (key == "c" && kv.val.type == msgpack::type::ARRAY) {
        for (const auto& item : kv.val.via.array) {
          if (item.type != msgpack::type::STR) return false;
          capabilities.emplace_back(item.via.str.ptr, item.via.str.size);
        }
      } else if (key == "m" && kv.val.type == msgpack::type::MAP) {
        for (const auto& m : kv.val.via.map) {
          if (m.key.type != msgpack::type::STR || m.val.type != msgpack::type::STR) return false;
          metadata.emplace_back(std::string(m.key.via.str.ptr, m.key.via.str.size),
                                std::string(m.val.via.str.ptr, m.val.via.str.size));
        }
      }
    }
    return true;
  } catch (const msgpack::unpack_error&) {
    return false;
  } catch (const std::bad_alloc&) {
    return false;
  }
}

}  // namespace shmsched::ipc
