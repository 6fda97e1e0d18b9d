// Findings of an adversarial review of the queue's crash handling (issue 7), each reproduced:
// a live process judged dead, a producer's rebuild stopped while a consumer starts, an unbounded
// wait on the consumer's own thread, a handle destroyed in a forked child, exceptions inside an
// operation or a rebuild.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "process_support.h"
#include "queue_audit.h"
#include "queue_test_support.h"
#include "shmsched/ipc/crash_points.h"

namespace shmsched::test {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
namespace cp = ipc::crash_points;
using Clock = std::chrono::steady_clock;

ipc::ConsumerOptions quick() {
  ipc::ConsumerOptions o;
  o.start_wait = 100ms;
  o.maintenance_wait = 30ms;
  return o;
}

std::vector<std::string> drain(ipc::Consumer& c) {
  std::vector<std::string> ids;
  for (const auto ref : c.active()) c.release(ref);
  for (;;) {
    ipc::ActiveRef ref;
    const std::string id = take(c, &ref);
    if (id.empty()) break;
    ids.push_back(id);
    c.release(ref);
  }
  return ids;
}

// Forks a producer that submits `id` and stops (SIGSTOP) at the first crash point matching
// `site`; returns its pid once stopped, and the read end of a pipe that gets its admission.
std::pair<pid_t, int> stopped_submit(const std::string& segment, const std::string& site,
                                     const std::string& id) {
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error("pipe");
  const pid_t pid = spawn([=] {
    ::close(fds[0]);
    auto s = ipc::Segment::attach(segment);
    ipc::Producer p(s);
    cp::arm_at(site, SIGSTOP, -1);
    const auto r = submit(p, id, "u-" + id);
    const char a = static_cast<char>('0' + static_cast<int>(r.admission));
    const ssize_t n = ::write(fds[1], &a, 1);
    (void)n;
  });
  ::close(fds[1]);
  int status = 0;
  ::waitpid(pid, &status, WUNTRACED);
  if (!WIFSTOPPED(status)) throw std::runtime_error("the producer did not stop at " + site);
  return {pid, fds[0]};
}

char finish(std::pair<pid_t, int> stopped) {
  ::kill(stopped.first, SIGCONT);
  char a = '?';
  const ssize_t n = ::read(stopped.second, &a, 1);
  (void)n;
  ::close(stopped.second);
  ::waitpid(stopped.first, nullptr, 0);
  return a;
}

// A process whose /proc files cannot be opened right now (the checker is out of file
// descriptors) is not dead: its entry is not reaped and no rebuild runs under its operation.
TEST(QueueReview, AProcessThatCannotBeCheckedIsNotDead) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "the sanitizers' runtime needs file descriptors for its own checks; this runs "
                  "in the normal build";
#endif
  TempSegment seg;
  auto stopped = stopped_submit(seg.name(), "submit: fill the slot", "X");
  ipc::Consumer c(seg.segment(), quick());
  rlimit old{};
  ::getrlimit(RLIMIT_NOFILE, &old);
  rlimit none = old;
  none.rlim_cur = 0;
  ::setrlimit(RLIMIT_NOFILE, &none);
  const std::uint64_t dead = c.reap_dead();
  const bool ran = c.run_maintenance();
  ::setrlimit(RLIMIT_NOFILE, &old);
  EXPECT_EQ(dead, 0u);
  EXPECT_FALSE(ran) << "a rebuild ran while a live producer was inside its submit";
  EXPECT_EQ(finish(stopped), '0');  // accepted
  ipc::Producer p(seg.segment());
  ASSERT_TRUE(submit(p, "Y", "uy").accepted());
  const auto ids = drain(c);
  EXPECT_THAT(ids, ::testing::UnorderedElementsAre("X", "Y"));
  const Audit a = audit_segment(*seg.segment());
  EXPECT_TRUE(a.ok()) << a.text();
}

// A process whose main thread has exited while another thread still runs shows state Z for its
// thread-group leader: it is alive.
TEST(QueueReview, AProcessWhoseMainThreadExitedIsAlive) {
  TempSegment seg;
  const std::string name = seg.name();
  Pipe result;
  const int wfd = result.write_fd();
  const pid_t child = ::fork();
  if (child == 0) {
    static std::string s_name;
    static int s_fd;
    static int ready[2];
    s_name = name;
    s_fd = wfd;
    if (::pipe(ready) != 0) ::_exit(3);
    pthread_t t;
    pthread_create(
        &t, nullptr,
        [](void*) -> void* {
          auto s = ipc::Segment::attach(s_name);
          ipc::Producer p(s);
          const ssize_t w = ::write(ready[1], "r", 1);
          (void)w;
          std::this_thread::sleep_for(100ms);  // the main thread has exited by now
          cp::arm_at("submit: fill the slot", SIGSTOP, -1);
          const auto r = submit(p, "X", "ux");
          send(s_fd, Report::make(r.accepted() ? 'A' : 'R', "X"));
          ::_exit(0);
        },
        nullptr);
    char b;
    const ssize_t n = ::read(ready[0], &b, 1);
    (void)n;
    ::syscall(SYS_exit, 0);  // only the main thread ends
  }
  result.close_write();
  ipc::Consumer c(seg.segment(), quick());
  // Wait until the worker thread is stopped inside its submit.
  bool stopped = false;
  for (int k = 0; k < 500 && !stopped; ++k) {
    std::this_thread::sleep_for(10ms);
    for (const auto& e :
         std::filesystem::directory_iterator("/proc/" + std::to_string(child) + "/task")) {
      std::ifstream in(e.path() / "stat");
      std::string line;
      std::getline(in, line);
      const auto close = line.rfind(')');
      if (close != std::string::npos && line.size() > close + 2 && line[close + 2] == 'T') {
        stopped = true;
      }
    }
  }
  ASSERT_TRUE(stopped);
  EXPECT_EQ(c.reap_dead(), 0u) << "a live process was taken for dead";
  ::kill(child, SIGCONT);
  ::waitpid(child, nullptr, 0);
  std::vector<Report> reports;
  result.drain(reports);
  ASSERT_EQ(reports.size(), 1u);
  ASSERT_EQ(reports[0].kind, 'A');
  EXPECT_THAT(drain(c), ::testing::ElementsAre("X"));
  c.reap_dead();  // the producer is gone now (it ended with _exit)
  const Audit a = audit_segment(*seg.segment());
  EXPECT_TRUE(a.ok()) << a.text();
}

// A producer maintaining (no consumer attached) is stopped in the middle of its rebuild; a
// supervisor starts: it must not come up unable to operate. It refuses to start, naming the pid.
TEST(QueueReview, AConsumerDoesNotStartOverAStoppedProducersRebuild) {
  TempSegment seg;
  const std::string name = seg.name();
  const pid_t child = spawn([name] {
    auto s = ipc::Segment::attach(name);
    ipc::Producer p(s);
    cp::arm_at("rebuild: clamp the never-used mark", SIGSTOP, -1);
    p.run_maintenance();
  });
  int status = 0;
  ::waitpid(child, &status, WUNTRACED);
  ASSERT_TRUE(WIFSTOPPED(status));
  try {
    ipc::Consumer c(seg.segment(), quick());
    ADD_FAILURE() << "the consumer started while pid " << child << " holds a rebuild";
  } catch (const ipc::SegmentError& e) {
    EXPECT_THAT(e.what(), HasSubstr("pid " + std::to_string(child)));
  }
  ::kill(child, SIGCONT);
  ::waitpid(child, nullptr, 0);
  ipc::Consumer c(seg.segment(), quick());  // now it starts
  ipc::Producer p(seg.segment());
  EXPECT_TRUE(submit(p, "after", "u").accepted());
}

// The supervisor's loop thread also submits (for transports) through a Producer handle: with a
// bounded wait, that submit returns while a repair is blocked, instead of waiting for the
// stopped process.
TEST(QueueReview, ABoundedProducerReturnsWhileARepairIsBlocked) {
  TempSegment seg;
  ipc::Consumer c(seg.segment(), quick());
  auto stopped = stopped_submit(seg.name(), "submit: fill the slot", "S");
  // A maintainer died mid-rebuild: nobody may operate until a rebuild completes, and the
  // rebuild waits for the stopped producer.
  ipc::detail::view_of(*seg.segment()).hdr->maintenance.store(ipc::detail::kMaintenanceDirty);
  ipc::ProducerOptions bounded;
  bounded.wait = 50ms;
  ipc::Producer loop_producer(seg.segment(), bounded);
  const auto t0 = Clock::now();
  const auto r = submit(loop_producer, "T", "ut");
  EXPECT_LT(Clock::now() - t0, 1s);
  EXPECT_EQ(r.admission, Admission::kQueueFull);
  EXPECT_THAT(r.message, HasSubstr("pid " + std::to_string(stopped.first)));
  EXPECT_EQ(finish(stopped), '0');
  c.reap_dead();  // the repair runs now
  EXPECT_TRUE(submit(loop_producer, "T", "ut").accepted());
  const Audit a = audit_segment(*seg.segment());
  EXPECT_TRUE(a.ok()) << a.text();
}

// Supervisor review: with a repair blocked, a burst of consumer operations costs one wait, not
// one each (the watchdog must not starve), and a producer of the consumer's own process asks the
// consumer instead of holding the consumer up with a rebuild of its own.
TEST(QueueReview, ABlockedRepairCostsOneWaitAndTheConsumersOwnProducersDoNotRebuild) {
  TempSegment seg;
  ipc::Consumer c(seg.segment(), quick());
  std::vector<ipc::ActiveRef> refs;
  {
    ipc::Producer p(seg.segment());
    for (int i = 0; i < 40; ++i) ASSERT_TRUE(submit(p, "e" + std::to_string(i), "u").accepted());
  }
  for (int i = 0; i < 10; ++i) refs.push_back(*c.dequeue());
  auto stopped = stopped_submit(seg.name(), "submit: fill the slot", "S");
  ipc::detail::view_of(*seg.segment()).hdr->maintenance.store(ipc::detail::kMaintenanceDirty);
  const auto t0 = Clock::now();
  for (int round = 0; round < 10; ++round) {
    for (const auto ref : refs) EXPECT_FALSE(c.release(ref));
    EXPECT_FALSE(c.dequeue());
  }
  EXPECT_LT(Clock::now() - t0, 500ms) << "each blocked operation waited again";
  EXPECT_EQ(c.blocked_by(), stopped.first);
  // The consumer's own producer asks; it never holds the maintenance word itself.
  ipc::ProducerOptions own;
  own.wait = 50ms;
  own.ask_consumer_in_process = true;
  ipc::Producer p(seg.segment(), own);
  EXPECT_EQ(submit(p, "T", "ut").admission, Admission::kQueueFull);
  EXPECT_EQ(ipc::detail::view_of(*seg.segment()).hdr->maintenance.load(),
            ipc::detail::kMaintenanceDirty);
  EXPECT_EQ(finish(stopped), '0');
  c.reap_dead();
  for (const auto ref : refs) EXPECT_TRUE(c.release(ref));
  EXPECT_TRUE(submit(p, "T", "ut").accepted());
  const Audit a = audit_segment(*seg.segment());
  EXPECT_TRUE(a.ok()) << a.text();
}

// The consumer's count of a level includes the entry of a producer stopped between publishing it
// and moving the tail (so the supervisor takes it), and excludes a cancelled entry at the head
// (so the supervisor does not wake up for it).
TEST(QueueReview, DepthCountsWhatCanBeTakenAndOnlyThat) {
  TempSegment seg;
  ipc::Consumer c(seg.segment(), quick());
  auto stopped = stopped_submit(seg.name(), "ring push: tail CAS", "X");
  EXPECT_EQ(c.depth(Priority::kNormal), 1u);
  EXPECT_EQ(take(c), "X");
  EXPECT_EQ(finish(stopped), '0');
  CancellingProducer p(seg.segment());
  ASSERT_TRUE(submit(p, "Y", "u").accepted());
  ASSERT_EQ(c.cancel("Y"), ipc::CancelOutcome::kCancelled);
  EXPECT_EQ(c.depth(Priority::kNormal), 0u);
}

// CI (a loaded machine, ASan): a repair was deferred because of a participant that was already
// dead, since its death was only looked at every 64 naps of the wait and the wait ran out first.
// A dead participant never holds a repair up, however short the wait.
TEST(QueueReview, ADeadParticipantNeverHoldsARepairUp) {
  TempSegment seg;
  ipc::ConsumerOptions tight = quick();
  tight.maintenance_wait = 1ms;
  ipc::Consumer c(seg.segment(), tight);
  const std::string name = seg.name();
  const pid_t dying = spawn([name] {
    auto s = ipc::Segment::attach(name);
    ipc::Producer p(s);
    cp::arm_at("user table: take a unit of the cap", SIGKILL, -1);
    submit(p, "dead", "u");
  });
  ::waitpid(dying, nullptr, 0);
  const auto runs = ipc::queue_stats(*seg.segment()).maintenance_runs;
  c.reap_dead();
  EXPECT_EQ(c.blocked_by(), 0);
  EXPECT_EQ(ipc::queue_stats(*seg.segment()).maintenance_runs, runs + 1);
  const Audit a = audit_segment(*seg.segment());
  EXPECT_TRUE(a.ok()) << a.text();
}

// A handle inherited across fork() and destroyed in the child (static destructors, unwinding)
// must not unregister the parent.
TEST(QueueReview, AHandleDestroyedInAForkedChildLeavesTheParentRegistered) {
  TempSegment seg;
  auto c = std::make_unique<ipc::Consumer>(seg.segment(), quick());
  const pid_t child = spawn([&] { c.reset(); });
  ::waitpid(child, nullptr, 0);
  EXPECT_EQ(ipc::queue_stats(*seg.segment()).participants, 1u);
  const pid_t other = spawn([&] {
    try {
      ipc::Consumer second(ipc::Segment::attach(seg.name()), quick());
      ::_exit(1);  // a second consumer while the first lives
    } catch (const ipc::SegmentError&) {
      ::_exit(0);
    }
  });
  EXPECT_EQ(wait_exit_code(other), 0);
}

// An exception inside an operation (an allocation failing) leaves no busy flag behind, and one
// inside a rebuild leaves no committed maintenance word held by a live process.
TEST(QueueReview, AnExceptionInsideAnOperationOrARebuildWedgesNothing) {
  TempSegment seg;
  {
    ipc::Producer p(seg.segment());
    ASSERT_TRUE(submit(p, "a", "u").accepted());
    cp::arm_at("submit: fill the slot", 0, -1);
    EXPECT_THROW(submit(p, "b", "u"), std::bad_alloc);
    cp::arm_at("rebuild: rewrite a ring's cells", 0, -1);
    EXPECT_THROW(p.run_maintenance(), std::bad_alloc);
    cp::disarm();
  }
  const auto& v = ipc::detail::view_of(*seg.segment());
  for (std::uint32_t i = 0; i < v.geo->max_participants; ++i) {
    EXPECT_EQ(v.participant(i).busy.load(), 0u) << "entry " << i;
  }
  EXPECT_EQ(v.hdr->maintenance.load() & ipc::detail::kIdentityMask, 0u);
  // The next consumer repairs the cut-short rebuild; everything is exact and works.
  ipc::Consumer c(seg.segment(), quick());
  ipc::Producer p(seg.segment());
  ASSERT_TRUE(submit(p, "c", "u").accepted());
  EXPECT_THAT(drain(c), ::testing::ElementsAre("a", "c"));
  const Audit a = audit_segment(*seg.segment());
  EXPECT_TRUE(a.ok()) << a.text();
}

// A cancel looks its id up, then reads the slot's control word. If the execution was dequeued and
// released in between and a producer reused the slot (the free stack hands it out first), the
// word belongs to another execution: the cancel must not take that one (it answered "cancelled"
// for an execution the consumer had, and silently dropped an accepted one; found by
// ManyProducersOneConsumerEveryAcceptedEntryExactlyOnce about once in 30 runs under TSan).
TEST(QueueReview, ACancelWhoseSlotWasReusedMeanwhileCancelsNothing) {
  TempSegment seg;
  ipc::Consumer c(seg.segment(), quick());
  ipc::Producer p(seg.segment());
  ASSERT_TRUE(submit(p, "X", "u-X").accepted());
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const std::string name = seg.name();
  const pid_t child = spawn([=] {
    ::close(fds[0]);
    auto s = ipc::Segment::attach(name);
    CancellingProducer canceller(s);
    cp::arm_at("cancel: look up the slot", SIGSTOP, -1);
    const char o = static_cast<char>('0' + static_cast<int>(canceller.cancel("X")));
    const ssize_t n = ::write(fds[1], &o, 1);
    (void)n;
  });
  ::close(fds[1]);
  int status = 0;
  ::waitpid(child, &status, WUNTRACED);
  ASSERT_TRUE(WIFSTOPPED(status));
  // X is dequeued and released while the canceller holds its slot index; Y takes the slot.
  ipc::ActiveRef x;
  ASSERT_EQ(take(c, &x), "X");
  ASSERT_TRUE(c.release(x));
  ASSERT_TRUE(submit(p, "Y", "u-Y").accepted());
  const auto y = p.status("Y");
  ASSERT_TRUE(y.has_value());
  ::kill(child, SIGCONT);
  char o = '?';
  ASSERT_EQ(::read(fds[0], &o, 1), 1);
  ::close(fds[0]);
  ::waitpid(child, nullptr, 0);
  EXPECT_EQ(o, '0' + static_cast<int>(ipc::CancelOutcome::kNotFound));
  EXPECT_EQ(take(c), "Y") << "the cancel of X took Y, which was accepted";
  const Audit a = audit_segment(*seg.segment());
  EXPECT_TRUE(a.ok()) << a.text();
}

}  // namespace
}  // namespace shmsched::test
