// The shared-memory priority queue: the C++ API of producers and of the single consumer.
//
// Any process that can open the segment (its file mode decides) makes a Producer and submits;
// the supervisor makes the one Consumer. Each Producer or Consumer object registers one
// participant entry in the segment and must be used by one thread at a time; create it after
// fork(), not before. Operations take no lock and make no system call on their fast path.
// docs/architecture.md explains the algorithms, their progress guarantees and crash recovery.
#pragma once

#include <sys/types.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shmsched/core/priority.h"
#include "shmsched/ipc/execution.h"
#include "shmsched/ipc/segment.h"

namespace shmsched::ipc {

enum class CancelOutcome {
  kCancelled,    // it was queued; it will never be dequeued, and its counts were given back
  kNotFound,     // no queued or active execution has that id
  kActive,       // it has been dequeued; the consumer must release it (Consumer::release)
  kUnavailable,  // the consumer could not enter: a repair is pending (see blocked_by()); retry
};

struct QueueStats {
  std::array<std::uint64_t, kPriorityLevels> depth{};  // queued entries per priority
  std::uint64_t queued = 0;
  std::uint64_t active = 0;
  std::uint64_t capacity = 0;  // max_queue_size
  std::uint64_t participants = 0;
  bool consumer_sleeping = false;  // the consumer is (about to be) asleep on the wake-up word
  std::uint64_t enqueued = 0;
  std::uint64_t rejected_queue_full = 0;
  std::uint64_t rejected_user_limit = 0;
  std::uint64_t rejected_duplicate = 0;
  std::uint64_t rejected_payload_too_large = 0;
  std::uint64_t rejected_invalid = 0;
  std::uint64_t dequeued = 0;
  std::uint64_t cancelled = 0;
  std::uint64_t expired = 0;
  std::uint64_t released = 0;
  std::uint64_t maintenance_runs = 0;      // recoveries and compactions
  std::uint64_t maintenance_deferred = 0;  // given up for now: a live process stayed busy
  std::uint64_t reclaimed_slots = 0;       // slots given back by maintenance
  std::uint64_t reaped_participants = 0;   // dead producers/consumers cleaned up
};

// A claim of a dispatched execution by a worker (see claim_word.h): one compare-and-swap on the
// execution's claim word in its slot, so that of all claimants, in any process, over the ingress
// or straight through shared memory, exactly one wins.
enum class ClaimOutcome : std::uint8_t {
  kWon,
  kLost,         // another worker owns it: `owner`
  kNotCurrent,   // not open for claims at this attempt (not offered yet, or a newer attempt)
  kNotFound,     // not a dispatched execution (queued, finished, unknown)
  kUnavailable,  // the queue is being repaired and a stopped process holds that up: retry
};
struct ClaimResult {
  ClaimOutcome outcome = ClaimOutcome::kNotFound;
  std::uint32_t owner = 0;    // the owner's worker number when won or lost
  std::uint32_t attempt = 0;  // the attempt open for claims (kWon, kLost, kNotCurrent)
};
std::string_view claim_outcome_name(ClaimOutcome o);

// What producers and the consumer share: registration in the segment, cancel, status, stats.
class QueueHandle {
 public:
  QueueHandle(const QueueHandle&) = delete;
  QueueHandle& operator=(const QueueHandle&) = delete;
  virtual ~QueueHandle();

  // A snapshot of a queued or active execution, with its exact queue position when queued.
  std::optional<ExecutionRecord> status(std::string_view execution_id);

  // The current rank of a queued execution: how many entries will be dequeued before it.
  std::optional<std::uint64_t> queue_position(std::string_view execution_id);

  // Queued and active executions, optionally only those of one user, at most `limit`. Without
  // `with_data`, payloads, capabilities and metadata stay empty (a listing needs none of them).
  std::vector<ExecutionRecord> list(std::optional<std::string_view> user_id, std::size_t limit,
                                    bool with_data = true);

  // Current per-user count (queued + active) of `user_id`.
  std::uint64_t user_count(std::string_view user_id);

  QueueStats stats() const;

  // Enqueue time of the entry at the head of `level` (the longest waiting), if any.
  std::optional<std::int64_t> head_enqueued_at(Priority level);

  const std::shared_ptr<Segment>& segment() const { return segment_; }

  // Rebuilds all derived state from the slots, once every other participant is outside its
  // operation: returns what dead participants held and compacts cancelled entries. Runs by itself
  // when needed; exposed for tools and tests. While a live consumer is attached, only the
  // consumer's process maintains: other processes ask it to and wait. True when a rebuild ran
  // (here or on our request); false when it could not within the handle's wait, because a live
  // process stayed inside an operation (stopped, say): blocked_by() names it.
  bool run_maintenance();

  // The pid that kept this handle's last maintenance (or, for the consumer, its last operation)
  // from going ahead, or 0.
  pid_t blocked_by() const { return blocked_by_; }

 protected:
  // `wait`: the maintenance wait (see below); `bounded`: operations give up after it.
  QueueHandle(std::shared_ptr<Segment> segment, std::uint32_t role,
              std::chrono::milliseconds wait = std::chrono::milliseconds(1000),
              bool bounded = false, bool ask_consumer_in_process = false);

  // Cancels a queued execution by id in O(1) (plus O(log capacity) for the rank index). Public
  // on the Consumer only: the supervisor publishes ExecutionCancelled and counts it; other
  // processes cancel through the ingress.
  CancelOutcome cancel(std::string_view execution_id);

  // Brackets every operation that touches shared state (see "Maintenance" in the docs). An
  // unbounded handle's enter() waits as long as maintenance runs; a bounded one's (the consumer,
  // a producer with ProducerOptions::wait) waits at most its maintenance wait and returns false
  // when a repair it needs cannot run yet (blocked_by() names who holds it up).
  bool enter();
  void leave();
  // enter() ... leave() as a scope, so that an exception never leaves the busy flag set.
  class Bracket {
   public:
    explicit Bracket(QueueHandle& h) : h_(h), entered_(h.enter()) {}
    ~Bracket() {
      if (entered_) h_.leave();
    }
    Bracket(const Bracket&) = delete;
    Bracket& operator=(const Bracket&) = delete;
    explicit operator bool() const { return entered_; }

   private:
    QueueHandle& h_;
    bool entered_;
  };
  // False in a forked child that inherited this handle: only its creator may unregister it.
  bool owned_by_this_process() const;
  bool participant_alive(std::uint32_t index) const;
  void count(std::size_t counter, std::uint64_t n = 1);
  // Maintains (or has the consumer maintain) before `deadline`; see run_maintenance().
  bool maintain(std::chrono::steady_clock::time_point deadline);
  // True when something a dead process left half done needs a rebuild.
  bool rebuild_needed() const;

  std::shared_ptr<Segment> segment_;
  const detail::SegmentView* view_;
  static constexpr std::uint32_t kNoEntry = UINT32_MAX;
  std::uint32_t self_ = kNoEntry;
  std::uint64_t identity_ = 0;  // this process: pid + start time
  bool is_consumer_ = false;
  bool bounded_ = false;  // operations give up after maintenance_wait_ (see enter())
  // A consumer in this very process maintains (another thread of ours): ask it, as other
  // processes do, instead of holding up its operations with a rebuild of our own.
  bool ask_consumer_in_process_ = false;
  // A bounded handle that found a repair blocked fails fast while the word stays the same, so a
  // burst of operations costs one wait, not one each.
  std::uint64_t blocked_word_ = 0;
  std::chrono::steady_clock::time_point blocked_until_{};
  pid_t blocked_by_ = 0;
  // How long one maintenance attempt waits for busy participants (and the consumer for a repair).
  std::chrono::milliseconds maintenance_wait_;

 private:
  enum class Acquired { kClean, kDirty, kDoneByOther, kConsumerAppeared, kTimedOut };
  Acquired acquire_maintenance(std::chrono::steady_clock::time_point deadline);
  bool maintain_as_owner(bool dirty, std::chrono::steady_clock::time_point deadline);
  void release_maintenance(std::uint64_t value);
  bool may_maintain() const;
  bool request_from_consumer(std::chrono::steady_clock::time_point deadline);
  bool wait_for_maintenance(std::uint64_t seen, std::uint32_t round,
                            std::chrono::steady_clock::time_point deadline);
  bool claim_entry();
};

struct ProducerOptions {
  // How long an operation may wait for maintenance (a repair or compaction) to finish; unset:
  // as long as it takes. Set it on threads that must not block (the supervisor's): a submit
  // that would wait longer is refused as queue_full, naming the process that holds things up.
  std::optional<std::chrono::milliseconds> wait;
  // When the queue's consumer is another thread of this process (the supervisor's own
  // producers), ask it to maintain instead of maintaining here: its operations then never wait
  // for a rebuild of ours.
  bool ask_consumer_in_process = false;
};

// What a producer's wait for its entry's durable mark ended with (Producer::wait_durable).
enum class DurableOutcome : std::uint8_t {
  kDurable,      // the supervisor has its accepted record on disk
  kEnded,        // it left the queue (finished, cancelled or expired) before it was marked
  kUnavailable,  // the supervisor does not mark entries (no journal, a failed one, or none runs)
  kTimedOut,     // no mark within the timeout: it is queued (in memory) all the same
};
std::string_view durable_outcome_name(DurableOutcome o);

class Producer : public QueueHandle {
 public:
  // Registers in the segment. Throws SegmentError when all participant entries are taken.
  explicit Producer(std::shared_ptr<Segment> segment, ProducerOptions options = {});

  // Admission (capacity, per-user cap, duplicate id, payload size) and enqueue, as one step.
  SubmitResult submit(const SubmitRequest& request);

  // True when the supervisor marks entries once on disk (Header::durable_marks): a submit that
  // needs durability disk may then go through shared memory and wait_durable().
  bool durable_marks() const;
  // Waits until the supervisor has the accepted entry `submitted` on disk (or it has ended, or
  // marks stop). Sleeps on a futex; makes no system call when the mark is already there.
  DurableOutcome wait_durable(const SubmitResult& submitted, std::chrono::nanoseconds timeout);

  // Claims a dispatched execution for the worker numbered `worker` (the number its
  // register_worker reply gives, never 0), at `attempt` (its TaskPush's). Safe against a
  // claimant killed at any instruction: the claim is one atomic operation.
  ClaimResult claim(std::string_view execution_id, std::uint32_t attempt, std::uint32_t worker);
};

// A dispatched execution, held in the segment until released.
struct ActiveRef {
  std::uint32_t slot = 0;
  std::uint32_t generation = 0;
};

// Zero-copy view of a dequeued execution, valid until it is released.
struct ExecutionView {
  std::string_view execution_id;
  std::string_view user_id;
  Priority priority = Priority::kNormal;
  std::int64_t enqueued_at_ns = 0;
  std::uint32_t attempt = 1;
  std::uint32_t timeout_seconds = 0;
  std::span<const std::byte> payload;
  std::span<const std::byte> extras;  // encoded capabilities and metadata (see decode_extras)
  // The slot and its generation: which occupancy this is (Consumer::mark_durable).
  std::uint32_t slot = 0;
  std::uint32_t generation = 0;
};

struct ConsumerOptions {
  // How long the constructor waits to repair what a dead process left half done when a live
  // process stays inside an operation; then it throws SegmentError naming that process.
  std::chrono::milliseconds start_wait{5000};
  // How long one repair waits for busy participants before it is deferred (see reap_dead()).
  std::chrono::milliseconds maintenance_wait{50};
  // How long a registered consumer that is still alive is waited for before the constructor
  // throws: a supervisor killed a moment ago (its lock released as its files closed) is gone a
  // moment later. 0: at once.
  std::chrono::milliseconds takeover_wait{0};
};

class Consumer : public QueueHandle {
 public:
  // Registers as the segment's only consumer, taking over from a dead one (after recovering what
  // it left). Throws SegmentError if a live consumer is attached, or if a repair that is needed
  // cannot run within options.start_wait.
  explicit Consumer(std::shared_ptr<Segment> segment, ConsumerOptions options = {});

  using QueueHandle::cancel;
  ~Consumer() override;

  // The next execution in priority order (FIFO within a priority), now active; or nullopt.
  std::optional<ActiveRef> dequeue();
  // The next execution of one priority level only; `pos_out` receives its ring position (what
  // scan_new() counts in).
  std::optional<ActiveRef> dequeue(Priority level, std::uint64_t* pos_out = nullptr);

  // Visits up to `limit` queued entries of `level` that are not announced yet (oldest first),
  // calls `commit()`, then moves the segment's announce cursor past them: how the owner learns
  // of new submissions. `visit` gets the entry's view (valid until commit() returns) and its
  // current rank; `commit` is where the owner makes the announcements known, so that each is
  // made at least once even if the owner dies. Returns how many entries it visited. The cursor
  // lives in the segment (a restarted owner does not announce again what its predecessor did)
  // and follows its entries when a compaction renumbers the ring.
  template <typename Visit, typename Commit>
  std::size_t announce_new(Priority level, std::size_t limit, Visit&& visit, Commit&& commit);
  template <typename Visit>
  void announce_new(Priority level, Visit&& visit) {
    announce_new(level, SIZE_MAX, std::forward<Visit>(visit), [] {});
  }
  // The first position of `level` not announced yet; and moving it (an entry announced out of
  // turn, because it is taken before the announcement pass reached it).
  std::uint64_t announce_cursor(Priority level) const;
  void mark_announced(Priority level, std::uint64_t next);
  // True when some level has an entry that is not announced yet.
  bool has_unannounced();
  std::uint64_t level_tail(Priority level) const;
  // Queued entries of `level` (exact when nothing runs concurrently; a few loads). Helps a
  // tail that a stopped producer left behind its entry, so that entry counts.
  std::uint64_t depth(Priority level);

  // A 64-bit word the owner may keep with an active execution (its dispatch phase, say); it
  // survives the owner's restart with the slot.
  void annotate(ActiveRef ref, std::uint64_t value);
  std::uint64_t annotation(ActiveRef ref) const;
  // Sets the attempt number of an active execution (retries).
  void set_attempt(ActiveRef ref, std::uint32_t attempt);
  // Opens claims of a taken execution at `attempt` (no owner), unless they are open at that
  // attempt already (an owner stays).
  void open_claims(ActiveRef ref, std::uint32_t attempt);
  // Closes claims of `attempt` unless someone owns it: kLost with owner 0 when closed, with the
  // owner when owned, kNotCurrent when not open at that attempt.
  ClaimResult close_claims(ActiveRef ref, std::uint32_t attempt);
  // The supervisor's claim for a worker (`worker` 0: only reads who owns it).
  ClaimResult claim(ActiveRef ref, std::uint32_t attempt, std::uint32_t worker);

  // Durable marks (Header::durable_marks): the supervisor marks an entry's slot once its
  // accepted record is on disk, then wakes the producers waiting for marks (one system call
  // per batch, none when nobody waits). set_durable_marks(false) wakes them too: they stop
  // waiting (kUnavailable).
  void set_durable_marks(bool on);
  void mark_durable(std::uint32_t slot, std::uint32_t generation);
  void wake_durable_waiters();
  // How many producers wait for a mark now (a gauge for stats and tests).
  std::uint32_t durable_waiters() const;
  // Every queued or active entry's slot and generation: what a restarted supervisor marks once
  // its journal holds them all.
  std::vector<ActiveRef> occupied() const;

  // The dequeued execution's data, in place.
  std::optional<ExecutionView> view(ActiveRef ref) const;
  // The same, copied out.
  std::optional<ExecutionRecord> record(ActiveRef ref) const;

  // Finishes an active execution (completed, failed, cancelled while running): gives back its
  // user's count and its slot. False if the reference is stale, or if a pending repair kept the
  // consumer out (blocked_by() != 0): then call it again later.
  bool release(ActiveRef ref);

  // All executions currently active, e.g. after taking over from a dead consumer.
  std::vector<ActiveRef> active() const;

  // Removes queued entries older than `timeout` (enqueue time before now - timeout) and returns
  // them. Entries are swept from the head of each priority.
  std::vector<ExecutionRecord> sweep_stale(std::chrono::seconds timeout, std::int64_t now_ns = 0);

  // Sleeps until something is queued or `timeout` passes. True if something is queued.
  bool wait_for_work(std::chrono::nanoseconds timeout);

  // Sleeps until kick() or a producer rings, unless `ready()` (checked after announcing the
  // sleep, so no wake-up is lost) already holds. `ready` must be cheap.
  template <typename Ready>
  void sleep_unless(Ready&& ready, std::chrono::nanoseconds timeout);

  // Checks every participant for liveness and reclaims what dead ones held, and runs the
  // maintenance a producer asked for. Call it periodically, and when maintenance_requested();
  // returns the number of dead participants found. Never waits longer than the consumer's
  // maintenance wait: when a live process stays inside an operation, the repair is deferred to
  // the next call and blocked_by() names that process.
  std::uint64_t reap_dead();

  // A producer asked for maintenance (compaction or recovery), or a repair is pending.
  bool maintenance_requested() const;

  bool has_work();

 private:
  struct ScanItem {
    std::uint64_t pos;
    bool live;
    bool end;
  };
  ScanItem scan_at(std::size_t level, std::uint64_t pos) const;
  ExecutionView view_at(std::uint32_t slot) const;
  std::uint32_t slot_at(std::size_t level, std::uint64_t pos) const;
  std::uint64_t rank_of(std::size_t level, std::uint64_t pos) const;
  std::uint32_t announce_sleep();
  void finish_sleep(std::uint32_t seq, bool sleep, std::chrono::nanoseconds timeout);
};

// The queue's counts and counters, read without registering (plain atomic loads).
QueueStats queue_stats(const Segment& segment);

// Queued and active executions per user, read without registering: only each slot's state and
// user id, each read checked against the slot's control word (a slot reused meanwhile is skipped;
// the counts are a moment's picture, not a transaction).
struct UserTally {
  std::uint64_t queued = 0;
  std::uint64_t active = 0;
};
std::map<std::string, UserTally, std::less<>> tally_by_user(const Segment& segment);

// Wakes the consumer from sleep_unless() / wait_for_work() if it sleeps (or is about to); callable
// from any thread of any attached process, after handing it work with a sequentially consistent
// store that the consumer's `ready` check reads. Costs no system call while the consumer is awake.
void kick(const Segment& segment);

template <typename Visit, typename Commit>
std::size_t Consumer::announce_new(Priority level, std::size_t limit, Visit&& visit,
                                   Commit&& commit) {
  const std::size_t l = priority_index(level);
  if (!enter()) return 0;
  struct Leave {
    Consumer* c;
    ~Leave() { c->leave(); }
  } bracket{this};
  const std::uint64_t from = announce_cursor(level);
  std::uint64_t pos = from;
  std::size_t visited = 0;
  while (visited < limit) {
    const ScanItem item = scan_at(l, pos);
    if (item.end) break;
    if (item.live) {
      visit(view_at(slot_at(l, item.pos)), rank_of(l, item.pos));
      ++visited;
    }
    pos = item.pos + 1;
  }
  if (pos == from) return 0;
  commit();
  mark_announced(level, pos);
  return visited;
}

template <typename Ready>
void Consumer::sleep_unless(Ready&& ready, std::chrono::nanoseconds timeout) {
  const std::uint32_t seq = announce_sleep();
  finish_sleep(seq, !ready(), timeout);
}

// Capabilities and metadata of an execution, as stored in the segment.
std::vector<std::byte> encode_extras(const std::vector<std::string>& capabilities,
                                     const Metadata& metadata);
// False if `bytes` is not a valid encoding.
bool decode_extras(std::span<const std::byte> bytes, std::vector<std::string>& capabilities,
                   Metadata& metadata);

}  // namespace shmsched::ipc
