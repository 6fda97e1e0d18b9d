// The scheduling policy of shmschedd as a deterministic state machine: inputs in, actions out.
//
// It decides what runs next (priority order, aging, the cap on active executions), what happens
// to a dispatched execution (delivery results, completion, failure and retry with backoff,
// timeout, cancel), and what is remembered of finished ones. It reads no clock (time is an
// argument of every call), does no I/O and owns no thread: the shell around it
// (tools/shmschedd) feeds it what happened (an entry became visible in the queue, an operation
// arrived, a transport reported a delivery) and carries out the actions it returns (publish this
// event to these transports, answer this request, take the next entries of this priority, give
// this slot back). The queue's segment stays the source of truth for queued executions; the
// scheduler holds only executions taken from it, and after a restart it is rebuilt from the
// segment's active slots and the phase word the scheduler keeps in each (input::Recovered).
// docs/architecture.md ("The scheduler") says which state lives where.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <queue>
#include <set>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <boost/container/small_vector.hpp>

#include "shmsched/core/events.h"
#include "shmsched/core/priority.h"
#include "shmsched/core/worker_registry.h"

namespace shmsched::core {

// The policy's settings (a reload may change every one of them).
struct SchedulerConfig {
  std::uint64_t max_active_executions = 10;  // dispatched and unfinished, at most
  std::uint32_t max_attempts = 1;            // a failure with retry runs it again until this
  std::uint64_t retry_backoff_ms = 1000;     // first retry of a failed attempt, then doubling
  std::uint64_t dispatch_backoff_ms = 100;   // first re-publish after a transport failure
  std::uint64_t max_backoff_ms = 60000;
  std::uint64_t stale_timeout_seconds = 3600;  // queued longer than this: expired
  std::uint64_t sweep_interval_ms = 1000;
  // Waiting this long lifts an execution one priority level in the dispatch order (0: off).
  std::uint64_t aging_seconds = 0;
  // A dispatched execution that names no timeout_seconds gets this one; either way it fails
  // with reason "timeout" once its timeout plus the grace has passed (0: no default).
  std::uint64_t default_timeout_seconds = 3600;
  std::uint64_t timeout_grace_seconds = 30;
  // Finished executions remembered for `status`, `list` and duplicate detection.
  std::uint64_t finished_retention_count = 100000;
  std::uint64_t finished_retention_seconds = 3600;
  // Executions taken from the queue at most (dispatched, held, or waiting for a worker): the
  // segment's room for active ones. Those waiting for a worker use what dispatch leaves.
  std::uint64_t max_taken = 4096;
  // A worker not heard from for this long is gone; a push not claimed in time goes to another.
  std::uint64_t worker_timeout_ms = 30000;
  std::uint64_t claim_timeout_ms = 5000;
  std::uint64_t max_workers = 10000;  // live workers at most (each is kept in memory)
};

// Now, as the shell's clocks tell it: monotonic for timers, wall clock for enqueue times.
struct Time {
  std::int64_t mono_ns = 0;
  std::int64_t wall_ns = 0;
};

// What the scheduler knows of an execution (the payload stays in the segment).
struct ExecutionInfo {
  std::string execution_id;
  std::string user_id;
  Priority priority = Priority::kNormal;
  std::int64_t enqueued_at_ns = 0;  // wall clock
  std::uint32_t attempt = 1;
  std::uint32_t timeout_seconds = 0;
  // Given: dispatched as a TaskPush to a worker that has them all (normalized: sorted, unique).
  std::vector<std::string> required_capabilities;
};

using OpId = std::uint64_t;         // the shell's handle for a request awaiting its answer
using TransportId = std::uint64_t;  // one running instance of a transport

// kNotOwner: the queue holds it for another user than the one the cancel acts for.
enum class CancelOutcome : std::uint8_t { kCancelled, kNotFound, kActive, kUnavailable, kNotOwner };
// The claim word in the execution's slot (shared with local workers that claim through shared
// memory): the outcome of one compare-and-swap.
enum class ClaimOutcome : std::uint8_t { kWon, kLost, kNotCurrent, kNotFound, kUnavailable };

enum class FinalState : std::uint8_t { kNone = 0, kCompleted, kFailed, kCancelled, kExpired };
std::string_view final_state_name(FinalState s);

namespace input {
// The queue as the shell sees it now: depth and the oldest enqueue time of each level.
struct QueueState {
  std::array<std::uint64_t, kPriorityLevels> depth{};
  std::array<std::optional<std::int64_t>, kPriorityLevels> head_enqueued_at{};
};
// An execution became visible in the queue (once per execution): ExecutionAccepted.
struct Announced {
  ExecutionInfo info;
  std::uint64_t rank = 0;
};
// The answer to action::Take: one execution taken (now active), ...
struct Taken {
  std::size_t level = 0;
  SlotRef slot = 0;
  ExecutionInfo info;
};
// ... and, once per Take, how many it asked for were not there.
struct TakeDone {
  std::size_t level = 0;
  std::uint32_t missing = 0;
};
// The answer to action::SweepStale: one execution expired in the queue.
struct Expired {
  ExecutionInfo info;
};
// At start: an execution the previous supervisor had taken, with the phase word it kept, and
// its claim word: the attempt claims are open at (0: none) and who owns it (0: nobody).
struct Recovered {
  SlotRef slot = 0;
  ExecutionInfo info;
  std::uint64_t annotation = 0;
  std::uint32_t claims_open_at = 0;
  std::uint32_t owner = 0;
};
// `as_user`, on cancel, complete and fail: the request acts for this user only (a local client
// that is not trusted); it is refused for another user's execution. nullopt: for anyone.
struct Cancel {
  OpId op = 0;
  std::string execution_id;
  std::string reason;
  std::optional<std::string> as_user;
};
// The answer to action::CancelInQueue.
struct CancelResult {
  OpId op = 0;
  CancelOutcome outcome = CancelOutcome::kNotFound;
  std::string user_id;  // of the cancelled execution
};
struct Complete {
  OpId op = 0;
  std::string execution_id;
  std::optional<std::string> worker_id;
  std::optional<std::uint32_t> attempt;  // given: a report for another attempt is ignored
  std::optional<std::int64_t> exit_code;
  std::optional<std::string> as_user;
};
struct Fail {
  OpId op = 0;
  std::string execution_id;
  std::string error;
  std::optional<std::string> worker_id;
  std::optional<std::uint32_t> attempt;
  bool retry = false;
  std::optional<std::string> as_user;
};
// A submit that arrived through a transport (the ingress submits to the queue itself).
struct Submit {
  OpId op = 0;
  std::string execution_id;
  std::string user_id;
};
// The answer to action::SubmitToQueue.
struct SubmitResult {
  OpId op = 0;
  bool accepted = false;
  std::string reason;  // when refused: queue_full, user_limit, duplicate, ...
  std::string message;
  std::uint64_t queue_position = 0;
};
// A submit the ingress refused: only the event is published.
struct Rejected {
  std::string execution_id;
  std::string user_id;
  std::string reason;
  std::string message;
};
// `status` of an id the queue does not hold (finished, or unknown).
struct Status {
  OpId op = 0;
  std::string execution_id;
};
// `list` with state completed/failed/cancelled/expired.
struct ListFinished {
  OpId op = 0;
  FinalState state = FinalState::kNone;  // kNone: every finished one
  std::optional<std::string> user_id;
  std::uint64_t limit = 100;
};
// A transport's outcome for publish token `token` (exactly once per token and transport).
struct Delivery {
  TransportId transport = 0;
  std::uint64_t token = 0;
  bool ok = false;
};
// A transport instance started (at start or in a reload).
struct TransportUp {
  TransportId transport = 0;
  std::string name;
};
// No new publishes go to it; what it has is still awaited (it is being flushed).
struct TransportRetiring {
  TransportId transport = 0;
};
// It is gone: publishes it never acknowledged are published again where needed.
struct TransportGone {
  TransportId transport = 0;
};
struct Reload {
  SchedulerConfig config;
};
// Worker operations (docs/protocol.md). `session` names the process behind a local connection
// ("" when unknown): a live worker's id cannot be taken from another session.
struct RegisterWorker {
  OpId op = 0;
  std::string worker_id;
  std::vector<std::string> capabilities;
  std::uint32_t capacity = 1;
  std::vector<std::pair<std::string, std::string>> metadata;
  std::string session;
};
struct Heartbeat {
  OpId op = 0;
  std::string worker_id;
};
struct UnregisterWorker {
  OpId op = 0;
  std::string worker_id;
};
// The process behind `session` has exited: its workers are gone.
struct SessionGone {
  std::string session;
};
struct Claim {
  OpId op = 0;
  std::string worker_id;
  std::string execution_id;
};
struct ReportBlocker {
  OpId op = 0;
  std::string worker_id;
  std::string type, description, severity;
  std::vector<std::string> required_capabilities;
  std::string execution_id;
};
// `workers`: the live workers and what waits for them.
struct ListWorkers {
  OpId op = 0;
};
// The answer to action::ClaimInSegment.
struct ClaimResult {
  OpId op = 0;
  std::string execution_id;
  std::uint32_t attempt = 0;
  ClaimOutcome outcome = ClaimOutcome::kNotFound;
  std::uint32_t owner = 0;  // the owner's worker number (won or lost)
};
}  // namespace input

using Input =
    std::variant<input::QueueState, input::Announced, input::Taken, input::TakeDone, input::Expired,
                 input::Recovered, input::Cancel, input::CancelResult, input::Complete, input::Fail,
                 input::Submit, input::SubmitResult, input::Rejected, input::Status,
                 input::ListFinished, input::Delivery, input::TransportUp, input::TransportRetiring,
                 input::TransportGone, input::Reload, input::RegisterWorker, input::Heartbeat,
                 input::UnregisterWorker, input::SessionGone, input::Claim, input::ReportBlocker,
                 input::ListWorkers, input::ClaimResult>;

namespace action {
// Publish `event` to these transports (empty: every one that is up); for a CreatePodCommand,
// each must report the outcome of `token` (input::Delivery). Events have token 0.
struct Publish {
  Event event;
  boost::container::small_vector<TransportId, 2> to;
  std::uint64_t token = 0;
};
struct Answer {
  OpId op = 0;
  Reply reply;
  bool list = false;  // a list answer: `items` are its elements, under `list_key`
  std::string list_key = "executions";
  std::vector<Reply> items;
};
// Take up to `count` executions from the head of `level` (input::Taken for each, then
// input::TakeDone).
struct Take {
  std::size_t level = 0;
  std::uint32_t count = 1;
};
// Submit the request of `op` to the queue (input::SubmitResult).
struct SubmitToQueue {
  OpId op = 0;
};
// Cancel a queued execution (input::CancelResult): only if it belongs to `as_user` when given
// (else kNotOwner, nothing done).
struct CancelInQueue {
  OpId op = 0;
  std::string execution_id;
  std::optional<std::string> as_user;
};
// Expire queued executions enqueued before this wall-clock time (input::Expired each).
struct SweepStale {
  std::int64_t enqueued_before_ns = 0;
};
// Keep `value` in the execution's slot (its phase word, read back by input::Recovered).
struct Annotate {
  SlotRef slot = 0;
  std::uint64_t value = 0;
};
struct SetAttempt {
  SlotRef slot = 0;
  std::uint32_t attempt = 1;
};
// Give the slot back to the queue (the execution is finished). Must be carried out, later if
// the queue cannot take it now.
struct Release {
  SlotRef slot = 0;
};
// Open claims of a taken execution at `attempt` in its claim word (no owner), unless open at
// that attempt already (then its owner stays).
struct OpenClaims {
  SlotRef slot = 0;
  std::uint32_t attempt = 1;
};
// Claim it in its claim word for the worker numbered `worker` (0: only read who owns it), at
// `attempt` (input::ClaimResult with `op`).
struct ClaimInSegment {
  OpId op = 0;
  SlotRef slot = 0;
  std::string execution_id;
  std::uint32_t attempt = 1;
  std::uint32_t worker = 0;
  // Instead: close claims of `attempt` unless someone owns it (its owner is answered then).
  bool close = false;
};
// A state change that is not an event (a claim) for the audit log; events are audited as they
// are published.
struct Audit {
  std::string type;
  std::string execution_id;
  std::string worker_id;
  std::uint32_t attempt = 0;
  std::string via;  // how: "ingress", "shared_memory"
};
// A decision worth a line in the log (a failed publish and its backoff, a timeout).
struct Log {
  bool warning = false;
  std::string execution_id;
  std::string message;
};
}  // namespace action

using Action = std::variant<action::Publish, action::Answer, action::Take, action::SubmitToQueue,
                            action::CancelInQueue, action::SweepStale, action::Annotate,
                            action::SetAttempt, action::Release, action::Log, action::OpenClaims,
                            action::ClaimInSegment, action::Audit>;

struct SchedulerCounters {
  std::uint64_t accepted = 0;
  std::uint64_t rejected = 0;
  std::uint64_t dispatched = 0;  // attempts every transport acknowledged
  std::uint64_t completed = 0;
  std::uint64_t failed = 0;  // final failures (timeouts included)
  std::uint64_t retried = 0;
  std::uint64_t timed_out = 0;
  std::uint64_t cancelled = 0;
  std::uint64_t expired = 0;
  std::uint64_t publish_failures = 0;
  std::uint64_t aged = 0;           // taken ahead of a higher priority by aging
  std::uint64_t stale_reports = 0;  // complete/fail for an attempt that is not current: ignored
  std::uint64_t pushed = 0;         // TaskPush decisions (re-pushes included)
  std::uint64_t claims_won = 0;
  std::uint64_t claims_lost = 0;
  std::uint64_t claim_timeouts = 0;  // pushes re-pushed because nobody claimed them in time
  std::uint64_t workers_registered = 0;
  std::uint64_t workers_lost = 0;            // gone without unregistering (timeout, process exit)
  std::uint64_t worker_lost_executions = 0;  // claimed by a worker that went: retried or failed
  std::uint64_t blockers = 0;
};

// Phase of a taken execution, kept in its slot (action::Annotate) so that a restarted scheduler
// knows what to do with it.
enum class Phase : std::uint8_t {
  kUnknown = 0,      // taken, nothing recorded yet (a supervisor died right there)
  kHeld = 1,         // waiting: retry or publish backoff
  kDispatching = 2,  // published, acknowledgements outstanding
  kDispatched = 3,   // every transport has it
  kFinished = 4,     // its final event is out; only the release of its slot is left
};

// The phase word: phase | effective level << 8 | publish failures << 16 | final state << 32 |
// attempt << 40 (the attempt it is about: a crash between announcing a retry and storing the new
// attempt in the slot must not bring the failed attempt back).
std::uint64_t phase_word(Phase p, std::size_t level, std::uint32_t failures, FinalState final,
                         std::uint32_t attempt);
Phase phase_of(std::uint64_t word);
std::uint32_t attempt_of(std::uint64_t word);

class Scheduler {
 public:
  explicit Scheduler(SchedulerConfig config);

  // Takes one input; appends the actions it leads to.
  void handle(const Input& in, Time now, std::vector<Action>& out);
  // Time-driven decisions: dispatch what capacity allows, retries whose backoff passed,
  // timeouts, stale sweeps, retries of cancels the queue could not take. Call it after the
  // inputs of a round, and again whenever it returned actions whose answers were fed back. It
  // decides at most 1,024 dispatches per call (a bounded batch; call again for more).
  void advance(Time now, std::vector<Action>& out);
  // The next monotonic time at which advance() has something to do: `now` itself when the last
  // call stopped at its batch bound with more to dispatch; nullopt: only inputs can give it work.
  std::optional<std::int64_t> next_deadline(Time now) const;

  const SchedulerCounters& counters() const { return counters_; }
  const SchedulerConfig& config() const { return config_; }
  std::uint64_t dispatched_now() const { return running(); }  // dispatched and unfinished
  std::size_t taken() const { return active_.size(); }        // out of the queue, unfinished
  std::size_t held() const;                                   // taken, waiting to be published
  std::size_t remembered_finished() const { return finished_.size(); }
  // Would advance() take from the queue if it had entries? (The shell sleeps otherwise.)
  bool can_take(Time now) const;
  const WorkerRegistry& workers() const { return workers_; }
  std::size_t waiting_for_workers() const { return waiting_.size(); }
  // Executions waiting for a worker, by the capabilities they need (joined by ",").
  std::map<std::string, std::uint64_t> waiting_by_capabilities() const;

 private:
  // Executions taken from the queue live in a pool (execs_), found by id through active_ and by
  // publish token through the index the token carries: the dispatch path allocates nothing per
  // execution once the pool has grown.
  struct Exec {
    bool live = false;
    SlotRef slot = 0;
    ExecutionInfo info;
    Phase phase = Phase::kUnknown;
    std::size_t level = 2;  // effective level of its lane while held
    std::int64_t ready_at = 0;
    std::uint32_t publish_failures = 0;
    std::uint64_t token = 0;  // of the publish in flight (0: none)
    // A handful of transports at most: inline, no allocation per execution.
    boost::container::small_vector<TransportId, 2> pending;  // outcomes still due for `token`
    bool publish_failed = false;
    boost::container::small_vector<std::string, 2>
        acked;  // transports (by name) that have this attempt
    std::int64_t dispatched_at = 0;
    bool dispatched_once = false;   // a dispatch went out already (Event::first_dispatch)
    std::uint64_t timeout_seq = 0;  // invalidates older entries of the timeout heap
    // Workers (executions with required capabilities): pushed to `worker`, claimed by `owner`;
    // `load_on` is the one whose load counts it; `avoid` the one it last failed on.
    std::string worker, owner, load_on, avoid;
    std::string pushed_to;          // "<worker>#<serial>" its transports' acknowledgements are for
    bool waiting = false;           // in waiting_: no live worker with room covers it
    std::uint32_t claims_open = 0;  // the attempt its claim word is open at (0: not open)
    std::uint32_t owner_no = 0;     // the owner's worker number, as the claim word says
    bool owner_wait = false;        // held until its owner (not a live worker) registers again
    bool closing = false;           // parked, its claims being closed (see park())
    // The worker whose own fail (with retry) started the backoff the next attempt waits out;
    // cleared once that attempt is published. Empty when the scheduler decided the retry.
    std::string retry_failed_by;
    std::uint64_t claim_seq = 0;  // invalidates older entries of the claim heap
  };
  using ExecIndex = std::uint32_t;
  struct FinishedRecord {
    FinalState state = FinalState::kNone;
    std::string user_id;
    Priority priority = Priority::kNormal;
    std::int64_t enqueued_at_ns = 0;
    std::int64_t finished_at_ns = 0;  // wall clock
    std::int64_t finished_mono = 0;
    std::uint64_t seq = 0;  // order of remembering (finished_order_)
    std::uint32_t attempt = 1;
    std::optional<std::string> worker_id;
    std::optional<std::int64_t> exit_code;
    std::optional<std::string> error;
    std::optional<std::string> reason;
  };
  struct PendingCancel {
    std::string execution_id;
    std::string reason;
    std::int64_t retry_at = 0;
    std::optional<std::string> as_user;
  };
  struct TimeoutEntry {
    std::int64_t at;
    ExecIndex exec;
    std::uint64_t seq;  // unique among all arms: a reused pool entry never matches
    bool operator>(const TimeoutEntry& o) const { return at > o.at; }
  };

  void on(const input::QueueState& in, Time now, std::vector<Action>& out);
  void on(const input::Announced& in, Time now, std::vector<Action>& out);
  void on(const input::Taken& in, Time now, std::vector<Action>& out);
  void on(const input::TakeDone& in, Time now, std::vector<Action>& out);
  void on(const input::Expired& in, Time now, std::vector<Action>& out);
  void on(const input::Recovered& in, Time now, std::vector<Action>& out);
  void on(const input::Cancel& in, Time now, std::vector<Action>& out);
  void on(const input::CancelResult& in, Time now, std::vector<Action>& out);
  void on(const input::Complete& in, Time now, std::vector<Action>& out);
  void on(const input::Fail& in, Time now, std::vector<Action>& out);
  void on(const input::Submit& in, Time now, std::vector<Action>& out);
  void on(const input::SubmitResult& in, Time now, std::vector<Action>& out);
  void on(const input::Rejected& in, Time now, std::vector<Action>& out);
  void on(const input::Status& in, Time now, std::vector<Action>& out);
  void on(const input::ListFinished& in, Time now, std::vector<Action>& out);
  void on(const input::Delivery& in, Time now, std::vector<Action>& out);
  void on(const input::TransportUp& in, Time now, std::vector<Action>& out);
  void on(const input::TransportRetiring& in, Time now, std::vector<Action>& out);
  void on(const input::TransportGone& in, Time now, std::vector<Action>& out);
  void on(const input::Reload& in, Time now, std::vector<Action>& out);

  Exec* reported(OpId op, const std::string& id, std::optional<std::uint32_t> attempt,
                 const std::optional<std::string>& worker,
                 const std::optional<std::string>& as_user, bool fail_report,
                 std::vector<Action>& out);
  Exec* find(const std::string& id);
  ExecIndex index_of(const Exec& e) const { return static_cast<ExecIndex>(&e - execs_.data()); }
  // A fresh pool entry for `id` (an old one of the same id is reused: cannot happen, ids are
  // unique in the queue, but the state stays consistent).
  Exec& admit(const std::string& id);
  void retire(Exec& e);  // finished: out of active_, back to the pool
  void publish_dispatch(Exec& e, Time now, std::vector<Action>& out);
  void resolve_dispatch(Exec& e, Time now, std::vector<Action>& out);
  void hold(Exec& e, std::int64_t ready_at, bool front, std::vector<Action>& out);
  void unhold(Exec& e);
  void set_phase(Exec& e, Phase p, std::vector<Action>& out, FinalState final = FinalState::kNone);
  // Publishes ExecutionFailed and retries or finishes (an operation, or a timeout).
  void fail(Exec& e, std::string error, std::optional<std::string> reason,
            std::optional<std::string> worker, bool retry, Time now, std::vector<Action>& out);
  void finish(Exec& e, FinalState state, const FinishedRecord& rec, Time now,
              std::vector<Action>& out);
  void remember(const std::string& id, FinishedRecord rec, Time now);
  void forget_old(Time now);
  std::int64_t backoff_ns(std::uint64_t base_ms, std::uint32_t failures) const;
  std::size_t aged_level(std::size_t level, std::int64_t enqueued_at_ns, Time now) const;
  void arm_timeout(Exec& e, Time now);
  Reply finished_reply(const std::string& id, const FinishedRecord& r) const;
  void publish(Event ev, std::vector<Action>& out);
  void on(const input::RegisterWorker& in, Time now, std::vector<Action>& out);
  void on(const input::Heartbeat& in, Time now, std::vector<Action>& out);
  void on(const input::UnregisterWorker& in, Time now, std::vector<Action>& out);
  void on(const input::SessionGone& in, Time now, std::vector<Action>& out);
  void on(const input::Claim& in, Time now, std::vector<Action>& out);
  void on(const input::ReportBlocker& in, Time now, std::vector<Action>& out);
  void on(const input::ListWorkers& in, Time now, std::vector<Action>& out);
  // A worker is gone: its pushed executions go to another, its claimed ones back to the queue.
  void worker_gone(const std::string& id, const std::string& reason, Time now,
                   std::vector<Action>& out);
  void settle_load(Exec& e);                     // the execution no longer counts on any worker
  void park(Exec& e, std::vector<Action>& out);  // waits for a worker
  void arm_claim_timeout(Exec& e, Time now);
  void on(const input::ClaimResult& in, Time now, std::vector<Action>& out);
  // What the claim word must be asked before a decision (see pending_claims_).
  struct PendingClaim {
    enum Kind : std::uint8_t { kClaim, kReport, kClaimTimeout, kWorkerGone, kPark } kind = kClaim;
    std::string worker_id;  // kClaim: the claimant; kWorkerGone: the worker that went
    std::string reason;     // kWorkerGone
    std::optional<input::Complete> complete;  // kReport
    std::optional<input::Fail> fail;          // kReport
  };
  void ask_claim_word(Exec& e, OpId op, std::uint32_t worker, PendingClaim pending,
                      std::vector<Action>& out);
  // The claim word says `number` owns it: the owner as far as the registry knows it.
  // `learned`: a claim the scheduler learns of now (audited, counted), not one it rebuilt at start.
  // An owner that is not a live worker is lost once `orphaned_at` passes (see orphans_).
  void adopt_owner(Exec& e, std::uint32_t number, Time now, bool learned, std::vector<Action>& out);
  void settle_orphans(Time now, std::vector<Action>& out);
  void resume_for_owner(Exec& e, Time now, std::vector<Action>& out);
  void set_owner_wait(Exec& e, bool wait);
  // What counts against max_active_executions: dispatched, and held for an owner that is running
  // it somewhere (see owner_wait).
  std::uint64_t running() const { return dispatched_ + owner_waiting_ + closing_; }
  bool claimed(const Exec& e) const { return !e.owner.empty() || e.owner_no != 0; }
  std::string owner_name(const Exec& e) const;
  void claim_won(Exec& e, Worker& w, Time now, std::vector<Action>& out);
  void reoffer(Exec& e, Time now, std::vector<Action>& out);  // after a claim timeout
  void lose_worker_exec(Exec& e, const std::string& id, const std::string& reason, Time now,
                        std::vector<Action>& out);
  void report_complete(const input::Complete& in, bool asked, Time now, std::vector<Action>& out);
  void report_fail(const input::Fail& in, bool asked, Time now, std::vector<Action>& out);

  SchedulerConfig config_;
  SchedulerCounters counters_;
  std::vector<Exec> execs_;
  std::vector<ExecIndex> free_execs_;
  absl::flat_hash_map<std::string, ExecIndex> active_;        // taken and unfinished, by id
  std::array<std::deque<ExecIndex>, kPriorityLevels> lanes_;  // held, in dispatch order
  std::map<TransportId, std::string> transports_;             // up and taking publishes
  std::map<TransportId, std::string> retiring_;               // flushing: awaited, no new publishes
  std::uint64_t next_token_ = 1;
  std::uint64_t dispatched_ = 0;
  std::int64_t paused_until_ = 0;  // after a failed publish, nothing new is taken until then
  input::QueueState queue_;
  std::array<std::uint32_t, kPriorityLevels> taking_{};  // asked for, not yet answered
  std::int64_t next_sweep_ = 0;
  bool batch_full_ = false;  // the last advance() used its whole dispatch budget
  std::priority_queue<TimeoutEntry, std::vector<TimeoutEntry>, std::greater<>> timeouts_;
  std::uint64_t timeout_seq_ = 0;
  std::unordered_map<OpId, PendingCancel> cancels_in_queue_;  // asked of the queue
  std::vector<std::pair<OpId, PendingCancel>> deferred_cancels_;
  std::unordered_map<OpId, input::Submit> submits_;  // asked of the queue
  absl::flat_hash_map<std::string, FinishedRecord> finished_;
  // Oldest first: (id, seq); an entry whose seq no longer matches its record is stale.
  std::deque<std::pair<std::string, std::uint64_t>> finished_order_;
  std::uint64_t finished_seq_ = 0;
  WorkerRegistry workers_;
  std::deque<ExecIndex> waiting_;         // in arrival order
  std::uint64_t waiting_seen_epoch_ = 0;  // workers_.room_epoch() when waiting_ was last tried
  std::priority_queue<TimeoutEntry, std::vector<TimeoutEntry>, std::greater<>> claim_timeouts_;
  // Decisions waiting for the claim word (keyed by their op; internal ones get ops from the top
  // of the range, which the shell never uses).
  std::unordered_map<OpId, PendingClaim> pending_claims_;
  // Executions owned (by their claim word) by a number no live worker has: lost when the time
  // passes unless that worker registers (at once when it went; after worker_timeout_ms at start).
  struct Orphan {
    ExecIndex exec;
    std::uint32_t number;
    std::int64_t at;
  };
  std::vector<Orphan> orphans_;
  std::uint64_t owner_waiting_ = 0;
  std::uint64_t closing_ = 0;
  OpId next_internal_op_ = ~OpId{0};
};

}  // namespace shmsched::core
