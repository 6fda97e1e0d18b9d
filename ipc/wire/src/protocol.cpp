// Request decoding and reply/event encoding with msgpack-cxx. Every field is checked for presence
// and type; anything else is a DecodeError whose message names the field.
#include "shmsched/ipc/protocol.h"

#include <algorithm>
#include <cstring>
#include <msgpack.hpp>
#include <random>

namespace shmsched::ipc::protocol {
namespace {

using msgpack::object;

// Looks up a key in a map object; nullptr when absent.
const object* field(const object& map, std::string_view key) {
  for (const auto& kv : map.via.map) {
    if (kv.key.type == msgpack::type::STR &&
        std::string_view(kv.key.via.str.ptr, kv.key.via.str.size) == key) {
      return &kv.val;
    }
  }
  return nullptr;
}

struct Reader {
  const object& map;
  std::string error;

  bool fail(std::string message) {
    if (error.empty()) error = std::move(message);
    return false;
  }

  bool string(std::string_view key, std::string& out, bool required, std::size_t max = 65536) {
    const object* o = field(map, key);
    if (!o || o->type == msgpack::type::NIL) {
      return required ? fail("missing field '" + std::string(key) + "' (string)") : true;
    }
    if (o->type != msgpack::type::STR)
      return fail("field '" + std::string(key) + "' must be a string");
    if (o->via.str.size > max) {
      return fail("field '" + std::string(key) + "' is longer than " + std::to_string(max) +
                  " bytes");
    }
    out.assign(o->via.str.ptr, o->via.str.size);
    return true;
  }

  bool opt_string(std::string_view key, std::optional<std::string>& out) {
    std::string s;
    const object* o = field(map, key);
    if (!o || o->type == msgpack::type::NIL) return true;
    if (!string(key, s, true)) return false;
    out = std::move(s);
    return true;
  }

  bool integer(std::string_view key, std::optional<std::int64_t>& out) {
    const object* o = field(map, key);
    if (!o || o->type == msgpack::type::NIL) return true;
    if (o->type == msgpack::type::POSITIVE_INTEGER) {
      if (o->via.u64 > static_cast<std::uint64_t>(INT64_MAX)) {
        return fail("field '" + std::string(key) + "' is out of range");
      }
      out = static_cast<std::int64_t>(o->via.u64);
      return true;
    }
    if (o->type == msgpack::type::NEGATIVE_INTEGER) {
      out = o->via.i64;
      return true;
    }
    return fail("field '" + std::string(key) + "' must be an integer");
  }

  bool boolean(std::string_view key, bool& out) {
    const object* o = field(map, key);
    if (!o || o->type == msgpack::type::NIL) return true;
    if (o->type != msgpack::type::BOOLEAN)
      return fail("field '" + std::string(key) + "' must be a boolean");
    out = o->via.boolean;
    return true;
  }

  // bin, or str (accepted on input).
  bool bytes(std::string_view key, std::vector<std::byte>& out, bool required) {
    const object* o = field(map, key);
    if (!o || o->type == msgpack::type::NIL) {
      return required ? fail("missing field '" + std::string(key) + "' (bin)") : true;
    }
    const char* p = nullptr;
    std::size_t n = 0;
    if (o->type == msgpack::type::BIN) {
      p = o->via.bin.ptr;
      n = o->via.bin.size;
    } else if (o->type == msgpack::type::STR) {
      p = o->via.str.ptr;
      n = o->via.str.size;
    } else {
      return fail("field '" + std::string(key) + "' must be bin (or str)");
    }
    const auto* b = reinterpret_cast<const std::byte*>(p);
    out.assign(b, b + n);
    return true;
  }

  bool strings(std::string_view key, std::vector<std::string>& out,
               std::size_t max_items = SIZE_MAX, std::size_t max_len = SIZE_MAX) {
    const object* o = field(map, key);
    if (!o || o->type == msgpack::type::NIL) return true;
    if (o->type != msgpack::type::ARRAY)
      return fail("field '" + std::string(key) + "' must be an array of strings");
    if (o->via.array.size > max_items) {
      return fail("field '" + std::string(key) + "' has more than " + std::to_string(max_items) +
                  " entries");
    }
    for (const auto& item : o->via.array) {
      if (item.type != msgpack::type::STR)
        return fail("field '" + std::string(key) + "' must be an array of strings");
      if (item.via.str.size > max_len) {
        return fail("an entry of field '" + std::string(key) + "' is longer than " +
                    std::to_string(max_len) + " bytes");
      }
      out.emplace_back(item.via.str.ptr, item.via.str.size);
    }
    return true;
  }

  bool string_map(std::string_view key, Metadata& out, std::size_t max_items = SIZE_MAX,
                  std::size_t max_len = SIZE_MAX) {
    const object* o = field(map, key);
    if (!o || o->type == msgpack::type::NIL) return true;
    if (o->type != msgpack::type::MAP)
      return fail("field '" + std::string(key) + "' must be a map of strings");
    if (o->via.map.size > max_items) {
      return fail("field '" + std::string(key) + "' has more than " + std::to_string(max_items) +
                  " entries");
    }
    for (const auto& kv : o->via.map) {
      if (kv.key.type != msgpack::type::STR || kv.val.type != msgpack::type::STR) {
        return fail("field '" + std::string(key) + "' must map strings to strings");
      }
      if (kv.key.via.str.size > max_len || kv.val.via.str.size > max_len) {
        return fail("an entry of field '" + std::string(key) + "' is longer than " +
                    std::to_string(max_len) + " bytes");
      }
      out.emplace_back(std::string(kv.key.via.str.ptr, kv.key.via.str.size),
                       std::string(kv.val.via.str.ptr, kv.val.via.str.size));
    }
    return true;
  }
};

// What one worker may bring: its capabilities and metadata stay in memory while it lives.
constexpr std::size_t kMaxCapabilities = 64;
constexpr std::size_t kMaxCapabilityBytes = 128;

// `attempt` of complete/fail: optional; when given, 1 .. 2^32-1.
void read_attempt(Reader& r, std::optional<std::uint32_t>& out) {
  std::optional<std::int64_t> attempt;
  r.integer("attempt", attempt);
  if (!attempt) return;
  if (*attempt < 1 || *attempt > UINT32_MAX) {
    r.fail("field 'attempt' must be 1 or more");
    return;
  }
  out = static_cast<std::uint32_t>(*attempt);
}

std::variant<Request, DecodeError> decode_map(const object& root) {
  Reader r{root, {}};
  std::string op;
  if (!r.string("op", op, true, 64)) return DecodeError{r.error};
  if (op == "submit") {
    SubmitOp s;
    r.string("user_id", s.user_id, true, 256);
    r.string("execution_id", s.execution_id, false, 256);
    r.bytes("payload", s.payload, true);
    r.strings("required_capabilities", s.required_capabilities);
    r.string_map("metadata", s.metadata);
    std::optional<std::int64_t> timeout;
    r.integer("timeout_seconds", timeout);
    if (timeout) {
      if (*timeout < 0 || *timeout > UINT32_MAX)
        r.fail("field 'timeout_seconds' is out of range");
      else
        s.timeout_seconds = static_cast<std::uint32_t>(*timeout);
    }
    if (const object* p = field(root, "priority"); p && p->type != msgpack::type::NIL) {
      std::optional<Priority> prio;
      if (p->type == msgpack::type::STR) {
        prio = parse_priority(std::string_view(p->via.str.ptr, p->via.str.size));
      } else if (p->type == msgpack::type::POSITIVE_INTEGER) {
        prio = p->via.u64 <= 4 ? priority_from_int(static_cast<std::int64_t>(p->via.u64))
                               : std::nullopt;
      }
      if (!prio)
        r.fail("field 'priority' must be one of critical, high, normal, low, background or 0..4");
      else
        s.priority = *prio;
    }
    std::string durability;
    if (r.string("durability", durability, false, 16) && field(root, "durability") &&
        field(root, "durability")->type == msgpack::type::STR) {
      if (durability == "memory") {
        s.durability = Durability::kMemory;
      } else if (durability == "disk") {
        s.durability = Durability::kDisk;
      } else {
        r.fail("field 'durability' must be memory or disk");
      }
    }
    if (!r.error.empty()) return DecodeError{r.error};
    return Request{std::move(s)};
  }
  if (op == "cancel") {
    CancelOp c;
    r.string("execution_id", c.execution_id, true, 256);
    r.string("reason", c.reason, false);
    if (!r.error.empty()) return DecodeError{r.error};
    return Request{std::move(c)};
  }
  if (op == "status") {
    StatusOp s;
    if (!r.string("execution_id", s.execution_id, true, 256)) return DecodeError{r.error};
    return Request{std::move(s)};
  }
  if (op == "list") {
    ListOp l;
    r.opt_string("state", l.state);
    r.opt_string("user_id", l.user_id);
    std::optional<std::int64_t> limit;
    r.integer("limit", limit);
    if (limit) {
      if (*limit < 1)
        r.fail("field 'limit' must be at least 1");
      else
        l.limit = static_cast<std::uint64_t>(*limit);
    }
    static const char* const states[] = {"queued", "dispatched", "running", "completed",
                                         "failed", "cancelled",  "expired"};
    if (l.state && std::none_of(std::begin(states), std::end(states),
                                [&](const char* s) { return *l.state == s; })) {
      r.fail(
          "field 'state' must be queued, dispatched, running, completed, failed, cancelled or "
          "expired");
    }
    if (!r.error.empty()) return DecodeError{r.error};
    return Request{std::move(l)};
  }
  if (op == "stats") return Request{StatsOp{}};
  if (op == "complete") {
    CompleteOp c;
    r.string("execution_id", c.execution_id, true, 256);
    r.opt_string("worker_id", c.worker_id);
    r.integer("exit_code", c.exit_code);
    r.bytes("result", c.result, false);
    read_attempt(r, c.attempt);
    if (!r.error.empty()) return DecodeError{r.error};
    return Request{std::move(c)};
  }
  if (op == "fail") {
    FailOp f;
    r.string("execution_id", f.execution_id, true, 256);
    r.string("error", f.error, true);
    r.opt_string("worker_id", f.worker_id);
    r.boolean("retry", f.retry);
    read_attempt(r, f.attempt);
    if (!r.error.empty()) return DecodeError{r.error};
    return Request{std::move(f)};
  }
  if (op == "register_worker") {
    RegisterWorkerOp w;
    r.string("worker_id", w.worker_id, true, 256);
    // Bounded: a worker is kept for as long as it lives.
    r.strings("capabilities", w.capabilities, kMaxCapabilities, kMaxCapabilityBytes);
    r.string_map("metadata", w.metadata, kMaxCapabilities, 1024);
    std::optional<std::int64_t> capacity;
    r.integer("capacity", capacity);
    if (capacity) {
      if (*capacity < 1 || *capacity > 1'000'000)
        r.fail("field 'capacity' must be 1 .. 1000000");
      else
        w.capacity = static_cast<std::uint32_t>(*capacity);
    }
    if (r.error.empty() && w.worker_id.empty()) r.fail("field 'worker_id' must not be empty");
    if (!r.error.empty()) return DecodeError{r.error};
    return Request{std::move(w)};
  }
  if (op == "heartbeat") {
    HeartbeatOp h;
    if (!r.string("worker_id", h.worker_id, true, 256)) return DecodeError{r.error};
    return Request{std::move(h)};
  }
  if (op == "unregister_worker") {
    UnregisterWorkerOp u;
    if (!r.string("worker_id", u.worker_id, true, 256)) return DecodeError{r.error};
    return Request{std::move(u)};
  }
  if (op == "claim") {
    ClaimOp c;
    r.string("worker_id", c.worker_id, true, 256);
    r.string("execution_id", c.execution_id, true, 256);
    if (!r.error.empty()) return DecodeError{r.error};
    return Request{std::move(c)};
  }
  if (op == "report_blocker") {
    ReportBlockerOp b;
    r.string("worker_id", b.worker_id, true, 256);
    r.string("type", b.type, true, 256);
    r.string("description", b.description, true, 65536);
    r.string("severity", b.severity, true, 64);
    r.strings("required_capabilities", b.required_capabilities, kMaxCapabilities,
              kMaxCapabilityBytes);
    r.string("execution_id", b.execution_id, false, 256);
    if (!r.error.empty()) return DecodeError{r.error};
    return Request{std::move(b)};
  }
  if (op == "workers") return Request{WorkersOp{}};
  return DecodeError{"unknown op '" + op + "'"};
}

// msgpack-cxx packs into any type with write(const char*, size_t): append to the byte vector.
struct ByteSink {
  std::vector<std::byte>& out;
  void write(const char* p, std::size_t n) {
    // Most writes are a few bytes into a buffer with room: skip the generic range insert.
    if (n == 0) return;  // an empty payload's data() may be null: no memcpy from it
    const std::size_t at = out.size();
    if (out.capacity() - at < n) out.reserve(std::max(out.capacity() * 2, at + n));
    out.resize(at + n);
    std::memcpy(out.data() + at, p, n);
  }
};

void pack_bytes(msgpack::packer<ByteSink>& pk, std::span<const std::byte> b) {
  pk.pack_bin(static_cast<std::uint32_t>(b.size()));
  pk.pack_bin_body(reinterpret_cast<const char*>(b.data()), static_cast<std::uint32_t>(b.size()));
}

}  // namespace

std::variant<Request, DecodeError> decode_request(std::span<const std::byte> frame) {
  try {
    // Limits keep a hostile frame from claiming huge allocations.
    msgpack::unpack_limit limit(/*array=*/4096, /*map=*/4096, /*str=*/16 << 20, /*bin=*/64 << 20,
                                /*ext=*/1024, /*depth=*/16);
    std::size_t offset = 0;
    const msgpack::object_handle oh = msgpack::unpack(
        reinterpret_cast<const char*>(frame.data()), frame.size(), offset, nullptr, nullptr, limit);
    if (offset != frame.size()) return DecodeError{"trailing bytes after the request map"};
    const object& root = oh.get();
    if (root.type != msgpack::type::MAP) return DecodeError{"the request must be a msgpack map"};
    return decode_map(root);
  } catch (const std::exception& e) {
    return DecodeError{std::string("not valid msgpack: ") + e.what()};
  }
}

template <typename PackValue>
MapBuilder& MapBuilder::field(std::string_view key, PackValue&& pack_value) {
  ByteSink sink{buffer()};
  msgpack::packer<ByteSink> pk(sink);
  pk.pack(key);
  pack_value(pk);
  ++count_;
  return *this;
}

SubmitRequest to_submit_request(const SubmitOp& op, std::string_view execution_id) {
  SubmitRequest r;
  r.execution_id = execution_id;
  r.user_id = op.user_id;
  r.priority = op.priority;
  r.payload = op.payload;
  r.required_capabilities = op.required_capabilities;
  r.metadata = op.metadata;
  r.timeout_seconds = op.timeout_seconds;
  return r;
}

MapBuilder& MapBuilder::str(std::string_view key, std::string_view value) {
  return field(key, [&](auto& pk) { pk.pack(value); });
}
MapBuilder& MapBuilder::integer(std::string_view key, std::int64_t value) {
  return field(key, [&](auto& pk) { pk.pack(value); });
}
MapBuilder& MapBuilder::boolean(std::string_view key, bool value) {
  return field(key, [&](auto& pk) { pk.pack(value); });
}
MapBuilder& MapBuilder::bin(std::string_view key, std::span<const std::byte> value) {
  return field(key, [&](auto& pk) { pack_bytes(pk, value); });
}
MapBuilder& MapBuilder::strings(std::string_view key, const std::vector<std::string>& values) {
  return field(key, [&](auto& pk) { pk.pack(values); });
}
MapBuilder& MapBuilder::string_map(std::string_view key, const Metadata& values) {
  return field(key, [&](auto& pk) {
    pk.pack_map(static_cast<std::uint32_t>(values.size()));
    for (const auto& [k, v] : values) {
      pk.pack(k);
      pk.pack(v);
    }
  });
}
MapBuilder& MapBuilder::int_map(std::string_view key,
                                const std::vector<std::pair<std::string, std::int64_t>>& values) {
  return field(key, [&](auto& pk) {
    pk.pack_map(static_cast<std::uint32_t>(values.size()));
    for (const auto& [k, v] : values) {
      pk.pack(k);
      pk.pack(v);
    }
  });
}
MapBuilder& MapBuilder::raw(std::string_view key, std::vector<std::byte> encoded) {
  return field(key,
               [&](auto&) { buffer().insert(buffer().end(), encoded.begin(), encoded.end()); });
}
MapBuilder& MapBuilder::raw_array(std::string_view key,
                                  const std::vector<std::vector<std::byte>>& items) {
  return field(key, [&](auto& pk) {
    pk.pack_array(static_cast<std::uint32_t>(items.size()));
    for (const auto& item : items) buffer().insert(buffer().end(), item.begin(), item.end());
  });
}

MapBuilder::MapBuilder() {
  own_.reserve(256);
  own_.resize(kHeaderRoom);
}

MapBuilder::MapBuilder(std::vector<std::byte>& out) : external_(&out), header_at_(out.size()) {
  out.resize(out.size() + kHeaderRoom);
}

std::size_t MapBuilder::complete() {
  std::vector<std::byte>& b = buffer();
  std::byte header[kHeaderRoom];
  std::size_t n = 0;
  if (count_ <= 15) {
    header[n++] = static_cast<std::byte>(0x80 | count_);  // fixmap
  } else if (count_ <= 0xffff) {
    header[n++] = std::byte{0xde};  // map 16
    header[n++] = static_cast<std::byte>(count_ >> 8);
    header[n++] = static_cast<std::byte>(count_);
  } else {
    header[n++] = std::byte{0xdf};  // map 32
    for (int shift = 24; shift >= 0; shift -= 8) {
      header[n++] = static_cast<std::byte>(count_ >> shift);
    }
  }
  const std::size_t start = header_at_ + kHeaderRoom - n;
  std::memcpy(b.data() + start, header, n);
  return start;
}

std::vector<std::byte> MapBuilder::finish() {
  const std::size_t start = complete();
  return std::vector<std::byte>(own_.begin() + static_cast<std::ptrdiff_t>(start), own_.end());
}

std::vector<std::byte> error_reply(std::string_view code, std::string_view message) {
  return MapBuilder().boolean("ok", false).str("error", code).str("message", message).finish();
}

std::string new_uuid() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uint64_t hi = rng();
  std::uint64_t lo = rng();
  hi = (hi & 0xffffffffffff0fffULL) | 0x0000000000004000ULL;  // version 4
  lo = (lo & 0x3fffffffffffffffULL) | 0x8000000000000000ULL;  // variant 10
  char buf[37];
  std::snprintf(buf, sizeof buf, "%08x-%04x-%04x-%04x-%012llx", static_cast<unsigned>(hi >> 32),
                static_cast<unsigned>((hi >> 16) & 0xffff), static_cast<unsigned>(hi & 0xffff),
                static_cast<unsigned>(lo >> 48),
                static_cast<unsigned long long>(lo & 0xffffffffffffULL));
  return buf;
}

}  // namespace shmsched::ipc::protocol
