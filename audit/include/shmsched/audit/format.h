// The audit log's on-disk vocabulary shared by the writer, the reader and the verifier: the hash
// type, the limits of a record, the default directory, and the one exception the library throws.
// docs/audit.md describes the byte layout.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace shmsched::audit {

// Where shmschedd keeps its audit log unless configured otherwise (StateDirectory=shmsched).
inline constexpr const char* kDefaultDir = "/var/lib/shmsched/audit";

// SHA-256: each record's frame ends with SHA-256(previous frame's hash || this body).
inline constexpr std::size_t kHashBytes = 32;
using Hash = std::array<std::uint8_t, kHashBytes>;

// The largest msgpack body of one frame. A length above it is damage, not a record, so a flipped
// length byte cannot make a reader allocate gigabytes.
inline constexpr std::size_t kMaxBodyBytes = 1u << 20;

// Lower-case hex of a hash (for messages and external anchors).
std::string to_hex(const Hash& hash);

// What the library throws when a directory or file cannot be used (the message names it and why).
class AuditError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace shmsched::audit
