// Crash points, systematically. The queue is built with a hook before every shared-memory store
// or CAS (ipc/src/crash_point.h). For each operation (submit, cancel, dequeue, release, sweep,
// maintenance, reap, registration) a child process is armed to raise SIGKILL (or SIGSTOP) at
// its N-th crash point, for every N the operation passes. After each kill, one recovery step of
// the consumer (a reap, or a new consumer's start) must leave the queue exact: nothing accepted
// lost, nothing invented, every slot and count back, new work accepted. After each stop, the
// consumer must go on without waiting for the stopped process, and the queue must be exact once
// it continues. The test reports how many crash points exist in the sources and that each one
// was hit.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <thread>

#include "process_support.h"
#include "queue_audit.h"
#include "queue_test_support.h"
#include "shmsched/ipc/crash_points.h"

namespace shmsched::test {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
namespace cp = ipc::crash_points;

constexpr auto kRecoveryBound = 2s;  // generous: a reap plus one rebuild takes milliseconds

ipc::ConsumerOptions quick_consumer() {
  ipc::ConsumerOptions o;
  o.start_wait = 100ms;
  o.maintenance_wait = 30ms;
  return o;
}

// A scenario: a prepared queue, then one operation in an armed child.
struct World {
  TempSegment seg{small_config(), "cp"};
  std::unique_ptr<ipc::Consumer> consumer;  // the parent's, when the scenario wants one
  std::vector<ipc::ActiveRef> active;
  std::vector<pid_t> helpers;  // setup processes stopped inside an operation
  std::set<std::string> may_appear;
  std::set<std::string> may_vanish;
};

struct Scenario {
  std::string name;
  bool parent_consumer = true;
  std::function<void(World&)> setup;
  // Runs in the child; calls arm() at the point from which crash points count.
  std::function<void(const std::shared_ptr<ipc::Segment>&, const std::function<void()>& arm)> op;
  std::set<std::string> may_appear;
  std::set<std::string> may_vanish;
  bool stop_too = false;  // also enumerate SIGSTOP (the parent is the consumer)
};

// Fills the common starting state: queued entries over two levels and users, two active ones,
// one cancelled tombstone at the head of the normal level, one released slot on the free stack.
void common_setup(World& w, bool keep_consumer) {
  auto& seg = w.seg.segment();
  {
    CancellingProducer p(seg);
    for (int i = 0; i < 6; ++i) {
      Req r("q" + std::to_string(i), "u" + std::to_string(i % 2),
            i < 2 ? Priority::kHigh : Priority::kNormal);
      if (i == 2) r.enqueued_at_ns = 1;  // very old, first of its level: the sweep takes it
      ASSERT_TRUE(p.submit(r.get()).accepted());
    }
    ASSERT_TRUE(submit(p, "gone", "u0", Priority::kLow).accepted());
    ASSERT_TRUE(submit(p, "tomb", "u1", Priority::kCritical).accepted());
    ASSERT_EQ(p.cancel("tomb"), ipc::CancelOutcome::kCancelled);  // a tombstone at the head
  }
  {
    ipc::Consumer c(seg, quick_consumer());
    // q0 and q1 (high) become active; "gone" is taken and released.
    for (int i = 0; i < 2; ++i) {
      auto ref = c.dequeue(Priority::kHigh);
      ASSERT_TRUE(ref);
      w.active.push_back(*ref);
    }
    auto g = c.dequeue(Priority::kLow);
    ASSERT_TRUE(g);
    ASSERT_TRUE(c.release(*g));  // its slot goes to the free stack
  }
  if (keep_consumer) w.consumer = std::make_unique<ipc::Consumer>(seg, quick_consumer());
}

// A helper process that runs `body` armed to stop (or die) at the first crash point whose
// description contains `site`; returns once it has stopped (or died).
pid_t helper_at(World& w, const std::string& site, int sig,
                const std::function<void(const std::shared_ptr<ipc::Segment>&)>& body) {
  const std::string name = w.seg.name();
  const pid_t pid = spawn([=] {
    auto s = ipc::Segment::attach(name);
    cp::arm_at(site, sig, -1);
    body(s);
    ::_exit(9);  // the site was never reached
  });
  int status = 0;
  ::waitpid(pid, &status, WUNTRACED);
  if (WIFEXITED(status)) {
    ADD_FAILURE() << "helper never reached crash point '" << site << "'";
    return -1;
  }
  if (sig == SIGSTOP) w.helpers.push_back(pid);
  return pid;
}

std::vector<Scenario> scenarios() {
  std::vector<Scenario> out;
  auto producer_op = [](std::function<void(CancellingProducer&)> f) {
    return [f](const std::shared_ptr<ipc::Segment>& s, const std::function<void()>& arm) {
      CancellingProducer p(s);
      arm();
      f(p);
    };
  };
  auto consumer_op = [](std::function<void(ipc::Consumer&)> f) {
    return [f](const std::shared_ptr<ipc::Segment>& s, const std::function<void()>& arm) {
      ipc::Consumer c(s, quick_consumer());
      arm();
      f(c);
    };
  };

  out.push_back({"submit",
                 true,
                 [](World& w) { common_setup(w, true); },
                 producer_op([](CancellingProducer& p) { submit(p, "new", "u9", Priority::kLow); }),
                 {"new"},
                 {},
                 true});
  out.push_back({"submit (the consumer sleeps)",
                 true,
                 [](World& w) {
                   common_setup(w, true);
                   ipc::detail::view_of(*w.seg.segment()).hdr->consumer_sleeping.store(1);
                 },
                 producer_op([](CancellingProducer& p) { submit(p, "new", "u0"); }),
                 {"new"},
                 {},
                 false});
  out.push_back({"submit refused: user at its cap",
                 true,
                 [](World& w) {
                   common_setup(w, true);
                   w.seg.segment()->set_max_executions_per_user(3);  // u0 holds three
                 },
                 producer_op([](CancellingProducer& p) { submit(p, "new", "u0"); }),
                 {},
                 {},
                 false});
  out.push_back(
      {"submit refused: queue full",
       true,
       [](World& w) {
         common_setup(w, true);
         CancellingProducer p(w.seg.segment());
         for (int i = 0;
              submit(p, "fill" + std::to_string(i), "f" + std::to_string(i % 8)).accepted(); ++i) {
         }
       },
       producer_op([](CancellingProducer& p) { submit(p, "new", "u0"); }),
       {},
       {},
       false});
  out.push_back({"submit refused: duplicate",
                 true,
                 [](World& w) { common_setup(w, true); },
                 producer_op([](CancellingProducer& p) { submit(p, "q3", "u1"); }),
                 {},
                 {},
                 false});
  out.push_back({"submit into a first bucket that is full",
                 true,
                 [](World& w) {
                   common_setup(w, true);
                   // Eight queued ids that share the first dedup bucket of "new-ov".
                   const auto& v = ipc::detail::view_of(*w.seg.segment());
                   ipc::detail::DedupIndex d{&v};
                   const auto target = d.first_bucket(stable_hash("new-ov"));
                   CancellingProducer p(w.seg.segment());
                   int found = 0;
                   for (int i = 0; found < 8; ++i) {
                     const std::string id = "ov" + std::to_string(i);
                     if (d.first_bucket(stable_hash(id)) != target) continue;
                     ASSERT_TRUE(submit(p, id, "o" + std::to_string(found)).accepted());
                     ++found;
                   }
                 },
                 producer_op([](CancellingProducer& p) { submit(p, "new-ov", "u9"); }),
                 {"new-ov"},
                 {},
                 false});
  out.push_back({"submit behind a producer stopped before moving the tail",
                 true,
                 [](World& w) {
                   common_setup(w, true);
                   helper_at(w, "ring push: tail CAS", SIGSTOP, [](const auto& s) {
                     CancellingProducer p(s);
                     submit(p, "stopped", "u5");
                   });
                   w.may_appear.insert("stopped");
                 },
                 producer_op([](CancellingProducer& p) { submit(p, "new", "u9"); }),
                 {"new"},
                 {},
                 false});
  out.push_back({"cancel a queued entry",
                 true,
                 [](World& w) { common_setup(w, true); },
                 producer_op([](CancellingProducer& p) { p.cancel("q3"); }),
                 {},
                 {"q3"},
                 true});
  out.push_back({"cancel an entry whose producer is stopped before marking it queued",
                 true,
                 [](World& w) {
                   common_setup(w, true);
                   helper_at(w, "submit: mark the slot queued", SIGSTOP, [](const auto& s) {
                     CancellingProducer p(s);
                     submit(p, "half", "u5");
                   });
                 },
                 producer_op([](CancellingProducer& p) { p.cancel("half"); }),
                 {"half"},
                 {},
                 false});
  out.push_back({"register and unregister",
                 true,
                 [](World& w) { common_setup(w, true); },
                 producer_op([](CancellingProducer&) {}),
                 {},
                 {},
                 true});
  out.push_back({"head_enqueued_at helps a lagging head",
                 false,
                 [](World& w) {
                   common_setup(w, false);
                   helper_at(w, "ring pop: head CAS", SIGSTOP, [](const auto& s) {
                     ipc::Consumer c(s, quick_consumer());
                     c.dequeue();
                   });
                 },
                 producer_op([](CancellingProducer& p) { p.head_enqueued_at(Priority::kNormal); }),
                 {},
                 {},
                 false});
  out.push_back({"dequeue (passing a tombstone)",
                 false,
                 [](World& w) { common_setup(w, false); },
                 consumer_op([](ipc::Consumer& c) { c.dequeue(); }),
                 {},
                 {},
                 false});
  out.push_back({"dequeue passes a tombstone whose canceller is stopped",
                 false,
                 [](World& w) {
                   common_setup(w, false);
                   {
                     CancellingProducer p(w.seg.segment());
                     ASSERT_TRUE(submit(p, "c0", "u7", Priority::kCritical).accepted());
                   }
                   helper_at(w, "cancel: count the tombstone", SIGSTOP, [](const auto& s) {
                     CancellingProducer p(s);
                     p.cancel("c0");
                   });
                   w.may_vanish.insert("c0");
                 },
                 consumer_op([](ipc::Consumer& c) { c.dequeue(); }),
                 {},
                 {},
                 false});
  out.push_back({"release",
                 false,
                 [](World& w) { common_setup(w, false); },
                 consumer_op([](ipc::Consumer& c) {
                   const auto active = c.active();
                   if (!active.empty()) c.release(active.front());
                 }),
                 {},
                 {"q0", "q1"},
                 false});
  out.push_back({"open claims of an active execution",
                 false,
                 [](World& w) { common_setup(w, false); },
                 consumer_op([](ipc::Consumer& c) {
                   const auto active = c.active();
                   if (!active.empty()) c.open_claims(active.front(), 1);
                 }),
                 {},
                 {},
                 false});
  out.push_back({"close claims of an active execution",
                 false,
                 [](World& w) {
                   common_setup(w, false);
                   ipc::Consumer c(w.seg.segment(), quick_consumer());
                   for (const auto& ref : w.active) c.open_claims(ref, 1);
                 },
                 consumer_op([](ipc::Consumer& c) {
                   const auto active = c.active();
                   if (!active.empty()) c.close_claims(active.front(), 1);
                 }),
                 {},
                 {},
                 false});
  out.push_back({"claim an active execution through shared memory",
                 true,
                 [](World& w) {
                   common_setup(w, true);
                   for (const auto& ref : w.active) w.consumer->open_claims(ref, 1);
                 },
                 producer_op([](CancellingProducer& p) { p.claim("q0", 1, 5); }),
                 {},
                 {},
                 false});
  out.push_back({"the consumer counts a level behind a stopped producer's tail",
                 false,
                 [](World& w) {
                   common_setup(w, false);
                   helper_at(w, "ring push: tail CAS", SIGSTOP, [](const auto& s) {
                     CancellingProducer p(s);
                     submit(p, "lagging", "u5");
                   });
                   w.may_appear.insert("lagging");
                 },
                 consumer_op([](ipc::Consumer& c) {
                   for (std::size_t l = 0; l < kPriorityLevels; ++l) {
                     c.depth(static_cast<Priority>(l));
                   }
                 }),
                 {},
                 {},
                 false});
  out.push_back({"announce new entries",
                 false,
                 [](World& w) { common_setup(w, false); },
                 consumer_op([](ipc::Consumer& c) {
                   for (std::size_t l = 0; l < kPriorityLevels; ++l) {
                     c.announce_new(static_cast<Priority>(l), [](const auto&, std::uint64_t) {});
                   }
                 }),
                 {},
                 {},
                 false});
  out.push_back({"annotate and set the attempt",
                 false,
                 [](World& w) { common_setup(w, false); },
                 consumer_op([](ipc::Consumer& c) {
                   for (const auto ref : c.active()) {
                     c.annotate(ref, 3);
                     c.set_attempt(ref, 2);
                   }
                 }),
                 {},
                 {},
                 false});
  out.push_back({"stale sweep",
                 false,
                 [](World& w) { common_setup(w, false); },
                 consumer_op([](ipc::Consumer& c) { c.sweep_stale(std::chrono::hours(1)); }),
                 {},
                 {"q2"},
                 false});
  out.push_back({"wait for work",
                 false,
                 [](World& w) { common_setup(w, false); },
                 [](const std::shared_ptr<ipc::Segment>& s, const std::function<void()>& arm) {
                   ipc::Consumer c(s, quick_consumer());
                   for (const auto ref : c.active()) c.release(ref);
                   while (auto ref = c.dequeue()) c.release(*ref);
                   arm();
                   c.wait_for_work(1ms);
                 },
                 {},
                 {"q0", "q1", "q2", "q3", "q4", "q5"},
                 false});
  out.push_back({"consumer start-up (takeover and rebuild)",
                 false,
                 [](World& w) { common_setup(w, false); },
                 [](const std::shared_ptr<ipc::Segment>& s, const std::function<void()>& arm) {
                   arm();
                   ipc::Consumer c(s, quick_consumer());
                 },
                 {},
                 {},
                 false});
  out.push_back({"reap a producer that died inside a submit",
                 false,
                 [](World& w) { common_setup(w, false); },
                 [](const std::shared_ptr<ipc::Segment>& s, const std::function<void()>& arm) {
                   ipc::Consumer c(s, quick_consumer());
                   // A producer dies inside its submit while this consumer runs.
                   const std::string name = s->name();
                   const pid_t dying = spawn([name] {
                     auto seg = ipc::Segment::attach(name);
                     cp::arm_at("dedup insert: claim an empty entry", SIGKILL, -1);
                     CancellingProducer p(seg);
                     submit(p, "dead", "u6");
                   });
                   ::waitpid(dying, nullptr, 0);
                   arm();
                   c.reap_dead();
                 },
                 {},
                 {},
                 false});
  out.push_back({"submit while a dead producer awaits its repair",
                 true,
                 [](World& w) {
                   common_setup(w, true);
                   helper_at(w, "dedup insert: claim an empty entry", SIGKILL, [](const auto& s) {
                     CancellingProducer p(s);
                     submit(p, "dead", "u6");
                   });
                 },
                 producer_op([](CancellingProducer& p) { submit(p, "new", "u9"); }),
                 {"new"},
                 {},
                 true});
  out.push_back({"maintenance by a producer (no consumer attached)",
                 false,
                 [](World& w) { common_setup(w, false); },
                 producer_op([](CancellingProducer& p) { p.run_maintenance(); }),
                 {},
                 {},
                 false});
  out.push_back({"a producer finds a dead maintainer's dirty word",
                 false,
                 [](World& w) {
                   common_setup(w, false);
                   ipc::detail::view_of(*w.seg.segment())
                       .hdr->maintenance.store(ipc::detail::kMaintenanceDirty);
                 },
                 producer_op([](CancellingProducer& p) { submit(p, "new", "u9"); }),
                 {"new"},
                 {},
                 false});
  out.push_back({"a producer finds a stopped process's tentative claim",
                 false,
                 [](World& w) {
                   common_setup(w, false);
                   helper_at(w, "maintenance: commit the claim", SIGSTOP,
                             [](const auto& s) { ipc::Producer(s).run_maintenance(); });
                 },
                 producer_op([](CancellingProducer& p) { submit(p, "new", "u9"); }),
                 {"new"},
                 {},
                 false});
  out.push_back({"a producer asks the consumer to recover a dead maintainer's work",
                 true,
                 [](World& w) {
                   common_setup(w, true);
                   ipc::detail::view_of(*w.seg.segment())
                       .hdr->maintenance.store(ipc::detail::kMaintenanceDirty);
                 },
                 producer_op([](CancellingProducer& p) { submit(p, "new", "u9"); }),
                 {"new"},
                 {},
                 false});
  return out;
}

// Every crash point in the sources, as "<file>:<line>".
std::map<std::string, std::string> sites_in_sources() {
  std::map<std::string, std::string> out;
  const std::string macro = "CRASH_POINT(\"";
  for (const auto& e : std::filesystem::directory_iterator(SHMSCHED_IPC_SOURCE_DIR)) {
    std::ifstream in(e.path());
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      const auto at = line.find(macro);
      if (at == std::string::npos || line.find("#define") != std::string::npos ||
          line.find("//") < at) {
        continue;
      }
      const auto from = at + macro.size();
      const auto to = line.find('"', from);
      if (to == std::string::npos) continue;
      out[e.path().filename().string() + ":" + std::to_string(n)] = line.substr(from, to - from);
    }
  }
  return out;
}

struct Outcome {
  bool fired = false;       // the child stopped or died at its crash point
  std::string site;         // "<file>:<line> <what>"
  std::uint64_t steps = 0;  // when it ran to the end: crash points passed
};

// Runs the scenario's operation in a child armed at `target` (0: count only).
Outcome run_child(World& w, const Scenario& sc, std::uint64_t target, int sig) {
  Pipe out;
  const std::string name = w.seg.name();
  const int fd = out.write_fd();
  const pid_t pid = spawn([&, fd, name, target, sig] {
    auto s = ipc::Segment::attach(name);
    sc.op(s, [&] { cp::arm(target, sig, fd); });
    const std::string done = "done " + std::to_string(cp::passed()) + "\n";
    const ssize_t n = ::write(fd, done.data(), done.size());
    (void)n;
    ::_exit(0);
  });
  out.close_write();
  // The parent's consumer keeps serving maintenance requests meanwhile, as the supervisor would.
  const auto deadline = Clock::now() + 20s;
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG | WUNTRACED);
    if (r == pid) break;
    if (Clock::now() > deadline) {
      kill_and_reap(pid);
      ADD_FAILURE() << sc.name << ": the operation hung (target " << target << ")";
      return {};
    }
    if (w.consumer && w.consumer->maintenance_requested()) w.consumer->reap_dead();
    std::this_thread::sleep_for(200us);
  }
  std::string text;
  char buf[512];
  for (;;) {
    const ssize_t n = ::read(out.read_fd(), buf, sizeof buf);
    if (n <= 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  Outcome o;
  if (WIFSTOPPED(status)) {
    o.fired = true;
    o.site = text.substr(0, text.find('\n'));
    // Checks while it is stopped, then let it finish.
    w.helpers.push_back(pid);
    return o;
  }
  if (WIFSIGNALED(status)) {
    o.fired = true;
    o.site = text.substr(0, text.find('\n'));
    return o;
  }
  if (text.rfind("done ", 0) == 0) o.steps = std::stoull(text.substr(5));
  return o;
}

// The consumer goes on while a process is stopped inside an operation: every call returns in
// bounded time, and queued work can be taken and finished.
void check_consumer_goes_on(World& w, const std::string& where) {
  ASSERT_TRUE(w.consumer);
  const auto t0 = Clock::now();
  w.consumer->reap_dead();
  (void)w.consumer->cancel("q4");
  auto ref = w.consumer->dequeue();
  if (ref) {
    EXPECT_TRUE(w.consumer->release(*ref)) << where;
  }
  (void)w.consumer->sweep_stale(std::chrono::hours(1));
  (void)w.consumer->status("q2");
  EXPECT_LT(Clock::now() - t0, kRecoveryBound)
      << where << ": the consumer waited for a stopped process";
  w.may_vanish.insert({"q2", "q3", "q4", "q5", "q0", "q1"});
}

// Recovery and the full check. `before`: live ids before the operation.
void recover_and_check(World& w, const Scenario& sc, const std::set<std::string>& before,
                       const std::string& where) {
  for (pid_t h : w.helpers) {
    ::kill(h, SIGCONT);
    int status = 0;
    ::waitpid(h, &status, 0);
  }
  w.helpers.clear();
  const auto t0 = Clock::now();
  if (w.consumer) {
    w.consumer->reap_dead();
  } else {
    w.consumer = std::make_unique<ipc::Consumer>(w.seg.segment(), quick_consumer());
  }
  const auto took = Clock::now() - t0;
  EXPECT_LT(took, kRecoveryBound) << where;
  const Audit a = audit_segment(*w.seg.segment());
  EXPECT_TRUE(a.ok()) << where << ":\n" << a.text();
  // Nothing lost, nothing invented, nothing twice.
  const auto live = a.live();
  EXPECT_EQ(live.size(), a.queued.size() + a.active.size()) << where << ": an id is live twice";
  for (const auto& id : before) {
    if (!live.count(id) && !sc.may_vanish.count(id) && !w.may_vanish.count(id)) {
      ADD_FAILURE() << where << ": " << id << " was lost";
    }
  }
  for (const auto& id : live) {
    if (!before.count(id) && !sc.may_appear.count(id) && !w.may_appear.count(id)) {
      ADD_FAILURE() << where << ": " << id << " appeared";
    }
  }
  // Everything drains; every count is back to zero; new work is accepted and taken.
  auto drain = [&] {
    for (const auto ref : w.consumer->active()) {
      EXPECT_TRUE(w.consumer->release(ref)) << where;
    }
    while (auto ref = w.consumer->dequeue()) {
      EXPECT_TRUE(w.consumer->release(*ref)) << where;
    }
  };
  drain();
  CancellingProducer p(w.seg.segment());
  ASSERT_TRUE(submit(p, "fresh", "u3").accepted()) << where;
  drain();
  const Audit empty = audit_segment(*w.seg.segment());
  EXPECT_TRUE(empty.ok()) << where << " (drained):\n" << empty.text();
  EXPECT_TRUE(empty.live().empty()) << where;
  EXPECT_EQ(empty.free_slots, ipc::detail::view_of(*w.seg.segment()).geo->slot_count)
      << where << ": slots leaked";
}

// A claimant stopped between finding an execution's slot and reading it, while the execution is
// released and its slot reused by another that is offered at the same attempt: the claim must
// not win the other execution (before the fix it did).
TEST(QueueCrashPoints, AClaimOfAReleasedIdNeverWinsTheExecutionThatReusedItsSlot) {
  World w;
  auto& seg = w.seg.segment();
  ipc::Consumer c(seg, quick_consumer());
  CancellingProducer p(seg);
  ASSERT_TRUE(submit(p, "a", "u").accepted());
  ipc::ActiveRef ref_a;
  ASSERT_EQ(take(c, &ref_a), "a");
  c.open_claims(ref_a, 1);
  const pid_t claimant = helper_at(w, "claim: look up the slot", SIGSTOP, [](const auto& s) {
    ipc::Producer q(s);
    const auto r = q.claim("a", 1, 7);
    ::_exit(20 + static_cast<int>(r.outcome));
  });
  ASSERT_GT(claimant, 0);
  // Meanwhile: "a" ends, "b" takes its slot and is offered.
  ASSERT_TRUE(c.release(ref_a));
  ASSERT_TRUE(submit(p, "b", "u").accepted());
  ipc::ActiveRef ref_b;
  ASSERT_EQ(take(c, &ref_b), "b");
  ASSERT_EQ(ref_b.slot, ref_a.slot) << "the slot was not reused: the race is not there";
  c.open_claims(ref_b, 1);
  ::kill(claimant, SIGCONT);
  int status = 0;
  ::waitpid(claimant, &status, 0);
  w.helpers.clear();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 20 + static_cast<int>(ipc::ClaimOutcome::kNotFound))
      << "exit " << WEXITSTATUS(status);
  EXPECT_EQ(c.claim(ref_b, 1, 0).owner, 0u) << "the claim of 'a' took 'b'";
}

TEST(QueueCrashPoints, EveryCrashPointOfEveryOperationIsRecovered) {
  const auto all = sites_in_sources();
  ASSERT_GT(all.size(), 30u);
  std::set<std::string> hit;
  std::size_t kills = 0;
  std::size_t stops = 0;
  for (const Scenario& sc : scenarios()) {
    std::uint64_t steps = 0;
    {
      World w;
      sc.setup(w);
      if (::testing::Test::HasFatalFailure()) return;
      steps = run_child(w, sc, 0, SIGKILL).steps;
      recover_and_check(w, sc, audit_segment(*w.seg.segment()).live(), sc.name + " (no crash)");
    }
    ASSERT_GT(steps, 0u) << sc.name << " passed no crash point";
    for (int sig : {SIGKILL, SIGSTOP}) {
      if (sig == SIGSTOP && !sc.stop_too) continue;
      for (std::uint64_t n = 1; n <= steps; ++n) {
        World w;
        sc.setup(w);
        const auto before = audit_segment(*w.seg.segment()).live();
        const std::string where = sc.name + ", " + (sig == SIGKILL ? "killed" : "stopped") +
                                  " at crash point " + std::to_string(n);
        const Outcome o = run_child(w, sc, n, sig);
        if (!o.fired) continue;  // a shorter path this time (a race settled differently)
        hit.insert(o.site.substr(0, o.site.find(' ')));
        if (sig == SIGSTOP) {
          ++stops;
          check_consumer_goes_on(w, where + " (" + o.site + ")");
        } else {
          ++kills;
        }
        recover_and_check(w, sc, before, where + " (" + o.site + ")");
        if (::testing::Test::HasFailure()) return;
      }
    }
  }
  // Sites only a race between two processes reaches (or an impossible state); named here so
  // that a new unreached site is noticed.
  const std::set<std::string> race_only = {
      "dedup insert: withdraw after a concurrent duplicate",
      "dequeue: drop an impossible cell",
      "maintenance: withdraw the tentative claim",
  };
  std::size_t unreached = 0;
  for (const auto& [where, what] : all) {
    if (hit.count(where)) continue;
    if (race_only.count(what)) continue;
    ADD_FAILURE() << "crash point never hit: " << where << " " << what;
    ++unreached;
  }
  std::printf(
      "[ crash    ] %zu crash points in the sources, %zu hit; %zu kills and %zu stops "
      "recovered; %zu unreached outside the race-only list\n",
      all.size(), hit.size(), kills, stops, unreached);
}

}  // namespace
}  // namespace shmsched::test
