// The wire protocol of the ingress (docs/protocol.md): msgpack maps with string keys.
// decode_request() turns one request frame into a typed operation, or an error message for an
// `invalid` reply; it never throws and never trusts a length, a type or a key.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "shmsched/core/priority.h"
#include "shmsched/ipc/execution.h"

namespace shmsched::ipc::protocol {

// When a submit is acknowledged: once the execution is in the queue's segment (it survives any
// process's crash), or once its record is also synced to the supervisor's journal on disk (it
// survives a reboot or a power cut). docs/protocol.md.
enum class Durability : std::uint8_t { kMemory, kDisk };

struct SubmitOp {
  std::string user_id;
  Priority priority = Priority::kNormal;
  std::vector<std::byte> payload;
  std::string execution_id;  // empty: the server generates a UUID
  std::vector<std::string> required_capabilities;
  Metadata metadata;
  std::uint32_t timeout_seconds = 0;
  std::optional<Durability> durability;  // nullopt: the supervisor's configured default
};
struct CancelOp {
  std::string execution_id;
  std::string reason;
};
struct StatusOp {
  std::string execution_id;
};
struct ListOp {
  std::optional<std::string> state;
  std::optional<std::string> user_id;
  std::uint64_t limit = 100;
};
struct StatsOp {};
struct CompleteOp {
  std::string execution_id;
  std::optional<std::string> worker_id;
  std::optional<std::int64_t> exit_code;
  std::vector<std::byte> result;
  std::optional<std::uint32_t> attempt;  // given: a report for another attempt is ignored
};
struct FailOp {
  std::string execution_id;
  std::string error;
  std::optional<std::string> worker_id;
  bool retry = false;
  std::optional<std::uint32_t> attempt;
};
// Worker operations.
struct RegisterWorkerOp {
  std::string worker_id;
  std::vector<std::string> capabilities;
  std::uint32_t capacity = 1;
  Metadata metadata;
};
struct HeartbeatOp {
  std::string worker_id;
};
struct UnregisterWorkerOp {
  std::string worker_id;
};
struct ClaimOp {
  std::string worker_id;
  std::string execution_id;
};
struct ReportBlockerOp {
  std::string worker_id;
  std::string type, description, severity;
  std::vector<std::string> required_capabilities;
  std::string execution_id;  // optional: the execution it blocks
};
// `workers`: the live workers (an addition to the contract, see docs/protocol.md).
struct WorkersOp {};

using Request = std::variant<SubmitOp, CancelOp, StatusOp, ListOp, StatsOp, CompleteOp, FailOp,
                             RegisterWorkerOp, HeartbeatOp, UnregisterWorkerOp, ClaimOp,
                             ReportBlockerOp, WorkersOp>;

struct DecodeError {
  std::string message;
};

std::variant<Request, DecodeError> decode_request(std::span<const std::byte> frame);

// The queue request for a decoded submit, under `execution_id` (the op's own, or a generated
// one). It refers to `op`'s strings and bytes: keep `op` alive while it is used.
SubmitRequest to_submit_request(const SubmitOp& op, std::string_view execution_id);

// ---- Encoding of replies and events ------------------------------------------------------

// A msgpack map built field by field (keys in insertion order), into a buffer of its own
// (finish()) or appended to a buffer the caller reuses (complete()): the hot path encodes many
// events into one buffer without an allocation each.
class MapBuilder {
 public:
  MapBuilder();
  // Appends the map to `out`; complete() says where it starts.
  explicit MapBuilder(std::vector<std::byte>& out);

  MapBuilder& str(std::string_view key, std::string_view value);
  MapBuilder& integer(std::string_view key, std::int64_t value);
  MapBuilder& boolean(std::string_view key, bool value);
  MapBuilder& bin(std::string_view key, std::span<const std::byte> value);
  MapBuilder& strings(std::string_view key, const std::vector<std::string>& values);
  MapBuilder& string_map(std::string_view key, const Metadata& values);
  MapBuilder& int_map(std::string_view key,
                      const std::vector<std::pair<std::string, std::int64_t>>& values);
  // A nested map (already encoded by another MapBuilder).
  MapBuilder& raw(std::string_view key, std::vector<std::byte> encoded);
  MapBuilder& raw_array(std::string_view key, const std::vector<std::vector<std::byte>>& items);
  // The map, as its own bytes.
  std::vector<std::byte> finish();
  // Writes the map's header; the map is out[start .. out.size()) for the returned start.
  std::size_t complete();

 private:
  // Keys and values are encoded as they come; room for the largest map header is left in front
  // and the header (which needs the count) is written there at the end, right-aligned.
  static constexpr std::size_t kHeaderRoom = 5;
  template <typename PackValue>
  MapBuilder& field(std::string_view key, PackValue&& pack_value);
  std::vector<std::byte>& buffer() { return external_ ? *external_ : own_; }

  std::vector<std::byte> own_;
  std::vector<std::byte>* external_ = nullptr;
  std::size_t header_at_ = 0;
  std::uint32_t count_ = 0;
};

// {ok: false, error: code, message: text}
std::vector<std::byte> error_reply(std::string_view code, std::string_view message);

// A new random (version 4) UUID, for submissions without an execution_id.
std::string new_uuid();

}  // namespace shmsched::ipc::protocol
