// What the plugin tells the supervisor: requests of the ingress protocol (docs/protocol.md),
// encoded as msgpack maps and handed over through host->inbound, in the order etcd reported
// what they stand for. Also the few fields the plugin reads from the supervisor's messages.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shmsched/transport.h"

namespace shmsched::etcd {

namespace ops {
std::string claim(std::string_view worker_id, std::string_view execution_id);
std::string complete(std::string_view execution_id, std::string_view worker_id);
std::string fail(std::string_view execution_id, std::string_view worker_id);
std::string register_worker(std::string_view worker_id,
                            const std::vector<std::string>& capabilities, std::uint32_t capacity);
std::string unregister_worker(std::string_view worker_id);
std::string heartbeat(std::string_view worker_id);
// fail without retry, for the given attempt only: the transport can never deliver it.
std::string undeliverable(std::string_view execution_id, std::int64_t attempt,
                          std::string_view error);
}  // namespace ops

// A registration value: msgpack {capabilities: [str], capacity: int}; both optional (an empty
// value registers a worker without capabilities, capacity 1). False with `error` when malformed.
bool parse_registration(std::string_view value, std::vector<std::string>& capabilities,
                        std::uint32_t& capacity, std::string& error);

// The fields of a published message that decide where it goes in etcd.
struct MessageFields {
  std::int64_t attempt = 0;
  std::string worker_id;
  bool will_retry = false;
};
MessageFields read_fields(const std::uint8_t* body, std::size_t len);

// Hands operations to the host; logs what the supervisor refused. Shared with the reply
// contexts, which may outlive the plugin instance (the supervisor answers later).
class Supervisor {
 public:
  explicit Supervisor(const shmsched_host& host) : host_(host) {}

  void log(shmsched_log_level level, const std::string& message);
  // Called with the error code when the supervisor refuses an operation; from the supervisor's
  // thread, possibly after the plugin stopped: it must only note what to do.
  using Refused = std::function<void(const std::string& error)>;

  // Offers `op` until the host takes it or `running` turns false (then returns false). A
  // refusal is logged, at debug level when `quiet` (a resync repeats what was done before).
  bool hand_over(const std::string& op, const std::string& what, const std::atomic<bool>& running,
                 bool quiet = false, Refused refused = {});
  // After stop(): replies that still arrive are dropped, not logged through a dead host.
  void detach();

 private:
  static void on_reply(void* ctx, const std::uint8_t* body, std::size_t len);
  static void on_ack(void* ctx);

  shmsched_host host_;
  std::mutex mu_;
  bool attached_ = true;
  std::weak_ptr<Supervisor> self_;
  friend std::shared_ptr<Supervisor> make_supervisor(const shmsched_host& host);
};
std::shared_ptr<Supervisor> make_supervisor(const shmsched_host& host);

}  // namespace shmsched::etcd
