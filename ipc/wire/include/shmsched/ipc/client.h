// The client library: submits directly into the shared-memory queue when this process may open
// it, over the ZeroMQ ingress otherwise, with the same results either way. Every other operation
// goes over the ingress (the supervisor owns dispatch state).
#pragma once

#include <chrono>
#include <memory>
#include <msgpack.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "shmsched/ipc/protocol.h"
#include "shmsched/ipc/queue.h"

namespace shmsched::ipc {

struct ClientOptions {
  std::string segment = "shmsched";
  // ZeroMQ endpoint of the ingress, e.g. "ipc:///run/shmsched/ingress.sock".
  std::string endpoint;
  bool use_shared_memory = true;  // try the segment first for submits
  std::chrono::milliseconds timeout{5000};
};

// Thrown when the supervisor does not answer in time or the answer is not a protocol reply.
class ClientError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ClientSubmitResult {
  SubmitResult result;
  std::string execution_id;  // generated when the request had none
  bool via_shared_memory = false;
};

// Thrown by submit_many when it cannot answer for the whole batch: a timeout waiting for the
// disk, or a submit over the ingress that failed. It carries what the batch did: the results of
// the ops it submitted (the first results().size() ones, in order; execution_id filled in, also
// when generated), and which of them are queued but not confirmed on disk. Its message names
// the ids the caller must not lose.
class ClientBatchError : public ClientError {
 public:
  ClientBatchError(const std::string& what, std::vector<ClientSubmitResult> results,
                   std::vector<std::size_t> unconfirmed, std::string unanswered_id)
      : ClientError(what),
        results_(std::move(results)),
        unconfirmed_(std::move(unconfirmed)),
        unanswered_id_(std::move(unanswered_id)) {}
  const std::vector<ClientSubmitResult>& results() const { return results_; }
  // Indices into results(): accepted (queued), the disk not confirmed within the timeout.
  const std::vector<std::size_t>& unconfirmed() const { return unconfirmed_; }
  // The id of the op at results().size() when its submit over the ingress got no answer (it may
  // be queued: submit it again under this id), else empty.
  const std::string& unanswered_id() const { return unanswered_id_; }

 private:
  std::vector<ClientSubmitResult> results_;
  std::vector<std::size_t> unconfirmed_;
  std::string unanswered_id_;
};

struct ClientClaimResult {
  bool claimed = false;
  // The owner: its worker id over the ingress; through shared memory only its number
  // (`owner_number`, as register_worker's reply gives it), and `owner` stays empty.
  std::string owner;
  std::uint32_t owner_number = 0;
  bool via_shared_memory = false;
  std::string reason;  // when not claimed: claimed, not_current, finished, ... or an error code
};

class Client {
 public:
  explicit Client(ClientOptions options);
  ~Client();

  // With durability disk (asked for, or the supervisor's default), returns once the supervisor
  // has the execution on disk; through shared memory that is a wait for its durable mark, up to
  // `timeout` (then ClientError: it is queued, and not known to be on disk).
  ClientSubmitResult submit(const protocol::SubmitOp& op);

  // Submits several executions; each result is what submit() would have answered for it, in
  // order. Through shared memory every entry goes into the segment first and the disk ones are
  // then waited for together, so one fdatasync of the supervisor's journal answers the whole
  // batch (one wait instead of one per submit). Over the ingress they go one request at a time.
  // A timeout, or a submit over the ingress that throws, throws ClientBatchError: it says which
  // of the batch are queued (and not confirmed on disk), so that none is submitted twice.
  std::vector<ClientSubmitResult> submit_many(std::span<const protocol::SubmitOp> ops);

  // Claims a dispatched execution for a worker: through shared memory when this process may
  // open the segment and `worker_number` is given (one compare-and-swap, no round trip), else
  // over the ingress. Either way exactly one claimant of an attempt wins. A claim the segment
  // cannot decide (not open for claims: a command, or an execution still waiting for a worker)
  // goes to the ingress.
  ClientClaimResult claim(const std::string& worker_id, std::uint32_t worker_number,
                          const std::string& execution_id, std::uint32_t attempt);

  // One request/reply round trip over the ingress; returns the decoded reply map.
  msgpack::object_handle call(const std::vector<std::byte>& request);

  bool shared_memory() const { return producer_ != nullptr; }

 private:
  void connect();
  // Whether `op` asks for durability disk (itself, or by the supervisor's default).
  bool wants_disk(const protocol::SubmitOp& op) const;
  // A disk submit accepted in shared memory: waits for the supervisor's durable mark until
  // `deadline`; false when it timed out (the entry is queued, not known to be on disk).
  bool await_disk(ClientSubmitResult& out, std::chrono::steady_clock::time_point deadline);

  ClientOptions options_;
  zmq::context_t context_;
  std::unique_ptr<zmq::socket_t> socket_;
  std::shared_ptr<Segment> segment_;
  std::unique_ptr<Producer> producer_;
};

// Helpers to read reply maps.
const msgpack::object* find_field(const msgpack::object& map, std::string_view key);
std::optional<std::string> get_string(const msgpack::object& map, std::string_view key);
std::optional<std::int64_t> get_int(const msgpack::object& map, std::string_view key);
std::optional<bool> get_bool(const msgpack::object& map, std::string_view key);

}  // namespace shmsched::ipc

namespace shmsched::ipc {
// Where shmschedd keeps its sockets: $RUNTIME_DIRECTORY when set (systemd sets it), else
// `configured` when not empty, else /run/shmsched. shmschedd and shmschedctl both use this rule.
std::string resolve_runtime_dir(const std::string& configured);
}  // namespace shmsched::ipc
