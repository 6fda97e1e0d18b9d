#include "shmsched/ipc/segment_config.h"

#include <string>

namespace shmsched::ipc {
namespace {

void require(bool ok, const char* key, std::uint64_t value, const std::string& allowed) {
  if (!ok) {
    throw ConfigError(std::string(key) + " = " + std::to_string(value) +
                      " is out of range: " + allowed);
  }
}

}  // namespace

void SegmentConfig::validate() const {
  require(max_queue_size >= 1 && max_queue_size <= (1ULL << 26), "max_queue_size", max_queue_size,
          "use 1 .. 67108864");
  require(max_payload_bytes >= 1 && max_payload_bytes <= (64ULL << 20), "max_payload_bytes",
          max_payload_bytes, "use 1 .. 67108864");
  require(max_extras_bytes <= (1ULL << 20), "max_extras_bytes", max_extras_bytes,
          "use 0 .. 1048576");
  require(max_users >= 1 && max_users <= (1ULL << 24), "max_users", max_users, "use 1 .. 16777216");
  require(max_active >= 1 && max_active <= (1ULL << 22), "max_active", max_active,
          "use 1 .. 4194304");
  require(max_participants >= 2 && max_participants <= 4096, "max_participants", max_participants,
          "use 2 .. 4096 (one per attached producer or consumer)");
  require(max_executions_per_user >= 1 && max_executions_per_user <= (1ULL << 23),
          "max_executions_per_user", max_executions_per_user, "use 1 .. 8388608");
  require((mode & ~0777U) == 0 && (mode & 0600U) == 0600U, "mode", mode,
          "an octal file mode such as 0660; the owner needs read and write");
}

}  // namespace shmsched::ipc
