// The simulation world around the scheduler (scheduler_sim.h): a model of the queue's segment,
// transports, clients, the clocks and supervisor crashes, driven by workload steps, with the
// invariants checked after every step.
#include "scheduler_sim.h"

#include <algorithm>
#include <memory>
#include <tuple>

namespace shmsched::sim {

namespace {

constexpr std::int64_t kMs = 1'000'000;
constexpr std::int64_t kSec = 1'000'000'000;
constexpr std::uint32_t kIds = 40;  // execution ids in play ("e0".."e39"): reuse and duplicates
constexpr std::uint32_t kUsers = 5;
constexpr std::uint64_t kQueueLimit = 24;
constexpr std::uint64_t kPerUser = 7;

const char* const kTransportNames[] = {"zeromq", "kafka"};
constexpr std::uint32_t kWorkers = 4;   // "w0".."w3"
constexpr std::uint32_t kSessions = 3;  // "s0".."s2", and "" (a TCP worker: no session)

// Capabilities from two bits: none, {gpu}, {py}, {gpu, py}.
std::vector<std::string> caps_of(std::uint32_t bits) {
  std::vector<std::string> out;
  if (bits & 1) out.push_back("gpu");
  if (bits & 2) out.push_back("py");
  return out;
}

struct Violation {
  std::string what;
};
struct CrashNow {};  // the supervisor dies between two of its actions

class World {
 public:
  World() {
    config_.max_active_executions = 3;
    config_.max_attempts = 2;
    config_.retry_backoff_ms = 50;
    config_.dispatch_backoff_ms = 20;
    config_.max_backoff_ms = 400;
    config_.stale_timeout_seconds = 120;
    config_.sweep_interval_ms = 1000;
    config_.default_timeout_seconds = 30;
    config_.timeout_grace_seconds = 5;
    config_.finished_retention_count = 20;
    config_.finished_retention_seconds = 300;
    config_.max_taken = 8;
    config_.worker_timeout_ms = 10000;
    config_.claim_timeout_ms = 2000;
    cap_floor_ = config_.max_active_executions;
    start_scheduler(/*crash=*/false);
  }

  void apply(const Step& s);
  void drain();
  SimResult& result() { return result_; }

 private:
  void apply_step(const Step& s);

 public:
 private:
  struct Entry {
    ExecutionInfo info;
    std::uint64_t life = 0;
  };
  struct Slot {
    ExecutionInfo info;
    std::uint64_t life = 0;
    std::uint64_t annotation = 0;
    // The claim word: the attempt it is open at (0: not open) and the owner's number.
    std::uint32_t claim_attempt = 0;
    std::uint32_t claim_owner = 0;
  };
  struct Life {
    std::string id;
    bool terminal = false;
  };
  struct Pending {
    TransportId transport;
    std::uint64_t token;
    std::string id;
    std::uint64_t life;
    std::uint32_t attempt;
    std::string to;  // a TaskPush's worker: a push to another worker is a new delivery
  };
  // What a transport has, by name: a command, or a push to one worker.
  static std::string carried(const std::string& transport, const std::string& to) {
    return to.empty() ? transport : transport + "->" + to;
  }
  enum class OpKind { kCancel, kComplete, kFail, kSubmit, kStatus, kWorker };
  struct ModelWorker {
    std::vector<std::string> caps;
    std::string session;
  };

  void start_scheduler(bool crash);
  void crash_now();
  void loop();
  void feed(const Input& in);
  void carry_out(std::vector<Action>& actions);
  void check();
  [[noreturn]] void violate(const std::string& what) { throw Violation{what}; }

  std::string id_of(std::uint32_t n) const { return "e" + std::to_string(n % kIds); }
  std::string user_of(std::uint32_t n) const { return "u" + std::to_string(n % kUsers); }
  std::uint64_t depth(std::size_t l) const { return levels_[l].size(); }
  std::uint64_t queued() const {
    std::uint64_t n = 0;
    for (const auto& l : levels_) n += l.size();
    return n;
  }
  std::optional<std::uint64_t> life_of_live(const std::string& id) const;
  // The claim word's compare-and-swap, as the segment does it; records the winner.
  ClaimOutcome claim_word(Slot& slot, std::uint32_t attempt, std::uint32_t worker,
                          std::uint32_t& owner);
  std::string worker_of_number(std::uint32_t n) const {
    for (std::uint32_t i = 0; i < kWorkers; ++i) {
      const std::string id = "w" + std::to_string(i);
      if (worker_number(id) == n) return id;
    }
    return worker_number("drain") == n ? "drain" : "#" + std::to_string(n);
  }
  bool admit(const ExecutionInfo& info, std::string& reason, std::uint64_t& rank);

  SchedulerConfig config_;
  std::unique_ptr<Scheduler> sched_;
  Time now_{1'000 * kSec, 1'700'000'000 * kSec};
  std::array<std::deque<Entry>, kPriorityLevels> levels_;
  std::map<SlotRef, Slot> active_;
  SlotRef next_slot_ = 1;
  std::map<std::string, int> users_;
  std::map<TransportId, std::string> up_;
  std::map<TransportId, std::string> retiring_;
  TransportId next_transport_ = 1;
  std::vector<Pending> pending_;
  std::map<std::uint64_t, Life> lives_;
  std::uint64_t next_life_ = 1;
  // (life, attempt) -> transports (by name) that acknowledged it since the last crash.
  std::map<std::pair<std::uint64_t, std::uint32_t>, std::set<std::string>> acked_;
  // (life, attempt) -> when it was first published, since the last crash.
  std::map<std::pair<std::uint64_t, std::uint32_t>, std::int64_t> published_at_;
  std::map<OpId, OpKind> open_ops_;
  std::map<OpId, std::string> cancel_ids_;
  std::map<std::uint64_t, std::uint32_t> failed_attempt_;  // life -> attempt announced as failed
  std::map<OpId, ExecutionInfo> transport_submits_;
  OpId next_op_ = 1;
  std::uint64_t cap_floor_ = 0;  // the cap may be exceeded after a reload lowered it
  std::uint64_t cancels_in_queue_ = 0;
  std::map<std::string, std::uint64_t> removed_;  // taken out of the queue, event still due
  int crash_after_ = -1;  // >= 0: die after carrying out this many more actions
  std::int64_t last_reload_ = -1;
  bool recovering_ = false;
  // A reload may change the default timeout of executions already dispatched.
  bool config_changed_since_(std::int64_t t) const { return last_reload_ >= t; }
  // Events since the scheduler started (its counters start at zero with it).
  SchedulerCounters seen_;
  SimResult result_;
  // Workers as the model knows them (registered and not yet seen gone), claims and their winners
  // per (life, attempt) since the last crash, and what each open claim or report was about.
  std::map<std::string, ModelWorker> workers_;
  std::map<std::pair<std::uint64_t, std::uint32_t>, std::string> winner_;
  struct OpenClaim {
    std::uint64_t life;
    std::uint32_t attempt;
    std::string worker;
  };
  std::map<OpId, OpenClaim> claims_;
  std::map<OpId, OpenClaim> reports_;               // complete/fail with a worker id
  std::map<std::uint64_t, std::string> recipient_;  // life -> worker of its latest push
  std::map<std::string, std::uint64_t> serial_;     // registrations of each worker id seen
  std::map<std::uint64_t, std::uint64_t> offer_;    // life -> pushes to a new recipient
};

std::optional<std::uint64_t> World::life_of_live(const std::string& id) const {
  for (const auto& l : levels_) {
    for (const auto& e : l) {
      if (e.info.execution_id == id) return e.life;
    }
  }
  for (const auto& [ref, s] : active_) {
    if (s.info.execution_id == id) return s.life;
  }
  return std::nullopt;
}

ClaimOutcome World::claim_word(Slot& slot, std::uint32_t attempt, std::uint32_t worker,
                               std::uint32_t& owner) {
  owner = 0;
  if (slot.claim_attempt == 0 || slot.claim_attempt != attempt) return ClaimOutcome::kNotCurrent;
  if (slot.claim_owner == 0 && worker != 0) {
    slot.claim_owner = worker;
    auto [it, fresh] =
        winner_.emplace(std::make_pair(slot.life, attempt), worker_of_number(worker));
    if (!fresh && it->second != worker_of_number(worker))
      violate("the claim word has two winners for one attempt");
  }
  owner = slot.claim_owner;
  return owner != 0 && owner == worker ? ClaimOutcome::kWon : ClaimOutcome::kLost;
}

// The queue's admission: capacity, per-user cap, duplicate id (queued or active).
bool World::admit(const ExecutionInfo& info, std::string& reason, std::uint64_t& rank) {
  if (life_of_live(info.execution_id)) {
    reason = "duplicate";
    return false;
  }
  if (queued() >= kQueueLimit) {
    reason = "queue_full";
    return false;
  }
  if (static_cast<std::uint64_t>(users_[info.user_id]) >= kPerUser) {
    reason = "user_limit";
    return false;
  }
  const std::size_t l = priority_index(info.priority);
  rank = 0;
  for (std::size_t i = 0; i <= l; ++i) rank += levels_[i].size();
  const std::uint64_t life = next_life_++;
  lives_[life] = Life{info.execution_id, false};
  levels_[l].push_back(Entry{info, life});
  ++users_[info.user_id];
  return true;
}

void World::start_scheduler(bool crash) {
  sched_ = std::make_unique<Scheduler>(config_);
  seen_ = SchedulerCounters{};
  if (crash) {
    // The transports restart with the supervisor: what they had pending is gone; they are new
    // instances. Publishing an attempt again is allowed after a crash.
    pending_.clear();
    retiring_.clear();
    std::map<TransportId, std::string> fresh;
    for (const auto& [id, name] : up_) fresh[next_transport_++] = name;
    up_ = std::move(fresh);
    acked_.clear();
    published_at_.clear();
    open_ops_.clear();
    cancel_ids_.clear();
    transport_submits_.clear();
    workers_.clear();  // a new supervisor knows no workers until they register again
    // Claims in claim words survive the supervisor; claims only it knew (commands) do not.
    std::map<std::pair<std::uint64_t, std::uint32_t>, std::string> kept;
    for (const auto& [ref, slot] : active_) {
      if (slot.claim_owner != 0) {
        kept[{slot.life, slot.claim_attempt}] = worker_of_number(slot.claim_owner);
      }
    }
    winner_ = std::move(kept);
    claims_.clear();
    reports_.clear();
  } else {
    for (const char* name : kTransportNames) up_[next_transport_++] = name;
  }
  for (const auto& [id, name] : up_) feed(input::TransportUp{id, name});
  std::vector<input::Recovered> recovered;
  for (const auto& [ref, s] : active_) {
    recovered.push_back({ref, s.info, s.annotation, s.claim_attempt, s.claim_owner});
  }
  recovering_ = true;  // what the previous supervisor dispatched stays dispatched
  for (const auto& r : recovered) feed(r);  // (a finished one is released at once)
  recovering_ = false;
}

void World::feed(const Input& in) {
  std::vector<Action> out;
  sched_->handle(in, now_, out);
  carry_out(out);
}

// The shell's round: the queue's state, then advance until nothing more is asked.
void World::loop() {
  for (int round = 0; round < 64; ++round) {
    input::QueueState qs;
    for (std::size_t l = 0; l < kPriorityLevels; ++l) {
      qs.depth[l] = levels_[l].size();
      if (!levels_[l].empty()) qs.head_enqueued_at[l] = levels_[l].front().info.enqueued_at_ns;
    }
    feed(qs);
    std::vector<Action> out;
    sched_->advance(now_, out);
    if (out.empty()) return;
    carry_out(out);
  }
  violate("advance() kept asking for more after 64 rounds (a busy loop)");
}

void World::carry_out(std::vector<Action>& actions) {
  for (std::size_t i = 0; i < actions.size(); ++i) {
    if (crash_after_ == 0) {
      crash_after_ = -1;
      throw CrashNow{};
    }
    if (crash_after_ > 0) --crash_after_;
    // A copy: carrying it out may append to `actions`.
    const Action a = actions[i];
    if (auto* p = std::get_if<action::Publish>(&a)) {
      const Event& ev = p->event;
      switch (ev.type) {
        case EventType::kAccepted:
          ++seen_.accepted;
          break;
        case EventType::kRejected:
          ++seen_.rejected;
          break;
        case EventType::kWorkerRegistered:
        case EventType::kWorkerUnregistered:
          if (!ev.worker_id) violate("a worker event without a worker id");
          if (ev.type == EventType::kWorkerRegistered) ++serial_[*ev.worker_id];
          if (ev.type == EventType::kWorkerUnregistered) {
            workers_.erase(*ev.worker_id);
            // Its claims die with it: a new attempt is a new claim.
          }
          break;
        case EventType::kBlockerReported:
          for (const auto& h : ev.helpers) {
            auto w = workers_.find(h);
            if (w == workers_.end()) violate("blocker helper " + h + " is not a live worker");
            if (!covers(w->second.caps, ev.capabilities))
              violate("blocker helper " + h + " lacks a required capability");
            if (ev.worker_id && h == *ev.worker_id) violate("the reporter helps itself");
          }
          break;
        case EventType::kTaskPush:
        case EventType::kCreatePodCommand: {
          auto life = life_of_live(ev.execution_id);
          if (!life) violate("CreatePodCommand for " + ev.execution_id + ", which is not live");
          {
            std::vector<std::string> need;
            for (const auto& [ref, slot] : active_) {
              if (slot.life == *life) need = normalized(slot.info.required_capabilities);
            }
            if ((ev.type == EventType::kTaskPush) != !need.empty())
              violate(
                  std::string(event_name(ev.type)) + " for " + ev.execution_id +
                  (need.empty() ? ", which needs no capabilities" : ", which needs capabilities"));
            if (ev.type == EventType::kTaskPush) {
              if (!ev.worker_id || ev.target != *ev.worker_id)
                violate("TaskPush without its worker as target");
              auto w = workers_.find(*ev.worker_id);
              if (w == workers_.end())
                violate("TaskPush of " + ev.execution_id + " to " + *ev.worker_id +
                        ", which is not a live worker");
              // (Its owner may have registered again with fewer capabilities since it claimed.)
              auto owner = winner_.find({*life, ev.attempt});
              const bool owns = owner != winner_.end() && owner->second == *ev.worker_id;
              if (!owns && !covers(w->second.caps, need))
                violate("TaskPush of " + ev.execution_id + " to " + *ev.worker_id +
                        ", which lacks a capability (attempt " + std::to_string(ev.attempt) +
                        ", owner " + (owner == winner_.end() ? "none" : owner->second) + ")");
            }
          }
          if (failed_attempt_.count(*life) && ev.attempt <= failed_attempt_[*life])
            violate("attempt " + std::to_string(ev.attempt) + " of " + ev.execution_id +
                    " published again after ExecutionFailed(will_retry) for attempt " +
                    std::to_string(failed_attempt_[*life]));
          auto& acked = acked_[{*life, ev.attempt}];
          // A push to another worker than the last is a new offer (a claim timeout, a worker
          // gone): it may reach every transport again. Within one offer, never twice.
          std::string to;
          if (ev.type == EventType::kTaskPush) {
            const std::string worker = ev.target + "#" + std::to_string(serial_[ev.target]);
            if (recipient_[*life] != worker) ++offer_[*life];
            recipient_[*life] = worker;
            to = worker + "/" + std::to_string(offer_[*life]);
          } else {
            recipient_[*life].clear();
          }
          // Every publish of a dispatch starts its timeout anew (the one before was given up).
          published_at_[{*life, ev.attempt}] = now_.mono_ns;
          for (TransportId t : p->to) {
            auto up = up_.find(t);
            if (up == up_.end()) {
              violate("CreatePodCommand for " + ev.execution_id + " to transport " +
                      std::to_string(t) + ", which is not up");
            }
            if (acked.count(carried(up->second, to))) {
              violate("attempt " + std::to_string(ev.attempt) + " of " + ev.execution_id +
                      " published twice to " + up->second + " without a crash between");
            }
            pending_.push_back(Pending{t, p->token, ev.execution_id, *life, ev.attempt, to});
          }
          ++result_.dispatches;
          break;
        }
        case EventType::kCompleted:
        case EventType::kFailed:
        case EventType::kCancelled:
        case EventType::kExpired: {
          const bool terminal = !(ev.type == EventType::kFailed && ev.will_retry.value_or(false));
          if (ev.type == EventType::kCompleted) ++seen_.completed;
          if (ev.type == EventType::kCancelled) ++seen_.cancelled;
          if (ev.type == EventType::kExpired) ++seen_.expired;
          if (ev.type == EventType::kFailed) ++(terminal ? seen_.failed : seen_.retried);
          if (ev.type == EventType::kFailed && ev.reason == "timeout") {
            // A timeout fires only once the attempt's timeout and the grace have passed since it
            // was published (by this scheduler: a restart starts the clock again).
            auto life = life_of_live(ev.execution_id);
            std::uint32_t limit = 0;
            for (const auto& [ref, slot] : active_) {
              if (slot.info.execution_id == ev.execution_id) limit = slot.info.timeout_seconds;
            }
            const std::int64_t seconds =
                (limit ? limit : config_.default_timeout_seconds) + config_.timeout_grace_seconds;
            auto at = life ? published_at_.find({*life, ev.attempt}) : published_at_.end();
            if (at != published_at_.end() && now_.mono_ns - at->second < seconds * kSec &&
                !config_changed_since_(at->second)) {
              violate("attempt " + std::to_string(ev.attempt) + " of " + ev.execution_id +
                      " timed out " + std::to_string((now_.mono_ns - at->second) / kSec) +
                      " s after it was published");
            }
          }
          if (!terminal) {
            if (auto l = life_of_live(ev.execution_id))
              failed_attempt_[*l] = std::max(failed_attempt_[*l], ev.attempt);
            break;
          }
          std::optional<std::uint64_t> life = life_of_live(ev.execution_id);
          if (auto r = removed_.find(ev.execution_id); r != removed_.end()) {
            life = r->second;
            removed_.erase(r);
          }
          if (!life)
            violate(std::string(event_name(ev.type)) + " for " + ev.execution_id +
                    ", which is not queued or active");
          Life& l = lives_.at(*life);
          if (l.terminal) violate(ev.execution_id + " ended twice");
          l.terminal = true;
          ++result_.finished;
          break;
        }
      }
    } else if (auto* t = std::get_if<action::Take>(&a)) {
      if (t->level >= kPriorityLevels || t->count == 0) violate("a Take of nothing");
      if (config_.aging_seconds == 0) {
        for (std::size_t l = 0; l < t->level; ++l) {
          if (!levels_[l].empty()) {
            violate("took from priority " + std::to_string(t->level) + " while priority " +
                    std::to_string(l) + " had queued work");
          }
        }
      }
      std::uint32_t taken = 0;
      while (taken < t->count && !levels_[t->level].empty()) {
        Entry e = std::move(levels_[t->level].front());
        levels_[t->level].pop_front();
        const SlotRef ref = next_slot_++;
        active_[ref] = Slot{e.info, e.life, 0};
        ++taken;
        std::vector<Action> more;
        sched_->handle(input::Taken{t->level, ref, e.info}, now_, more);
        for (auto& m : more) actions.push_back(std::move(m));
      }
      std::vector<Action> more;
      sched_->handle(input::TakeDone{t->level, t->count - taken}, now_, more);
      for (auto& m : more) actions.push_back(std::move(m));
    } else if (auto* an = std::get_if<action::Annotate>(&a)) {
      auto it = active_.find(an->slot);
      if (it == active_.end()) violate("annotate of a released slot");
      it->second.annotation = an->value;
      if (phase_of(an->value) == Phase::kDispatched && !recovering_) {
        // Dispatched means: every transport that is up has this attempt.
        const auto& acked = acked_[{it->second.life, it->second.info.attempt}];
        for (const auto& [t, name] : up_) {
          const auto& r = recipient_[it->second.life];
          const std::string to = r.empty() ? r : r + "/" + std::to_string(offer_[it->second.life]);
          if (!acked.count(carried(name, to))) {
            std::string have;
            for (const auto& a : acked) have += " " + a;
            violate("attempt " + std::to_string(it->second.info.attempt) + " of " +
                    it->second.info.execution_id + " counts as dispatched, but " + name +
                    " does not have it (wanted " + carried(name, to) + "; has" + have + ")");
          }
        }
      }
    } else if (auto* oc = std::get_if<action::OpenClaims>(&a)) {
      auto it = active_.find(oc->slot);
      if (it == active_.end()) violate("open claims of a released slot");
      if (it->second.claim_attempt != oc->attempt) {
        it->second.claim_attempt = oc->attempt;
        it->second.claim_owner = 0;
      }
    } else if (auto* cs = std::get_if<action::ClaimInSegment>(&a)) {
      input::ClaimResult res{cs->op, cs->execution_id, cs->attempt, ClaimOutcome::kNotFound, 0};
      auto it = active_.find(cs->slot);
      if (it != active_.end() && cs->close) {
        // Closing claims: only an unowned word at that attempt closes.
        Slot& sl = it->second;
        if (sl.claim_attempt == 0 || sl.claim_attempt != cs->attempt) {
          res.outcome = ClaimOutcome::kNotCurrent;
        } else {
          res.outcome = ClaimOutcome::kLost;
          res.owner = sl.claim_owner;
          if (sl.claim_owner == 0) sl.claim_attempt = 0;
        }
      } else if (it != active_.end()) {
        res.outcome = claim_word(it->second, cs->attempt, cs->worker, res.owner);
      }
      std::vector<Action> more;
      sched_->handle(res, now_, more);
      for (auto& m : more) actions.push_back(std::move(m));
    } else if (auto* sa = std::get_if<action::SetAttempt>(&a)) {
      auto it = active_.find(sa->slot);
      if (it == active_.end()) violate("set_attempt of a released slot");
      it->second.info.attempt = sa->attempt;
    } else if (auto* r = std::get_if<action::Release>(&a)) {
      auto it = active_.find(r->slot);
      if (it == active_.end()) violate("release of a slot that is not active (released twice?)");
      if (!lives_.at(it->second.life).terminal) {
        violate("released " + it->second.info.execution_id + " before it ended");
      }
      --users_[it->second.info.user_id];
      active_.erase(it);
    } else if (auto* ans = std::get_if<action::Answer>(&a)) {
      if (!open_ops_.erase(ans->op)) violate("an answer to an operation that is not open");
      auto field = [&](const char* key) -> const Reply::Value* {
        for (const auto& [k, v] : ans->reply.fields)
          if (k == key) return &v;
        return nullptr;
      };
      if (auto c = claims_.find(ans->op); c != claims_.end()) {
        const auto* claimed = field("claimed");
        if (ans->reply.ok && claimed && std::get<bool>(*claimed)) {
          // Exactly one winner per attempt (the word's, when it decided).
          auto [it, fresh] =
              winner_.emplace(std::make_pair(c->second.life, c->second.attempt), c->second.worker);
          if (!fresh && it->second != c->second.worker)
            violate("two claimants won attempt " + std::to_string(c->second.attempt) + ": " +
                    it->second + " and " + c->second.worker);
        }
        claims_.erase(c);
      }
      if (auto r = reports_.find(ans->op); r != reports_.end()) {
        auto w = winner_.find({r->second.life, r->second.attempt});
        const bool ignored = field("ignored") != nullptr;
        if (ans->reply.ok && !ignored && w != winner_.end() && w->second != r->second.worker)
          violate("a report from " + r->second.worker + " was accepted for an execution " +
                  w->second + " owns");
        reports_.erase(r);
      }
      if (auto c = cancel_ids_.find(ans->op); c != cancel_ids_.end()) {
        if (!ans->reply.ok) {
          for (const auto& l : levels_)
            for (const auto& e : l)
              if (e.info.execution_id == c->second)
                violate("cancel of " + c->second + " answered " + ans->reply.error +
                        " while it is queued");
        }
        cancel_ids_.erase(c);
      }
      if (ans->list) {
        std::set<std::string> ids;
        for (const auto& item : ans->items)
          for (const auto& [k, v] : item.fields)
            if (k == "execution_id" && !ids.insert(std::get<std::string>(v)).second)
              violate("list of finished executions names " + std::get<std::string>(v) + " twice");
      }
    } else if (auto* st = std::get_if<action::SubmitToQueue>(&a)) {
      auto it = transport_submits_.find(st->op);
      if (it == transport_submits_.end()) violate("SubmitToQueue for an unknown operation");
      std::string reason;
      std::uint64_t rank = 0;
      input::SubmitResult res{st->op, false, "", "", 0};
      if (admit(it->second, reason, rank)) {
        res.accepted = true;
        res.queue_position = rank;
      } else {
        res.reason = reason;
        res.message = reason;
      }
      const ExecutionInfo info = it->second;
      transport_submits_.erase(it);
      std::vector<Action> more;
      sched_->handle(res, now_, more);
      if (res.accepted) sched_->handle(input::Announced{info, rank}, now_, more);
      for (auto& m : more) actions.push_back(std::move(m));
    } else if (auto* c = std::get_if<action::CancelInQueue>(&a)) {
      input::CancelResult res{c->op, CancelOutcome::kNotFound, ""};
      // Now and then the queue cannot take a cancel (a repair is held up).
      if (++cancels_in_queue_ % 7 == 0) {
        res.outcome = CancelOutcome::kUnavailable;
      } else {
        for (auto& level : levels_) {
          auto it = std::find_if(level.begin(), level.end(), [&](const Entry& e) {
            return e.info.execution_id == c->execution_id;
          });
          if (it == level.end()) continue;
          res.outcome = CancelOutcome::kCancelled;
          res.user_id = it->info.user_id;
          --users_[it->info.user_id];
          removed_[it->info.execution_id] = it->life;  // its event must follow
          level.erase(it);
          break;
        }
        if (res.outcome == CancelOutcome::kNotFound) {
          for (const auto& [ref, s] : active_) {
            if (s.info.execution_id == c->execution_id) res.outcome = CancelOutcome::kActive;
          }
        }
      }
      std::vector<Action> more;
      sched_->handle(res, now_, more);
      for (auto& m : more) actions.push_back(std::move(m));
    } else if (auto* sw = std::get_if<action::SweepStale>(&a)) {
      for (std::size_t l = 0; l < kPriorityLevels; ++l) {
        while (!levels_[l].empty() &&
               levels_[l].front().info.enqueued_at_ns < sw->enqueued_before_ns) {
          Entry e = std::move(levels_[l].front());
          levels_[l].pop_front();
          --users_[e.info.user_id];
          removed_[e.info.execution_id] = e.life;  // its event must follow
          std::vector<Action> more;
          sched_->handle(input::Expired{e.info}, now_, more);
          for (auto& m : more) actions.push_back(std::move(m));
        }
      }
    }
  }
}

void World::check() {
  if (!removed_.empty()) {
    violate(removed_.begin()->first + " left the queue (cancelled or expired) without its event");
  }
  // Every accepted execution is in exactly one place: queued, taken, or ended.
  std::map<std::uint64_t, int> places;
  for (const auto& l : levels_) {
    for (const auto& e : l) ++places[e.life];
  }
  for (const auto& [ref, slot] : active_) ++places[slot.life];
  for (const auto& [life, l] : lives_) {
    const int n = places.count(life) ? places[life] : 0;
    if (l.terminal && n != 0) violate(l.id + " ended but is still in the queue or taken");
    if (!l.terminal && n != 1) {
      violate(l.id + (n == 0 ? " was lost (accepted, not ended, nowhere)" : " is in two places"));
    }
  }
  // Dispatched and unfinished never above the cap (a reload that lowers it lets the excess end).
  if (sched_->dispatched_now() > std::max(config_.max_active_executions, cap_floor_)) {
    std::string slots;
    for (const auto& [ref, slot] : active_) {
      slots += " " + slot.info.execution_id + "/phase" +
               std::to_string(static_cast<int>(phase_of(slot.annotation))) + "/claim" +
               std::to_string(slot.claim_attempt) + ":" + std::to_string(slot.claim_owner != 0);
    }
    violate(std::to_string(sched_->dispatched_now()) + " dispatched, above max_active_executions " +
            std::to_string(config_.max_active_executions) + " (taken:" + slots + ")");
  }
  if (sched_->dispatched_now() <= config_.max_active_executions) {
    cap_floor_ = config_.max_active_executions;
  }
  std::uint64_t taken = 0;
  for (const auto& [ref, slot] : active_) taken += lives_.at(slot.life).terminal ? 0 : 1;
  if (taken != sched_->taken()) {
    violate("the scheduler holds " + std::to_string(sched_->taken()) + " taken executions, the " +
            "segment " + std::to_string(taken));
  }
  // Timeouts fire in time: after the round, no dispatched attempt is older than its timeout
  // and grace (unless a reload changed the settings since it was published).
  for (const auto& [ref, slot] : active_) {
    const Phase ph = phase_of(slot.annotation);
    if (ph != Phase::kDispatched && ph != Phase::kDispatching) continue;
    auto at = published_at_.find({slot.life, slot.info.attempt});
    if (at == published_at_.end() || config_changed_since_(at->second)) continue;
    const std::uint64_t limit =
        slot.info.timeout_seconds ? slot.info.timeout_seconds : config_.default_timeout_seconds;
    if (limit == 0) continue;
    const std::int64_t deadline =
        at->second + static_cast<std::int64_t>(limit + config_.timeout_grace_seconds) * kSec;
    if (now_.mono_ns > deadline) {
      violate("attempt " + std::to_string(slot.info.attempt) + " of " + slot.info.execution_id +
              " outlived its timeout by " + std::to_string((now_.mono_ns - deadline) / kSec) +
              " s");
    }
  }
  // Per-user caps (the queue's, queued + taken).
  for (const auto& [user, n] : users_) {
    if (n < 0 || static_cast<std::uint64_t>(n) > kPerUser) {
      violate("user " + user + " counts " + std::to_string(n));
    }
  }
  // Counters equal what happened since this scheduler started.
  const auto& c = sched_->counters();
  auto same = [&](const char* name, std::uint64_t a, std::uint64_t b) {
    if (a != b) {
      violate(std::string("counter ") + name + " is " + std::to_string(a) + ", events say " +
              std::to_string(b));
    }
  };
  same("accepted", c.accepted, seen_.accepted);
  same("rejected", c.rejected, seen_.rejected);
  same("completed", c.completed, seen_.completed);
  same("failed", c.failed, seen_.failed);
  same("retried", c.retried, seen_.retried);
  same("cancelled", c.cancelled, seen_.cancelled);
  same("expired", c.expired, seen_.expired);
  // The registry is the model's (what was published about it), and no worker holds more than
  // the executions that count on it.
  if (sched_->workers().size() != workers_.size()) {
    violate("the scheduler knows " + std::to_string(sched_->workers().size()) +
            " workers, the events say " + std::to_string(workers_.size()));
  }
  std::uint64_t load = 0;
  for (const auto& [id, w] : sched_->workers().all()) load += w.load;
  if (load > sched_->taken()) violate("worker loads add up to more than the taken executions");
  if (sched_->taken() > config_.max_taken && sched_->waiting_for_workers() > 0)
    violate("taken above max_taken");
}

// What a SIGKILL between two actions leaves, as the next supervisor finds it.
void World::crash_now() {
  // Taken out of the queue (cancelled, expired) with the event not yet out: it ended, silently.
  for (const auto& [id, life] : removed_) lives_.at(life).terminal = true;
  removed_.clear();
  // Its final event went out but its phase word does not say so yet: the next supervisor may end
  // it again (at least once). With the word saying "finished", it only releases the slot.
  for (const auto& [ref, slot] : active_) {
    if (phase_of(slot.annotation) != Phase::kFinished) lives_.at(slot.life).terminal = false;
  }
  start_scheduler(/*crash=*/true);
}

void World::apply(const Step& s) {
  try {
    apply_step(s);
    loop();
  } catch (const CrashNow&) {
    crash_now();
    loop();
  }
  check();
}

// Liveness, after the workload: every pending delivery is made, every dispatched execution
// completes, time passes; in the end nothing may stay queued, taken, or unanswered.
void World::drain() {
  crash_after_ = -1;
  for (int i = 0; i < 400; ++i) {
    // A worker that can do everything, alive throughout (it registers again after a crash).
    if (!workers_.count("drain")) {
      const OpId op = next_op_++;
      open_ops_[op] = OpKind::kWorker;
      std::vector<Action> out;
      sched_->handle(input::RegisterWorker{op, "drain", {"gpu", "py"}, 100, {}, ""}, now_, out);
      workers_["drain"] = ModelWorker{{"gpu", "py"}, ""};
      carry_out(out);
    } else {
      const OpId op = next_op_++;
      open_ops_[op] = OpKind::kWorker;
      feed(input::Heartbeat{op, "drain"});
    }
    while (!pending_.empty()) {
      const Pending p = pending_.front();
      pending_.erase(pending_.begin());
      if (up_.count(p.transport))
        acked_[{p.life, p.attempt}].insert(carried(up_[p.transport], p.to));
      if (retiring_.count(p.transport))
        acked_[{p.life, p.attempt}].insert(carried(retiring_[p.transport], p.to));
      feed(input::Delivery{p.transport, p.token, true});
    }
    for (const auto& [ref, slot] : std::map<SlotRef, Slot>(active_)) {
      if (phase_of(slot.annotation) != Phase::kDispatched) continue;
      const OpId op = next_op_++;
      open_ops_[op] = OpKind::kComplete;
      std::optional<std::string> by;
      if (auto w = winner_.find({slot.life, slot.info.attempt}); w != winner_.end()) by = w->second;
      feed(input::Complete{op, slot.info.execution_id, by, std::nullopt, 0, std::nullopt});
    }
    now_.mono_ns += kSec;
    now_.wall_ns += kSec;
    loop();
    check();
  }
  if (!open_ops_.empty())
    violate("drain: operation " + std::to_string(open_ops_.begin()->first) + " never answered");
  // Nothing runs any more: no worker may still carry load (a load that drifted).
  for (const auto& [id, w] : sched_->workers().all()) {
    if (w.load != 0) violate("drain: worker " + id + " still has load " + std::to_string(w.load));
  }
  for (const auto& [life, l] : lives_) {
    if (l.terminal) continue;
    std::string where = "queued";
    for (const auto& [ref, slot] : active_) {
      if (slot.life == life) {
        where = "taken, phase " + std::to_string(static_cast<int>(phase_of(slot.annotation))) +
                ", needs " + std::to_string(slot.info.required_capabilities.size()) +
                " capabilities";
      }
    }
    violate("drain: " + l.id + " never ended (stuck: " + where + "; " +
            std::to_string(sched_->waiting_for_workers()) + " wait for workers)");
  }
}

void World::apply_step(const Step& s) {
  switch (s.kind) {
    case Step::kSubmit: {
      ExecutionInfo info{id_of(s.a),
                         user_of(s.b),
                         static_cast<Priority>(s.c % kPriorityLevels),
                         now_.wall_ns,
                         1,
                         (s.c / 5) % 4 == 0 ? 0u : (s.c % 3) * 10 + 5,
                         (s.c >> 8) % 3 == 0 ? caps_of(s.c >> 10) : std::vector<std::string>{}};
      std::string reason;
      std::uint64_t rank = 0;
      if (admit(info, reason, rank)) {
        feed(input::Announced{info, rank});
      } else {
        feed(input::Rejected{info.execution_id, info.user_id, reason, reason});
      }
      break;
    }
    case Step::kSubmitTransport: {
      const OpId op = next_op_++;
      open_ops_[op] = OpKind::kSubmit;
      ExecutionInfo info{id_of(s.a),
                         user_of(s.b),
                         static_cast<Priority>(s.c % kPriorityLevels),
                         now_.wall_ns,
                         1,
                         0,
                         {}};
      transport_submits_[op] = info;
      feed(input::Submit{op, info.execution_id, info.user_id});
      break;
    }
    case Step::kCancel: {
      const OpId op = next_op_++;
      open_ops_[op] = OpKind::kCancel;
      cancel_ids_[op] = id_of(s.a);
      feed(input::Cancel{op, id_of(s.a), s.b % 2 ? "user asked" : "", std::nullopt});
      break;
    }
    case Step::kComplete:
    case Step::kFail: {
      // Mostly an execution that is taken; sometimes any id.
      std::string id = id_of(s.a);
      std::optional<std::uint32_t> attempt;
      if (!active_.empty() && s.b % 4 != 0) {
        auto it = active_.begin();
        std::advance(it, s.a % active_.size());
        id = it->second.info.execution_id;
        if (s.c % 3 == 1) attempt = it->second.info.attempt;
        if (s.c % 3 == 2) attempt = it->second.info.attempt + (s.c % 2 ? 1 : -1);
      }
      const OpId op = next_op_++;
      std::optional<std::string> by;
      if (s.c % 5 < 2) by = "w" + std::to_string((s.c / 5) % kWorkers);
      if (by) {
        for (const auto& [ref, slot] : active_) {
          if (slot.info.execution_id == id)
            reports_[op] = OpenClaim{slot.life, attempt.value_or(slot.info.attempt), *by};
        }
      }
      if (s.kind == Step::kComplete) {
        open_ops_[op] = OpKind::kComplete;
        feed(
            input::Complete{op, id, by, attempt, static_cast<std::int64_t>(s.c % 2), std::nullopt});
      } else {
        open_ops_[op] = OpKind::kFail;
        feed(input::Fail{op, id, "worker failed", by, attempt, s.b % 2 == 1, std::nullopt});
      }
      break;
    }
    case Step::kDeliver: {
      if (pending_.empty()) break;
      const std::size_t i = s.a % pending_.size();
      const Pending p = pending_[i];
      pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(i));
      const bool ok = s.b % 6 != 0;
      if (ok && up_.count(p.transport))
        acked_[{p.life, p.attempt}].insert(carried(up_[p.transport], p.to));
      if (ok && retiring_.count(p.transport)) {
        acked_[{p.life, p.attempt}].insert(carried(retiring_[p.transport], p.to));
      }
      feed(input::Delivery{p.transport, p.token, ok});
      break;
    }
    case Step::kTime: {
      // Mostly short steps, now and then long ones (backoffs, timeouts, stale entries).
      const std::int64_t d = s.b % 10 == 0 ? static_cast<std::int64_t>(s.a % 200) * kSec
                                           : static_cast<std::int64_t>(s.a % 400) * kMs;
      now_.mono_ns += d;
      now_.wall_ns += d;
      break;
    }
    case Step::kWallJump:
      now_.wall_ns += (s.a % 2 ? 1 : -1) * static_cast<std::int64_t>(s.b % 600) * kSec;
      break;
    case Step::kReload: {
      const std::uint64_t before = config_.max_active_executions;
      config_.max_active_executions = 1 + s.a % 5;
      config_.max_attempts = 1 + s.b % 3;
      config_.aging_seconds = s.c % 3 == 0 ? 1 + s.c % 5 : 0;
      config_.default_timeout_seconds = 10 + (s.c % 7) * 10;
      if (config_.max_active_executions < before) cap_floor_ = std::max(cap_floor_, before);
      last_reload_ = now_.mono_ns;
      feed(input::Reload{config_});
      break;
    }
    case Step::kSwapTransport: {
      if (up_.empty()) break;
      auto it = up_.begin();
      std::advance(it, s.a % up_.size());
      const TransportId old = it->first;
      const std::string name = it->second;
      feed(input::TransportRetiring{old});
      up_.erase(old);
      retiring_[old] = name;
      const TransportId fresh = next_transport_++;
      up_[fresh] = name;
      feed(input::TransportUp{fresh, name});
      break;
    }
    case Step::kRetireDone: {
      if (retiring_.empty()) break;
      auto it = retiring_.begin();
      std::advance(it, s.a % retiring_.size());
      const TransportId gone = it->first;
      // Its flush delivered some; the rest never will.
      std::vector<Pending> left;
      std::vector<Pending> mine;
      for (auto& p : pending_) (p.transport == gone ? mine : left).push_back(p);
      pending_ = std::move(left);
      for (std::size_t i = 0; i < mine.size(); ++i) {
        if ((s.b >> (i % 16)) & 1) {
          acked_[{mine[i].life, mine[i].attempt}].insert(carried(it->second, mine[i].to));
          feed(input::Delivery{gone, mine[i].token, true});
        }
      }
      retiring_.erase(gone);
      feed(input::TransportGone{gone});
      break;
    }
    case Step::kCrash:
      // Now, or between two of the actions of what comes next.
      if (s.a % 3 == 0) {
        crash_now();
      } else {
        crash_after_ = static_cast<int>(s.b % 12);
      }
      break;
    case Step::kStatus: {
      const OpId op = next_op_++;
      open_ops_[op] = OpKind::kStatus;
      if (!life_of_live(id_of(s.a)))
        feed(input::Status{op, id_of(s.a)});
      else
        open_ops_.erase(op);  // the shell answers those from the segment
      const OpId lop = next_op_++;
      open_ops_[lop] = OpKind::kStatus;
      feed(input::ListFinished{lop, FinalState::kNone, std::nullopt, 1000});
      break;
    }
    case Step::kRegister: {
      const std::string id = "w" + std::to_string(s.a % kWorkers);
      const std::uint32_t sn = s.b % (kSessions + 1);
      const std::string session = sn == kSessions ? "" : "s" + std::to_string(sn);
      const OpId op = next_op_++;
      open_ops_[op] = OpKind::kWorker;
      const auto caps = caps_of(s.c);
      auto known = workers_.find(id);
      // A live worker tied to a process stays that process's (a connection without one cannot
      // take it over either).
      const bool taken = known != workers_.end() && !known->second.session.empty() &&
                         known->second.session != session;
      if (!taken) workers_[id] = ModelWorker{normalized(caps), session};
      feed(input::RegisterWorker{op, id, caps, 1 + (s.c >> 2) % 2, {}, session});
      break;
    }
    case Step::kHeartbeat: {
      const OpId op = next_op_++;
      open_ops_[op] = OpKind::kWorker;
      feed(input::Heartbeat{op, "w" + std::to_string(s.a % kWorkers)});
      break;
    }
    case Step::kUnregister: {
      const OpId op = next_op_++;
      open_ops_[op] = OpKind::kWorker;
      feed(input::UnregisterWorker{op, "w" + std::to_string(s.a % kWorkers)});
      break;
    }
    case Step::kProcessExit:
      feed(input::SessionGone{"s" + std::to_string(s.a % kSessions)});
      break;
    case Step::kClaim: {
      std::string id = id_of(s.a);
      const std::string worker = "w" + std::to_string(s.b % kWorkers);
      const OpId op = next_op_++;
      open_ops_[op] = OpKind::kWorker;
      if (!active_.empty() && s.c % 4 != 0) {
        auto it = active_.begin();
        std::advance(it, s.a % active_.size());
        id = it->second.info.execution_id;
        claims_[op] = OpenClaim{it->second.life, it->second.info.attempt, worker};
      }
      feed(input::Claim{op, worker, id});
      break;
    }
    case Step::kBlocker: {
      const OpId op = next_op_++;
      open_ops_[op] = OpKind::kWorker;
      feed(input::ReportBlocker{op, "w" + std::to_string(s.a % kWorkers), "stuck", "help", "high",
                                caps_of(s.b), id_of(s.c)});
      break;
    }
    case Step::kShmClaim: {
      if (active_.empty()) break;
      auto it = active_.begin();
      std::advance(it, s.a % active_.size());
      const std::uint32_t attempt =
          s.c % 4 == 0 ? it->second.info.attempt + 1 : it->second.info.attempt;
      std::uint32_t owner = 0;
      claim_word(it->second, attempt, worker_number("w" + std::to_string(s.b % kWorkers)), owner);
      break;
    }
    case Step::kKinds:
      break;
  }
}

}  // namespace

std::string describe(const Step& s) {
  static const char* const names[] = {"submit",         "submit-via-transport",
                                      "cancel",         "complete",
                                      "fail",           "deliver",
                                      "time",           "reload",
                                      "swap-transport", "retire-done",
                                      "crash",          "status",
                                      "wall-jump",      "register",
                                      "heartbeat",      "unregister",
                                      "process-exit",   "claim",
                                      "blocker",        "shm-claim"};
  std::ostringstream o;
  o << names[s.kind] << "(" << s.a << "," << s.b << "," << s.c << ")";
  return o.str();
}

std::vector<Step> generate(std::uint64_t seed, std::size_t steps) {
  std::mt19937_64 rng(seed);
  // Weights per kind: mostly submits, deliveries, completions and time.
  static const std::uint32_t weights[Step::kKinds] = {20, 4, 5, 10, 6, 22, 18, 1, 1, 1,
                                                      1,  2, 1, 3,  4, 1,  1,  6, 1, 5};
  std::uint32_t total = 0;
  for (auto w : weights) total += w;
  std::vector<Step> out;
  out.reserve(steps);
  for (std::size_t i = 0; i < steps; ++i) {
    std::uint32_t pick = static_cast<std::uint32_t>(rng() % total);
    std::uint8_t kind = 0;
    while (pick >= weights[kind]) pick -= weights[kind++];
    out.push_back(Step{static_cast<Step::Kind>(kind), static_cast<std::uint32_t>(rng()),
                       static_cast<std::uint32_t>(rng()), static_cast<std::uint32_t>(rng())});
  }
  return out;
}

SimResult run(const std::vector<Step>& steps) {
  World world;
  for (std::size_t i = 0; i < steps.size(); ++i) {
    try {
      world.apply(steps[i]);
    } catch (const Violation& v) {
      SimResult& r = world.result();
      r.ok = false;
      r.failed_at = i;
      r.failure = v.what;
      return r;
    }
  }
  try {
    world.drain();
  } catch (const Violation& v) {
    SimResult& r = world.result();
    r.ok = false;
    r.failed_at = steps.size() ? steps.size() - 1 : 0;
    r.failure = v.what;
    return r;
  }
  return world.result();
}

std::vector<Step> shrink(std::vector<Step> steps) {
  // The failing prefix first, then delta debugging: drop chunks while it still fails.
  SimResult r = run(steps);
  if (r.ok) return steps;
  steps.resize(r.failed_at + 1);
  for (std::size_t chunk = steps.size() / 2; chunk >= 1; chunk /= 2) {
    for (std::size_t at = 0; at < steps.size();) {
      std::vector<Step> candidate;
      candidate.reserve(steps.size());
      candidate.insert(candidate.end(), steps.begin(),
                       steps.begin() + static_cast<std::ptrdiff_t>(at));
      const std::size_t end = std::min(steps.size(), at + chunk);
      candidate.insert(candidate.end(), steps.begin() + static_cast<std::ptrdiff_t>(end),
                       steps.end());
      const SimResult c = run(candidate);
      if (!c.ok) {
        candidate.resize(c.failed_at + 1);
        steps = std::move(candidate);
      } else {
        at += chunk;
      }
    }
    if (chunk == 1) break;
  }
  return steps;
}

}  // namespace shmsched::sim
