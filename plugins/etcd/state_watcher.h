// Turns what workers write into etcd into the supervisor's operations: a watch over tasks/ and
// workers/ (one range), resumed from the revision after the last event it handled when the
// stream breaks (etcd restarted, a member lost: the next endpoint), so that nothing written
// meanwhile is missed. When that revision has been compacted, and at start, it reads the
// current state instead (a resync) and watches from there.
//   tasks/<id>/owner = <worker>                -> claim
//   tasks/<id>/owner = completed:<worker>      -> complete
//   tasks/<id>/owner = failed:<worker>         -> fail
//   workers/<worker>/registration put          -> register_worker (and a heartbeat every
//                                                 worker_heartbeat_ms while it exists)
//   workers/<worker>/registration deleted      -> unregister_worker (its lease expired: the
//                                                 worker is gone, its executions go back)
// A resync repeats the operations of the state it reads; the supervisor answers repeats
// harmlessly (already claimed by that worker, already finished). An owner put under one of the
// transport's own retention leases (the keys of a finished execution put under the retention)
// is no operation.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "dispatch_writer.h"
#include "etcd_connection.h"
#include "etcd_keys.h"
#include "inbound_ops.h"

namespace shmsched::etcd {

class StateWatcher {
 public:
  StateWatcher(const Options& options, const Keys& keys, Connection& connection,
               std::shared_ptr<Supervisor> supervisor, DispatchWriter& writer);
  ~StateWatcher();

  void start();
  void stop();

 private:
  enum class End { kStopped, kBroken, kCompacted };

  void run();
  void beat();
  bool resync(std::int64_t& revision);
  End watch(std::int64_t& last);
  // `quiet`: from a resync, which repeats what may have been handed over before.
  void owner(const std::string& id, const std::string& value, bool quiet = false);
  void registered(const std::string& worker, const std::string& value, bool quiet = false);
  void gone(const std::string& worker);
  void send(const std::string& op, const std::string& what, bool quiet = false);
  void pause(std::chrono::milliseconds d);

  const Options& options_;
  const Keys& keys_;
  Connection& connection_;
  std::shared_ptr<Supervisor> supervisor_;
  DispatchWriter& writer_;

  std::atomic<bool> running_{false};
  std::mutex mu_;
  std::condition_variable wake_;
  grpc::ClientContext* stream_ = nullptr;       // the watch in progress (cancelled by stop)
  std::map<std::string, std::string> workers_;  // registrations seen and not deleted: values
  // Workers whose heartbeat the supervisor did not know (it dropped them: max_workers, an
  // unregister over the ingress): registered again from their etcd value. Shared with the
  // refusal callbacks, which may run after this watcher is gone.
  struct Forgotten {
    std::mutex mu;
    std::set<std::string> workers;
  };
  std::shared_ptr<Forgotten> forgotten_ = std::make_shared<Forgotten>();
  std::thread thread_, heartbeat_thread_;
  std::chrono::steady_clock::time_point next_failure_log_{};
};

}  // namespace shmsched::etcd
