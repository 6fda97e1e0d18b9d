// The supervisor: one loop where wake-ups, ingress operations, transport callbacks and timers
// meet (supervisor.cpp). It owns the queue's consumer side and every transport.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "config.h"
#include "inbox.h"
#include "shmsched/ipc/ingress_server.h"
#include "shmsched/ipc/queue.h"
#include "transport_host.h"

namespace shmsched::daemon {

using Clock = std::chrono::steady_clock;

// Counters shown by `stats` (read by the ingress thread, written by the loop).
struct SupervisorCounters {
  std::atomic<std::uint64_t> dispatched{0};
  std::atomic<std::uint64_t> completed{0};
  std::atomic<std::uint64_t> failed{0};
  std::atomic<std::uint64_t> retried{0};
  std::atomic<std::uint64_t> cancelled{0};
  std::atomic<std::uint64_t> expired{0};
  std::atomic<std::uint64_t> publish_failures{0};
  std::atomic<std::uint64_t> aged{0};
  // Submits refused because every participant entry of the segment was taken.
  std::atomic<std::uint64_t> rejected_no_participant_entry{0};
  std::atomic<std::uint64_t> maintenance_deferred{0};
  std::atomic<std::uint64_t> active{0};  // dispatched and unfinished
  std::atomic<std::uint64_t> max_active{0};
};

// Phase of an active execution, kept in its slot's annotation word so a restarted supervisor
// knows what to do with it: phase | effective level << 8.
enum class Phase : std::uint8_t {
  kUnknown = 0,      // dequeued, nothing recorded yet (a supervisor died right there)
  kHeld = 1,         // waiting in a lane: backoff, retry, or lifted by aging
  kDispatching = 2,  // published, acknowledgements outstanding
  kDispatched = 3,   // every transport has it
  kFinished = 4,     // its final event is out; only the release of its slot is left
};

class Supervisor {
 public:
  Supervisor(Config config, int argc, const char* const* argv);
  ~Supervisor();

  // Runs until SIGTERM/SIGINT; returns the process exit code.
  int run();

 private:
  struct Active {
    ipc::ActiveRef ref;
    ipc::ExecutionRecord rec;
    Phase phase = Phase::kUnknown;
    std::uint32_t attempt = 1;
    std::size_t level = 2;  // effective priority level (aging may lift it)
    Clock::time_point ready_at{};
    std::uint32_t publish_failures = 0;
    std::uint64_t token = 0;
    std::set<std::string> pending;  // transports whose delivery result for `token` is due
    bool publish_failed = false;
    std::set<std::string> acked;  // transports that have this attempt
  };

  void start_ingress();
  void ingress_main();
  std::optional<ipc::IngressServer::Reply> handle_ingress(const ipc::protocol::Request& req,
                                                          std::uint64_t token);
  void recover_active();
  void apply_transports(const Config& next);
  void process_inbox();
  void handle_op(OpMessage& op);
  void handle_delivery(const DeliveryMessage& d);
  void announce();
  // Dequeues the head of `level` into active_ (announcing it if it was not yet), or nullptr.
  Active* take(std::size_t level);
  void dispatch();
  void timers();
  void sleep();
  void reload();
  void shutdown();

  void publish_event(const char* type, const std::string& key, const std::vector<std::byte>& body);
  void publish_dispatch(Active& a);
  void resolve_dispatch(Active& a);
  void hold(Active& a, Clock::duration delay, bool front);
  void finish(Active& a);
  void set_phase(Active& a, Phase p);
  void reply(const ReplyTo& to, const std::vector<std::byte>& body);
  std::chrono::milliseconds backoff(std::uint64_t base_ms, std::uint32_t failures) const;
  void remember_finished(const std::string& id);
  // The loop's own producer, for submits that arrive through transports; created on first use,
  // and again after a failure (the participant table may have been full).
  ipc::Producer* loop_producer(std::string& error);
  void retry_deferred();
  // At shutdown: one last try, then every operation still deferred is answered `unavailable`.
  void answer_deferred_at_exit();
  void note_blocked(const char* what);

  Config config_;
  int argc_;
  const char* const* argv_;
  std::shared_ptr<ipc::Segment> segment_;
  std::unique_ptr<ipc::Consumer> consumer_;
  std::unique_ptr<ipc::Producer> loop_producer_;
  // Work the queue could not take while a repair was pending (a stopped process blocks it):
  // releases of finished executions and cancels, tried again on every reap.
  std::vector<ipc::ActiveRef> pending_releases_;
  std::vector<OpMessage> deferred_ops_;
  Clock::time_point next_blocked_log_{};
  std::unique_ptr<Inbox> inbox_;
  HostCallbacks callbacks_;
  std::vector<std::unique_ptr<Transport>> transports_;
  std::map<std::string, std::shared_ptr<PluginLibrary>> libraries_;

  zmq::context_t zmq_;
  std::unique_ptr<ipc::IngressServer> ingress_;
  std::thread ingress_thread_;
  std::atomic<bool> ingress_stop_{false};

  std::unordered_map<std::string, Active> active_;
  std::unordered_map<std::uint64_t, std::string> tokens_;
  std::array<std::deque<std::string>, kPriorityLevels> lanes_;
  std::array<std::uint64_t, kPriorityLevels> announced_{};
  std::deque<std::string> finished_order_;
  std::set<std::string> finished_;
  std::uint64_t next_token_ = 1;
  std::size_t dispatched_ = 0;
  bool worked_ = false;

  Clock::time_point dispatch_paused_until_{};
  Clock::time_point next_reap_{};
  Clock::time_point next_sweep_{};
  Clock::time_point next_aging_{};
  Clock::time_point next_watchdog_{};
  std::chrono::microseconds watchdog_interval_{0};

  std::atomic<bool> stop_{false};
  std::atomic<bool> reload_{false};
  SupervisorCounters counters_;
};

}  // namespace shmsched::daemon
