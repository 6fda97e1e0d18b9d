// Sizes and limits of a queue segment. Everything in the segment is laid out from these numbers
// when it is created; nothing is allocated afterwards, so they cannot change while it exists.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace shmsched::ipc {

// Thrown for a configuration value that cannot work; the message names the key and the fix.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct SegmentConfig {
  // Queued executions at most (the seeds' max_queue_size).
  std::uint64_t max_queue_size = 10000;
  // Largest opaque payload of one execution, in bytes.
  std::uint64_t max_payload_bytes = 16 * 1024;
  // Room for an execution's required capabilities and metadata (encoded), in bytes.
  std::uint64_t max_extras_bytes = 2048;
  // Distinct users with queued or active executions at any one time.
  std::uint64_t max_users = 65536;
  // Executions dispatched and not yet finished, at most (the supervisor's cap must fit in it).
  std::uint64_t max_active = 4096;
  // Processes or threads attached at once (each Producer and the Consumer take one entry).
  std::uint64_t max_participants = 256;
  // Initial per-user cap of queued + active executions; the owner may change it at run time.
  std::uint64_t max_executions_per_user = 100;
  // File mode of the segment; producers need read and write access.
  std::uint32_t mode = 0660;
  // The durability a submit that names none gets (Header::default_durability_disk), published
  // with the segment: a client that attaches while its supervisor is still starting (filling it
  // from the journal) already sees it. The owner may change it at run time.
  bool default_durability_disk = false;

  // Throws ConfigError naming the offending key when a value is out of range.
  void validate() const;
};

}  // namespace shmsched::ipc
