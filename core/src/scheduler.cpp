// The scheduling policy (scheduler.h). Every decision is a function of the inputs so far and the
// `now` passed in; nothing here reads a clock or touches the outside world.
#include "shmsched/core/scheduler.h"

#include <algorithm>
#include <stdexcept>

namespace shmsched::core {

namespace {

constexpr std::int64_t kMs = 1'000'000;
constexpr std::int64_t kSec = 1'000'000'000;
constexpr std::int64_t kCancelRetryNs = 100 * kMs;  // a cancel the queue could not take
constexpr std::uint64_t kDispatchBatch = 1024;      // dispatches decided per advance()

// A publish token: the pool index of its execution above a sequence number, so that a delivery
// result finds its execution without a look-up table. Bit 63 stays clear (the shell's own).
constexpr int kTokenIndexShift = 40;
constexpr std::uint64_t kTokenSeqMask = (1ULL << kTokenIndexShift) - 1;
constexpr std::size_t kMaxExecs = 1ULL << 23;  // the segment holds at most 4,194,304 active

}  // namespace

std::string_view event_name(EventType t) {
  switch (t) {
    case EventType::kAccepted:
      return "ExecutionAccepted";
    case EventType::kRejected:
      return "ExecutionRejected";
    case EventType::kCreatePodCommand:
      return "CreatePodCommand";
    case EventType::kCompleted:
      return "ExecutionCompleted";
    case EventType::kFailed:
      return "ExecutionFailed";
    case EventType::kCancelled:
      return "ExecutionCancelled";
    case EventType::kExpired:
      return "ExecutionExpired";
    case EventType::kTaskPush:
      return "TaskPush";
    case EventType::kWorkerRegistered:
      return "WorkerRegistered";
    case EventType::kWorkerUnregistered:
      return "WorkerUnregistered";
    case EventType::kBlockerReported:
      return "BlockerReported";
  }
  return "?";
}

namespace {
template <typename V, typename T>
bool erase_one(V& v, const T& x) {
  auto it = std::find(v.begin(), v.end(), x);
  if (it == v.end()) return false;
  *it = v.back();
  v.pop_back();
  return true;
}

// A request that acts for one user only, about another user's execution.
std::string not_theirs(const std::string& as_user, const std::string& id,
                       const std::string& owner) {
  return "execution " + id + " belongs to user '" + owner + "'; user '" + as_user +
         "' acts for itself only (root, shmschedd's own user and the trusted group act for anyone)";
}

void answer(std::vector<Action>& out, OpId op, Reply reply) {
  action::Answer a;
  a.op = op;
  a.reply = std::move(reply);
  out.push_back(std::move(a));
}
}  // namespace

std::string_view final_state_name(FinalState s) {
  switch (s) {
    case FinalState::kCompleted:
      return "completed";
    case FinalState::kFailed:
      return "failed";
    case FinalState::kCancelled:
      return "cancelled";
    case FinalState::kExpired:
      return "expired";
    case FinalState::kNone:
      break;
  }
  return "finished";
}

std::uint64_t phase_word(Phase p, std::size_t level, std::uint32_t failures, FinalState final,
                         std::uint32_t attempt) {
  return static_cast<std::uint64_t>(p) | (static_cast<std::uint64_t>(level & 0xff) << 8) |
         (static_cast<std::uint64_t>(std::min<std::uint32_t>(failures, 0xffff)) << 16) |
         (static_cast<std::uint64_t>(final) << 32) |
         (static_cast<std::uint64_t>(std::min<std::uint32_t>(attempt, 0xffffff)) << 40);
}

std::uint32_t attempt_of(std::uint64_t word) {
  return static_cast<std::uint32_t>(word >> 40);
}

Phase phase_of(std::uint64_t word) {
  const auto p = static_cast<std::uint8_t>(word & 0xff);
  return p <= static_cast<std::uint8_t>(Phase::kFinished) ? static_cast<Phase>(p) : Phase::kUnknown;
}

Scheduler::Scheduler(SchedulerConfig config) : config_(config) {
  // Room for what is usually dispatched at once, so that the dispatch path seldom rehashes; not
  // more: memory reserved for a large cap is touched in random places by the map's inserts, one
  // page fault each (a cap of 400,000 cost every dispatch a fault until the pages were in).
  const auto room = std::min<std::uint64_t>(config_.max_active_executions, 1 << 14);
  active_.reserve(room);
  execs_.reserve(room);
  std::vector<TimeoutEntry> heap;
  heap.reserve(room);
  timeouts_ = decltype(timeouts_)(std::greater<>(), std::move(heap));
}

Scheduler::Exec* Scheduler::find(const std::string& id) {
  auto it = active_.find(id);
  return it == active_.end() ? nullptr : &execs_[it->second];
}

Scheduler::Exec& Scheduler::admit(const std::string& id) {
  auto [it, fresh] = active_.try_emplace(id, 0);
  if (!fresh) {
    Exec& old = execs_[it->second];
    unhold(old);
    settle_load(old);
    set_owner_wait(old, false);
    if (old.closing) --closing_;
    old.closing = false;
    if (old.phase == Phase::kDispatching || old.phase == Phase::kDispatched) --dispatched_;
    old = Exec{};
    old.live = true;
    return old;
  }
  ExecIndex idx = 0;
  if (!free_execs_.empty()) {
    idx = free_execs_.back();
    free_execs_.pop_back();
  } else {
    if (execs_.size() >= kMaxExecs) {
      active_.erase(it);
      throw std::length_error("the scheduler holds " + std::to_string(kMaxExecs) +
                              " taken executions, more than any segment can");
    }
    idx = static_cast<ExecIndex>(execs_.size());
    execs_.emplace_back();
  }
  it->second = idx;
  Exec& e = execs_[idx];
  // Field by field: the pooled strings keep their buffers.
  e.live = true;
  e.slot = 0;
  e.phase = Phase::kUnknown;
  e.retry_failed_by.clear();
  e.level = 2;
  e.ready_at = 0;
  e.publish_failures = 0;
  e.token = 0;
  e.pending.clear();
  e.publish_failed = false;
  e.acked.clear();
  e.dispatched_at = 0;
  e.dispatched_once = false;
  e.timeout_seq = 0;
  e.worker.clear();
  e.owner.clear();
  e.load_on.clear();
  e.avoid.clear();
  e.pushed_to.clear();
  e.waiting = false;
  e.claim_seq = 0;
  e.claims_open = 0;
  e.owner_no = 0;
  set_owner_wait(e, false);
  if (e.closing) --closing_;
  e.closing = false;
  return e;
}

void Scheduler::retire(Exec& e) {
  active_.erase(e.info.execution_id);
  e.live = false;
  e.token = 0;
  e.timeout_seq = 0;
  free_execs_.push_back(index_of(e));
}

void Scheduler::handle(const Input& in, Time now, std::vector<Action>& out) {
  std::visit([&](const auto& v) { on(v, now, out); }, in);
}

std::size_t Scheduler::held() const {
  std::size_t n = 0;
  for (const auto& lane : lanes_) n += lane.size();
  return n;
}

std::int64_t Scheduler::backoff_ns(std::uint64_t base_ms, std::uint32_t failures) const {
  std::uint64_t ms = base_ms;
  for (std::uint32_t i = 1; i < failures && ms < config_.max_backoff_ms; ++i) ms *= 2;
  return static_cast<std::int64_t>(std::min(ms, config_.max_backoff_ms)) * kMs;
}

// Aging: every aging_seconds of waiting lifts an execution one level in the dispatch order.
std::size_t Scheduler::aged_level(std::size_t level, std::int64_t enqueued_at_ns, Time now) const {
  if (config_.aging_seconds == 0) return level;
  const std::int64_t step = static_cast<std::int64_t>(config_.aging_seconds) * kSec;
  const std::int64_t lifts = std::max<std::int64_t>(0, (now.wall_ns - enqueued_at_ns) / step);
  return static_cast<std::size_t>(
      std::max<std::int64_t>(0, static_cast<std::int64_t>(level) - lifts));
}

void Scheduler::publish(Event ev, std::vector<Action>& out) {
  out.push_back(action::Publish{std::move(ev), {}, 0});
}

void Scheduler::set_phase(Exec& e, Phase p, std::vector<Action>& out, FinalState final) {
  const bool was = e.phase == Phase::kDispatching || e.phase == Phase::kDispatched;
  const bool is = p == Phase::kDispatching || p == Phase::kDispatched;
  if (!was && is) ++dispatched_;
  if (was && !is) --dispatched_;
  e.phase = p;
  out.push_back(
      action::Annotate{e.slot, phase_word(p, e.level, e.publish_failures, final, e.info.attempt)});
}

// ---- Inputs -----------------------------------------------------------------------------------

void Scheduler::on(const input::QueueState& in, Time, std::vector<Action>&) {
  queue_ = in;
}

void Scheduler::on(const input::Announced& in, Time, std::vector<Action>& out) {
  ++counters_.accepted;
  Event ev;
  ev.type = EventType::kAccepted;
  ev.execution_id = in.info.execution_id;
  ev.user_id = in.info.user_id;
  ev.priority = in.info.priority;
  ev.queue_position = in.rank;
  publish(std::move(ev), out);
}

void Scheduler::on(const input::Taken& in, Time now, std::vector<Action>& out) {
  const std::size_t level = std::min(in.level, kPriorityLevels - 1);
  if (taking_[level] > 0) --taking_[level];
  if (queue_.depth[level] > 0) --queue_.depth[level];
  const std::size_t effective =
      aged_level(priority_index(in.info.priority), in.info.enqueued_at_ns, now);
  Exec& e = admit(in.info.execution_id);
  e.slot = in.slot;
  e.info = in.info;
  if (!e.info.required_capabilities.empty()) {
    e.info.required_capabilities = normalized(std::move(e.info.required_capabilities));
  }
  e.level = effective;
  publish_dispatch(e, now, out);
}

void Scheduler::on(const input::TakeDone& in, Time, std::vector<Action>&) {
  const std::size_t level = std::min(in.level, kPriorityLevels - 1);
  taking_[level] -= std::min(taking_[level], in.missing);
  if (in.missing > 0) queue_.depth[level] = 0;  // it had fewer than we thought
}

void Scheduler::on(const input::Expired& in, Time now, std::vector<Action>& out) {
  ++counters_.expired;
  FinishedRecord rec;
  rec.state = FinalState::kExpired;
  rec.user_id = in.info.user_id;
  rec.priority = in.info.priority;
  rec.enqueued_at_ns = in.info.enqueued_at_ns;
  rec.attempt = in.info.attempt;
  rec.reason = "stale_timeout";
  remember(in.info.execution_id, rec, now);
  Event ev;
  ev.type = EventType::kExpired;
  ev.execution_id = in.info.execution_id;
  ev.user_id = in.info.user_id;
  ev.reason = "stale_timeout";
  publish(std::move(ev), out);
}

void Scheduler::on(const input::Recovered& in, Time now, std::vector<Action>& out) {
  const Phase phase = phase_of(in.annotation);
  if (phase == Phase::kFinished) {
    // Its final event was published; the previous supervisor died before the release.
    out.push_back(action::Release{in.slot});
    FinishedRecord rec;
    rec.state = static_cast<FinalState>((in.annotation >> 32) & 0xff);
    rec.user_id = in.info.user_id;
    rec.priority = in.info.priority;
    rec.enqueued_at_ns = in.info.enqueued_at_ns;
    rec.attempt = in.info.attempt;
    remember(in.info.execution_id, rec, now);
    return;
  }
  Exec& e = admit(in.info.execution_id);
  e.slot = in.slot;
  e.info = in.info;
  e.info.required_capabilities = normalized(std::move(e.info.required_capabilities));
  // The word may know of a newer attempt than the slot (a crash between the two stores).
  if (attempt_of(in.annotation) > e.info.attempt) {
    e.info.attempt = attempt_of(in.annotation);
    out.push_back(action::SetAttempt{e.slot, e.info.attempt});
  }
  e.level = phase == Phase::kUnknown
                ? priority_index(in.info.priority)
                : std::min<std::size_t>((in.annotation >> 8) & 0xff, kPriorityLevels - 1);
  e.publish_failures = static_cast<std::uint32_t>((in.annotation >> 16) & 0xffff);
  // The claim word outlives supervisors: who claimed it is still known (by number, until that
  // worker registers again).
  // (The phase word may have moved on to a newer attempt than the claim word's.)
  e.claims_open = in.claims_open_at == e.info.attempt ? e.info.attempt : 0;
  // A previous supervisor sent it (or was sending it): not a first dispatch again.
  e.dispatched_once = phase == Phase::kDispatched || phase == Phase::kDispatching;
  if (e.claims_open != 0 && in.owner != 0) adopt_owner(e, in.owner, now, false, out);
  if (phase == Phase::kDispatched) {
    // Every transport had it. Its timeout starts again now (the time it was dispatched died
    // with the previous supervisor).
    e.acked.clear();
    set_phase(e, Phase::kDispatched, out);
    arm_timeout(e, now);
    // Offered to a worker nobody knows now, and unclaimed: offered again if nobody claims it.
    if (!e.info.required_capabilities.empty() && !claimed(e)) arm_claim_timeout(e, now);
    return;
  }
  // Held, or its dispatch was in flight: publish it (again). Delivery is at least once;
  // execution_id is the idempotency key.
  hold(e, now.mono_ns, false, out);
}

void Scheduler::on(const input::Cancel& in, Time now, std::vector<Action>& out) {
  const std::string reason = in.reason.empty() ? "cancelled" : in.reason;
  if (Exec* found = find(in.execution_id)) {
    // Ours (dispatched, or held for a retry): nothing to ask the queue.
    Exec& e = *found;
    if (in.as_user && e.info.user_id != *in.as_user) {
      answer(out, in.op,
             Reply::failure("unauthorized",
                            not_theirs(*in.as_user, e.info.execution_id, e.info.user_id)));
      return;
    }
    ++counters_.cancelled;
    Event ev;
    ev.type = EventType::kCancelled;
    ev.execution_id = e.info.execution_id;
    ev.user_id = e.info.user_id;
    ev.reason = reason;
    publish(std::move(ev), out);
    FinishedRecord rec;
    rec.state = FinalState::kCancelled;
    rec.reason = reason;
    finish(e, FinalState::kCancelled, rec, now, out);
    answer(out, in.op, Reply::success());
    return;
  }
  // Not ours: ask the queue even for an id that finished before (it may have been submitted
  // again since, and the queue holds that one).
  cancels_in_queue_[in.op] = PendingCancel{in.execution_id, reason, 0, in.as_user};
  out.push_back(action::CancelInQueue{in.op, in.execution_id, in.as_user});
}

void Scheduler::on(const input::CancelResult& in, Time now, std::vector<Action>& out) {
  auto it = cancels_in_queue_.find(in.op);
  if (it == cancels_in_queue_.end()) return;
  PendingCancel pc = std::move(it->second);
  cancels_in_queue_.erase(it);
  switch (in.outcome) {
    case CancelOutcome::kCancelled: {
      ++counters_.cancelled;
      FinishedRecord rec;
      rec.state = FinalState::kCancelled;
      rec.user_id = in.user_id;
      rec.reason = pc.reason;
      remember(pc.execution_id, rec, now);
      Event ev;
      ev.type = EventType::kCancelled;
      ev.execution_id = pc.execution_id;
      ev.user_id = in.user_id;
      ev.reason = pc.reason;
      publish(std::move(ev), out);
      answer(out, in.op, Reply::success());
      return;
    }
    case CancelOutcome::kNotOwner:
      answer(out, in.op,
             Reply::failure("unauthorized",
                            not_theirs(pc.as_user.value_or(""), pc.execution_id, in.user_id)));
      return;
    case CancelOutcome::kActive:
      // Taken from the queue since: cancel it as ours.
      if (active_.count(pc.execution_id)) {
        on(input::Cancel{in.op, pc.execution_id, pc.reason, pc.as_user}, now, out);
        return;
      }
      [[fallthrough]];
    case CancelOutcome::kNotFound:
      forget_old(now);
      answer(
          out, in.op,
          finished_.count(pc.execution_id)
              ? Reply::failure("finished", "execution " + pc.execution_id + " has already finished")
              : Reply::failure("not_found", "no queued or active execution " + pc.execution_id));
      return;
    case CancelOutcome::kUnavailable:
      // The queue is held up (a repair a stopped process blocks): ask again a little later.
      pc.retry_at = now.mono_ns + kCancelRetryNs;
      deferred_cancels_.emplace_back(in.op, std::move(pc));
      return;
  }
}

// The execution a complete/fail reports on, or nullptr after answering why it is not one:
// unknown, finished, or a report for an attempt that is not the current one.
Scheduler::Exec* Scheduler::reported(OpId op, const std::string& id,
                                     std::optional<std::uint32_t> attempt,
                                     const std::optional<std::string>& worker,
                                     const std::optional<std::string>& as_user, bool fail_report,
                                     std::vector<Action>& out) {
  Exec* found = find(id);
  if (!found) {
    answer(out, op,
           finished_.count(id)
               ? Reply::failure("finished", "execution " + id + " has already finished")
               : Reply::failure("not_found", "no dispatched execution " + id));
    return nullptr;
  }
  Exec& e = *found;
  if (as_user && e.info.user_id != *as_user) {
    answer(out, op, Reply::failure("not_owner", not_theirs(*as_user, id, e.info.user_id)));
    return nullptr;
  }
  const bool owns = worker && (e.owner == *worker || (e.owner.empty() && e.owner_no != 0 &&
                                                      e.owner_no == worker_number(*worker)));
  if (worker && claimed(e) && !owns) {
    answer(out, op,
           Reply::failure("not_owner", "execution " + id + " is claimed by worker '" +
                                           owner_name(e) + "', not by '" + *worker + "'"));
    return nullptr;
  }
  if (worker && !claimed(e) && !e.worker.empty() && *worker != e.worker) {
    answer(out, op,
           Reply::failure("not_owner", "execution " + id + " was pushed to worker '" + e.worker +
                                           "' and nobody has claimed it: claim it first"));
    return nullptr;
  }
  // A worker's fail that names no attempt, from the worker whose own fail started the backoff
  // the next attempt waits out (not published since): nobody has that attempt, so it is the
  // same report again (taken, it would burn the next attempt). A complete is never taken for
  // one: after a retry the scheduler decided (a timeout, a lost worker), it is the result.
  const bool repeated_fail = fail_report && worker && !attempt && !e.retry_failed_by.empty() &&
                             *worker == e.retry_failed_by;
  if ((attempt && *attempt != e.info.attempt) || repeated_fail) {
    ++counters_.stale_reports;
    answer(out, op,
           Reply::success()
               .with("ignored", true)
               .with("attempt", static_cast<std::int64_t>(e.info.attempt)));
    return nullptr;
  }
  return &e;
}

void Scheduler::on(const input::Complete& in, Time now, std::vector<Action>& out) {
  report_complete(in, false, now, out);
}

void Scheduler::on(const input::Fail& in, Time now, std::vector<Action>& out) {
  report_fail(in, false, now, out);
}

// A report names a worker while the scheduler knows of no owner: the claim word may know one (a
// claim through shared memory), so it is asked first.
void Scheduler::report_complete(const input::Complete& in, bool asked, Time now,
                                std::vector<Action>& out) {
  if (Exec* e = find(in.execution_id);
      e && !asked && in.worker_id && !claimed(*e) && e->claims_open == e->info.attempt) {
    PendingClaim pc;
    pc.kind = PendingClaim::kReport;
    pc.complete = in;
    ask_claim_word(*e, in.op, 0, std::move(pc), out);
    return;
  }
  Exec* found = reported(in.op, in.execution_id, in.attempt, in.worker_id, in.as_user, false, out);
  if (!found) return;
  Exec& e = *found;
  ++counters_.completed;
  Event ev;
  ev.type = EventType::kCompleted;
  ev.execution_id = e.info.execution_id;
  ev.user_id = e.info.user_id;
  ev.worker_id = in.worker_id;
  ev.exit_code = in.exit_code;
  publish(std::move(ev), out);
  FinishedRecord rec;
  rec.state = FinalState::kCompleted;
  rec.worker_id = in.worker_id;
  rec.exit_code = in.exit_code;
  finish(e, FinalState::kCompleted, rec, now, out);
  answer(out, in.op, Reply::success());
}

void Scheduler::report_fail(const input::Fail& in, bool asked, Time now, std::vector<Action>& out) {
  if (Exec* e = find(in.execution_id);
      e && !asked && in.worker_id && !claimed(*e) && e->claims_open == e->info.attempt) {
    PendingClaim pc;
    pc.kind = PendingClaim::kReport;
    pc.fail = in;
    ask_claim_word(*e, in.op, 0, std::move(pc), out);
    return;
  }
  Exec* e = reported(in.op, in.execution_id, in.attempt, in.worker_id, in.as_user, true, out);
  if (!e) return;
  const bool again = in.retry && e->info.attempt < config_.max_attempts;
  fail(*e, in.error, std::nullopt, in.worker_id, in.retry, now, out);
  if (again && in.worker_id) e->retry_failed_by = *in.worker_id;  // held, not released
  answer(out, in.op, Reply::success());
}

void Scheduler::fail(Exec& e, std::string error, std::optional<std::string> reason,
                     std::optional<std::string> worker, bool retry, Time now,
                     std::vector<Action>& out) {
  const bool again = retry && e.info.attempt < config_.max_attempts;
  // Another attempt goes to another worker if there is one.
  const std::string ran_on = claimed(e) ? owner_name(e) : e.worker;
  if (!worker && !ran_on.empty()) worker = ran_on;
  settle_load(e);
  if (again) {
    e.avoid = ran_on;
    e.worker.clear();
    e.owner.clear();
    e.owner_no = 0;
    e.pushed_to.clear();
    // The next attempt is recorded (phase word, then slot) before its predecessor's failure is
    // announced: a supervisor that dies in between publishes the new attempt, never the failed
    // one again, and an execution never stays "dispatched" with its failure already out.
    ++counters_.retried;
    e.publish_failures = 0;
    ++e.info.attempt;
    hold(e, now.mono_ns + backoff_ns(config_.retry_backoff_ms, e.info.attempt - 1), true, out);
    e.retry_failed_by.clear();  // set by report_fail when a worker's own fail caused it
    e.acked.clear();
    out.push_back(action::SetAttempt{e.slot, e.info.attempt});
  }
  Event ev;
  ev.type = EventType::kFailed;
  ev.execution_id = e.info.execution_id;
  ev.user_id = e.info.user_id;
  ev.worker_id = worker;
  ev.error = error;
  if (reason) ev.reason = *reason;
  ev.will_retry = again;
  ev.attempt = again ? e.info.attempt - 1 : e.info.attempt;
  publish(std::move(ev), out);
  if (again) return;
  ++counters_.failed;
  FinishedRecord rec;
  rec.state = FinalState::kFailed;
  rec.worker_id = std::move(worker);
  rec.error = std::move(error);
  rec.reason = std::move(reason);
  finish(e, FinalState::kFailed, rec, now, out);
}

void Scheduler::on(const input::Submit& in, Time now, std::vector<Action>& out) {
  forget_old(now);
  if (finished_.count(in.execution_id)) {
    // A redelivered or replayed request for an execution that already ran must not run again.
    const std::string why = "execution " + in.execution_id + " has already finished";
    on(input::Rejected{in.execution_id, in.user_id, "duplicate", why}, now, out);
    answer(out, in.op, Reply::failure("duplicate", why));
    return;
  }
  submits_[in.op] = in;
  out.push_back(action::SubmitToQueue{in.op});
}

void Scheduler::on(const input::SubmitResult& in, Time now, std::vector<Action>& out) {
  auto it = submits_.find(in.op);
  if (it == submits_.end()) return;
  const input::Submit sub = std::move(it->second);
  submits_.erase(it);
  if (in.accepted) {
    answer(out, in.op,
           Reply::success()
               .with("execution_id", sub.execution_id)
               .with("queue_position", static_cast<std::int64_t>(in.queue_position)));
    return;
  }
  on(input::Rejected{sub.execution_id, sub.user_id, in.reason, in.message}, now, out);
  answer(out, in.op, Reply::failure(in.reason, in.message));
}

void Scheduler::on(const input::Rejected& in, Time, std::vector<Action>& out) {
  ++counters_.rejected;
  Event ev;
  ev.type = EventType::kRejected;
  ev.execution_id = in.execution_id;
  ev.user_id = in.user_id;
  ev.reason = in.reason;
  ev.message = in.message;
  publish(std::move(ev), out);
}

Reply Scheduler::finished_reply(const std::string& id, const FinishedRecord& r) const {
  Reply reply;
  reply.with("execution_id", id)
      .with("state", std::string(final_state_name(r.state)))
      .with("priority", std::string(priority_name(r.priority)))
      .with("user_id", r.user_id)
      .with("attempt", static_cast<std::int64_t>(r.attempt))
      .with("enqueued_at", r.enqueued_at_ns)
      .with("finished_at", r.finished_at_ns);
  if (r.worker_id) reply.with("worker_id", *r.worker_id);
  if (r.exit_code) reply.with("exit_code", *r.exit_code);
  if (r.error) reply.with("error", *r.error);
  if (r.reason) reply.with("reason", *r.reason);
  return reply;
}

void Scheduler::on(const input::Status& in, Time now, std::vector<Action>& out) {
  forget_old(now);
  auto it = finished_.find(in.execution_id);
  if (it == finished_.end()) {
    answer(out, in.op, Reply::failure("not_found", "no execution " + in.execution_id));
    return;
  }
  answer(out, in.op, finished_reply(in.execution_id, it->second));
}

void Scheduler::on(const input::ListFinished& in, Time now, std::vector<Action>& out) {
  forget_old(now);
  action::Answer a;
  a.op = in.op;
  a.list = true;
  // Newest first.
  for (auto it = finished_order_.rbegin(); it != finished_order_.rend(); ++it) {
    if (a.items.size() >= in.limit) break;
    auto f = finished_.find(it->first);
    if (f == finished_.end() || f->second.seq != it->second) continue;
    if (in.state != FinalState::kNone && f->second.state != in.state) continue;
    if (in.user_id && f->second.user_id != *in.user_id) continue;
    a.items.push_back(finished_reply(it->first, f->second));
  }
  out.push_back(std::move(a));
}

void Scheduler::on(const input::Delivery& in, Time now, std::vector<Action>& out) {
  const std::uint64_t idx = in.token >> kTokenIndexShift;
  if (idx >= execs_.size()) return;
  Exec& e = execs_[idx];
  // Only a result for the current publish, from an instance that was asked, counts (a retry,
  // a cancel or a completion superseded the others).
  if (!e.live || in.token == 0 || e.token != in.token || !erase_one(e.pending, in.transport)) {
    return;
  }
  std::string name;
  if (auto up = transports_.find(in.transport); up != transports_.end()) name = up->second;
  if (auto r = retiring_.find(in.transport); r != retiring_.end()) name = r->second;
  if (in.ok) {
    if (std::find(e.acked.begin(), e.acked.end(), name) == e.acked.end()) e.acked.push_back(name);
  } else {
    e.publish_failed = true;
  }
  if (e.pending.empty()) resolve_dispatch(e, now, out);
}

void Scheduler::on(const input::TransportUp& in, Time, std::vector<Action>&) {
  transports_[in.transport] = in.name;
}

void Scheduler::on(const input::TransportRetiring& in, Time, std::vector<Action>&) {
  auto it = transports_.find(in.transport);
  if (it == transports_.end()) return;
  retiring_[in.transport] = it->second;
  transports_.erase(it);
}

void Scheduler::on(const input::TransportGone& in, Time now, std::vector<Action>& out) {
  std::string name;
  if (auto it = transports_.find(in.transport); it != transports_.end()) {
    name = it->second;
    transports_.erase(it);
  }
  if (auto it = retiring_.find(in.transport); it != retiring_.end()) {
    name = it->second;
    retiring_.erase(it);
  }
  // Dispatches still waiting for it stop waiting. If another instance of the same transport is
  // up (a replacement), the message never reached it: that counts as a failed publish, and the
  // execution is published again to the transports that do not have it only.
  bool replaced = false;
  for (const auto& [id, n] : transports_) replaced = replaced || n == name;
  std::vector<ExecIndex> resolved;
  for (const auto& [id, idx] : active_) {
    Exec& e = execs_[idx];
    if (e.phase != Phase::kDispatching || !erase_one(e.pending, in.transport)) continue;
    if (replaced) e.publish_failed = true;
    if (e.pending.empty()) resolved.push_back(idx);
  }
  for (const ExecIndex idx : resolved) {
    if (execs_[idx].live) resolve_dispatch(execs_[idx], now, out);
  }
}

void Scheduler::on(const input::Reload& in, Time now, std::vector<Action>& out) {
  config_ = in.config;
  forget_old(now);
  // Timeouts follow the new settings from the next dispatch; armed ones keep their deadline.
  (void)out;
}

// ---- Dispatch ---------------------------------------------------------------------------------

void Scheduler::publish_dispatch(Exec& e, Time now, std::vector<Action>& out) {
  const bool push = !e.info.required_capabilities.empty();
  const Worker* current = push && !e.worker.empty() ? workers_.find(e.worker) : nullptr;
  if (push && !claimed(e) &&
      (!current || !covers(current->capabilities, e.info.required_capabilities))) {
    // A worker for it: the least loaded live one that covers it and has room.
    settle_load(e);
    e.worker.clear();
    Worker* w = workers_.pick(e.info.required_capabilities, e.avoid);
    if (!w) {
      park(e, out);
      return;
    }
    e.worker = w->id;
    e.load_on = w->id;
    ++w->load;
    ++counters_.pushed;
    arm_claim_timeout(e, now);
  }
  if (push && claimed(e) && e.owner.empty()) {
    // Its owner (by the claim word) is not a live worker: nothing to offer anyone. It waits for
    // that worker to register again (then it is pushed to it) or for its orphan grace to end
    // (then it is lost: settle_orphans).
    unhold(e);
    set_phase(e, Phase::kHeld, out);
    e.token = 0;
    e.pending.clear();
    set_owner_wait(e, true);
    return;
  }
  if (push && e.claims_open != e.info.attempt) {
    // Claims of this attempt open before it is offered (the shell stores before it publishes).
    out.push_back(action::OpenClaims{e.slot, e.info.attempt});
    e.claims_open = e.info.attempt;
    e.owner_no = 0;
  }
  if (push) {
    // A new recipient (a new offer) goes to every transport again; the same one again (a
    // failed publish) only to the transports that lack it.
    const std::string& to = !e.owner.empty() ? e.owner : e.worker;
    const Worker* r = workers_.find(to);
    std::string recipient = to + "#" + std::to_string(r ? r->serial : 0);
    if (e.pushed_to != recipient) {
      e.acked.clear();
      e.pushed_to = std::move(recipient);
    }
  }
  std::uint64_t seq = next_token_++ & kTokenSeqMask;
  if (seq == 0) seq = next_token_++ & kTokenSeqMask;
  e.token = static_cast<std::uint64_t>(index_of(e)) << kTokenIndexShift | seq;
  e.pending.clear();
  e.publish_failed = false;
  action::Publish p;
  p.event.type = push ? EventType::kTaskPush : EventType::kCreatePodCommand;
  if (push) {
    p.event.worker_id = !e.owner.empty() ? e.owner : e.worker;
    p.event.target = *p.event.worker_id;
  }
  p.event.execution_id = e.info.execution_id;
  p.event.user_id = e.info.user_id;
  p.event.priority = e.info.priority;
  p.event.slot = e.slot;
  p.event.attempt = e.info.attempt;
  p.event.first_dispatch = !e.dispatched_once && e.info.attempt == 1;
  e.dispatched_once = true;
  p.token = e.token;
  for (const auto& [id, name] : transports_) {
    if (std::find(e.acked.begin(), e.acked.end(), name) != e.acked.end()) {
      continue;  // never twice to one transport for one attempt
    }
    e.pending.push_back(id);
    p.to.push_back(id);
  }
  set_phase(e, Phase::kDispatching, out);
  e.retry_failed_by.clear();
  if (e.dispatched_at == 0) {
    e.dispatched_at = now.mono_ns;
    arm_timeout(e, now);
  }
  if (!p.to.empty()) out.push_back(std::move(p));
  if (e.pending.empty()) resolve_dispatch(e, now, out);
}

void Scheduler::resolve_dispatch(Exec& e, Time now, std::vector<Action>& out) {
  e.token = 0;
  if (!e.publish_failed && !e.acked.empty()) {
    e.publish_failures = 0;
    set_phase(e, Phase::kDispatched, out);
    ++counters_.dispatched;
    return;
  }
  // Never lost, never failed for a transport hiccup: back to the front of its level, later;
  // nothing new is taken from the queue until then.
  ++e.publish_failures;
  ++counters_.publish_failures;
  const std::int64_t delay = backoff_ns(config_.dispatch_backoff_ms, e.publish_failures);
  out.push_back(action::Log{true, e.info.execution_id,
                            "dispatch of " + e.info.execution_id + " failed (" +
                                std::to_string(e.publish_failures) + " time(s)); retrying in " +
                                std::to_string(delay / kMs) + " ms"});
  const std::int64_t ready =
      now.mono_ns + backoff_ns(config_.dispatch_backoff_ms, e.publish_failures);
  hold(e, ready, true, out);
  paused_until_ = std::max(paused_until_, ready);
}

void Scheduler::hold(Exec& e, std::int64_t ready_at, bool front, std::vector<Action>& out) {
  e.token = 0;
  e.pending.clear();
  unhold(e);
  set_phase(e, Phase::kHeld, out);
  e.ready_at = ready_at;
  // Not dispatched any more: its timeout starts again when it is.
  e.dispatched_at = 0;
  e.timeout_seq = 0;
  auto& lane = lanes_[std::min(e.level, kPriorityLevels - 1)];
  if (front) {
    lane.push_front(index_of(e));
  } else {
    lane.push_back(index_of(e));
  }
}

void Scheduler::unhold(Exec& e) {
  if (e.waiting) {
    e.waiting = false;
    waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), index_of(e)), waiting_.end());
    return;
  }
  if (e.phase != Phase::kHeld) return;
  auto& lane = lanes_[std::min(e.level, kPriorityLevels - 1)];
  lane.erase(std::remove(lane.begin(), lane.end(), index_of(e)), lane.end());
}

void Scheduler::arm_timeout(Exec& e, Time now) {
  const std::uint64_t seconds =
      e.info.timeout_seconds ? e.info.timeout_seconds : config_.default_timeout_seconds;
  if (seconds == 0) return;
  e.timeout_seq = ++timeout_seq_;
  timeouts_.push(TimeoutEntry{
      now.mono_ns + static_cast<std::int64_t>(seconds + config_.timeout_grace_seconds) * kSec,
      index_of(e), e.timeout_seq});
}

void Scheduler::finish(Exec& e, FinalState state, const FinishedRecord& base, Time now,
                       std::vector<Action>& out) {
  unhold(e);
  settle_load(e);
  set_owner_wait(e, false);
  if (e.closing) --closing_;
  e.closing = false;
  // Marked finished first: a supervisor that dies before the release releases it on restart
  // instead of dispatching it again.
  set_phase(e, Phase::kFinished, out, state);
  out.push_back(action::Release{e.slot});
  FinishedRecord rec = base;
  rec.state = state;
  rec.user_id = e.info.user_id;
  rec.priority = e.info.priority;
  rec.enqueued_at_ns = e.info.enqueued_at_ns;
  rec.attempt = e.info.attempt;
  remember(e.info.execution_id, std::move(rec), now);
  retire(e);  // `e` is free from here on
}

void Scheduler::remember(const std::string& id, FinishedRecord rec, Time now) {
  rec.finished_at_ns = now.wall_ns;
  rec.finished_mono = now.mono_ns;
  rec.seq = ++finished_seq_;
  finished_order_.emplace_back(id, rec.seq);
  finished_[id] = std::move(rec);
  forget_old(now);
}

void Scheduler::forget_old(Time now) {
  const std::int64_t cutoff =
      now.mono_ns - static_cast<std::int64_t>(config_.finished_retention_seconds) * kSec;
  while (!finished_order_.empty()) {
    const auto& [id, seq] = finished_order_.front();
    auto it = finished_.find(id);
    const bool stale = it == finished_.end() || it->second.seq != seq;
    if (!stale && finished_.size() <= config_.finished_retention_count &&
        it->second.finished_mono >= cutoff) {
      break;
    }
    if (!stale) finished_.erase(it);
    finished_order_.pop_front();
  }
}

bool Scheduler::can_take(Time now) const {
  return running() < config_.max_active_executions && active_.size() < config_.max_taken &&
         !transports_.empty() && now.mono_ns >= paused_until_;
}

// ---- Workers ----------------------------------------------------------------------------------

void Scheduler::settle_load(Exec& e) {
  if (e.load_on.empty()) return;
  if (Worker* w = workers_.find(e.load_on)) {
    if (w->load > 0) --w->load;
    workers_.room_changed();
  }
  e.load_on.clear();
}

void Scheduler::park(Exec& e, std::vector<Action>& out) {
  unhold(e);
  set_phase(e, Phase::kHeld, out);
  e.token = 0;
  e.pending.clear();
  e.claim_seq = 0;
  e.waiting = true;
  waiting_.push_back(index_of(e));
  if (e.claims_open == e.info.attempt) {
    // Offered before: a local worker could still claim it while it waits, unseen and beyond
    // max_active_executions. Its claims close, unless someone owns it already.
    PendingClaim pc;
    pc.kind = PendingClaim::kPark;
    pending_claims_[next_internal_op_] = std::move(pc);
    // It may be running on a claimant: it counts as running until the answer says otherwise.
    e.closing = true;
    ++closing_;
    out.push_back(action::ClaimInSegment{next_internal_op_--, e.slot, e.info.execution_id,
                                         e.info.attempt, 0, true});
  }
}

void Scheduler::arm_claim_timeout(Exec& e, Time now) {
  if (config_.claim_timeout_ms == 0) return;
  e.claim_seq = ++timeout_seq_;
  claim_timeouts_.push(
      TimeoutEntry{now.mono_ns + static_cast<std::int64_t>(config_.claim_timeout_ms) * kMs,
                   index_of(e), e.claim_seq});
}

std::map<std::string, std::uint64_t> Scheduler::waiting_by_capabilities() const {
  std::map<std::string, std::uint64_t> out;
  for (const ExecIndex idx : waiting_) {
    std::string key;
    for (const auto& c : execs_[idx].info.required_capabilities) {
      if (!key.empty()) key += ',';
      key += c;
    }
    ++out[key];
  }
  return out;
}

namespace {
Event worker_event(EventType type, const Worker& w) {
  Event ev;
  ev.type = type;
  ev.worker_id = w.id;
  ev.capabilities = w.capabilities;
  return ev;
}
}  // namespace

void Scheduler::on(const input::RegisterWorker& in, Time now, std::vector<Action>& out) {
  if (in.worker_id.empty()) {
    answer(out, in.op, Reply::failure("invalid", "field 'worker_id' must not be empty"));
    return;
  }
  if (!workers_.find(in.worker_id) && workers_.size() >= config_.max_workers) {
    answer(out, in.op,
           Reply::failure("invalid", std::to_string(workers_.size()) +
                                         " workers are registered, the most max_workers allows"));
    return;
  }
  Worker w;
  w.id = in.worker_id;
  w.capabilities = in.capabilities;
  w.capacity = std::max<std::uint32_t>(1, in.capacity);
  w.metadata = in.metadata;
  w.session = in.session;
  w.registered_at_ns = now.wall_ns;
  w.last_heartbeat_mono = now.mono_ns;
  w.last_heartbeat_ns = now.wall_ns;
  switch (workers_.add(std::move(w))) {
    case WorkerRegistry::Registration::kTakenByAnotherSession:
      answer(out, in.op,
             Reply::failure("invalid", "worker id '" + in.worker_id +
                                           "' is registered by another live process: choose "
                                           "another id, or unregister that one first"));
      return;
    case WorkerRegistry::Registration::kNumberTaken:
      answer(out, in.op,
             Reply::failure("invalid", "worker id '" + in.worker_id +
                                           "' has the same worker number as a live worker's: "
                                           "choose another id"));
      return;
    case WorkerRegistry::Registration::kNew: {
      ++counters_.workers_registered;
      publish(worker_event(EventType::kWorkerRegistered, *workers_.find(in.worker_id)), out);
      // Executions it claimed through shared memory before a supervisor restart are its again
      // (in pool order, so that the outcome does not depend on the hash map's order).
      const std::uint32_t number = worker_number(in.worker_id);
      std::vector<ExecIndex> owned;
      for (const auto& [eid, idx] : active_) {
        if (execs_[idx].owner.empty() && execs_[idx].owner_no == number) owned.push_back(idx);
      }
      std::sort(owned.begin(), owned.end());
      for (const ExecIndex idx : owned) {
        adopt_owner(execs_[idx], number, now, false, out);
        resume_for_owner(execs_[idx], now, out);
      }
      break;
    }
    case WorkerRegistry::Registration::kUpdated:
      break;
  }
  answer(out, in.op,
         Reply::success()
             .with("worker_id", in.worker_id)
             .with("worker_number", static_cast<std::int64_t>(worker_number(in.worker_id)))
             .with("worker_timeout_ms", static_cast<std::int64_t>(config_.worker_timeout_ms))
             .with("heartbeat_interval_ms", static_cast<std::int64_t>(std::max<std::uint64_t>(
                                                1, config_.worker_timeout_ms / 3))));
}

void Scheduler::on(const input::Heartbeat& in, Time now, std::vector<Action>& out) {
  Worker* w = workers_.find(in.worker_id);
  if (!w) {
    answer(out, in.op,
           Reply::failure("not_found", "no live worker '" + in.worker_id +
                                           "' (gone, or never registered): register it again"));
    return;
  }
  w->last_heartbeat_mono = now.mono_ns;
  w->last_heartbeat_ns = now.wall_ns;
  answer(out, in.op, Reply::success());
}

void Scheduler::on(const input::UnregisterWorker& in, Time now, std::vector<Action>& out) {
  if (!workers_.find(in.worker_id)) {
    answer(out, in.op, Reply::failure("not_found", "no live worker '" + in.worker_id + "'"));
    return;
  }
  worker_gone(in.worker_id, "unregistered", now, out);
  answer(out, in.op, Reply::success());
}

void Scheduler::on(const input::SessionGone& in, Time now, std::vector<Action>& out) {
  for (const auto& id : workers_.of_session(in.session)) {
    ++counters_.workers_lost;
    worker_gone(id, "process_exited", now, out);
  }
}

void Scheduler::worker_gone(const std::string& id, const std::string& reason, Time now,
                            std::vector<Action>& out) {
  auto gone = workers_.remove(id);
  if (!gone) return;
  workers_.room_changed();
  out.push_back(action::Log{true, "", "worker " + id + " is gone (" + reason + ")"});
  std::vector<ExecIndex> affected;
  for (const auto& [eid, idx] : active_) {
    Exec& e = execs_[idx];
    if (e.load_on == id) e.load_on.clear();  // its load left with it
    // Also every execution whose owner is unknown: it may have claimed one through shared memory.
    if (e.owner == id || (e.owner.empty() && e.owner_no == gone->number) ||
        (!claimed(e) && (e.worker == id || e.claims_open == e.info.attempt))) {
      affected.push_back(idx);
    }
  }
  // In pool order, so that the outcome does not depend on the hash map's iteration order.
  std::sort(affected.begin(), affected.end());
  for (const ExecIndex idx : affected) {
    Exec& e = execs_[idx];
    if (!e.live) continue;
    if (e.load_on == id) e.load_on.clear();  // the worker and its load are gone
    if (!claimed(e) && e.claims_open == e.info.attempt) {
      // The claim word may say it claimed it (through shared memory): ask before deciding.
      PendingClaim pc;
      pc.kind = PendingClaim::kWorkerGone;
      pc.worker_id = id;
      pc.reason = reason;
      ask_claim_word(e, next_internal_op_--, 0, std::move(pc), out);
      continue;
    }
    lose_worker_exec(e, id, reason, now, out);
  }
  Event ev = worker_event(EventType::kWorkerUnregistered, *gone);
  ev.reason = reason;
  publish(std::move(ev), out);
}

// What a gone worker leaves: an execution it owned may have run (another attempt, or the final
// failure); one only pushed to it never ran (offered to another worker, same attempt).
void Scheduler::lose_worker_exec(Exec& e, const std::string& id, const std::string& reason,
                                 Time now, std::vector<Action>& out) {
  const bool owned = e.owner == id || (e.owner.empty() && e.owner_no == worker_number(id));
  if (owned) {
    ++counters_.worker_lost_executions;
    fail(e, "worker " + id + " is gone (" + reason + ")", std::string("worker_lost"), id, true, now,
         out);
    return;
  }
  if (claimed(e) || e.worker != id) return;  // another worker has it
  e.avoid = id;
  e.worker.clear();
  hold(e, now.mono_ns, true, out);
}

void Scheduler::ask_claim_word(Exec& e, OpId op, std::uint32_t worker, PendingClaim pending,
                               std::vector<Action>& out) {
  pending_claims_[op] = std::move(pending);
  out.push_back(action::ClaimInSegment{op, e.slot, e.info.execution_id, e.info.attempt, worker});
}

void Scheduler::adopt_owner(Exec& e, std::uint32_t number, Time now, bool learned,
                            std::vector<Action>& out) {
  Worker* w = workers_.find_number(number);
  if (learned && e.owner_no != number) {
    // Claimed through shared memory: the scheduler learns of it now.
    ++counters_.claims_won;
    out.push_back(action::Audit{"claimed", e.info.execution_id,
                                w ? w->id : "#" + std::to_string(number), e.info.attempt,
                                "shared_memory"});
  }
  e.owner_no = number;
  e.claim_seq = 0;
  if (w) {
    if (e.load_on != w->id) {
      settle_load(e);
      ++w->load;
      e.load_on = w->id;
    }
    e.owner = w->id;
    return;
  }
  // Owned by no live worker: it went, or has not registered again since a restart.
  settle_load(e);
  const std::int64_t grace =
      learned ? 0 : static_cast<std::int64_t>(config_.worker_timeout_ms) * kMs;
  orphans_.push_back(Orphan{index_of(e), number, now.mono_ns + grace});
}

void Scheduler::settle_orphans(Time now, std::vector<Action>& out) {
  if (orphans_.empty()) return;
  std::vector<Orphan> later;
  std::vector<Orphan> due;
  for (const Orphan& o : orphans_) (o.at <= now.mono_ns ? due : later).push_back(o);
  orphans_ = std::move(later);
  for (const Orphan& o : due) {
    Exec& e = execs_[o.exec];
    if (!e.live || !e.owner.empty() || e.owner_no != o.number) continue;  // settled since
    if (workers_.find_number(o.number)) {
      adopt_owner(e, o.number, now, false, out);
      resume_for_owner(e, now, out);
      continue;
    }
    set_owner_wait(e, false);
    ++counters_.worker_lost_executions;
    fail(e, "its owner (worker #" + std::to_string(o.number) + ") is gone",
         std::string("worker_lost"), "#" + std::to_string(o.number), true, now, out);
  }
}

void Scheduler::set_owner_wait(Exec& e, bool wait) {
  if (e.owner_wait == wait) return;
  e.owner_wait = wait;
  if (wait) {
    ++owner_waiting_;
  } else {
    --owner_waiting_;
  }
}

// An execution that waited for its owner to register again is pushed to it.
void Scheduler::resume_for_owner(Exec& e, Time now, std::vector<Action>& out) {
  if (!e.owner_wait || e.owner.empty()) return;
  set_owner_wait(e, false);
  e.worker = e.owner;
  e.phase = Phase::kUnknown;
  publish_dispatch(e, now, out);
}

std::string Scheduler::owner_name(const Exec& e) const {
  if (!e.owner.empty()) return e.owner;
  return e.owner_no != 0 ? "#" + std::to_string(e.owner_no) : "";
}

void Scheduler::claim_won(Exec& e, Worker& w, Time now, std::vector<Action>& out) {
  ++counters_.claims_won;
  out.push_back(action::Audit{"claimed", e.info.execution_id, w.id, e.info.attempt, "ingress"});
  if (e.load_on != w.id) {
    settle_load(e);
    ++w.load;
    e.load_on = w.id;
  }
  e.owner = w.id;
  e.owner_no = w.number;
  e.claim_seq = 0;
  if (e.waiting) {
    // Nobody was offered it yet: it is pushed to the claimant (who needs its payload).
    unhold(e);
    e.worker = w.id;
    e.phase = Phase::kUnknown;
    publish_dispatch(e, now, out);
  }
}

void Scheduler::reoffer(Exec& e, Time now, std::vector<Action>& out) {
  const Worker* other = workers_.pick(e.info.required_capabilities, e.worker);
  if (!other || other->id == e.worker) {
    // Nobody else can take it: it stays offered to the same worker (never pushed twice to
    // one worker for one attempt), and is looked at again after another claim timeout.
    arm_claim_timeout(e, now);
    return;
  }
  ++counters_.claim_timeouts;
  out.push_back(action::Log{false, e.info.execution_id,
                            "nobody claimed " + e.info.execution_id + " within " +
                                std::to_string(config_.claim_timeout_ms) + " ms of its push to " +
                                e.worker + ": offering it to another worker"});
  e.avoid = e.worker;
  settle_load(e);
  e.worker.clear();
  e.claim_seq = 0;
  e.phase = Phase::kUnknown;
  --dispatched_;  // publish_dispatch counts it again (or parks it)
  // Nobody ran it: its timeout starts again with the new offer.
  e.dispatched_at = 0;
  e.timeout_seq = 0;
  publish_dispatch(e, now, out);
}

void Scheduler::on(const input::ClaimResult& in, Time now, std::vector<Action>& out) {
  auto it = pending_claims_.find(in.op);
  if (it == pending_claims_.end()) return;
  PendingClaim pc = std::move(it->second);
  pending_claims_.erase(it);
  Exec* e = find(in.execution_id);
  const bool current = e && e->live && e->info.attempt == in.attempt;
  const bool owned = in.outcome == ClaimOutcome::kWon || in.outcome == ClaimOutcome::kLost;
  const bool won = pc.kind == PendingClaim::kClaim && in.outcome == ClaimOutcome::kWon;
  if (current && owned && !won && in.owner != 0 && !claimed(*e)) {
    adopt_owner(*e, in.owner, now, true, out);
  }
  switch (pc.kind) {
    case PendingClaim::kClaim: {
      Worker* w = workers_.find(pc.worker_id);
      if (current && won && w) {
        claim_won(*e, *w, now, out);
        answer(out, in.op,
               Reply::success()
                   .with("claimed", true)
                   .with("owner", e->owner)
                   .with("attempt", static_cast<std::int64_t>(e->info.attempt)));
        return;
      }
      ++counters_.claims_lost;
      answer(out, in.op,
             Reply::success()
                 .with("claimed", false)
                 .with("owner", current ? owner_name(*e) : std::string())
                 .with("reason", std::string(current && owned ? "claimed" : "not_current")));
      return;
    }
    case PendingClaim::kReport:
      if (pc.complete) report_complete(*pc.complete, true, now, out);
      if (pc.fail) report_fail(*pc.fail, true, now, out);
      return;
    case PendingClaim::kClaimTimeout:
      if (current && !claimed(*e) &&
          (e->phase == Phase::kDispatching || e->phase == Phase::kDispatched)) {
        reoffer(*e, now, out);
      }
      return;
    case PendingClaim::kWorkerGone:
      if (current) lose_worker_exec(*e, pc.worker_id, pc.reason, now, out);
      return;
    case PendingClaim::kPark:
      if (e && e->closing) {
        e->closing = false;
        --closing_;
      }
      if (!current) return;
      if (claimed(*e)) {
        // Claimed through shared memory before its claims closed: it runs on its owner (pushed
        // to it, which needs the payload), or on a worker that went (an orphan, lost soon).
        unhold(*e);
        if (!e->owner.empty()) e->worker = e->owner;
        e->phase = Phase::kUnknown;
        publish_dispatch(*e, now, out);
        return;
      }
      e->claims_open = 0;  // closed: opened again when it is offered
      return;
  }
}

void Scheduler::on(const input::Claim& in, Time now, std::vector<Action>& out) {
  Worker* w = workers_.find(in.worker_id);
  if (!w) {
    answer(out, in.op,
           Reply::failure("not_found", "no live worker '" + in.worker_id + "': register it first"));
    return;
  }
  auto lost = [&](const std::string& owner, const char* why) {
    ++counters_.claims_lost;
    answer(out, in.op,
           Reply::success()
               .with("claimed", false)
               .with("owner", owner)
               .with("reason", std::string(why)));
  };
  Exec* found = find(in.execution_id);
  if (!found) {
    forget_old(now);
    auto f = finished_.find(in.execution_id);
    if (f == finished_.end()) {
      answer(out, in.op, Reply::failure("not_found", "no dispatched execution " + in.execution_id));
      return;
    }
    lost(f->second.worker_id.value_or(""), "finished");
    return;
  }
  Exec& e = *found;
  if (claimed(e)) {
    lost(owner_name(e), "claimed");
    return;
  }
  if (!covers(w->capabilities, e.info.required_capabilities)) {
    lost("", "capabilities");
    return;
  }
  const bool dispatched = e.phase == Phase::kDispatching || e.phase == Phase::kDispatched;
  if (!dispatched && !e.waiting) {
    lost("", "not_dispatched");  // in a retry or publish backoff: it is offered again later
    return;
  }
  if (e.waiting && running() >= config_.max_active_executions) {
    lost("", "capacity");  // taking it now would pass max_active_executions
    return;
  }
  if (e.info.required_capabilities.empty()) {
    // A command for any runner: no claim word (local workers claim worker tasks only).
    claim_won(e, *w, now, out);
    answer(out, in.op,
           Reply::success()
               .with("claimed", true)
               .with("owner", e.owner)
               .with("attempt", static_cast<std::int64_t>(e.info.attempt)));
    return;
  }
  // The claim word decides, against claims through shared memory at the same moment.
  if (e.claims_open != e.info.attempt) {
    out.push_back(action::OpenClaims{e.slot, e.info.attempt});
    e.claims_open = e.info.attempt;
    e.owner_no = 0;
  }
  PendingClaim pc;
  pc.kind = PendingClaim::kClaim;
  pc.worker_id = w->id;
  ask_claim_word(e, in.op, w->number, std::move(pc), out);
}

void Scheduler::on(const input::ReportBlocker& in, Time now, std::vector<Action>& out) {
  (void)now;
  if (!workers_.find(in.worker_id)) {
    answer(out, in.op,
           Reply::failure("not_found", "no live worker '" + in.worker_id + "': register it first"));
    return;
  }
  ++counters_.blockers;
  Event ev;
  ev.type = EventType::kBlockerReported;
  ev.worker_id = in.worker_id;
  ev.execution_id = in.execution_id;
  ev.blocker_type = in.type;
  ev.description = in.description;
  ev.severity = in.severity;
  ev.capabilities = normalized(in.required_capabilities);
  ev.helpers = workers_.covering(ev.capabilities, in.worker_id);
  // Each helper on its own channel, then one copy for everyone else who watches.
  for (const auto& helper : ev.helpers) {
    Event copy = ev;
    copy.target = helper;
    publish(std::move(copy), out);
  }
  std::vector<std::string> helpers = ev.helpers;
  publish(std::move(ev), out);
  answer(out, in.op, Reply::success().with("helpers", std::move(helpers)));
}

void Scheduler::on(const input::ListWorkers& in, Time now, std::vector<Action>& out) {
  action::Answer a;
  a.op = in.op;
  a.list = true;
  a.list_key = "workers";
  for (const auto& [id, w] : workers_.all()) {
    Reply r;
    r.with("worker_id", id)
        .with("capabilities", w.capabilities)
        .with("capacity", static_cast<std::int64_t>(w.capacity))
        .with("load", static_cast<std::int64_t>(w.load))
        .with("registered_at", w.registered_at_ns)
        .with("last_heartbeat", w.last_heartbeat_ns)
        .with("last_heartbeat_ms_ago", (now.mono_ns - w.last_heartbeat_mono) / kMs)
        .with("local", !w.session.empty());
    a.items.push_back(std::move(r));
  }
  for (const auto& [caps, n] : waiting_by_capabilities()) {
    a.reply.with("waiting." + caps, static_cast<std::int64_t>(n));
  }
  a.reply.with("waiting", static_cast<std::int64_t>(waiting_.size()));
  out.push_back(std::move(a));
}

void Scheduler::advance(Time now, std::vector<Action>& out) {
  // Timeouts of dispatched executions.
  while (!timeouts_.empty() && timeouts_.top().at <= now.mono_ns) {
    const TimeoutEntry t = timeouts_.top();
    timeouts_.pop();
    Exec& e = execs_[t.exec];
    if (!e.live || e.timeout_seq != t.seq) continue;
    if (e.phase != Phase::kDispatching && e.phase != Phase::kDispatched) continue;
    ++counters_.timed_out;
    out.push_back(action::Log{true, e.info.execution_id,
                              "attempt " + std::to_string(e.info.attempt) + " of " +
                                  e.info.execution_id + " did not finish within its timeout"});
    fail(e, "not finished within its timeout", std::string("timeout"), std::nullopt, true, now,
         out);
  }
  // Workers not heard from in time are gone.
  if (config_.worker_timeout_ms > 0 && workers_.size() > 0) {
    const std::int64_t cutoff =
        now.mono_ns - static_cast<std::int64_t>(config_.worker_timeout_ms) * kMs;
    for (const auto& id : workers_.silent_since(cutoff)) {
      ++counters_.workers_lost;
      worker_gone(id, "heartbeat_timeout", now, out);
    }
  }
  settle_orphans(now, out);
  // Pushes nobody claimed in time: offered to another worker, same attempt (unless the claim
  // word says a worker claimed it through shared memory).
  while (!claim_timeouts_.empty() && claim_timeouts_.top().at <= now.mono_ns) {
    const TimeoutEntry t = claim_timeouts_.top();
    claim_timeouts_.pop();
    Exec& e = execs_[t.exec];
    if (!e.live || e.claim_seq != t.seq || claimed(e)) continue;
    if (e.phase != Phase::kDispatching && e.phase != Phase::kDispatched) continue;
    e.claim_seq = 0;
    if (e.claims_open == e.info.attempt) {
      PendingClaim pc;
      pc.kind = PendingClaim::kClaimTimeout;
      ask_claim_word(e, next_internal_op_--, 0, std::move(pc), out);
    } else {
      reoffer(e, now, out);
    }
  }
  // Cancels the queue could not take a moment ago.
  if (!deferred_cancels_.empty()) {
    std::vector<std::pair<OpId, PendingCancel>> later;
    for (auto& [op, pc] : deferred_cancels_) {
      if (pc.retry_at > now.mono_ns) {
        later.emplace_back(op, std::move(pc));
        continue;
      }
      on(input::Cancel{op, pc.execution_id, pc.reason, pc.as_user}, now, out);
    }
    deferred_cancels_ = std::move(later);
  }
  // Stale entries in the queue.
  if (now.mono_ns >= next_sweep_) {
    next_sweep_ = now.mono_ns + static_cast<std::int64_t>(config_.sweep_interval_ms) * kMs;
    const std::int64_t cutoff =
        now.wall_ns - static_cast<std::int64_t>(config_.stale_timeout_seconds) * kSec;
    out.push_back(action::SweepStale{cutoff});
    // Executions waiting for a worker are stale by the same rule as queued ones.
    std::vector<ExecIndex> stale;
    for (const ExecIndex idx : waiting_) {
      if (execs_[idx].info.enqueued_at_ns < cutoff) stale.push_back(idx);
    }
    for (const ExecIndex idx : stale) {
      Exec& e = execs_[idx];
      if (!e.live || !e.waiting) continue;
      ++counters_.expired;
      Event ev;
      ev.type = EventType::kExpired;
      ev.execution_id = e.info.execution_id;
      ev.user_id = e.info.user_id;
      ev.reason = "stale_timeout";
      publish(std::move(ev), out);
      FinishedRecord rec;
      rec.state = FinalState::kExpired;
      rec.reason = "stale_timeout";
      finish(e, FinalState::kExpired, rec, now, out);
    }
  }
  // Dispatch: held executions whose time has come and the heads of the queue's levels, in
  // order of effective level (aging lifts long waiters), held ones first within a level.
  std::uint64_t in_flight = 0;
  for (auto n : taking_) in_flight += n;
  // A bounded batch per call: the shell carries it out and calls again, with its inbox, its
  // timers and the transports' results in between.
  std::uint64_t budget = kDispatchBatch;
  // Executions waiting for a worker, when a worker may have room it did not have.
  if (!waiting_.empty() && waiting_seen_epoch_ != workers_.room_epoch()) {
    waiting_seen_epoch_ = workers_.room_epoch();
    std::vector<ExecIndex> ready;
    // One look per set of capabilities: many waiting executions need the same few sets.
    std::set<const std::vector<std::string>*> none;
    for (const ExecIndex idx : waiting_) {
      if (budget == ready.size() || running() + ready.size() >= config_.max_active_executions) {
        break;
      }
      const auto& need = execs_[idx].info.required_capabilities;
      const auto same = [&](const std::vector<std::string>* v) { return *v == need; };
      if (std::any_of(none.begin(), none.end(), same)) continue;
      if (workers_.pick(need, execs_[idx].avoid)) {
        ready.push_back(idx);
      } else if (none.size() < 64) {
        none.insert(&need);
      }
    }
    for (const ExecIndex idx : ready) {
      Exec& e = execs_[idx];
      if (!e.live || !e.waiting || running() >= config_.max_active_executions) continue;
      unhold(e);
      e.phase = Phase::kUnknown;
      publish_dispatch(e, now, out);  // parks it again if the room went to an earlier one
      --budget;
    }
    if (budget == 0 || running() >= config_.max_active_executions) {
      waiting_seen_epoch_ = workers_.room_epoch() - 1;  // look again next time
    }
  }
  while (budget > 0 && running() + in_flight < config_.max_active_executions &&
         !transports_.empty() && now.mono_ns >= paused_until_) {
    std::optional<std::pair<std::size_t, ExecIndex>> held_pick;  // (effective level, exec)
    for (std::size_t l = 0; l < kPriorityLevels && !held_pick; ++l) {
      for (const ExecIndex idx : lanes_[l]) {
        if (execs_[idx].live && execs_[idx].ready_at <= now.mono_ns) {
          held_pick.emplace(l, idx);
          break;
        }
      }
    }
    std::optional<std::pair<std::size_t, std::size_t>> queue_pick;  // (effective, level)
    // The queue only while there is room to take (those waiting for a worker fill it too).
    const bool room_to_take = active_.size() + in_flight < config_.max_taken;
    for (std::size_t l = 0; l < kPriorityLevels && room_to_take; ++l) {
      if (queue_.depth[l] <= taking_[l]) continue;
      const std::size_t eff =
          queue_.head_enqueued_at[l] ? aged_level(l, *queue_.head_enqueued_at[l], now) : l;
      if (!queue_pick || eff < queue_pick->first ||
          (eff == queue_pick->first && queue_.head_enqueued_at[l] &&
           queue_.head_enqueued_at[queue_pick->second] &&
           *queue_.head_enqueued_at[l] < *queue_.head_enqueued_at[queue_pick->second])) {
        queue_pick.emplace(eff, l);
      }
    }
    if (held_pick && (!queue_pick || held_pick->first <= queue_pick->first)) {
      auto& lane = lanes_[held_pick->first];
      lane.erase(std::find(lane.begin(), lane.end(), held_pick->second));
      Exec& e = execs_[held_pick->second];
      e.phase = Phase::kUnknown;  // out of its lane; publish_dispatch sets the phase
      publish_dispatch(e, now, out);
      --budget;
      continue;
    }
    if (!queue_pick) break;
    const std::size_t level = queue_pick->second;
    if (queue_pick->first < level) ++counters_.aged;
    // Without aging, a level's entries go in FIFO order ahead of every lower level: take as
    // many as capacity allows at once. With aging, one at a time (the next head may lose).
    const std::uint64_t room = std::min(config_.max_active_executions - running() - in_flight,
                                        config_.max_taken - active_.size() - in_flight);
    const std::uint64_t available = queue_.depth[level] - taking_[level];
    const std::uint32_t count =
        config_.aging_seconds > 0
            ? 1u
            : static_cast<std::uint32_t>(std::min<std::uint64_t>({room, available, budget}));
    taking_[level] += count;
    in_flight += count;
    budget -= count;
    out.push_back(action::Take{level, count});
    if (config_.aging_seconds > 0) break;  // the answer updates the heads first
  }
  batch_full_ = budget == 0;
  forget_old(now);
}

std::optional<std::int64_t> Scheduler::next_deadline(Time now) const {
  // The last advance() stopped at its batch bound with room left: more is due at once (held
  // executions that are ready, which the shell's wake-up conditions do not see).
  if (batch_full_ && can_take(now)) return now.mono_ns;
  std::optional<std::int64_t> at;
  auto consider = [&](std::int64_t t) {
    if (t > now.mono_ns && (!at || t < *at)) at = t;
  };
  consider(next_sweep_);
  if (!timeouts_.empty()) consider(timeouts_.top().at);
  if (!claim_timeouts_.empty()) consider(claim_timeouts_.top().at);
  for (const Orphan& o : orphans_) consider(o.at);
  if (config_.worker_timeout_ms > 0) {
    if (const auto oldest = workers_.oldest_heartbeat()) {
      consider(*oldest + static_cast<std::int64_t>(config_.worker_timeout_ms) * kMs + 1);
    }
  }
  if (paused_until_ > 0) consider(paused_until_);
  for (const auto& [op, pc] : deferred_cancels_) consider(pc.retry_at);
  for (const auto& lane : lanes_) {
    for (const ExecIndex idx : lane) {
      if (execs_[idx].live) consider(execs_[idx].ready_at);
    }
  }
  return at;
}

}  // namespace shmsched::core
