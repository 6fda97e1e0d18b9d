// The supervisor: a thin shell around the scheduling policy (core::Scheduler). One loop where
// wake-ups, ingress operations, transport callbacks and timers meet (supervisor.cpp): it feeds
// the scheduler what happened and carries out what it decides, against the queue's consumer side
// and the transports.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <absl/container/flat_hash_set.h>

#include "access_policy.h"
#include "action_lists.h"
#include "audit_trail.h"
#include "config.h"
#include "execution_journal.h"
#include "http_server.h"
#include "inbox.h"
#include "observability.h"
#include "outbound.h"
#include "shmsched/core/scheduler.h"
#include "shmsched/ipc/ingress_server.h"
#include "shmsched/ipc/queue.h"
#include "transport_host.h"
#include "worker_sessions.h"

namespace shmsched::daemon {

using Clock = std::chrono::steady_clock;

// Counters shown by `stats` (read by the ingress thread, written by the loop).
struct SupervisorCounters {
  std::atomic<std::uint64_t> dispatched{0};
  std::atomic<std::uint64_t> completed{0};
  std::atomic<std::uint64_t> failed{0};
  std::atomic<std::uint64_t> retried{0};
  std::atomic<std::uint64_t> timed_out{0};
  std::atomic<std::uint64_t> cancelled{0};
  std::atomic<std::uint64_t> expired{0};
  std::atomic<std::uint64_t> publish_failures{0};
  std::atomic<std::uint64_t> aged{0};
  std::atomic<std::uint64_t> stale_reports{0};
  std::atomic<std::uint64_t> active{0};  // dispatched and unfinished
  std::atomic<std::uint64_t> held{0};    // taken, waiting for a retry or a publish backoff
  std::atomic<std::uint64_t> max_active{0};
  // Submits refused because every participant entry of the segment was taken.
  std::atomic<std::uint64_t> rejected_no_participant_entry{0};
  std::atomic<std::uint64_t> maintenance_deferred{0};
  // Operations the local ingress refused: the client may not act for that user.
  std::atomic<std::uint64_t> rejected_unauthorized{0};
  std::atomic<std::uint64_t> workers{0};
  std::atomic<std::uint64_t> waiting_for_workers{0};
  std::atomic<std::uint64_t> pushed{0};
  std::atomic<std::uint64_t> claims_won{0};
  std::atomic<std::uint64_t> claims_lost{0};
  std::atomic<std::uint64_t> claim_timeouts{0};
  std::atomic<std::uint64_t> workers_lost{0};
  std::atomic<std::uint64_t> worker_lost_executions{0};
  std::atomic<std::uint64_t> blockers{0};
};

// The slot reference of a taken execution, packed for the scheduler.
inline core::SlotRef pack(ipc::ActiveRef r) {
  return (static_cast<core::SlotRef>(r.slot) << 32) | r.generation;
}
inline ipc::ActiveRef unpack(core::SlotRef s) {
  return ipc::ActiveRef{static_cast<std::uint32_t>(s >> 32), static_cast<std::uint32_t>(s)};
}

// Holds a transport's operation that is deliberately never acknowledged (durability.cpp).
void keep_unacknowledged(const shmsched_inbound_done& done);

class Supervisor {
 public:
  Supervisor(Config config, int argc, const char* const* argv);
  ~Supervisor();

  // Runs until SIGTERM/SIGINT; returns the process exit code.
  int run();

 private:
  struct Retiring {
    std::unique_ptr<Transport> transport;
    Clock::time_point deadline;
  };

  void start_ingress();
  void ingress_main(const AccessPolicy::Settings& access);
  void recover_active();
  core::SchedulerConfig policy(const Config& c) const;
  core::Time now() const;

  // Inputs to the scheduler, and carrying out what it decides.
  void feed(const core::Input& in);
  void advance();
  void carry_out(std::vector<core::Action>& actions);
  void do_publish(const core::action::Publish& p);
  void do_take(const core::action::Take& t, core::Time time, std::vector<core::Action>& more);
  void flush_outbound();
  void do_answer(const core::action::Answer& a);
  void process_inbox();
  void handle_op(OpMessage& op);
  void announce();
  void queue_state();

  // Transports: started, swapped by a reload (the old instance is flushed in slices while the
  // loop goes on), stopped.
  void apply_transports(const Config& next);
  std::unique_ptr<Transport> start_transport(const Config& c, const std::string& name,
                                             std::string& error);
  // A transport's options as its plugin gets them (with runtime_dir).
  static std::map<std::string, std::string> options_for(const Config& c, const std::string& name);
  static bool is_optional(const Config& c, const std::string& name);
  void retire(std::unique_ptr<Transport> t, const Config& c);
  void service_retiring(bool final);

  void timers();
  void sleep();
  void reload();
  void shutdown();
  void release(ipc::ActiveRef ref);
  void retry_pending_releases();
  void note_blocked(const char* what);
  void publish_counters();
  void notify_status();  // STATUS= for systemd
  // Everything queued is announced before an operation may act on it.
  void announce_all();
  ipc::Producer* loop_producer(std::string& error);

  Config config_;
  int argc_;
  const char* const* argv_;
  std::shared_ptr<ipc::Segment> segment_;
  std::unique_ptr<ipc::Consumer> consumer_;
  std::unique_ptr<ipc::Producer> loop_producer_;
  std::unique_ptr<Inbox> inbox_;
  // Delivery results a transport reports from inside publish() (on this thread): fed to the
  // scheduler right after the action that published, without the inbox's lock and wake-up.
  std::thread::id loop_thread_;
  std::vector<DeliveryMessage> local_deliveries_;
  HostCallbacks callbacks_;
  core::Scheduler core_;
  ActionLists action_lists_;

  std::map<core::TransportId, std::unique_ptr<Transport>> transports_;
  std::map<core::TransportId, Retiring> retiring_;
  std::map<std::string, std::shared_ptr<PluginLibrary>> libraries_;
  core::TransportId next_transport_ = 1;
  Outbound outbound_;

  zmq::context_t zmq_;
  std::unique_ptr<ipc::IngressServer> ingress_;
  std::thread ingress_thread_;
  std::atomic<bool> ingress_stop_{false};

  // Requests awaiting the scheduler's answer, and submits it asked the queue to take.
  std::unordered_map<core::OpId, ReplyTo> ops_;
  std::unordered_map<core::OpId, ipc::protocol::SubmitOp> submits_;
  core::OpId next_op_ = 1;
  // Releases the queue could not take yet (a repair held up by a stopped process).
  std::vector<ipc::ActiveRef> pending_releases_;
  bool worked_ = false;
  bool stopping_ = false;        // transports' inbound operations are answered unavailable
  bool repair_blocked_ = false;  // the last repair was deferred: requests wait for the next reap

  Clock::time_point next_reap_{};
  // Local workers' processes, polled this often: a dead one is noticed within 100 ms.
  static constexpr auto kSessionCheck = std::chrono::milliseconds(50);
  WorkerSessions sessions_;
  std::unique_ptr<AuditTrail> audit_;  // null: off
  // The process (session) each live worker was registered from, and registrations awaiting
  // their answer: a local process may act only for workers it registered.
  std::map<std::string, std::string> worker_session_;
  std::map<core::OpId, std::pair<std::string, std::string>> registering_;
  std::optional<std::string> foreign_worker(const OpMessage& op) const;
  // Worker numbers (claim words) to ids, for the ingress thread's status and list.
  mutable std::mutex worker_names_mutex_;
  std::map<std::uint32_t, std::string> worker_names_;
  std::string worker_name(std::uint32_t number) const;
  std::vector<std::byte> execution_map(const ipc::ExecutionRecord& r, bool ok_field) const;
  Clock::time_point next_session_check_{};
  Clock::time_point next_watchdog_{};
  Clock::time_point next_status_{};
  Clock::time_point next_blocked_log_{};
  std::chrono::microseconds watchdog_interval_{0};

  std::atomic<bool> stop_{false};
  std::atomic<bool> reload_{false};
  SupervisorCounters counters_;

  // Durability (durability.cpp): the journal of executions, and what waits for it to be synced.
  // Opens the journal (when configured) and reads its live executions; true when the segment
  // must be filled from them (it does not exist yet, or an earlier fill was cut short).
  bool open_journal(std::vector<JournaledExecution>& live);
  void settle_journal(bool restore, std::vector<JournaledExecution>& live);
  void restore_from_journal(std::vector<JournaledExecution>& live);
  void reconcile_with_journal(std::vector<JournaledExecution>& live);
  void journal_snapshot();
  void journal_accepted(const ipc::ExecutionView& v);
  // True (once) for an execution filled back from the journal: announced before the reboot.
  bool restored_announcement(const ipc::ExecutionView& v);
  // Filled back from the journal and not announced yet: by slot (restored_tag of the slot's
  // generation, 0 for none: no string per execution, a million of them after a reboot), and by
  // id those a fill cut short had put in already (found as duplicates).
  static constexpr std::uint64_t restored_tag(std::uint32_t generation) {
    return (1ULL << 32) | generation;
  }
  std::vector<std::uint64_t> restored_slots_;
  std::size_t restored_pending_ = 0;
  absl::flat_hash_set<std::string> restored_duplicates_;
  bool segment_created_here_ = false;  // by this start, for a fill from the journal
  std::int64_t journal_read_ms_ = 0;   // how long open_journal took (said when it refills)
  void journal_event(const core::Event& ev);
  void journal_trouble(const journal::Error& e);
  void release_after_journal(ipc::ActiveRef ref);
  // One wake-up from the journal's writer at a time, for the last LSN appended when armed.
  void arm_durable_work();
  // Carries out what waited for the disk: slots given back, durable marks.
  void on_journal_durable();
  // Shared-memory submitters that asked for durability disk wait for their slot's durable mark
  // (ipc::Producer::wait_durable): set at start once the journal holds every entry the segment
  // has, cleared when the journal fails or the supervisor stops.
  void start_durable_marks(const std::vector<ipc::ActiveRef>& journaled);
  void stop_durable_marks();
  void await_durable(DurableWaitMessage& w);
  void durable_done(DurableDoneMessage& d);
  void send_reply(const ReplyTo& to, const std::vector<std::byte>& body, bool ack);
  // The configured durability, for the ingress and for clients (in the segment).
  void set_default_durability();
  // Why a submit with durability disk is refused now ({error code, message}), or nullopt.
  // Any thread.
  std::optional<std::pair<std::string, std::string>> durable_refusal() const;
  std::unique_ptr<ExecutionJournal> journal_;  // null: off
  std::atomic<bool> default_disk_{false};      // durability = disk (read by the ingress)
  // Finished executions' slots, given back once the journal is durable up to the LSN.
  std::vector<std::pair<journal::Lsn, ipc::ActiveRef>> durable_releases_;
  // Entries whose accepted record waits for the disk; marked once it is there.
  struct PendingMark {
    journal::Lsn lsn;
    std::uint32_t slot;
    std::uint32_t generation;
  };
  std::deque<PendingMark> durable_marks_;
  bool marking_ = false;  // durable marks are on (the segment's flag)
  bool durable_work_armed_ = false;
  // Submits from transports accepted with durability disk: answered once on disk.
  std::unordered_map<core::OpId, std::string> disk_submits_;
  // Cancels, completes and fails answered once their record is on disk (durability = disk).
  std::unordered_set<core::OpId> ending_ops_;
  bool journal_failure_logged_ = false;

  // Metrics and the dashboard (observer.cpp): the HTTP thread reads the counters above, the
  // segment and what the loop publishes in observability_.
  std::vector<std::pair<std::string, std::int64_t>> stats_counters(const ipc::QueueStats& st) const;
  void start_http();
  void stop_http();
  void observe(Clock::time_point now);        // loop: pulse, and the observations now and then
  void observe_event(const core::Event& ev);  // loop: the recent-events list
  HttpResponse serve_http(const HttpRequest& r);
  HttpResponse http_cancel(const HttpRequest& r);
  std::string prometheus_text();
  std::string dashboard_state();
  std::string dashboard_history();
  Observability observability_;
  Clock::time_point next_observe_{};
  Clock::time_point next_history_{};
  Clock::time_point next_heads_{};
  // HTTP thread only (set before it starts), and its action threads (cancel).
  bool http_cancel_ = false;
  std::string http_ingress_socket_;
  std::mutex http_access_mutex_;
  std::unique_ptr<AccessPolicy> http_access_;
  // The per-user top, refreshed at most once a second.
  std::vector<std::pair<std::string, ipc::UserTally>> top_users_;
  std::int64_t top_users_at_ = INT64_MIN / 2;
  std::string dashboard_cache_;
  std::int64_t dashboard_cached_at_ = 0;
  // Last: stopped (its thread joined) before anything it reads goes.
  std::unique_ptr<HttpServer> http_;
};

}  // namespace shmsched::daemon
