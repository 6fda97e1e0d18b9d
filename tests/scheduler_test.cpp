// The scheduler (core/scheduler.h) on explicit input sequences: the cases a review found, each of
// which failed before its fix. The seeded simulation (scheduler_sim_test) explores the rest.
#include <gtest/gtest.h>

#include "shmsched/core/scheduler.h"

namespace shmsched::core {
namespace {

constexpr std::int64_t kSec = 1'000'000'000;

struct Harness {
  Scheduler s;
  Time t{1000 * kSec, 1'700'000'000 * kSec};
  std::vector<Action> out;
  explicit Harness(SchedulerConfig c = {}) : s(c) {}
  std::vector<Action>& in(const Input& i) {
    out.clear();
    s.handle(i, t, out);
    return out;
  }
  std::vector<Action>& advance() {
    out.clear();
    s.advance(t, out);
    return out;
  }
  template <class T>
  std::vector<T> all() const {
    std::vector<T> r;
    for (const auto& a : out) {
      if (const auto* p = std::get_if<T>(&a)) r.push_back(*p);
    }
    return r;
  }
  // Takes `id` from the queue's normal level as `slot`; returns its CreatePodCommand.
  action::Publish take(const std::string& id, SlotRef slot, std::uint32_t attempt = 1) {
    input::QueueState q;
    q.depth[2] = 1;
    in(q);
    advance();
    in(input::Taken{2, slot, info(id, attempt)});
    auto pubs = all<action::Publish>();
    std::vector<Action> ignored;
    s.handle(input::TakeDone{2, 0}, t, ignored);
    EXPECT_EQ(pubs.size(), 1u);
    return pubs.empty() ? action::Publish{} : pubs[0];
  }
  static ExecutionInfo info(const std::string& id, std::uint32_t attempt = 1) {
    return ExecutionInfo{id, "u", Priority::kNormal, 1'700'000'000 * kSec, attempt, 0, {}};
  }
};

// An id that finished may be submitted again (the queue's dedup covers live entries only): a
// cancel of the new one asks the queue instead of answering "finished" from memory.
TEST(Scheduler, ACancelOfAReusedIdAsksTheQueue) {
  Harness h;
  h.in(input::TransportUp{1, "zeromq"});
  const auto p = h.take("e1", 7);
  h.in(input::Delivery{1, p.token, true});
  h.in(input::Complete{1, "e1", std::nullopt, std::nullopt, 0, std::nullopt});
  h.in(input::Cancel{2, "e1", "", std::nullopt});
  ASSERT_EQ(h.all<action::CancelInQueue>().size(), 1u);
  h.in(input::CancelResult{2, CancelOutcome::kCancelled, "u"});
  ASSERT_EQ(h.all<action::Answer>().size(), 1u);
  EXPECT_TRUE(h.all<action::Answer>()[0].reply.ok);
  // Not in the queue either: then "finished" (it did finish, once).
  h.in(input::Cancel{3, "e1", "", std::nullopt});
  h.in(input::CancelResult{3, CancelOutcome::kNotFound, ""});
  EXPECT_EQ(h.all<action::Answer>()[0].reply.error, "finished");
}

// An id that ends twice at the same instant is listed once.
TEST(Scheduler, AFinishedExecutionIsListedOnce) {
  Harness h;
  h.in(input::Expired{Harness::info("e1")});
  h.in(input::Expired{Harness::info("e1")});
  h.in(input::ListFinished{9, FinalState::kNone, std::nullopt, 100});
  const auto answers = h.all<action::Answer>();
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(answers[0].items.size(), 1u);
  EXPECT_EQ(h.s.remembered_finished(), 1u);
}

// A transport replaced by a reload (up before gone): what the old instance never acknowledged
// is published again to the new one, and counts as dispatched only then.
TEST(Scheduler, WhatAReplacedTransportNeverAcknowledgedIsPublishedToItsReplacement) {
  Harness h;
  h.in(input::TransportUp{1, "zeromq"});
  h.in(input::TransportUp{2, "kafka"});
  const auto p = h.take("e1", 7);
  ASSERT_EQ(p.to.size(), 2u);
  h.in(input::Delivery{1, p.token, true});
  h.in(input::TransportRetiring{2});
  h.in(input::TransportUp{3, "kafka"});
  h.in(input::TransportGone{2});
  EXPECT_EQ(h.s.dispatched_now(), 0u);
  h.t.mono_ns += 10 * kSec;
  h.advance();
  const auto again = h.all<action::Publish>();
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].event.type, EventType::kCreatePodCommand);
  EXPECT_EQ(std::vector<TransportId>(again[0].to.begin(), again[0].to.end()),
            std::vector<TransportId>{3})
      << "only to the transport that lacks it";
  h.in(input::Delivery{3, again[0].token, true});
  EXPECT_EQ(h.s.dispatched_now(), 1u);
}

// A supervisor dies between recording a retry in the phase word and storing the new attempt in
// the slot: the next one publishes the new attempt, not the failed one again.
TEST(Scheduler, ACrashDuringARetryNeverBringsTheFailedAttemptBack) {
  SchedulerConfig c;
  c.max_attempts = 2;
  c.retry_backoff_ms = 10;
  Harness h(c);
  h.in(input::TransportUp{1, "zeromq"});
  const auto p = h.take("e1", 7);
  h.in(input::Delivery{1, p.token, true});
  auto& actions = h.in(input::Fail{1, "e1", "boom", std::nullopt, 1, true, std::nullopt});
  // The phase word comes first (held, attempt 2), then the slot's attempt, then the event.
  std::optional<std::uint64_t> word;
  std::size_t word_at = 0, set_at = 0, event_at = 0;
  for (std::size_t i = 0; i < actions.size(); ++i) {
    if (const auto* an = std::get_if<action::Annotate>(&actions[i]); an && !word) {
      word = an->value;
      word_at = i;
    }
    if (std::holds_alternative<action::SetAttempt>(actions[i])) set_at = i;
    if (const auto* pub = std::get_if<action::Publish>(&actions[i]);
        pub && pub->event.type == EventType::kFailed) {
      event_at = i;
    }
  }
  ASSERT_TRUE(word);
  EXPECT_LT(word_at, set_at);
  EXPECT_LT(set_at, event_at);
  EXPECT_EQ(phase_of(*word), Phase::kHeld);
  EXPECT_EQ(attempt_of(*word), 2u);
  // Dies right after the phase word: the slot still says attempt 1.
  Harness r(c);
  r.in(input::TransportUp{5, "zeromq"});
  r.in(input::Recovered{7, Harness::info("e1", 1), *word});
  ASSERT_EQ(r.all<action::SetAttempt>().size(), 1u);
  EXPECT_EQ(r.all<action::SetAttempt>()[0].attempt, 2u);
  r.t.mono_ns += kSec;
  r.advance();
  const auto pubs = r.all<action::Publish>();
  ASSERT_EQ(pubs.size(), 1u);
  EXPECT_EQ(pubs[0].event.attempt, 2u);
  // A late report of attempt 1 is ignored.
  r.in(input::Fail{2, "e1", "late", std::nullopt, 1, true, std::nullopt});
  EXPECT_TRUE(std::get<bool>(r.all<action::Answer>()[0].reply.fields[0].second));
  EXPECT_TRUE(r.all<action::Publish>().empty());
}

// Shutdown: every transport retires, then their acknowledgements arrive. A dispatch every
// transport acknowledged is dispatched, not a publish failure.
TEST(Scheduler, AcknowledgementsFromRetiringTransportsCount) {
  Harness h;
  h.in(input::TransportUp{1, "zeromq"});
  const auto p = h.take("e1", 7);
  h.in(input::TransportRetiring{1});
  h.in(input::Delivery{1, p.token, true});
  EXPECT_EQ(h.s.held(), 0u);
  EXPECT_EQ(h.s.dispatched_now(), 1u);
  EXPECT_EQ(h.s.counters().publish_failures, 0u);
}

}  // namespace
}  // namespace shmsched::core

namespace shmsched::core {
namespace {

// A deep backlog is dispatched in bounded batches: one advance() decided the whole backlog at
// once before (a million-entry backlog became one list of millions of actions, and the shell's
// inbox, timers and watchdog waited for all of it).
TEST(Scheduler, OneAdvanceDecidesABoundedBatch) {
  SchedulerConfig c;
  c.max_active_executions = 1'000'000;
  Harness h(c);
  h.in(input::TransportUp{1, "zeromq"});
  input::QueueState q;
  q.depth[2] = 500'000;
  h.in(q);
  std::uint64_t asked = 0;
  for (const auto& take : (h.advance(), h.all<action::Take>())) asked += take.count;
  EXPECT_GT(asked, 0u);
  EXPECT_LE(asked, 1024u);
  // The rest follows in later calls, once the first batch was answered.
  std::vector<Action> ignored;
  h.s.handle(input::TakeDone{2, static_cast<std::uint32_t>(asked)}, h.t, ignored);
  q.depth[2] = 500'000;
  h.in(q);
  std::uint64_t again = 0;
  for (const auto& take : (h.advance(), h.all<action::Take>())) again += take.count;
  EXPECT_GT(again, 0u);
  EXPECT_LE(again, 1024u);
}

ExecutionInfo taken_info(const std::string& id) {
  return ExecutionInfo{id, "u", Priority::kNormal, 1'700'000'000 * kSec, 1, 0, {}};
}

// More held executions are ready than one advance() may dispatch (1,024), and there is room for
// them: next_deadline() says "now" (the shell sleeps on it), or the rest would wait for an
// unrelated wake-up, up to 100 ms per 16 batches after a restart with a large backlog.
TEST(Scheduler, ReadyHeldBeyondOneBatchHaveADeadlineNow) {
  SchedulerConfig c;
  c.max_active_executions = 100'000;
  Harness h(c);
  h.in(input::TransportUp{1, "zeromq"});
  // A restart: executions the previous supervisor had taken, never dispatched (phase unknown):
  // held, ready at once.
  for (int i = 0; i < 1100; ++i) {
    h.in(input::Recovered{static_cast<SlotRef>(i + 1), taken_info("r" + std::to_string(i)), 0});
  }
  ASSERT_EQ(h.s.held(), 1100u);
  h.t.mono_ns += 1;  // the next pass
  h.advance();
  ASSERT_EQ(h.all<action::Publish>().size(), 1024u);
  ASSERT_EQ(h.s.held(), 76u);
  ASSERT_TRUE(h.s.can_take(h.t)) << "room is left, transports are up, nothing paused";
  // advance() would dispatch the rest right now ...
  std::vector<Action> probe;
  Scheduler copy = h.s;
  copy.advance(h.t, probe);
  std::size_t more = 0;
  for (const auto& a : probe) more += std::holds_alternative<action::Publish>(a);
  EXPECT_EQ(more, 76u);
  // ... but nothing tells the shell to call it: no deadline at or before now.
  const auto d = h.s.next_deadline(h.t);
  EXPECT_TRUE(d.has_value() && *d <= h.t.mono_ns + 1)
      << "next_deadline = " << (d ? std::to_string(*d - h.t.mono_ns) + " ns from now" : "none");
}

// A delivery result for a token whose pool entry was retired and reused by another execution
// does not count for the new one (the token's sequence half differs).
TEST(Scheduler, StaleTokenAfterPoolReuseIsIgnored) {
  Harness h;
  h.in(input::TransportUp{1, "zeromq"});
  const auto p1 = h.take("a", 1);
  h.in(input::Cancel{1, "a", "", std::nullopt});  // finished: its pool entry is free
  const auto p2 = h.take("b", 2);                 // same pool entry
  ASSERT_EQ(p1.token >> 40, p2.token >> 40) << "the test wants the same pool index";
  ASSERT_NE(p1.token, p2.token);
  h.in(input::Delivery{1, p1.token, true});
  EXPECT_EQ(h.s.dispatched_now(), 1u);  // b is dispatching, not dispatched
  EXPECT_TRUE(h.all<action::Annotate>().empty());
  h.in(input::Delivery{1, 0, false});  // a token of 0 (an event's refusal) changes nothing
  EXPECT_TRUE(h.out.empty());
  h.in(input::Delivery{1, p2.token, true});
  EXPECT_EQ(h.all<action::Annotate>().size(), 1u);
}

}  // namespace
}  // namespace shmsched::core

namespace shmsched::core {
namespace {

// A request that acts for one user only (a local client that is not trusted) is checked where
// the scheduler acts: another user's dispatched execution is neither cancelled nor completed,
// and a cancel in the queue carries the user, so the shell leaves another user's entry alone.
TEST(Scheduler, ARequestForOneUserLeavesOtherUsersExecutionsAlone) {
  Harness h;
  h.in(input::TransportUp{1, "zeromq"});
  const auto p = h.take("e1", 7);  // user "u"
  h.in(input::Delivery{1, p.token, true});
  const auto refused = [&](const char* code) {
    const auto answers = h.all<action::Answer>();
    return answers.size() == 1 && !answers[0].reply.ok && answers[0].reply.error == code;
  };
  h.in(input::Cancel{1, "e1", "", std::string("mallory")});
  EXPECT_TRUE(refused("unauthorized"));
  EXPECT_TRUE(h.all<action::Publish>().empty());
  h.in(input::Complete{2, "e1", std::nullopt, std::nullopt, 0, std::string("mallory")});
  EXPECT_TRUE(refused("not_owner"));
  h.in(input::Fail{3, "e1", "no", std::nullopt, std::nullopt, true, std::string("mallory")});
  EXPECT_TRUE(refused("not_owner"));
  EXPECT_EQ(h.s.dispatched_now(), 1u);
  // Its owner may.
  h.in(input::Complete{4, "e1", std::nullopt, std::nullopt, 0, std::string("u")});
  EXPECT_EQ(h.s.dispatched_now(), 0u);
  // Not taken: the cancel goes to the queue with the user; kNotOwner is answered unauthorized.
  auto& asked = h.in(input::Cancel{5, "q1", "", std::string("mallory")});
  ASSERT_EQ(asked.size(), 1u);
  const auto* in_queue = std::get_if<action::CancelInQueue>(&asked[0]);
  ASSERT_TRUE(in_queue);
  EXPECT_EQ(in_queue->as_user, std::optional<std::string>("mallory"));
  h.in(input::CancelResult{5, CancelOutcome::kNotOwner, "bob"});
  EXPECT_TRUE(refused("unauthorized"));
  EXPECT_TRUE(h.all<action::Publish>().empty()) << "nothing was cancelled";
}

}  // namespace
}  // namespace shmsched::core

namespace shmsched::core {
namespace {

// An execution waiting for a worker (nobody has its capabilities) is stale by the same rule as a
// queued one: it expires after stale_timeout_seconds, its slot is given back, and it stops
// counting as taken.
TEST(Scheduler, AnExecutionWaitingForAWorkerExpires) {
  SchedulerConfig c;
  c.stale_timeout_seconds = 60;
  Harness h(c);
  h.in(input::TransportUp{1, "zeromq"});
  input::QueueState q;
  q.depth[2] = 1;
  h.in(q);
  h.advance();
  auto info = Harness::info("needs-tpu");
  info.required_capabilities = {"tpu"};
  h.in(input::Taken{2, 9, info});
  EXPECT_TRUE(h.all<action::Publish>().empty()) << "nobody can run it: nothing is published";
  EXPECT_EQ(h.s.waiting_for_workers(), 1u);
  h.t.mono_ns += 61 * kSec;
  h.t.wall_ns += 61 * kSec;
  h.advance();
  bool expired = false;
  for (const auto& p : h.all<action::Publish>()) {
    expired =
        expired || (p.event.type == EventType::kExpired && p.event.execution_id == "needs-tpu");
  }
  EXPECT_TRUE(expired);
  ASSERT_EQ(h.all<action::Release>().size(), 1u);
  EXPECT_EQ(h.all<action::Release>()[0].slot, 9u);
  EXPECT_EQ(h.s.waiting_for_workers(), 0u);
  EXPECT_EQ(h.s.taken(), 0u);
}

// A worker's fail sent twice (its client repeated the request) and naming no attempt, the
// second arriving while the execution waits out the backoff before its next attempt: nobody
// has that attempt yet, so the repeat is about the failed one. It is answered as ignored, not
// taken for a failure of the next attempt, which would burn it (here the last one: the
// execution would fail for good without ever running again).
TEST(Scheduler, AWorkersRepeatedFailDuringTheRetryBackoffBurnsNoAttempt) {
  SchedulerConfig c;
  c.max_attempts = 2;
  c.retry_backoff_ms = 1000;
  Harness h(c);
  h.in(input::TransportUp{1, "zeromq"});
  const auto p = h.take("e1", 7);
  h.in(input::Delivery{1, p.token, true});
  const input::Fail report{1, "e1", "boom", std::string("w1"), std::nullopt, true, std::nullopt};
  h.in(report);
  ASSERT_EQ(h.all<action::SetAttempt>().size(), 1u);
  auto repeated = report;
  repeated.op = 2;
  h.in(repeated);
  const auto answers = h.all<action::Answer>();
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_TRUE(answers[0].reply.ok);
  ASSERT_FALSE(answers[0].reply.fields.empty());
  EXPECT_EQ(answers[0].reply.fields[0].first, "ignored");
  EXPECT_TRUE(h.all<action::Publish>().empty()) << "the repeat was taken for a new failure";
  EXPECT_TRUE(h.all<action::SetAttempt>().empty());
  // The next attempt goes out once the backoff is over.
  h.t.mono_ns += 2 * kSec;
  h.advance();
  const auto pubs = h.all<action::Publish>();
  ASSERT_EQ(pubs.size(), 1u);
  EXPECT_EQ(pubs[0].event.type, EventType::kCreatePodCommand);
  EXPECT_EQ(pubs[0].event.attempt, 2u);
}

// Review: the backoff rule also takes a worker's `complete` naming no attempt for a stale report.
// Attempt 1 timed out (the scheduler failed it, with a retry); its worker then finishes. Before
// bb15369 the complete applied (the execution completed); now it is answered ignored, the result
// is dropped and attempt 2 runs the work again. No `fail` was repeated here.
TEST(Scheduler, FifthReviewALateCompleteDuringTheBackoffAfterATimeoutIsNotDropped) {
  SchedulerConfig c;
  c.max_attempts = 3;
  c.retry_backoff_ms = 10'000;
  c.default_timeout_seconds = 1;
  c.timeout_grace_seconds = 0;
  Harness h(c);
  h.in(input::TransportUp{1, "zeromq"});
  const auto p = h.take("e1", 7);
  h.in(input::Delivery{1, p.token, true});
  h.t.mono_ns += 2 * kSec;
  h.advance();  // attempt 1 timed out: attempt 2 waits out the backoff
  ASSERT_EQ(h.all<action::SetAttempt>().size(), 1u);
  h.in(input::Complete{2, "e1", std::string("w1"), std::nullopt, 0, std::nullopt});
  const auto answers = h.all<action::Answer>();
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_TRUE(answers[0].reply.fields.empty() || answers[0].reply.fields[0].first != "ignored")
      << "the worker's completion was ignored";
  EXPECT_EQ(h.all<action::Release>().size(), 1u) << "the execution did not complete";
  h.t.mono_ns += 20 * kSec;
  h.advance();
  EXPECT_TRUE(h.all<action::Publish>().empty()) << "attempt 2 runs work that completed";
}

}  // namespace
}  // namespace shmsched::core
