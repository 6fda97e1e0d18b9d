// The msgpack body of an audit record (see record.h for the keys).
#include <cstdint>

#include "msgpack_util.h"
#include "shmsched/audit/format.h"
#include "shmsched/audit/record.h"

namespace shmsched::audit {

using detail::as_str;
using detail::ByteSink;
using detail::pack_str;

std::size_t encoded_size_bound(const AuditRecord& r) {
  // Fixed keys and headers stay under 128 bytes; a str header is at most 5 bytes.
  std::size_t n =
      128 + r.type.size() + r.execution_id.size() + r.worker_id.size() + r.user_id.size();
  for (const auto& [k, v] : r.detail) n += 10 + k.size() + v.size();
  return n;
}

void encode_record(const AuditRecord& r, std::vector<std::byte>& out) {
  ByteSink sink{out};
  msgpack::packer<ByteSink> pk(sink);
  const std::uint32_t fields =
      3 + !r.execution_id.empty() + !r.worker_id.empty() + !r.user_id.empty() + !r.detail.empty();
  pk.pack_map(fields);
  pack_str(pk, "seq");
  pk.pack_uint64(r.seq);
  pack_str(pk, "time_ns");
  pk.pack_int64(r.time_ns);
  pack_str(pk, "type");
  pack_str(pk, r.type);
  auto optional = [&](std::string_view key, const std::string& value) {
    if (value.empty()) return;
    pack_str(pk, key);
    pack_str(pk, value);
  };
  optional("execution_id", r.execution_id);
  optional("worker_id", r.worker_id);
  optional("user_id", r.user_id);
  if (!r.detail.empty()) {
    pack_str(pk, "detail");
    pk.pack_map(static_cast<std::uint32_t>(r.detail.size()));
    for (const auto& [k, v] : r.detail) {
      pack_str(pk, k);
      pack_str(pk, v);
    }
  }
}

std::optional<AuditRecord> decode_record(std::span<const std::byte> body) {
  const auto oh = detail::unpack_map(body);
  if (!oh) return std::nullopt;
  AuditRecord r;
  bool has_seq = false, has_type = false;
  for (const auto& kv : oh->get().via.map) {
    const auto key = as_str(kv.key);
    if (!key) return std::nullopt;
    const msgpack::object& v = kv.val;
    if (*key == "seq") {
      if (v.type != msgpack::type::POSITIVE_INTEGER) return std::nullopt;
      r.seq = v.via.u64;
      has_seq = true;
    } else if (*key == "time_ns") {
      if (v.type == msgpack::type::POSITIVE_INTEGER && v.via.u64 <= INT64_MAX) {
        r.time_ns = static_cast<std::int64_t>(v.via.u64);
      } else if (v.type == msgpack::type::NEGATIVE_INTEGER) {
        r.time_ns = v.via.i64;
      } else {
        return std::nullopt;
      }
    } else if (*key == "type" || *key == "execution_id" || *key == "worker_id" ||
               *key == "user_id") {
      const auto s = as_str(v);
      if (!s) return std::nullopt;
      if (*key == "type") {
        r.type = *s;
        has_type = true;
      } else if (*key == "execution_id") {
        r.execution_id = *s;
      } else if (*key == "worker_id") {
        r.worker_id = *s;
      } else {
        r.user_id = *s;
      }
    } else if (*key == "detail") {
      if (v.type != msgpack::type::MAP) return std::nullopt;
      for (const auto& d : v.via.map) {
        const auto k = as_str(d.key);
        const auto s = as_str(d.val);
        if (!k || !s) return std::nullopt;
        r.detail.emplace(*k, *s);
      }
    }
  }
  if (!has_seq || !has_type || r.type.empty()) return std::nullopt;
  return r;
}

}  // namespace shmsched::audit
