// Workers in the scheduler on explicit input sequences, with a small model of the claim word
// (OpenClaims, CloseClaims and ClaimInSegment carried out at once, as the shell does). The cases a
// review of the workers change found, each of which failed before its fix; the seeded simulation
// (scheduler_sim_test) explores the rest.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <set>

#include "shmsched/core/scheduler.h"

namespace shmsched::core {
namespace {

constexpr std::int64_t kMs = 1'000'000;
constexpr std::int64_t kSec = 1'000'000'000;

struct Word {
  std::uint32_t attempt = 0;  // 0: not open
  std::uint32_t owner = 0;
};

struct World {
  Scheduler s;
  Time t{1000 * kSec, 1'700'000'000 * kSec};
  std::vector<Action> out;  // everything decided since the last clear()
  std::map<SlotRef, Word> words;
  std::set<SlotRef> released;

  explicit World(SchedulerConfig c) : s(c) {}

  void carry_out(std::vector<Action> acts) {
    for (std::size_t i = 0; i < acts.size(); ++i) {
      Action a = acts[i];
      out.push_back(a);
      if (auto* oc = std::get_if<action::OpenClaims>(&a)) {
        Word& w = words[oc->slot];
        if (w.attempt != oc->attempt) w = Word{oc->attempt, 0};
      } else if (auto* cs = std::get_if<action::ClaimInSegment>(&a)) {
        input::ClaimResult r{cs->op, cs->execution_id, cs->attempt, ClaimOutcome::kNotFound, 0};
        if (!released.count(cs->slot)) {
          Word& w = words[cs->slot];
          if (w.attempt != cs->attempt) {
            r.outcome = ClaimOutcome::kNotCurrent;
          } else if (cs->close) {
            r.outcome = ClaimOutcome::kLost;
            r.owner = w.owner;
            if (w.owner == 0) w.attempt = 0;
          } else {
            if (w.owner == 0 && cs->worker != 0) w.owner = cs->worker;
            r.owner = w.owner;
            r.outcome =
                w.owner != 0 && w.owner == cs->worker ? ClaimOutcome::kWon : ClaimOutcome::kLost;
          }
        }
        std::vector<Action> more;
        s.handle(r, t, more);
        for (auto& m : more) acts.push_back(std::move(m));
      } else if (auto* rl = std::get_if<action::Release>(&a)) {
        released.insert(rl->slot);
      }
    }
  }
  void in(const Input& i) {
    std::vector<Action> a;
    s.handle(i, t, a);
    carry_out(std::move(a));
  }
  void advance() {
    std::vector<Action> a;
    s.advance(t, a);
    carry_out(std::move(a));
  }
  // A local worker's claim straight through shared memory: the scheduler is not told.
  bool shm_claim(SlotRef slot, std::uint32_t attempt, const std::string& worker) {
    Word& w = words[slot];
    if (w.attempt != attempt || w.owner != 0) return false;
    w.owner = worker_number(worker);
    return true;
  }
  // Takes `id` (needing `caps`) from the queue's normal level into `slot`.
  void take(const std::string& id, SlotRef slot, std::vector<std::string> caps) {
    input::QueueState q;
    q.depth[2] = 1;
    in(q);
    advance();
    ExecutionInfo info{id, "u", Priority::kNormal, t.wall_ns, 1, 0, std::move(caps)};
    in(input::Taken{2, slot, info});
    in(input::TakeDone{2, 0});
    // Every transport takes every publish at once.
    for (const auto& p : all<action::Publish>()) {
      if (p.token != 0 && p.event.execution_id == id) {
        for (auto to : p.to) in(input::Delivery{to, p.token, true});
      }
    }
  }
  void pass(std::int64_t ns) {
    t.mono_ns += ns;
    t.wall_ns += ns;
  }
  // Lets `seconds` pass in steps of 1 s; the named workers heartbeat every step.
  void run_for(int seconds, const std::vector<std::string>& alive) {
    for (int i = 0; i < seconds; ++i) {
      pass(kSec);
      for (const auto& w : alive) in(input::Heartbeat{++ops, w});
      advance();
    }
  }
  template <class T>
  std::vector<T> all() const {
    std::vector<T> r;
    for (const auto& a : out) {
      if (const auto* p = std::get_if<T>(&a)) r.push_back(*p);
    }
    return r;
  }
  std::vector<Event> events(EventType type, const std::string& id = "") const {
    std::vector<Event> r;
    for (const auto& p : all<action::Publish>()) {
      if (p.event.type == type && (id.empty() || p.event.execution_id == id)) r.push_back(p.event);
    }
    return r;
  }
  std::uint32_t load(const std::string& w) const {
    const Worker* x = s.workers().find(w);
    return x ? x->load : 0xffffffffu;
  }
  void reg(const std::string& id, std::vector<std::string> caps, std::uint32_t capacity,
           const std::string& session) {
    in(input::RegisterWorker{++ops, id, std::move(caps), capacity, {}, session});
  }
  OpId ops = 1000;
};

SchedulerConfig config() {
  SchedulerConfig c;
  c.max_active_executions = 10;
  c.claim_timeout_ms = 5000;
  c.worker_timeout_ms = 30000;
  c.default_timeout_seconds = 0;  // no execution timeout: what is stuck stays stuck
  return c;
}

// Q steals E1 (pushed to P) through shared memory and its process exits before the scheduler
// learns of the claim. worker_gone(Q) looks only at executions pushed to Q or known to be Q's,
// so E1 is not looked at; the claim timeout later reads the word, adopts "#Q" (no such worker)
// and stops there. Expected (docs/protocol.md "Workers that go"): E1 is retried/failed with
// worker_lost, and P's load (still counting E1) returns to 0.
TEST(SchedulerWorkers, AWorkerThatClaimedThroughSharedMemoryAndExitedIsNeverLost) {
  World w(config());
  w.in(input::TransportUp{1, "zeromq"});
  w.reg("P", {"gpu"}, 1, "sP");
  w.reg("Q", {"gpu"}, 1, "sQ");
  w.take("E1", 7, {"gpu"});
  auto pushes = w.events(EventType::kTaskPush, "E1");
  ASSERT_EQ(pushes.size(), 1u);
  ASSERT_EQ(pushes[0].worker_id.value_or(""), "P");
  ASSERT_TRUE(w.shm_claim(7, 1, "Q"));
  w.out.clear();
  w.in(input::SessionGone{"sQ"});  // Q's process exited
  w.run_for(120, {"P"});           // two minutes: claim timeouts, worker timeouts, all passed
  EXPECT_EQ(w.events(EventType::kFailed, "E1").size(), 1u)
      << "E1 is still owned by the gone worker #" << worker_number("Q");
  EXPECT_EQ(w.load("P"), 0u) << "P still counts E1, which Q took";
  // P (capacity 1) cannot take anything meanwhile.
  w.take("E2", 8, {"gpu"});
  EXPECT_EQ(w.s.waiting_for_workers(), 0u) << "E2 waits although P does nothing";
}

// Load drift: E1's load stays on P after Q (gone) is adopted as its owner. P unregisters and
// registers again (a new incarnation, load 0) and takes E2 (load 1). When E1 finally ends, its
// stale load_on "P" is subtracted from the new incarnation: P's load is 0 while it runs E2, and
// it is pushed E3 beyond its capacity of 1.
TEST(SchedulerWorkers, AStaleLoadIsSubtractedFromTheWorkersNextIncarnation) {
  World w(config());
  w.in(input::TransportUp{1, "zeromq"});
  w.reg("P", {"gpu"}, 1, "sP");
  w.reg("Q", {"gpu"}, 1, "sQ");
  w.take("E1", 7, {"gpu"});
  ASSERT_TRUE(w.shm_claim(7, 1, "Q"));
  w.in(input::SessionGone{"sQ"});
  w.run_for(6, {"P"});  // the claim timeout reads the word: E1 is "#Q"'s
  w.in(input::UnregisterWorker{++w.ops, "P"});
  w.reg("P", {"gpu"}, 1, "sP2");
  w.take("E2", 8, {"gpu"});
  ASSERT_EQ(w.load("P"), 1u);
  // E1 ends (a complete without worker_id, as the protocol allows).
  w.in(input::Complete{++w.ops, "E1", std::nullopt, std::nullopt, 0, std::nullopt});
  EXPECT_EQ(w.load("P"), 1u) << "E1's end was taken from P's new incarnation, which runs E2";
  w.out.clear();
  w.take("E3", 9, {"gpu"});
  EXPECT_EQ(w.events(EventType::kTaskPush, "E3").size(), 0u)
      << "E3 pushed to P (capacity 1) while it holds E2";
}

// After a supervisor restart, an execution whose claim word names a worker that never registers
// again (it died with, or during, the restart) is owned by a number forever: no heartbeat rule
// applies to a worker that is not registered, so it is never retried as worker_lost.
TEST(SchedulerWorkers, AfterARestartAnOwnerThatNeverReturnsHoldsItsExecutionForever) {
  World w(config());
  w.in(input::TransportUp{1, "zeromq"});
  ExecutionInfo info{"E1", "u", Priority::kNormal, w.t.wall_ns, 1, 0, {"gpu"}};
  w.in(input::Recovered{7, info, phase_word(Phase::kDispatched, 2, 0, FinalState::kNone, 1), 1,
                        worker_number("dead")});
  w.reg("X", {"gpu"}, 1, "sX");
  w.out.clear();
  w.run_for(120, {"X"});  // four worker timeouts
  EXPECT_EQ(w.events(EventType::kFailed, "E1").size() + w.events(EventType::kTaskPush, "E1").size(),
            1u)
      << "E1 stays claimed by #" << worker_number("dead") << ", who never registered again";
}

// After a supervisor restart, a pushed execution nobody claimed yet has no claim timeout armed
// (Recovered in phase dispatched returns before arm_claim_timeout, and e.worker is unknown):
// if the worker it was pushed to is gone, it is never offered to anyone else.
TEST(SchedulerWorkers, AfterARestartAnUnclaimedPushIsNeverOfferedAgain) {
  World w(config());
  w.in(input::TransportUp{1, "zeromq"});
  ExecutionInfo info{"E1", "u", Priority::kNormal, w.t.wall_ns, 1, 0, {"gpu"}};
  w.in(input::Recovered{7, info, phase_word(Phase::kDispatched, 2, 0, FinalState::kNone, 1), 1, 0});
  w.reg("X", {"gpu"}, 1, "sX");
  w.out.clear();
  w.run_for(60, {"X"});  // twelve claim timeouts
  EXPECT_GE(w.events(EventType::kTaskPush, "E1").size(), 1u)
      << "E1 is never offered to X (claim_timeout_ms = 5000)";
}

// After a supervisor restart the claim word still names the owner (by number, before it
// registers again): a report from another worker is refused, the owner's is accepted.
TEST(SchedulerWorkers, AfterARestartTheClaimWordStillNamesTheOwner) {
  World w(config());
  w.in(input::TransportUp{1, "zeromq"});
  ExecutionInfo info{"E1", "u", Priority::kNormal, w.t.wall_ns, 1, 0, {"gpu"}};
  w.in(input::Recovered{7, info, phase_word(Phase::kDispatched, 2, 0, FinalState::kNone, 1), 1,
                        worker_number("W")});
  w.reg("X", {"gpu"}, 1, "sX");
  w.out.clear();
  w.in(input::Complete{++w.ops, "E1", std::string("X"), std::nullopt, 0, std::nullopt});
  auto answers = w.all<action::Answer>();
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(answers[0].reply.error, "not_owner");
  w.out.clear();
  w.in(input::Complete{++w.ops, "E1", std::string("W"), std::nullopt, 0, std::nullopt});
  answers = w.all<action::Answer>();
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_TRUE(answers[0].reply.ok) << answers[0].reply.error << ": " << answers[0].reply.message;
}

// A push re-offered after its worker left, with nobody to take it, waits (parked). Its claims
// were open at the attempt: a local worker that saw the first TaskPush could claim it through
// shared memory unseen (a parked execution has no claim timeout and no worker), beyond
// max_active_executions, and it would later be pushed to another worker. Its claims close when it
// starts to wait.
TEST(SchedulerWorkers, AClaimThroughSharedMemoryOfAWaitingExecutionGoesUnnoticed) {
  SchedulerConfig c = config();
  c.max_active_executions = 1;
  World w(c);
  w.in(input::TransportUp{1, "zeromq"});
  w.reg("P", {"gpu"}, 1, "sP");
  w.take("E1", 7, {"gpu"});
  w.in(input::UnregisterWorker{++w.ops, "P"});
  w.advance();
  ASSERT_EQ(w.s.waiting_for_workers(), 1u);
  // Its claims closed when it started to wait: a local worker cannot take it unseen.
  EXPECT_FALSE(w.shm_claim(7, 1, "Q")) << "claims are still open while it waits";
  w.take("E0", 8, {});  // no capabilities: a CreatePodCommand
  w.out.clear();
  w.reg("R", {"gpu"}, 1, "sR");
  w.advance();
  EXPECT_EQ(w.s.dispatched_now(), 1u);
  EXPECT_EQ(w.s.waiting_for_workers(), 1u) << "max_active_executions = 1 holds E1 back";
  // E0 ends: E1 goes to R, the only worker that may run it now.
  w.in(input::Complete{++w.ops, "E0", std::nullopt, std::nullopt, 0, std::nullopt});
  w.advance();
  const auto pushes = w.events(EventType::kTaskPush, "E1");
  ASSERT_EQ(pushes.size(), 1u);
  EXPECT_EQ(pushes[0].worker_id.value_or(""), "R");
}

// Every change of room (a registration, any settle_load) makes the next advance() try every
// waiting execution against every worker (pick() per waiting execution: O(waiting x workers x
// capabilities)). 4,000 executions that need a capability nobody has (any submitters can park
// them, up to max_taken) and 10,000 registered workers (no bound on their number): each
// registration or completion stalls the loop for about a second (watchdog, inbox, timers).
TEST(SchedulerWorkers, AdvanceAfterARegistrationScansWaitingTimesWorkers) {
  SchedulerConfig c = config();
  c.max_active_executions = 4096;
  World w(c);
  w.in(input::TransportUp{1, "zeromq"});
  for (int i = 0; i < 10000; ++i) w.reg("w" + std::to_string(i), {"a"}, 1, "");
  input::QueueState q;
  q.depth[2] = 4000;
  w.in(q);
  w.advance();
  for (int i = 0; i < 4000; ++i) {
    std::vector<Action> ignored;
    w.s.handle(input::Taken{2, static_cast<SlotRef>(100 + i),
                            ExecutionInfo{"e" + std::to_string(i),
                                          "u",
                                          Priority::kNormal,
                                          w.t.wall_ns,
                                          1,
                                          0,
                                          {"nobody-has-this"}}},
               w.t, ignored);
  }
  ASSERT_EQ(w.s.waiting_for_workers(), 4000u);
  w.reg("one-more", {"a"}, 1, "");
  const auto t0 = std::chrono::steady_clock::now();
  w.advance();
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  EXPECT_LT(ms, 50) << "one advance() after one registration took " << ms << " ms";
}

// A restart audits every recovered claim again, as a new claim "via shared_memory" (adopt_owner
// counts and audits whenever owner_no changes from 0, which it always does on Recovered): the
// audit log holds two "claimed" records for one claim (the first maybe "via ingress"), and
// counters.claims_won counts claims made by the previous supervisor.
TEST(SchedulerWorkers, ARestartAuditsEveryRecoveredClaimAgain) {
  World w(config());
  w.in(input::TransportUp{1, "zeromq"});
  ExecutionInfo info{"E1", "u", Priority::kNormal, w.t.wall_ns, 1, 0, {"gpu"}};
  w.in(input::Recovered{7, info, phase_word(Phase::kDispatched, 2, 0, FinalState::kNone, 1), 1,
                        worker_number("W")});
  EXPECT_EQ(w.all<action::Audit>().size(), 0u)
      << "audited again: " << w.all<action::Audit>()[0].type << " via "
      << w.all<action::Audit>()[0].via;
  EXPECT_EQ(w.s.counters().claims_won, 0u);
}

}  // namespace
}  // namespace shmsched::core
