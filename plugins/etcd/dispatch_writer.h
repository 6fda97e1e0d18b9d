// Writes what the supervisor publishes into etcd, in batches: up to batch_size messages per
// transaction, up to max_in_flight transactions awaiting etcd's answer. A command is delivered
// (host->delivery ok) only once etcd answered the transaction that wrote it; a failed
// transaction fails its commands back to the supervisor, which publishes them again later (to
// this transport only), so nothing accepted is lost. Each execution is a nested transaction that
// writes only when tasks/<id>/dispatched does not already name this attempt (and worker): a
// repeated publish of a dispatch that etcd had applied before its answer was lost writes nothing,
// in particular it does not reset an owner that a worker has written since.
//
// Lifecycle events go to events/<execution_id>/<type> under the retention lease; an execution's
// final event also puts its other keys under that lease, so etcd removes all of them after the
// retention. A failed event write is retried here (the supervisor only logs event outcomes).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "etcd_connection.h"
#include "etcd_keys.h"
#include "etcd_options.h"
#include "inbound_ops.h"
#include "shmsched/transport.h"

namespace shmsched::etcd {

class DispatchWriter {
 public:
  DispatchWriter(const Options& options, const Keys& keys, Connection& connection,
                 const shmsched_host& host, std::shared_ptr<Supervisor> supervisor);
  ~DispatchWriter();

  void start();
  // publish_batch of the ABI: takes a prefix of msgs (all, unless the local queue is full:
  // then *refusal = SHMSCHED_ERR_BUSY).
  std::size_t take(const shmsched_message* msgs, const std::uint64_t* tokens, std::size_t n,
                   int* refusal);
  // Puts an execution's keys under the retention lease (an execution found finished by a resync
  // whose final event was never written, e.g. the plugin stopped first).
  void retain(const std::string& execution_id, const std::string& worker_id);
  // Whether `lease` is one of the last retention leases this writer granted: a put under it is
  // this transport putting a finished execution's keys under the retention, not a worker.
  bool retention_lease_granted(std::int64_t lease) const;
  // Waits up to timeout for everything taken to be answered; returns how many are not.
  std::size_t flush(std::chrono::milliseconds timeout);
  // Ends the thread, cancels transactions in flight and fails what is still queued (all
  // reported before it returns).
  void stop();

 private:
  struct Item {
    std::string type, id, body;
    bool command = false;
    bool internal = false;  // only the retention of its keys (no events/ key), no delivery
    std::uint64_t token = 0;
    MessageFields fields;
    // Sent in a transaction of its own (its batch was refused as too large for etcd).
    bool solo = false;
    // The worker an earlier push of it went to, as known when it was first put in a batch (so
    // that it is the same when the item is sent again).
    std::optional<std::string> pushed_worker;
  };
  struct Batch;

  void run();
  bool build(std::unique_lock<std::mutex>& lock, Batch& batch);
  void send(std::unique_ptr<Batch> batch);
  void answered(Batch* batch, const grpc::Status& status);
  std::int64_t retention_lease(std::string& error);
  void deliver(const Item& item, bool ok, const std::string& error);

  const Options& options_;
  const Keys& keys_;
  Connection& connection_;
  shmsched_host host_;
  std::shared_ptr<Supervisor> supervisor_;

  std::mutex mu_;
  std::condition_variable wake_;     // the thread: work, or room in flight
  std::condition_variable settled_;  // flush/stop: a batch answered
  std::deque<Item> queue_;
  std::map<Batch*, std::unique_ptr<Batch>> in_flight_;
  std::map<std::string, std::string> pushed_to_;  // execution id -> worker of its TaskPush
  bool stopping_ = false;
  std::atomic<bool> running_{true};  // false once stop() began (for hand_over)
  std::thread thread_;

  // The last retention leases granted (one per tenth of the retention, at least a second apart:
  // 1,024 cover over 17 minutes of them), for retention_lease_granted.
  mutable std::mutex leases_mu_;
  std::deque<std::int64_t> granted_leases_;

  std::int64_t lease_ = 0;
  std::chrono::steady_clock::time_point lease_until_{};  // when to grant the next one
  std::chrono::milliseconds failures_backoff_{0};        // after a failed attempt, until a success
  std::chrono::steady_clock::time_point next_failure_log_{};
};

}  // namespace shmsched::etcd
