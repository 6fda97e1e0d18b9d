// One audit record (a state change of the scheduler) and its msgpack encoding.
//
// The body of a record frame is one msgpack map with string keys: seq (uint), time_ns (int),
// type (str), and, when not empty, execution_id, worker_id, user_id (str) and detail
// ({str: str}). Unknown keys are ignored on decoding, so a newer writer's records stay readable.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace shmsched::audit {

struct AuditRecord {
  std::uint64_t seq = 0;     // assigned by AuditWriter::append (1, 2, ... across files/restarts)
  std::int64_t time_ns = 0;  // wall clock, Unix ns; append() fills it in when 0
  std::string type;          // what happened: "accepted", "claimed", "worker_registered", ...
  std::string execution_id;  // empty when the event concerns no execution
  std::string worker_id;     // empty when none
  std::string user_id;       // empty when none
  std::map<std::string, std::string> detail;  // small free-form fields ("reason", "attempt", ...)

  bool operator==(const AuditRecord&) const = default;
};

// An upper bound of the encoded body's size, without encoding it (what append() checks against
// kMaxBodyBytes).
std::size_t encoded_size_bound(const AuditRecord& record);

// Appends the msgpack body of `record` to `out`.
void encode_record(const AuditRecord& record, std::vector<std::byte>& out);

// The record of a body, or nullopt when the body is not valid msgpack, not a map, lacks seq or
// type, has a field of the wrong type, or has bytes after the map (a file header is not a record).
std::optional<AuditRecord> decode_record(std::span<const std::byte> body);

}  // namespace shmsched::audit
