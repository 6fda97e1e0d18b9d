// The supervisor's loop. Everything that changes scheduling state happens on this one thread:
//
//   for (;;) {
//     process_inbox();   // operations from the ingress and transports, delivery results, signals
//     announce();        // ExecutionAccepted for entries that producers queued since last time
//     dispatch();        // priority order, lanes (retries, backoff, aged) before the ring
//     timers();          // reap dead producers, expire stale entries, age, watchdog
//     sleep();           // spin briefly after work, then futex-sleep on the queue's wake word
//   }
//
// Other threads only post to the inbox (which kicks the same futex word) or read atomics.
#include "supervisor.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <algorithm>

#include "journal_sink.h"
#include "shmsched/ipc/events.h"

namespace shmsched::daemon {

using ipc::protocol::MapBuilder;
namespace protocol = ipc::protocol;

namespace {

constexpr std::uint64_t kEventTokenBit = 1ULL << 63;  // events: delivery results only logged
constexpr std::size_t kFinishedMemory = 100000;       // ids remembered to answer "finished"
constexpr auto kMaxSleep = std::chrono::milliseconds(100);

std::uint64_t annotation_of(Phase p, std::size_t level, std::uint32_t failures) {
  return static_cast<std::uint64_t>(p) | (static_cast<std::uint64_t>(level) << 8) |
         (static_cast<std::uint64_t>(std::min<std::uint32_t>(failures, 0xffff)) << 16);
}

std::vector<std::byte> ok_reply() {
  return MapBuilder().boolean("ok", true).finish();
}

}  // namespace

Supervisor::Supervisor(Config config, int argc, const char* const* argv)
    : config_(std::move(config)), argc_(argc), argv_(argv) {
  segment_ = ipc::Segment::open_or_create(config_.segment, config_.queue);
  segment_->set_max_executions_per_user(config_.queue.max_executions_per_user);
  consumer_ = std::make_unique<ipc::Consumer>(segment_);
  inbox_ = std::make_unique<Inbox>(segment_);
  counters_.max_active = config_.max_active_executions;

  callbacks_.log = [](shmsched_log_level level, const std::string& t, const std::string& msg) {
    const auto lvl = level == SHMSCHED_LOG_ERROR  ? spdlog::level::err
                     : level == SHMSCHED_LOG_WARN ? spdlog::level::warn
                     : level == SHMSCHED_LOG_INFO ? spdlog::level::info
                                                  : spdlog::level::debug;
    spdlog::log(lvl, "[{}] {}", t, msg);
  };
  callbacks_.delivery = [this](const std::string& t, std::uint64_t token, bool ok,
                               const std::string& error) {
    inbox_->post(DeliveryMessage{t, token, ok, error});
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
  if (transports_.empty()) {
    throw PluginError(
        "no transport could be started (transports = " + std::to_string(config_.transports.size()) +
        " configured): see the errors above");
  }
  recover_active();
  start_ingress();
}

Supervisor::~Supervisor() {
  ingress_stop_ = true;
  if (ingress_thread_.joinable()) ingress_thread_.join();
}

// ---- Transports -----------------------------------------------------------------------------

void Supervisor::apply_transports(const Config& next) {
  std::vector<std::unique_ptr<Transport>> kept;
  for (const auto& name : next.transports) {
    std::map<std::string, std::string> options;
    if (auto it = next.transport_options.find(name); it != next.transport_options.end()) {
      options = it->second;
    }
    options.emplace("runtime_dir", next.runtime_dir);
    auto same = std::find_if(transports_.begin(), transports_.end(), [&](const auto& t) {
      return t && t->name() == name && t->options() == options;
    });
    if (same != transports_.end()) {
      kept.push_back(std::move(*same));
      continue;
    }
    // A changed or new transport. Start the new instance while the old one still runs; if
    // that fails (the old one may hold the same endpoint), stop the old one and try again; if
    // that fails too, bring the old configuration back: a failed reload keeps what ran.
    auto old = std::find_if(transports_.begin(), transports_.end(),
                            [&](const auto& t) { return t && t->name() == name; });
    std::unique_ptr<Transport> fresh;
    std::string error;
    auto start = [&](const std::map<std::string, std::string>& opts) {
      try {
        auto& lib = libraries_[name];
        if (!lib) lib = PluginLibrary::load(next.plugin_dir, name);
        fresh = std::make_unique<Transport>(lib, name, opts, &callbacks_);
        fresh->first_token = next_token_;
        spdlog::info("transport {} started ({})", name, lib->path());
        return true;
      } catch (const PluginError& e) {
        error = e.what();
        return false;
      }
    };
    if (!start(options) && old != transports_.end()) {
      const auto old_options = (*old)->options();
      const std::size_t left = (*old)->flush(static_cast<std::uint32_t>(next.flush_timeout_ms));
      if (left) spdlog::warn("transport {}: {} deliveries outstanding when replaced", name, left);
      old->reset();
      if (!start(options)) {
        spdlog::error("{}; keeping its previous configuration", error);
        if (!start(old_options))
          spdlog::error("transport {} could not be restarted: {}", name, error);
      }
    } else if (!fresh) {
      spdlog::error("{}", error);
    }
    if (fresh) kept.push_back(std::move(fresh));
  }
  for (auto& t : transports_) {
    if (!t) continue;
    const std::size_t left = t->flush(static_cast<std::uint32_t>(next.flush_timeout_ms));
    if (left) spdlog::warn("transport {}: {} deliveries outstanding when removed", t->name(), left);
    spdlog::info("transport {} stopped", t->name());
    t.reset();
  }
  transports_ = std::move(kept);
  // Dispatches still waiting for a result from an instance that was removed or replaced stop
  // waiting for it. A replaced transport has not got the message: that counts as a failed
  // publish, so the execution is published again, to the transports that do not have it only.
  std::set<std::string> running;
  for (const auto& t : transports_) running.insert(t->name());
  std::vector<Active*> resolved;
  for (auto& [id, a] : active_) {
    if (a.phase != Phase::kDispatching) continue;
    for (auto it = a.pending.begin(); it != a.pending.end();) {
      const bool still = std::any_of(transports_.begin(), transports_.end(), [&](const auto& t) {
        return t->name() == *it && t->first_token <= a.token;
      });
      if (still) {
        ++it;
        continue;
      }
      if (running.count(*it)) a.publish_failed = true;
      it = a.pending.erase(it);
    }
    if (a.pending.empty()) resolved.push_back(&a);
  }
  for (Active* a : resolved) resolve_dispatch(*a);
}

void Supervisor::publish_event(const char* type, const std::string& key,
                               const std::vector<std::byte>& body) {
  shmsched_message msg{
      type, key.c_str(), type, reinterpret_cast<const std::uint8_t*>(body.data()), body.size(), 0};
  for (auto& t : transports_) {
    const int rc = t->publish(msg, kEventTokenBit | next_token_++);
    if (rc != SHMSCHED_OK) {
      const ExecutionLogScope log_scope(key);
      spdlog::warn("transport {} refused event {} for {}", t->name(), type, key);
    }
  }
}

void Supervisor::publish_dispatch(Active& a) {
  const ExecutionLogScope log_scope(a.rec.execution_id);
  const auto body = ipc::events::dispatch(a.rec, a.attempt);
  a.token = next_token_++;
  a.pending.clear();
  a.publish_failed = false;
  tokens_[a.token] = a.rec.execution_id;
  shmsched_message msg{"CreatePodCommand", a.rec.execution_id.c_str(),
                       "CreatePodCommand", reinterpret_cast<const std::uint8_t*>(body.data()),
                       body.size(),        1};
  set_phase(a, Phase::kDispatching);
  for (auto& t : transports_) {
    if (a.acked.count(t->name())) continue;  // never twice to one transport for one attempt
    // Pending before publish: a transport may report the delivery from inside publish().
    a.pending.insert(t->name());
    if (t->publish(msg, a.token) != SHMSCHED_OK) {
      a.pending.erase(t->name());
      a.publish_failed = true;
      spdlog::warn("transport {} refused CreatePodCommand for {}", t->name(), a.rec.execution_id);
    }
  }
  if (a.pending.empty()) resolve_dispatch(a);
}

void Supervisor::resolve_dispatch(Active& a) {
  const ExecutionLogScope log_scope(a.rec.execution_id);
  tokens_.erase(a.token);
  a.token = 0;
  if (!a.publish_failed && !transports_.empty()) {
    set_phase(a, Phase::kDispatched);
    a.publish_failures = 0;
    counters_.dispatched.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  // Never lost, never failed for a transport hiccup: back to the front of its level, later.
  ++a.publish_failures;
  counters_.publish_failures.fetch_add(1, std::memory_order_relaxed);
  const auto delay = backoff(config_.dispatch_backoff_ms, a.publish_failures);
  spdlog::warn("dispatch of {} failed ({} time(s)); retrying in {} ms", a.rec.execution_id,
               a.publish_failures, delay.count());
  hold(a, delay, true);
  dispatch_paused_until_ = std::max(dispatch_paused_until_, a.ready_at);
}

void Supervisor::handle_delivery(const DeliveryMessage& d) {
  if (d.token & kEventTokenBit) {
    if (!d.ok) spdlog::warn("transport {} could not deliver an event: {}", d.transport, d.error);
    return;
  }
  auto it = tokens_.find(d.token);
  if (it == tokens_.end()) return;  // superseded (reload, cancel, completion)
  auto a = active_.find(it->second);
  if (a == active_.end()) return;
  Active& e = a->second;
  // Only a result for the current publish counts; one from an instance that a reload replaced
  // or removed is no longer awaited.
  if (e.token != d.token || e.pending.erase(d.transport) == 0) return;
  if (d.ok) {
    e.acked.insert(d.transport);
  } else {
    e.publish_failed = true;
    spdlog::warn("transport {} failed to deliver CreatePodCommand for {}: {}", d.transport,
                 e.rec.execution_id, d.error);
  }
  if (e.pending.empty()) resolve_dispatch(e);
}

// ---- State changes ------------------------------------------------------------------------

std::chrono::milliseconds Supervisor::backoff(std::uint64_t base_ms, std::uint32_t failures) const {
  std::uint64_t ms = base_ms;
  for (std::uint32_t i = 1; i < failures && ms < config_.max_backoff_ms; ++i) ms *= 2;
  return std::chrono::milliseconds(std::min(ms, config_.max_backoff_ms));
}

void Supervisor::set_phase(Active& a, Phase p) {
  const bool was = a.phase == Phase::kDispatching || a.phase == Phase::kDispatched;
  const bool is = p == Phase::kDispatching || p == Phase::kDispatched;
  if (!was && is) ++dispatched_;
  if (was && !is) --dispatched_;
  a.phase = p;
  counters_.active.store(dispatched_, std::memory_order_relaxed);
  consumer_->annotate(a.ref, annotation_of(p, a.level, a.publish_failures));
}

void Supervisor::hold(Active& a, Clock::duration delay, bool front) {
  // Whatever was in flight for the previous attempt is no longer awaited, and an execution sits
  // in exactly one lane.
  if (a.token) tokens_.erase(a.token);
  a.token = 0;
  a.pending.clear();
  if (a.phase == Phase::kHeld) {
    auto& old = lanes_[a.level];
    old.erase(std::remove(old.begin(), old.end(), a.rec.execution_id), old.end());
  }
  set_phase(a, Phase::kHeld);
  a.ready_at = Clock::now() + delay;
  auto& lane = lanes_[a.level];
  if (front) {
    lane.push_front(a.rec.execution_id);
  } else {
    lane.push_back(a.rec.execution_id);
  }
}

void Supervisor::remember_finished(const std::string& id) {
  if (finished_.insert(id).second) finished_order_.push_back(id);
  while (finished_order_.size() > kFinishedMemory) {
    finished_.erase(finished_order_.front());
    finished_order_.pop_front();
  }
}

// Releases an active execution (after its final event was published).
void Supervisor::finish(Active& a) {
  if (a.token) tokens_.erase(a.token);
  if (a.phase == Phase::kHeld) {
    auto& lane = lanes_[a.level];
    lane.erase(std::remove(lane.begin(), lane.end(), a.rec.execution_id), lane.end());
  }
  // Marked finished first: a supervisor that dies before the release releases it on restart
  // instead of dispatching it again.
  set_phase(a, Phase::kFinished);
  if (!consumer_->release(a.ref) && consumer_->blocked_by() != 0) {
    pending_releases_.push_back(a.ref);
    note_blocked("releasing a finished execution");
  }
  remember_finished(a.rec.execution_id);
  active_.erase(a.rec.execution_id);
}

void Supervisor::reply(const ReplyTo& to, const std::vector<std::byte>& body) {
  if (to.ingress_token) ingress_->reply(to.ingress_token, body);
  if (to.transport) {
    if (to.transport->reply) {
      to.transport->reply(to.transport->op_ctx, reinterpret_cast<const std::uint8_t*>(body.data()),
                          body.size());
    }
    if (to.transport->ack) to.transport->ack(to.transport->op_ctx);
  }
}

void Supervisor::handle_op(OpMessage& op) {
  auto not_active = [&](const std::string& id) {
    if (finished_.count(id)) {
      return protocol::error_reply("finished", "execution " + id + " has already finished");
    }
    if (consumer_->status(id)) {
      return protocol::error_reply("not_found", "execution " + id + " is queued, not dispatched");
    }
    return protocol::error_reply("not_found", "no execution " + id);
  };
  if (auto* c = std::get_if<protocol::CancelOp>(&op.request)) {
    const std::string reason = c->reason.empty() ? "cancelled" : c->reason;
    if (auto it = active_.find(c->execution_id); it != active_.end()) {
      // Ours already (dispatched, or held for a retry): nothing to ask the queue but the release.
      Active& a = it->second;
      counters_.cancelled.fetch_add(1, std::memory_order_relaxed);
      ipc::events::Finished ev{"ExecutionCancelled", a.rec.execution_id, a.rec.user_id};
      ev.reason = reason;
      publish_event("ExecutionCancelled", a.rec.execution_id, ipc::events::finished(ev));
      finish(a);
      reply(op.reply_to, ok_reply());
      return;
    }
    // Find the user before the cancel makes the entry disappear.
    const auto rec = consumer_->status(c->execution_id);
    const auto outcome = consumer_->cancel(c->execution_id);
    if (outcome == ipc::CancelOutcome::kUnavailable) {
      note_blocked("a cancel");
      deferred_ops_.push_back(std::move(op));
      return;
    }
    if (outcome == ipc::CancelOutcome::kCancelled) {
      counters_.cancelled.fetch_add(1, std::memory_order_relaxed);
      remember_finished(c->execution_id);
      const std::string user = rec ? rec->user_id : std::string();
      ipc::events::Finished ev{"ExecutionCancelled", c->execution_id, user};
      ev.reason = reason;
      publish_event("ExecutionCancelled", c->execution_id, ipc::events::finished(ev));
      reply(op.reply_to, ok_reply());
      return;
    }
    auto it = active_.find(c->execution_id);
    if (it == active_.end()) {
      reply(op.reply_to, not_active(c->execution_id));
      return;
    }
    Active& a = it->second;
    counters_.cancelled.fetch_add(1, std::memory_order_relaxed);
    ipc::events::Finished ev{"ExecutionCancelled", a.rec.execution_id, a.rec.user_id};
    ev.reason = reason;
    publish_event("ExecutionCancelled", a.rec.execution_id, ipc::events::finished(ev));
    finish(a);
    reply(op.reply_to, ok_reply());
    return;
  }
  if (auto* c = std::get_if<protocol::CompleteOp>(&op.request)) {
    auto it = active_.find(c->execution_id);
    if (it == active_.end()) {
      reply(op.reply_to, not_active(c->execution_id));
      return;
    }
    Active& a = it->second;
    counters_.completed.fetch_add(1, std::memory_order_relaxed);
    ipc::events::Finished ev{"ExecutionCompleted", a.rec.execution_id, a.rec.user_id};
    if (c->worker_id) ev.worker_id = *c->worker_id;
    ev.exit_code = c->exit_code;
    publish_event("ExecutionCompleted", a.rec.execution_id, ipc::events::finished(ev));
    finish(a);
    reply(op.reply_to, ok_reply());
    return;
  }
  if (auto* f = std::get_if<protocol::FailOp>(&op.request)) {
    auto it = active_.find(f->execution_id);
    if (it == active_.end()) {
      reply(op.reply_to, not_active(f->execution_id));
      return;
    }
    Active& a = it->second;
    const bool retry = f->retry && a.attempt < config_.max_attempts;
    ipc::events::Finished ev{"ExecutionFailed", a.rec.execution_id, a.rec.user_id};
    if (f->worker_id) ev.worker_id = *f->worker_id;
    ev.error = f->error;
    ev.will_retry = retry;
    ev.attempt = a.attempt;
    publish_event("ExecutionFailed", a.rec.execution_id, ipc::events::finished(ev));
    if (retry) {
      counters_.retried.fetch_add(1, std::memory_order_relaxed);
      const auto delay = backoff(config_.retry_backoff_ms, a.attempt);
      // Held first: a supervisor that dies right here re-dispatches it rather than believing the
      // new attempt was already published.
      a.publish_failures = 0;
      hold(a, delay, true);
      a.acked.clear();
      ++a.attempt;
      consumer_->set_attempt(a.ref, a.attempt);
    } else {
      counters_.failed.fetch_add(1, std::memory_order_relaxed);
      finish(a);
    }
    reply(op.reply_to, ok_reply());
    return;
  }
  if (auto* s = std::get_if<protocol::SubmitOp>(&op.request)) {
    // A submission that arrived through a transport (e.g. ExecutionRequested on Kafka).
    const std::string id = s->execution_id.empty() ? protocol::new_uuid() : s->execution_id;
    if (finished_.count(id)) {
      // A redelivered request (a replayed topic, a rebalance) for an execution that already
      // ran must not run it again.
      const std::string why = "execution " + id + " has already finished";
      publish_event("ExecutionRejected", id,
                    ipc::events::rejected(id, s->user_id, "duplicate", why));
      reply(op.reply_to, protocol::error_reply("duplicate", why));
      return;
    }
    std::string error;
    ipc::Producer* producer = loop_producer(error);
    if (!producer) {
      publish_event("ExecutionRejected", id,
                    ipc::events::rejected(id, s->user_id, "queue_full", error));
      reply(op.reply_to, protocol::error_reply("queue_full", error));
      return;
    }
    const auto r = producer->submit(protocol::to_submit_request(*s, id));
    if (r.accepted()) {
      reply(op.reply_to, MapBuilder()
                             .boolean("ok", true)
                             .str("execution_id", id)
                             .integer("queue_position", static_cast<std::int64_t>(r.queue_position))
                             .finish());
    } else {
      const auto reason = admission_name(r.admission);
      publish_event("ExecutionRejected", id,
                    ipc::events::rejected(id, s->user_id, reason, r.message));
      reply(op.reply_to, protocol::error_reply(reason, r.message));
    }
    return;
  }
  reply(op.reply_to, protocol::error_reply("invalid", "this operation is not accepted here"));
}

ipc::Producer* Supervisor::loop_producer(std::string& error) {
  if (loop_producer_) return loop_producer_.get();
  try {
    // The loop never waits long for the queue: a submit that would is refused (queue_full).
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

void Supervisor::retry_deferred() {
  for (auto it = pending_releases_.begin(); it != pending_releases_.end();) {
    if (consumer_->release(*it) || consumer_->blocked_by() == 0) {
      it = pending_releases_.erase(it);
    } else {
      return;  // still blocked: the rest waits for the next round
    }
  }
  auto ops = std::move(deferred_ops_);
  deferred_ops_.clear();
  for (auto& op : ops) handle_op(op);
}

void Supervisor::answer_deferred_at_exit() {
  retry_deferred();
  for (auto& op : deferred_ops_) {
    reply(op.reply_to,
          protocol::error_reply("unavailable",
                                "the supervisor stopped before the queue could take this "
                                "operation (a repair was held up): send it again"));
  }
  deferred_ops_.clear();
}

void Supervisor::process_inbox() {
  auto messages = inbox_->take();
  for (auto& m : messages) {
    worked_ = true;
    if (auto* op = std::get_if<OpMessage>(&m)) {
      handle_op(*op);
    } else if (auto* d = std::get_if<DeliveryMessage>(&m)) {
      handle_delivery(*d);
    } else if (auto* r = std::get_if<RejectedMessage>(&m)) {
      publish_event("ExecutionRejected", r->execution_id,
                    ipc::events::rejected(r->execution_id, r->user_id, r->reason, r->message));
    } else if (auto* s = std::get_if<SignalMessage>(&m)) {
      if (s->signal == SIGHUP)
        reload_ = true;
      else
        stop_ = true;
    }
  }
}

void Supervisor::announce() {
  for (std::size_t l = 0; l < kPriorityLevels; ++l) {
    const auto level = static_cast<Priority>(l);
    // Cells, not the tail, say what is queued: a producer may have filled a cell and not yet
    // moved the tail.
    announced_[l] = consumer_->scan_new(
        level, announced_[l], [&](const ipc::ExecutionView& v, std::uint64_t rank) {
          const std::string id(v.execution_id);
          publish_event("ExecutionAccepted", id,
                        ipc::events::accepted(id, v.user_id, v.priority, rank));
          worked_ = true;
        });
  }
}

Supervisor::Active* Supervisor::take(std::size_t level) {
  std::uint64_t pos = 0;
  const auto ref = consumer_->dequeue(static_cast<Priority>(level), &pos);
  if (!ref) return nullptr;
  auto rec = consumer_->record(*ref);
  if (!rec) return nullptr;
  if (pos >= announced_[level]) {
    // Queued after this round's announcements: announce it before anything else happens to it.
    publish_event("ExecutionAccepted", rec->execution_id,
                  ipc::events::accepted(rec->execution_id, rec->user_id, rec->priority, 0));
    announced_[level] = pos + 1;
  }
  Active a;
  a.ref = *ref;
  a.attempt = rec->attempt;
  a.level = level;
  a.rec = std::move(*rec);
  const std::string id = a.rec.execution_id;
  return &active_.insert_or_assign(id, std::move(a)).first->second;
}

void Supervisor::dispatch() {
  const auto now = Clock::now();
  // After a failed publish, nothing new is taken from the rings until its backoff has passed:
  // the queue keeps the work (and its capacity accounting) while a transport is down.
  if (transports_.empty() || now < dispatch_paused_until_) return;
  while (dispatched_ < config_.max_active_executions && !stop_ && now >= dispatch_paused_until_) {
    Active* chosen = nullptr;
    for (std::size_t l = 0; l < kPriorityLevels && !chosen; ++l) {
      auto& lane = lanes_[l];
      for (auto it = lane.begin(); it != lane.end(); ++it) {
        auto a = active_.find(*it);
        if (a == active_.end()) continue;
        if (a->second.ready_at <= now) {
          chosen = &a->second;
          lane.erase(it);
          break;
        }
      }
      if (chosen) break;
      chosen = take(l);
    }
    if (!chosen) return;
    worked_ = true;
    publish_dispatch(*chosen);
  }
}

// ---- Recovery, timers, sleeping ---------------------------------------------------------------

void Supervisor::recover_active() {
  std::size_t redo = 0;
  for (const auto ref : consumer_->active()) {
    auto rec = consumer_->record(ref);
    if (!rec) continue;
    const std::uint64_t ann = consumer_->annotation(ref);
    if (static_cast<Phase>(ann & 0xff) == Phase::kFinished) {
      // Its final event was published; the previous supervisor died before the release.
      if (!consumer_->release(ref)) pending_releases_.push_back(ref);
      remember_finished(rec->execution_id);
      continue;
    }
    Active a;
    a.ref = ref;
    a.attempt = rec->attempt;
    a.level = std::min<std::size_t>((ann >> 8) & 0xff, kPriorityLevels - 1);
    if ((ann & 0xff) == 0) a.level = priority_index(rec->priority);
    a.publish_failures = static_cast<std::uint32_t>((ann >> 16) & 0xffff);
    a.rec = std::move(*rec);
    const std::string id = a.rec.execution_id;
    Active& stored = active_.insert_or_assign(id, std::move(a)).first->second;
    if (static_cast<Phase>(ann & 0xff) == Phase::kDispatched) {
      set_phase(stored, Phase::kDispatched);
    } else {
      // Held, or its dispatch was in flight when the previous supervisor stopped: publish it
      // (again). Delivery is at least once; execution_id is the idempotency key.
      hold(stored, Clock::duration::zero(), false);
      ++redo;
    }
  }
  if (!active_.empty()) {
    spdlog::info(
        "carried on with {} active execution(s) from the previous supervisor ({} to "
        "dispatch again)",
        active_.size(), redo);
  }
}

void Supervisor::timers() {
  const auto now = Clock::now();
  if (now >= next_reap_ || consumer_->maintenance_requested()) {
    next_reap_ = now + std::chrono::milliseconds(config_.reap_interval_ms);
    const auto deferred_before = consumer_->stats().maintenance_deferred;
    if (const auto dead = consumer_->reap_dead()) {
      spdlog::warn("found {} dead queue participant(s); reclaiming what they held", dead);
    }
    if (consumer_->blocked_by() != 0) {
      counters_.maintenance_deferred.fetch_add(
          consumer_->stats().maintenance_deferred - deferred_before, std::memory_order_relaxed);
      note_blocked("a repair of the queue");
    }
    if (!pending_releases_.empty() || !deferred_ops_.empty()) retry_deferred();
  }
  if (now >= next_sweep_) {
    next_sweep_ = now + std::chrono::seconds(1);
    for (const auto& rec :
         consumer_->sweep_stale(std::chrono::seconds(config_.stale_timeout_seconds))) {
      counters_.expired.fetch_add(1, std::memory_order_relaxed);
      remember_finished(rec.execution_id);
      ipc::events::Finished ev{"ExecutionExpired", rec.execution_id, rec.user_id};
      ev.reason = "stale_timeout";
      publish_event("ExecutionExpired", rec.execution_id, ipc::events::finished(ev));
      worked_ = true;
    }
  }
  if (config_.aging_seconds > 0 && now >= next_aging_) {
    next_aging_ =
        now + std::chrono::milliseconds(std::min<std::uint64_t>(1000, config_.aging_seconds * 250));
    const std::int64_t step = static_cast<std::int64_t>(config_.aging_seconds) * 1'000'000'000;
    const std::int64_t wall = ipc::events::now_ns();
    auto lifted_level = [&](std::size_t original, std::int64_t enqueued) {
      const std::int64_t lifts = std::max<std::int64_t>(0, (wall - enqueued) / step);
      return static_cast<std::size_t>(
          std::max<std::int64_t>(0, static_cast<std::int64_t>(original) - lifts));
    };
    // Heads of the rings that waited long enough move into the lane one level (or more) up.
    for (std::size_t l = 1; l < kPriorityLevels; ++l) {
      for (;;) {
        const auto head = consumer_->head_enqueued_at(static_cast<Priority>(l));
        if (!head || lifted_level(l, *head) >= l) break;
        Active* taken = take(l);
        if (!taken) break;
        taken->level = lifted_level(l, taken->rec.enqueued_at_ns);
        hold(*taken, Clock::duration::zero(), false);
        counters_.aged.fetch_add(1, std::memory_order_relaxed);
        worked_ = true;
      }
    }
    // Held entries age too.
    for (std::size_t l = 1; l < kPriorityLevels; ++l) {
      auto& lane = lanes_[l];
      for (auto it = lane.begin(); it != lane.end();) {
        auto a = active_.find(*it);
        if (a == active_.end()) {
          it = lane.erase(it);
          continue;
        }
        const std::size_t target =
            lifted_level(priority_index(a->second.rec.priority), a->second.rec.enqueued_at_ns);
        if (target < l) {
          a->second.level = target;
          lanes_[target].push_back(*it);
          consumer_->annotate(a->second.ref,
                              annotation_of(Phase::kHeld, target, a->second.publish_failures));
          it = lane.erase(it);
        } else {
          ++it;
        }
      }
    }
  }
  if (watchdog_interval_.count() > 0 && now >= next_watchdog_) {
    next_watchdog_ = now + watchdog_interval_;
    sd_notify(0, "WATCHDOG=1");
  }
}

void Supervisor::sleep() {
  auto ready = [&] {
    if (stop_ || reload_ || !inbox_->empty() || consumer_->maintenance_requested()) return true;
    for (std::size_t l = 0; l < kPriorityLevels; ++l) {
      if (consumer_->level_tail(static_cast<Priority>(l)) != announced_[l]) return true;
    }
    // Queued work makes us ready only when it can be dispatched now.
    return dispatched_ < config_.max_active_executions && !transports_.empty() &&
           Clock::now() >= dispatch_paused_until_ && consumer_->has_work();
  };
  const auto now = Clock::now();
  if (worked_ && config_.idle_spin_us > 0) {
    // Right after work more is likely: a short spin answers it without a wake-up.
    const auto until = now + std::chrono::microseconds(config_.idle_spin_us);
    while (Clock::now() < until) {
      if (ready()) return;
    }
  }
  auto deadline = std::min({next_reap_, next_sweep_, now + kMaxSleep});
  if (dispatch_paused_until_ > now) deadline = std::min(deadline, dispatch_paused_until_);
  if (config_.aging_seconds > 0) deadline = std::min(deadline, next_aging_);
  if (watchdog_interval_.count() > 0) deadline = std::min(deadline, next_watchdog_);
  for (const auto& lane : lanes_) {
    for (const auto& id : lane) {
      if (auto a = active_.find(id); a != active_.end())
        deadline = std::min(deadline, a->second.ready_at);
    }
  }
  if (deadline > now) consumer_->sleep_unless(ready, deadline - now);
}

void Supervisor::reload() {
  reload_ = false;
  sd_notify(0, "RELOADING=1");
  try {
    Config next = reload_config(argc_, argv_);
    if (next.segment != config_.segment ||
        next.queue.max_queue_size != config_.queue.max_queue_size ||
        next.queue.max_payload_bytes != config_.queue.max_payload_bytes ||
        next.queue.max_users != config_.queue.max_users ||
        next.queue.max_active != config_.queue.max_active) {
      spdlog::warn(
          "segment and queue sizes cannot change while the segment exists; they keep "
          "their values until a restart with a drained, removed segment");
      next.segment = config_.segment;
      next.queue = config_.queue;
    }
    segment_->set_max_executions_per_user(next.queue.max_executions_per_user);
    next.queue.max_executions_per_user = next.queue.max_executions_per_user;
    spdlog::set_level(spdlog::level::from_str(next.log_level));
    apply_transports(next);
    if (transports_.empty())
      spdlog::error("no transport is running after the reload: dispatch waits");
    config_ = std::move(next);
    counters_.max_active = config_.max_active_executions;
    spdlog::info("configuration reloaded: transports {}, max_active_executions {}",
                 fmt::join(config_.transports, ","), config_.max_active_executions);
  } catch (const std::exception& e) {
    spdlog::error("reload failed, keeping the running configuration: {}", e.what());
  }
  sd_notify(0, "READY=1");
}

void Supervisor::shutdown() {
  sd_notify(0, "STOPPING=1");
  spdlog::info("stopping: no new work is taken; flushing transports");
  ingress_stop_ = true;
  if (ingress_thread_.joinable()) ingress_thread_.join();
  process_inbox();  // results that arrived meanwhile
  answer_deferred_at_exit();
  for (auto& t : transports_) {
    const std::size_t left = t->flush(static_cast<std::uint32_t>(config_.flush_timeout_ms));
    if (left) {
      spdlog::warn(
          "transport {}: {} deliveries still outstanding after {} ms; they are "
          "published again by the next supervisor",
          t->name(), left, config_.flush_timeout_ms);
    }
  }
  process_inbox();
  transports_.clear();
  spdlog::info(
      "stopped; {} queued and {} active execution(s) stay in the segment for the next "
      "supervisor",
      consumer_->stats().queued, active_.size());
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
  sd_notify(0, "READY=1\nSTATUS=scheduling");
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
      dispatch();
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
