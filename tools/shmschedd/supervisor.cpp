// The supervisor's loop: a shell around core::Scheduler. Everything that changes scheduling
// state happens on this one thread:
//
//   for (;;) {
//     process_inbox();  // operations from the ingress and transports, delivery results, signals
//     announce();       // entries producers queued since last time -> the scheduler
//     advance();        // the scheduler decides; its actions are carried out here
//     timers();         // reap dead producers, flush retiring transports, watchdog
//     sleep();          // spin briefly after work, then futex-sleep on the queue's wake word
//   }
//
// The scheduler holds the policy; this file holds only the I/O: the queue's consumer side, the
// transports, encoding, and the requesters waiting for answers. Other threads only post to the
// inbox (which kicks the same futex word) or read atomics.
#include "supervisor.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <algorithm>
#include <chrono>

#include "journal_sink.h"
#include "shmsched/ipc/events.h"

namespace shmsched::daemon {

using ipc::protocol::MapBuilder;
namespace protocol = ipc::protocol;

namespace {

constexpr auto kMaxSleep = std::chrono::milliseconds(100);
constexpr auto kFlushSlice = std::chrono::milliseconds(0);
// Entries announced (ExecutionAccepted) per batch before the cursor moves past them.
constexpr std::size_t kAnnounceBatch = 1024;

// Actions that must not be carried out before the events decided ahead of them are out: an
// answer (a client that hears "completed" may look for the event), a release and the finished
// phase (after them, a restarted supervisor would not publish the final event again).
bool must_follow_publishes(const core::Action& a) {
  if (std::holds_alternative<core::action::Answer>(a) ||
      std::holds_alternative<core::action::Release>(a)) {
    return true;
  }
  if (const auto* an = std::get_if<core::action::Annotate>(&a)) {
    return core::phase_of(an->value) == core::Phase::kFinished;
  }
  return false;
}

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

core::CancelOutcome to_core(ipc::CancelOutcome o) {
  switch (o) {
    case ipc::CancelOutcome::kCancelled:
      return core::CancelOutcome::kCancelled;
    case ipc::CancelOutcome::kActive:
      return core::CancelOutcome::kActive;
    case ipc::CancelOutcome::kUnavailable:
      return core::CancelOutcome::kUnavailable;
    case ipc::CancelOutcome::kNotFound:
      break;
  }
  return core::CancelOutcome::kNotFound;
}

// The claim word's outcomes, as the queue reports them and the scheduler reads them.
static_assert(static_cast<int>(ipc::ClaimOutcome::kWon) ==
              static_cast<int>(core::ClaimOutcome::kWon));
static_assert(static_cast<int>(ipc::ClaimOutcome::kLost) ==
              static_cast<int>(core::ClaimOutcome::kLost));
static_assert(static_cast<int>(ipc::ClaimOutcome::kNotCurrent) ==
              static_cast<int>(core::ClaimOutcome::kNotCurrent));
static_assert(static_cast<int>(ipc::ClaimOutcome::kNotFound) ==
              static_cast<int>(core::ClaimOutcome::kNotFound));
static_assert(static_cast<int>(ipc::ClaimOutcome::kUnavailable) ==
              static_cast<int>(core::ClaimOutcome::kUnavailable));

core::ExecutionInfo info_of(const ipc::ExecutionView& v) {
  core::ExecutionInfo info{std::string(v.execution_id),
                           std::string(v.user_id),
                           v.priority,
                           v.enqueued_at_ns,
                           v.attempt,
                           v.timeout_seconds,
                           {}};
  if (!v.extras.empty()) {
    ipc::Metadata unused;
    ipc::decode_extras(v.extras, info.required_capabilities, unused);
  }
  return info;
}

core::ExecutionInfo info_of(const ipc::ExecutionRecord& r) {
  return core::ExecutionInfo{r.execution_id,         r.user_id, r.priority,
                             r.enqueued_at_ns,       r.attempt, r.timeout_seconds,
                             r.required_capabilities};
}

}  // namespace

Supervisor::Supervisor(Config config, int argc, const char* const* argv)
    : config_(std::move(config)), argc_(argc), argv_(argv), core_(policy(config_)) {
  // The journal is read before the segment is touched: a journal that cannot be read stops the
  // start before an empty segment exists that would then look like the newer truth.
  std::vector<JournaledExecution> journaled;
  const bool restore = open_journal(journaled);
  // The configured default durability is in the segment from its creation, and set at once in
  // one that exists: a client that attaches while the queue is filled from the journal (which
  // may take seconds) must not take a submit that names no durability for memory.
  ipc::SegmentConfig segment_config = config_.queue;
  segment_config.default_durability_disk = config_.durability == "disk";
  segment_ = ipc::Segment::open_or_create(config_.segment, segment_config);
  set_default_durability();
  segment_->set_max_executions_per_user(config_.queue.max_executions_per_user);
  // We hold the lock: a consumer still registered and alive is a supervisor that was killed a
  // moment ago (its lock went with its files, the process a little later), or one that ignores
  // the lock (another runtime_dir): the first is waited for, the second refused after the wait.
  ipc::ConsumerOptions consumer_options;
  consumer_options.takeover_wait = std::chrono::seconds(5);
  consumer_ = std::make_unique<ipc::Consumer>(segment_, consumer_options);
  inbox_ = std::make_unique<Inbox>(segment_);
  if (journal_) {
    settle_journal(restore, journaled);
  } else {
    consumer_->set_durable_marks(false);  // a predecessor's journal may have set it
  }
  if (!config_.audit_dir.empty()) {
    audit::AuditWriterOptions o;
    o.dir = config_.audit_dir;
    o.fsync = *audit::parse_fsync_policy(config_.audit_fsync);  // checked by the config
    o.fsync_interval = std::chrono::milliseconds(config_.audit_fsync_interval_ms);
    o.max_file_bytes = config_.audit_max_file_bytes;
    o.max_files = config_.audit_max_files;
    o.max_pending = config_.audit_max_pending;
    audit_ = std::make_unique<AuditTrail>(std::move(o));
  }
  counters_.max_active = config_.max_active_executions;

  callbacks_.log = [](shmsched_log_level level, const std::string& t, const std::string& msg) {
    const auto lvl = level == SHMSCHED_LOG_ERROR  ? spdlog::level::err
                     : level == SHMSCHED_LOG_WARN ? spdlog::level::warn
                     : level == SHMSCHED_LOG_INFO ? spdlog::level::info
                                                  : spdlog::level::debug;
    spdlog::log(lvl, "[{}] {}", t, msg);
  };
  loop_thread_ = std::this_thread::get_id();
  callbacks_.delivery = [this](std::uint64_t instance, const std::string& name, std::uint64_t token,
                               bool ok, const std::string& error) {
    if (!ok) observability_.publish_failed(name);
    if (std::this_thread::get_id() == loop_thread_) {
      local_deliveries_.push_back(DeliveryMessage{instance, name, token, ok, error});
    } else {
      inbox_->post(DeliveryMessage{instance, name, token, ok, error});
    }
  };
  callbacks_.inbound = [this](const std::string& t, std::vector<std::byte> body,
                              shmsched_inbound_done done) {
    auto decoded = protocol::decode_request(body);
    if (auto* err = std::get_if<protocol::DecodeError>(&decoded)) {
      spdlog::warn("[{}] ignored an inbound message: {}", t, err->message);
      const auto reply = protocol::error_reply("invalid", err->message);
      if (done.reply)
        done.reply(done.op_ctx, reinterpret_cast<const std::uint8_t*>(reply.data()), reply.size());
      if (done.ack) done.ack(done.op_ctx);
      return true;
    }
    inbox_->post(OpMessage{std::get<protocol::Request>(std::move(decoded)), ReplyTo{0, done}});
    return true;
  };
  apply_transports(config_);
  // A transport that cannot start stops the start, unless it is optional: dispatch would go on
  // on the others' acknowledgements alone, a silent loss for an audit or billing sink.
  for (const auto& name : config_.transports) {
    const bool running = std::any_of(transports_.begin(), transports_.end(),
                                     [&](const auto& t) { return t.second->name() == name; });
    if (running) continue;
    if (!is_optional(config_, name)) {
      throw PluginError("transport '" + name +
                        "' could not start (see above) and is required: fix it, or name it in "
                        "optional_transports to run without it");
    }
    spdlog::warn("transport {} is optional and not running: dispatch goes on without it", name);
  }
  if (transports_.empty()) {
    throw PluginError("no transport could be started (transports = " +
                      fmt::format("{}", fmt::join(config_.transports, ",")) +
                      "): see the errors above");
  }
  recover_active();
  start_ingress();
  start_http();
}

Supervisor::~Supervisor() {
  stop_http();
  ingress_stop_ = true;
  if (ingress_thread_.joinable()) ingress_thread_.join();
}

core::SchedulerConfig Supervisor::policy(const Config& c) const {
  core::SchedulerConfig p;
  p.max_active_executions = c.max_active_executions;
  p.max_attempts = c.max_attempts;
  p.retry_backoff_ms = c.retry_backoff_ms;
  p.dispatch_backoff_ms = c.dispatch_backoff_ms;
  p.max_backoff_ms = c.max_backoff_ms;
  p.stale_timeout_seconds = c.stale_timeout_seconds;
  p.aging_seconds = c.aging_seconds;
  p.default_timeout_seconds = c.default_timeout_seconds;
  p.timeout_grace_seconds = c.timeout_grace_seconds;
  p.finished_retention_count = c.finished_retention_count;
  p.finished_retention_seconds = c.finished_retention_seconds;
  p.max_taken = c.queue.max_active;
  p.worker_timeout_ms = c.worker_timeout_ms;
  p.claim_timeout_ms = c.claim_timeout_ms;
  p.max_workers = c.max_workers;
  return p;
}

core::Time Supervisor::now() const {
  return core::Time{steady_ns(), ipc::events::now_ns()};
}

// ---- The scheduler's inputs and actions --------------------------------------------------------

void Supervisor::feed(const core::Input& in) {
  auto out = action_lists_.lease();
  core_.handle(in, now(), *out);
  // Before the actions go out: a client that sees an event and asks `stats` finds the state
  // that produced it (an execution dispatched beside one left waiting for a worker).
  if (!out->empty()) publish_counters();
  carry_out(*out);
}

void Supervisor::advance() {
  for (int round = 0; round < 16; ++round) {
    queue_state();
    auto out = action_lists_.lease();
    core_.advance(now(), *out);
    if (out->empty()) break;
    worked_ = true;
    publish_counters();  // before the actions go out, as in feed()
    carry_out(*out);
  }
  publish_counters();
}

void Supervisor::queue_state() {
  core::input::QueueState qs;
  for (std::size_t l = 0; l < kPriorityLevels; ++l) {
    const auto level = static_cast<Priority>(l);
    qs.depth[l] = consumer_->depth(level);
    // The heads' ages matter only to aging.
    if (qs.depth[l] > 0 && config_.aging_seconds > 0) {
      qs.head_enqueued_at[l] = consumer_->head_enqueued_at(level);
    }
  }
  auto none = action_lists_.lease();
  core_.handle(qs, now(), *none);
}

// Carries out actions in order; actions whose answers the scheduler needs (take, cancel,
// submit, sweep) feed them back at once, and what that leads to is carried out after. Events
// and commands collect in outbound_ and go to the transports as one batch each at the end (or
// before an action that must follow them); delivery results reported from inside publish()
// are fed back then, and what they lead to is carried out in the same call.
void Supervisor::carry_out(std::vector<core::Action>& actions) {
  const core::Time t = now();
  auto more_lease = action_lists_.lease();
  std::vector<core::Action>& more = *more_lease;
  for (std::size_t i = 0;; ++i) {
    if (i == actions.size()) {
      flush_outbound();
      if (local_deliveries_.empty()) break;
      std::vector<DeliveryMessage> local;
      local.swap(local_deliveries_);
      for (const auto& d : local) {
        if (d.token & kEventTokenBit) {
          if (!d.ok) spdlog::warn("transport {} could not deliver an event: {}", d.name, d.error);
          continue;
        }
        core_.handle(core::input::Delivery{d.transport, d.token, d.ok}, t, more);
      }
      for (auto& m : more) actions.push_back(std::move(m));
      more.clear();
      if (i == actions.size()) break;
    }
    core::Action& a = actions[i];  // `actions` grows only after it is carried out
    if (must_follow_publishes(a)) flush_outbound();
    if (auto* p = std::get_if<core::action::Publish>(&a)) {
      do_publish(*p);
    } else if (auto* ans = std::get_if<core::action::Answer>(&a)) {
      do_answer(*ans);
    } else if (auto* take = std::get_if<core::action::Take>(&a)) {
      do_take(*take, t, more);
    } else if (auto* an = std::get_if<core::action::Annotate>(&a)) {
      consumer_->annotate(unpack(an->slot), an->value);
    } else if (auto* sa = std::get_if<core::action::SetAttempt>(&a)) {
      consumer_->set_attempt(unpack(sa->slot), sa->attempt);
    } else if (auto* au = std::get_if<core::action::Audit>(&a)) {
      if (audit_) audit_->record(*au);
    } else if (auto* oc = std::get_if<core::action::OpenClaims>(&a)) {
      consumer_->open_claims(unpack(oc->slot), oc->attempt);
    } else if (auto* cs = std::get_if<core::action::ClaimInSegment>(&a)) {
      const auto r = cs->close ? consumer_->close_claims(unpack(cs->slot), cs->attempt)
                               : consumer_->claim(unpack(cs->slot), cs->attempt, cs->worker);
      core_.handle(core::input::ClaimResult{cs->op, cs->execution_id, cs->attempt,
                                            static_cast<core::ClaimOutcome>(r.outcome), r.owner},
                   t, more);
    } else if (auto* r = std::get_if<core::action::Release>(&a)) {
      release_after_journal(unpack(r->slot));
    } else if (auto* log = std::get_if<core::action::Log>(&a)) {
      const ExecutionLogScope log_scope(log->execution_id);
      if (log->warning) {
        spdlog::warn("{}", log->message);
      } else {
        spdlog::info("{}", log->message);
      }
    } else if (auto* sub = std::get_if<core::action::SubmitToQueue>(&a)) {
      core::input::SubmitResult res{sub->op, false, "", "", 0};
      auto it = submits_.find(sub->op);
      if (it != submits_.end()) {
        const protocol::SubmitOp op = std::move(it->second);
        submits_.erase(it);
        std::string error;
        const bool disk =
            op.durability ? *op.durability == protocol::Durability::kDisk : default_disk_.load();
        if (auto why = disk ? durable_refusal() : std::nullopt) {
          res.reason = why->first;
          res.message = why->second;
        } else if (ipc::Producer* producer = loop_producer(error)) {
          const auto r = producer->submit(protocol::to_submit_request(op, op.execution_id));
          res.accepted = r.accepted();
          res.reason = std::string(admission_name(r.admission));
          res.message = r.message;
          res.queue_position = r.queue_position;
          if (disk && res.accepted) disk_submits_[sub->op] = op.execution_id;
        } else {
          res.reason = "queue_full";
          res.message = error;
        }
      } else {
        res.reason = "invalid";
        res.message = "the request was lost";
      }
      core_.handle(res, t, more);
    } else if (auto* c = std::get_if<core::action::CancelInQueue>(&a)) {
      announce_all();  // an entry is announced before it can be cancelled
      // Find the user before the cancel makes the entry disappear; another user's entry is
      // left alone (only this thread removes queued entries: nothing changes in between).
      const auto rec = consumer_->status(c->execution_id);
      const bool theirs = c->as_user && rec && rec->user_id != *c->as_user;
      const auto outcome =
          theirs ? ipc::CancelOutcome::kNotFound : consumer_->cancel(c->execution_id);
      if (outcome == ipc::CancelOutcome::kUnavailable) note_blocked("a cancel");
      core_.handle(
          core::input::CancelResult{c->op,
                                    theirs ? core::CancelOutcome::kNotOwner : to_core(outcome),
                                    rec ? rec->user_id : ""},
          t, more);
    } else if (auto* sw = std::get_if<core::action::SweepStale>(&a)) {
      const std::int64_t age_ns = std::max<std::int64_t>(0, t.wall_ns - sw->enqueued_before_ns);
      for (const auto& rec : consumer_->sweep_stale(
               std::chrono::duration_cast<std::chrono::seconds>(std::chrono::nanoseconds(age_ns)),
               t.wall_ns)) {
        core_.handle(core::input::Expired{info_of(rec)}, t, more);
      }
    }
    for (auto& m : more) actions.push_back(std::move(m));
    more.clear();
  }
}

void Supervisor::flush_outbound() {
  outbound_.flush(
      transports_, [this](core::TransportId id, const std::string& name, std::string_view type,
                          std::string_view execution_id, std::uint64_t token, int code) {
        const ExecutionLogScope log_scope(execution_id);
        spdlog::warn("transport {} refused {} for {} (code {})", name, type, execution_id, code);
        // A refusal is a failed delivery, reported at once.
        if (!(token & kEventTokenBit))
          inbox_->post(DeliveryMessage{id, name, token, false, "refused"});
      });
}

void Supervisor::do_publish(const core::action::Publish& p) {
  const core::Event& ev = p.event;
  if (ev.type == core::EventType::kWorkerUnregistered && ev.worker_id) {
    worker_session_.erase(*ev.worker_id);
    std::lock_guard lock(worker_names_mutex_);
    worker_names_.erase(core::worker_number(*ev.worker_id));
  }
  if (audit_) audit_->event(ev);
  journal_event(ev);
  observe_event(ev);
  std::optional<ipc::ExecutionView> view;
  if (ev.type == core::EventType::kCreatePodCommand || ev.type == core::EventType::kTaskPush) {
    view = consumer_->view(unpack(ev.slot));
    if (view && ev.first_dispatch) {
      observability_.submit_to_dispatch.observe_ns(ipc::events::now_ns() - view->enqueued_at_ns);
    }
  }
  outbound_.add(ev, view ? &*view : nullptr, ipc::events::now_ns(),
                std::span<const core::TransportId>(p.to.data(), p.to.size()), p.token);
}

void Supervisor::do_take(const core::action::Take& t, core::Time time,
                         std::vector<core::Action>& more) {
  const auto level = static_cast<Priority>(t.level);
  std::uint32_t taken = 0;
  const std::int64_t taken_at = ipc::events::now_ns();
  while (taken < t.count) {
    std::uint64_t pos = 0;
    const auto ref = consumer_->dequeue(level, &pos);
    if (!ref) break;
    const auto view = consumer_->view(*ref);
    if (!view) continue;
    ++taken;
    observability_.queue_wait.observe_ns(taken_at - view->enqueued_at_ns);
    core::ExecutionInfo info = info_of(*view);
    if (pos >= consumer_->announce_cursor(level)) {
      // Queued after this round's announcements: announced (ExecutionAccepted, ahead of its
      // command in the same batch) as it is taken. Out of the queue now, it is not announced
      // again after a restart, so the cursor may move before the event is out.
      if (!restored_announcement(*view)) {
        journal_accepted(*view);
        core_.handle(core::input::Announced{info, 0}, time, more);
      }
      consumer_->mark_announced(level, pos + 1);
    }
    core_.handle(core::input::Taken{t.level, pack(*ref), std::move(info)}, time, more);
  }
  core_.handle(core::input::TakeDone{t.level, t.count - taken}, time, more);
}

// A local process acting as a worker that another local process registered.
std::optional<std::string> Supervisor::foreign_worker(const OpMessage& op) const {
  if (op.session.empty()) return std::nullopt;  // not a local process (TCP, a transport)
  std::optional<std::string> worker;
  if (const auto* c = std::get_if<protocol::CompleteOp>(&op.request)) worker = c->worker_id;
  if (const auto* f = std::get_if<protocol::FailOp>(&op.request)) worker = f->worker_id;
  if (const auto* h = std::get_if<protocol::HeartbeatOp>(&op.request)) worker = h->worker_id;
  if (const auto* u = std::get_if<protocol::UnregisterWorkerOp>(&op.request)) worker = u->worker_id;
  if (const auto* c = std::get_if<protocol::ClaimOp>(&op.request)) worker = c->worker_id;
  if (const auto* b = std::get_if<protocol::ReportBlockerOp>(&op.request)) worker = b->worker_id;
  if (!worker) return std::nullopt;
  auto it = worker_session_.find(*worker);
  if (it == worker_session_.end() || it->second.empty() || it->second == op.session) {
    return std::nullopt;
  }
  return "worker '" + *worker + "' was registered by another process (pid " +
         it->second.substr(4, it->second.find(':', 4) - 4) +
         "): a worker is acted for by the process that registered it only";
}

void Supervisor::do_answer(const core::action::Answer& a) {
  if (auto r = registering_.find(a.op); r != registering_.end()) {
    if (a.reply.ok) {
      worker_session_[r->second.first] = r->second.second;
      std::lock_guard lock(worker_names_mutex_);
      worker_names_[core::worker_number(r->second.first)] = r->second.first;
    }
    registering_.erase(r);
  }
  // What `stats` shows includes what the answered operation did (a client that registered a
  // worker counts it at once).
  publish_counters();
  submits_.erase(a.op);  // answered without asking the queue (a finished id, say)
  auto it = ops_.find(a.op);
  if (it == ops_.end()) return;
  const ReplyTo to = it->second;
  ops_.erase(it);
  if (!a.reply.ok && (a.reply.error == "unauthorized" || a.reply.error == "not_owner")) {
    counters_.rejected_unauthorized.fetch_add(1, std::memory_order_relaxed);
  }
  auto body = ipc::events::encode_reply(a.reply, a.list ? &a.items : nullptr, a.list_key);
  if (auto d = disk_submits_.find(a.op); d != disk_submits_.end()) {
    DurableWaitMessage w{std::move(d->second), to, std::move(body)};
    disk_submits_.erase(d);
    if (a.reply.ok) {
      // Accepted with durability disk: answered (and a Kafka offset committed) once on disk.
      await_durable(w);
      return;
    }
    body = std::move(w.body);
  }
  if (ending_ops_.erase(a.op) > 0 && a.reply.ok) {
    // Through the inbox: the ending's record is appended by an action of this same batch,
    // which may come after this answer.
    inbox_->post(DurableWaitMessage{"", to, std::move(body), true});
    return;
  }
  send_reply(to, body, true);
}

void Supervisor::release(ipc::ActiveRef ref) {
  if (!consumer_->release(ref) && consumer_->blocked_by() != 0) {
    pending_releases_.push_back(ref);
    note_blocked("releasing a finished execution");
  }
}

void Supervisor::retry_pending_releases() {
  for (auto it = pending_releases_.begin(); it != pending_releases_.end();) {
    if (consumer_->release(*it) || consumer_->blocked_by() == 0) {
      it = pending_releases_.erase(it);
    } else {
      return;  // still blocked: the rest waits for the next round
    }
  }
}

ipc::Producer* Supervisor::loop_producer(std::string& error) {
  if (loop_producer_) return loop_producer_.get();
  try {
    // The loop never waits long for the queue: a submit that would is refused (queue_full);
    // repairs are the consumer's (this thread's) to run.
    ipc::ProducerOptions bounded;
    bounded.wait = std::chrono::milliseconds(50);
    bounded.ask_consumer_in_process = true;
    loop_producer_ = std::make_unique<ipc::Producer>(segment_, bounded);
    return loop_producer_.get();
  } catch (const ipc::SegmentError& e) {
    counters_.rejected_no_participant_entry.fetch_add(1, std::memory_order_relaxed);
    error = std::string("the supervisor cannot submit to the queue now: ") + e.what();
    spdlog::error("refused a submit from a transport: {}", e.what());
    return nullptr;
  }
}

void Supervisor::note_blocked(const char* what) {
  const auto now = Clock::now();
  if (now < next_blocked_log_) return;
  next_blocked_log_ = now + std::chrono::seconds(5);
  spdlog::warn(
      "{} waits for a repair of the queue, which pid {} blocks: it stays inside a queue "
      "operation (stopped by a signal or a debugger?). Dispatch of queued work goes on; the "
      "repair is retried every {} ms",
      what, consumer_->blocked_by(), config_.reap_interval_ms);
}

void Supervisor::publish_counters() {
  const auto& c = core_.counters();
  counters_.dispatched.store(c.dispatched, std::memory_order_relaxed);
  counters_.completed.store(c.completed, std::memory_order_relaxed);
  counters_.failed.store(c.failed, std::memory_order_relaxed);
  counters_.retried.store(c.retried, std::memory_order_relaxed);
  counters_.timed_out.store(c.timed_out, std::memory_order_relaxed);
  counters_.cancelled.store(c.cancelled, std::memory_order_relaxed);
  counters_.expired.store(c.expired, std::memory_order_relaxed);
  counters_.publish_failures.store(c.publish_failures, std::memory_order_relaxed);
  counters_.aged.store(c.aged, std::memory_order_relaxed);
  counters_.stale_reports.store(c.stale_reports, std::memory_order_relaxed);
  counters_.active.store(core_.dispatched_now(), std::memory_order_relaxed);
  counters_.held.store(core_.held(), std::memory_order_relaxed);
  counters_.workers.store(core_.workers().size(), std::memory_order_relaxed);
  counters_.waiting_for_workers.store(core_.waiting_for_workers(), std::memory_order_relaxed);
  counters_.pushed.store(c.pushed, std::memory_order_relaxed);
  counters_.claims_won.store(c.claims_won, std::memory_order_relaxed);
  counters_.claims_lost.store(c.claims_lost, std::memory_order_relaxed);
  counters_.claim_timeouts.store(c.claim_timeouts, std::memory_order_relaxed);
  counters_.workers_lost.store(c.workers_lost, std::memory_order_relaxed);
  counters_.worker_lost_executions.store(c.worker_lost_executions, std::memory_order_relaxed);
  counters_.blockers.store(c.blockers, std::memory_order_relaxed);
}

// ---- Inbox ------------------------------------------------------------------------------------

void Supervisor::handle_op(OpMessage& op) {
  if (stopping_) {
    // Stopping: the transports are being flushed and get no new events. A transport's operation
    // is not acknowledged (a Kafka message is read again by the next supervisor).
    const auto reply = protocol::error_reply(
        "unavailable", "the supervisor is stopping: send it again to the next one");
    if (op.reply_to.ingress_token && ingress_) ingress_->reply(op.reply_to.ingress_token, reply);
    if (op.reply_to.transport && op.reply_to.transport->reply) {
      op.reply_to.transport->reply(op.reply_to.transport->op_ctx,
                                   reinterpret_cast<const std::uint8_t*>(reply.data()),
                                   reply.size());
    }
    if (op.reply_to.transport) keep_unacknowledged(*op.reply_to.transport);
    return;
  }
  if (auto why = foreign_worker(op)) {
    counters_.rejected_unauthorized.fetch_add(1, std::memory_order_relaxed);
    const auto reply = protocol::error_reply("unauthorized", *why);
    if (op.reply_to.ingress_token && ingress_) ingress_->reply(op.reply_to.ingress_token, reply);
    return;
  }
  const core::OpId id = next_op_++;
  ops_[id] = op.reply_to;
  // With durability = disk, an execution answered as ended stays ended across a power cut: the
  // answer waits for its record (do_answer).
  if (journal_ && default_disk_ &&
      (std::holds_alternative<protocol::CancelOp>(op.request) ||
       std::holds_alternative<protocol::CompleteOp>(op.request) ||
       std::holds_alternative<protocol::FailOp>(op.request))) {
    ending_ops_.insert(id);
  }

  if (auto* c = std::get_if<protocol::CancelOp>(&op.request)) {
    feed(core::input::Cancel{id, c->execution_id, c->reason, op.as_user});
  } else if (auto* c = std::get_if<protocol::CompleteOp>(&op.request)) {
    feed(core::input::Complete{id, c->execution_id, c->worker_id, c->attempt, c->exit_code,
                               op.as_user});
  } else if (auto* f = std::get_if<protocol::FailOp>(&op.request)) {
    feed(core::input::Fail{id, f->execution_id, f->error, f->worker_id, f->attempt, f->retry,
                           op.as_user});
  } else if (auto* s = std::get_if<protocol::SubmitOp>(&op.request)) {
    // A submission that arrived through a transport (e.g. ExecutionRequested on Kafka).
    if (s->execution_id.empty()) s->execution_id = protocol::new_uuid();
    submits_[id] = *s;
    feed(core::input::Submit{id, s->execution_id, s->user_id});
  } else if (auto* st = std::get_if<protocol::StatusOp>(&op.request)) {
    // The ingress asks only for ids the queue does not hold: finished ones, or unknown.
    feed(core::input::Status{id, st->execution_id});
  } else if (auto* w = std::get_if<protocol::RegisterWorkerOp>(&op.request)) {
    sessions_.track(op.session, op.pid);
    registering_[id] = {w->worker_id, op.session};
    feed(core::input::RegisterWorker{id, w->worker_id, w->capabilities, w->capacity, w->metadata,
                                     op.session});
  } else if (auto* h = std::get_if<protocol::HeartbeatOp>(&op.request)) {
    feed(core::input::Heartbeat{id, h->worker_id});
  } else if (auto* u = std::get_if<protocol::UnregisterWorkerOp>(&op.request)) {
    feed(core::input::UnregisterWorker{id, u->worker_id});
  } else if (auto* c = std::get_if<protocol::ClaimOp>(&op.request)) {
    feed(core::input::Claim{id, c->worker_id, c->execution_id});
  } else if (auto* b = std::get_if<protocol::ReportBlockerOp>(&op.request)) {
    feed(core::input::ReportBlocker{id, b->worker_id, b->type, b->description, b->severity,
                                    b->required_capabilities, b->execution_id});
  } else if (std::holds_alternative<protocol::WorkersOp>(op.request)) {
    feed(core::input::ListWorkers{id});
  } else if (auto* l = std::get_if<protocol::ListOp>(&op.request)) {
    core::input::ListFinished in;
    in.op = id;
    in.user_id = l->user_id;
    in.limit = l->limit;
    if (l->state == "completed") in.state = core::FinalState::kCompleted;
    if (l->state == "failed") in.state = core::FinalState::kFailed;
    if (l->state == "cancelled") in.state = core::FinalState::kCancelled;
    if (l->state == "expired") in.state = core::FinalState::kExpired;
    feed(in);
  } else {
    ops_.erase(id);
    const auto reply = protocol::error_reply("invalid", "this operation is not accepted here");
    if (op.reply_to.ingress_token) ingress_->reply(op.reply_to.ingress_token, reply);
    if (op.reply_to.transport) {
      if (op.reply_to.transport->reply) {
        op.reply_to.transport->reply(op.reply_to.transport->op_ctx,
                                     reinterpret_cast<const std::uint8_t*>(reply.data()),
                                     reply.size());
      }
      if (op.reply_to.transport->ack) op.reply_to.transport->ack(op.reply_to.transport->op_ctx);
    }
  }
}

void Supervisor::process_inbox() {
  auto messages = inbox_->take();
  for (auto& d : local_deliveries_) messages.emplace_back(std::move(d));  // (none, normally)
  local_deliveries_.clear();
  for (auto& m : messages) {
    worked_ = true;
    if (auto* op = std::get_if<OpMessage>(&m)) {
      handle_op(*op);
    } else if (auto* d = std::get_if<DeliveryMessage>(&m)) {
      if (d->token & kEventTokenBit) {
        if (!d->ok) spdlog::warn("transport {} could not deliver an event: {}", d->name, d->error);
        continue;
      }
      feed(core::input::Delivery{d->transport, d->token, d->ok});
    } else if (auto* r = std::get_if<RejectedMessage>(&m)) {
      feed(core::input::Rejected{r->execution_id, r->user_id, r->reason, r->message});
    } else if (auto* w = std::get_if<DurableWaitMessage>(&m)) {
      await_durable(*w);
    } else if (auto* d = std::get_if<DurableDoneMessage>(&m)) {
      durable_done(*d);
    } else if (std::holds_alternative<JournalWakeMessage>(m)) {
      on_journal_durable();
    } else if (auto* s = std::get_if<SignalMessage>(&m)) {
      if (s->signal == SIGHUP) {
        reload_ = true;
      } else {
        stop_ = true;
      }
    }
  }
}

void Supervisor::announce_all() {
  announce();
}

void Supervisor::announce() {
  for (std::size_t l = 0; l < kPriorityLevels; ++l) {
    const auto level = static_cast<Priority>(l);
    // Cells, not the tail, say what is queued: a producer may have filled a cell and not yet
    // moved the tail. The ExecutionAccepted events of a batch are out before the cursor moves
    // past it (at least once, even if we die in between).
    for (;;) {
      std::optional<core::Time> t;  // read when there is something to announce
      auto lease = action_lists_.lease();
      std::vector<core::Action>& actions = *lease;
      const std::size_t n = consumer_->announce_new(
          level, kAnnounceBatch,
          [&](const ipc::ExecutionView& v, std::uint64_t rank) {
            if (restored_announcement(v)) return;
            if (!t) t = now();
            journal_accepted(v);
            core_.handle(core::input::Announced{info_of(v), rank}, *t, actions);
          },
          [&] {
            // Only events follow from announcements; they are encoded while the views hold.
            for (auto& a : actions) {
              if (auto* p = std::get_if<core::action::Publish>(&a)) do_publish(*p);
            }
            std::erase_if(actions, [](const core::Action& a) {
              return std::holds_alternative<core::action::Publish>(a);
            });
            flush_outbound();
          });
      if (n > 0) worked_ = true;
      if (!actions.empty()) carry_out(actions);
      if (n < kAnnounceBatch) break;
    }
  }
}

// ---- Transports -------------------------------------------------------------------------------

std::map<std::string, std::string> Supervisor::options_for(const Config& c,
                                                           const std::string& name) {
  std::map<std::string, std::string> options;
  if (auto it = c.transport_options.find(name); it != c.transport_options.end()) {
    options = it->second;
  }
  options.emplace("runtime_dir", c.runtime_dir);
  return options;
}

bool Supervisor::is_optional(const Config& c, const std::string& name) {
  return std::find(c.optional_transports.begin(), c.optional_transports.end(), name) !=
         c.optional_transports.end();
}

std::unique_ptr<Transport> Supervisor::start_transport(const Config& c, const std::string& name,
                                                       std::string& error) {
  const auto options = options_for(c, name);
  try {
    auto& lib = libraries_[name];
    if (!lib) lib = PluginLibrary::load(c.plugin_dir, name);
    auto t = std::make_unique<Transport>(lib, name, next_transport_++, options, &callbacks_);
    spdlog::info("transport {} started ({})", name, lib->path());
    return t;
  } catch (const PluginError& e) {
    error = e.what();
    return nullptr;
  }
}

void Supervisor::retire(std::unique_ptr<Transport> t, const Config& c) {
  const core::TransportId id = t->instance();
  feed(core::input::TransportRetiring{id});
  retiring_[id] =
      Retiring{std::move(t), Clock::now() + std::chrono::milliseconds(c.flush_timeout_ms)};
}

// Flushes retiring transports a slice at a time, so the loop (and the watchdog) goes on; each is
// gone once it has delivered everything or its flush timeout passed.
void Supervisor::service_retiring(bool final) {
  for (auto it = retiring_.begin(); it != retiring_.end();) {
    Retiring& r = it->second;
    const auto slice = final ? std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::max(Clock::duration::zero(), r.deadline - Clock::now()))
                             : kFlushSlice;
    const std::size_t left = r.transport->flush(static_cast<std::uint32_t>(slice.count()));
    if (left > 0 && Clock::now() < r.deadline) {
      ++it;
      continue;
    }
    // Results it reported meanwhile count before it is gone.
    process_inbox();
    if (left) {
      spdlog::warn(
          "transport {}: {} deliveries outstanding when it stopped; they are published "
          "again",
          r.transport->name(), left);
    }
    spdlog::info("transport {} stopped", r.transport->name());
    const core::TransportId id = it->first;
    r.transport.reset();
    it = retiring_.erase(it);
    feed(core::input::TransportGone{id});
  }
}

void Supervisor::apply_transports(const Config& next) {
  std::map<core::TransportId, std::unique_ptr<Transport>> kept;
  for (const auto& name : next.transports) {
    const auto options = options_for(next, name);
    auto same = std::find_if(transports_.begin(), transports_.end(), [&](const auto& t) {
      return t.second->name() == name && t.second->options() == options;
    });
    if (same != transports_.end()) {
      kept[same->first] = std::move(same->second);
      transports_.erase(same);
      continue;
    }
    // A changed or new transport: start the new instance while the old one still runs. If that
    // fails (the old one may hold the same endpoint), stop the old one and try again; if that
    // fails too, bring the old configuration back: a failed reload keeps what ran.
    auto old = std::find_if(transports_.begin(), transports_.end(),
                            [&](const auto& t) { return t.second->name() == name; });
    std::string error;
    std::optional<core::TransportId> replaced;  // gone once its replacement is up
    auto fresh = start_transport(next, name, error);
    if (!fresh && old != transports_.end()) {
      Config previous = next;
      previous.transport_options[name] = old->second->options();
      previous.transport_options[name].erase("runtime_dir");
      auto taken = std::move(old->second);
      transports_.erase(old);
      taken->flush(
          static_cast<std::uint32_t>(std::min<std::uint64_t>(next.flush_timeout_ms, 1000)));
      process_inbox();
      replaced = taken->instance();
      feed(core::input::TransportRetiring{*replaced});
      taken.reset();  // frees what it held (its endpoint)
      fresh = start_transport(next, name, error);
      if (!fresh) {
        spdlog::error("{}; keeping its previous configuration", error);
        fresh = start_transport(previous, name, error);
        if (!fresh) spdlog::error("transport {} could not be restarted: {}", name, error);
      }
    } else if (!fresh) {
      spdlog::error("{}", error);
    }
    if (fresh) {
      feed(core::input::TransportUp{fresh->instance(), fresh->name()});
      kept[fresh->instance()] = std::move(fresh);
    }
    // Up before gone: what the old instance never acknowledged is published again to the new.
    if (replaced) feed(core::input::TransportGone{*replaced});
  }
  // What is left is replaced or removed: it retires (flushed while the loop goes on).
  // transports_ never holds an entry moved from: retiring feeds the scheduler, which may publish.
  auto leaving = std::exchange(transports_, std::move(kept));
  for (auto& [id, t] : leaving) retire(std::move(t), next);
}

// ---- Recovery, timers, sleeping ---------------------------------------------------------------

void Supervisor::recover_active() {
  std::size_t n = 0;
  for (const auto ref : consumer_->active()) {
    const auto view = consumer_->view(ref);
    if (!view) continue;
    ++n;
    // Who claimed it (through shared memory, or for a worker on the ingress) outlives us.
    const auto word = consumer_->claim(ref, view->attempt, 0);
    const bool open =
        word.outcome == ipc::ClaimOutcome::kWon || word.outcome == ipc::ClaimOutcome::kLost;
    feed(core::input::Recovered{pack(ref), info_of(*view), consumer_->annotation(ref),
                                open ? view->attempt : 0, open ? word.owner : 0});
  }
  if (n > 0) {
    spdlog::info(
        "carried on with {} execution(s) taken by the previous supervisor ({} to "
        "dispatch again)",
        core_.taken(), core_.held());
  }
}

void Supervisor::timers() {
  const auto now = Clock::now();
  observe(now);
  if (journal_ && journal_->snapshot_due()) journal_snapshot();
  if (now >= next_reap_ || (consumer_->maintenance_requested() && !repair_blocked_)) {
    next_reap_ = now + std::chrono::milliseconds(config_.reap_interval_ms);
    const auto deferred_before = consumer_->stats().maintenance_deferred;
    if (const auto dead = consumer_->reap_dead()) {
      spdlog::warn("found {} dead queue participant(s); reclaiming what they held", dead);
    }
    repair_blocked_ = consumer_->blocked_by() != 0;
    if (repair_blocked_) {
      counters_.maintenance_deferred.fetch_add(
          consumer_->stats().maintenance_deferred - deferred_before, std::memory_order_relaxed);
      note_blocked("a repair of the queue");
    }
    if (!pending_releases_.empty()) retry_pending_releases();
  }
  if (!retiring_.empty()) service_retiring(false);
  if (!sessions_.empty() && now >= next_session_check_) {
    // A local worker's process that exited ends its workers now, not at its heartbeat timeout.
    next_session_check_ = now + kSessionCheck;
    for (const auto& session : sessions_.gone()) feed(core::input::SessionGone{session});
  }
  if (watchdog_interval_.count() > 0 && now >= next_watchdog_) {
    next_watchdog_ = now + watchdog_interval_;
    sd_notify(0, "WATCHDOG=1");
  }
  if (now >= next_status_) {
    next_status_ = now + std::chrono::seconds(1);
    notify_status();
  }
}

void Supervisor::sleep() {
  auto ready = [&] {
    if (stop_ || reload_ || !inbox_->empty()) return true;
    // A request for maintenance, unless the last repair was held up (then: the next reap).
    if (consumer_->maintenance_requested() && !repair_blocked_) return true;
    if (consumer_->has_unannounced()) return true;
    // Queued work makes us ready only when the scheduler would take it now (by the same count
    // it decides on: cancelled entries waiting to be passed are not work).
    if (!core_.can_take(now())) return false;
    for (std::size_t l = 0; l < kPriorityLevels; ++l) {
      if (consumer_->depth(static_cast<Priority>(l)) > 0) return true;
    }
    return false;
  };
  const auto now = Clock::now();
  if (worked_ && config_.idle_spin_us > 0) {
    // Right after work more is likely: a short spin answers it without a wake-up.
    const auto until = now + std::chrono::microseconds(config_.idle_spin_us);
    while (Clock::now() < until) {
      if (ready()) return;
    }
  }
  auto deadline = std::min(next_reap_, now + kMaxSleep);
  if (const auto at = core_.next_deadline(this->now())) {
    deadline = std::min(deadline, now + std::chrono::nanoseconds(*at - steady_ns()));
  }
  if (watchdog_interval_.count() > 0) deadline = std::min(deadline, next_watchdog_);
  if (!retiring_.empty()) deadline = std::min(deadline, now + std::chrono::milliseconds(5));
  if (!sessions_.empty()) deadline = std::min(deadline, next_session_check_);
  if (deadline > now) consumer_->sleep_unless(ready, deadline - now);
}

void Supervisor::reload() {
  reload_ = false;
  // MONOTONIC_USEC: how systemd (Type=notify-reload) tells this reload from an older one.
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
             static_cast<unsigned long long>(ts.tv_sec) * 1'000'000ULL +
                 static_cast<unsigned long long>(ts.tv_nsec) / 1000ULL);
  try {
    LoadResult loaded = load_config(argc_, argv_);
    for (const auto& w : loaded.warnings) spdlog::warn("{}", w);
    Config next = std::move(loaded.config);
    // The segment's sizes are fixed while it exists: they keep their values (the rest of the
    // queue's settings, the per-user cap, take effect).
    const ipc::SegmentConfig fixed = segment_->config();
    if (next.segment != config_.segment || next.queue.max_queue_size != fixed.max_queue_size ||
        next.queue.max_payload_bytes != fixed.max_payload_bytes ||
        next.queue.max_users != fixed.max_users || next.queue.max_active != fixed.max_active ||
        next.queue.max_participants != fixed.max_participants) {
      spdlog::warn(
          "segment and queue sizes cannot change while the segment exists; they keep "
          "their values until a restart with a drained, removed segment");
      next.segment = config_.segment;
      const std::uint64_t per_user = next.queue.max_executions_per_user;
      next.queue = fixed;
      next.queue.max_executions_per_user = per_user;
    }
    if (next.audit_dir != config_.audit_dir || next.audit_fsync != config_.audit_fsync ||
        next.audit_fsync_interval_ms != config_.audit_fsync_interval_ms ||
        next.audit_max_file_bytes != config_.audit_max_file_bytes ||
        next.audit_max_files != config_.audit_max_files ||
        next.audit_max_pending != config_.audit_max_pending) {
      spdlog::warn("the audit log's settings are fixed at start; they change with a restart");
      next.audit_dir = config_.audit_dir;
      next.audit_fsync = config_.audit_fsync;
      next.audit_fsync_interval_ms = config_.audit_fsync_interval_ms;
      next.audit_max_file_bytes = config_.audit_max_file_bytes;
      next.audit_max_files = config_.audit_max_files;
      next.audit_max_pending = config_.audit_max_pending;
    }
    if (next.journal_dir != config_.journal_dir ||
        next.journal_salvage != config_.journal_salvage) {
      spdlog::warn(
          "journal_dir and journal_salvage are fixed at start; they change with a restart");
      next.journal_dir = config_.journal_dir;
      next.journal_salvage = config_.journal_salvage;
    }
    if (next.durability == "disk" && next.journal_dir.empty()) {
      throw ipc::ConfigError(
          "durability = disk needs a journal, and this shmschedd started "
          "without journal_dir (fixed at start)");
    }
    if (next.max_active_executions > fixed.max_active) {
      throw ipc::ConfigError(
          "max_active_executions = " + std::to_string(next.max_active_executions) +
          ": the segment holds at most max_active = " + std::to_string(fixed.max_active) +
          " active executions");
    }
    // New or changed transports that are required are checked (created, not started) before
    // anything changes: a bad one fails the reload and the running configuration stays.
    for (const auto& name : next.transports) {
      if (is_optional(next, name)) continue;
      const auto options = options_for(next, name);
      const bool unchanged =
          std::any_of(transports_.begin(), transports_.end(), [&](const auto& t) {
            return t.second->name() == name && t.second->options() == options;
          });
      if (unchanged) continue;
      auto& lib = libraries_[name];
      if (!lib) lib = PluginLibrary::load(next.plugin_dir, name);
      const bool running = std::any_of(transports_.begin(), transports_.end(),
                                       [&](const auto& t) { return t.second->name() == name; });
      if (running) {
        // Changed: its options are checked here; a replacement that cannot start keeps the
        // running instance (apply_transports).
        Transport::check(*lib, name, options, &callbacks_);
      } else {
        // Added: it must start (bind, connect), so it is started and stopped once first.
        Transport trial(lib, name, 0, options, &callbacks_);
      }
    }
    segment_->set_max_executions_per_user(next.queue.max_executions_per_user);
    spdlog::set_level(spdlog::level::from_str(next.log_level));
    apply_transports(next);
    if (transports_.empty()) {
      spdlog::error("no transport is running after the reload: dispatch waits");
    }
    config_ = std::move(next);
    if (journal_) journal_->set_snapshot_min_bytes(config_.journal_snapshot_min_bytes);
    set_default_durability();
    feed(core::input::Reload{policy(config_)});
    counters_.max_active = config_.max_active_executions;
    spdlog::info("configuration reloaded: transports {}, max_active_executions {}",
                 fmt::join(config_.transports, ","), config_.max_active_executions);
  } catch (const std::exception& e) {
    spdlog::error("reload failed, keeping the running configuration: {}", e.what());
  }
  sd_notify(0, "READY=1");
  notify_status();
}

// What `systemctl status` shows under the unit's name.
void Supervisor::notify_status() {
  const auto stats = consumer_->stats();
  std::string names;
  for (const auto& [id, t] : transports_) names += (names.empty() ? "" : ",") + t->name();
  sd_notifyf(0, "STATUS=%llu queued, %llu of %llu dispatched, %llu held; transports %s",
             static_cast<unsigned long long>(stats.queued),
             static_cast<unsigned long long>(core_.dispatched_now()),
             static_cast<unsigned long long>(config_.max_active_executions),
             static_cast<unsigned long long>(core_.held()),
             names.empty() ? "none running" : names.c_str());
}

void Supervisor::shutdown() {
  sd_notify(0, "STOPPING=1");
  observability_.ready = false;
  spdlog::info("stopping: no new work is taken; flushing transports");
  if (journal_) {
    // Answers that wait for the disk (durability disk) go out before the ingress stops: what
    // was appended is synced, and the waits it ends are carried out.
    journal_->wait_durable(journal_->appended(), std::chrono::seconds(5));
    for (int round = 0; round < 3 && !inbox_->empty(); ++round) process_inbox();
  }
  ingress_stop_ = true;
  if (ingress_thread_.joinable()) ingress_thread_.join();
  process_inbox();  // results that arrived meanwhile
  if (journal_) {
    // Finished executions whose end is being synced: give their slots back once it is; and the
    // last durable marks. Then submitters stop waiting for marks (they go to the ingress, or
    // are told that nothing confirms durability any more).
    if (!durable_releases_.empty() || !durable_marks_.empty()) {
      journal_->wait_durable(journal_->appended(), std::chrono::seconds(5));
      on_journal_durable();
    }
    stop_durable_marks();
  }
  retry_pending_releases();
  // Requests still waiting for the queue (a repair held up) are answered: nothing was done.
  for (const auto& [op, to] : ops_) {
    const auto reply = protocol::error_reply(
        "unavailable",
        "the supervisor stopped before it could carry this out (a repair of the queue was "
        "held up): send it again");
    if (to.ingress_token && ingress_) ingress_->reply(to.ingress_token, reply);
    if (to.transport && to.transport->ack) {
      if (to.transport->reply) {
        to.transport->reply(to.transport->op_ctx,
                            reinterpret_cast<const std::uint8_t*>(reply.data()), reply.size());
      }
      to.transport->ack(to.transport->op_ctx);
    }
  }
  ops_.clear();
  stopping_ = true;
  auto leaving = std::exchange(transports_, {});
  for (auto& [id, t] : leaving) retire(std::move(t), config_);
  service_retiring(true);
  spdlog::info(
      "stopped; {} queued and {} taken execution(s) stay in the segment for the next supervisor",
      consumer_->stats().queued, core_.taken());
}

int Supervisor::run() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  std::atomic<bool> signals_stop{false};
  std::thread signal_thread([&] {
    while (!signals_stop) {
      timespec ts{0, 200'000'000};
      const int sig = sigtimedwait(&set, nullptr, &ts);
      if (sig > 0) inbox_->post(SignalMessage{sig});
    }
  });
  std::uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0) watchdog_interval_ = std::chrono::microseconds(usec / 2);
  // READY only now: the segment is attached, the transports started, the ingress bound.
  sd_notify(0, "READY=1");
  observability_.ready = true;
  notify_status();
  if (!config_.ingress_tcp.empty() && config_.check_identity) {
    spdlog::warn(
        "ingress_tcp = {}: clients over TCP carry no credentials and are not checked (they act "
        "for any user); expose it to a trusted network only",
        config_.ingress_tcp);
  }
  spdlog::info("shmschedd ready: segment {}, ingress {}, {} transport(s), max_active_executions {}",
               config_.segment, config_.ingress_endpoint(), transports_.size(),
               config_.max_active_executions);
  int code = 0;
  try {
    for (;;) {
      worked_ = false;
      process_inbox();
      if (stop_) break;
      if (reload_) reload();
      announce();
      advance();
      timers();
      sleep();
    }
  } catch (const std::exception& e) {
    // Nothing accepted is lost: it stays in the segment for the next supervisor.
    spdlog::critical("the scheduling loop stopped: {}", e.what());
    code = 1;
  }
  try {
    shutdown();  // flush the transports: final events already decided go out
  } catch (const std::exception& e) {
    spdlog::critical("shutting down: {}", e.what());
    code = 1;
  }
  signals_stop = true;
  signal_thread.join();
  return code;
}

}  // namespace shmsched::daemon
