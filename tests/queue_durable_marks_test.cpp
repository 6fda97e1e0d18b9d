// Durable marks (issue 12): a shared-memory submitter that asked for durability disk waits for
// the supervisor's mark in its entry's slot. A mark answers for one occupancy only, a slot that
// moved on answers "ended", marks switched off answer "unavailable", and waiters in other threads
// and other processes are woken by the consumer's batch.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>
#include <vector>

#include "process_support.h"
#include "queue_test_support.h"

namespace shmsched::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using ipc::DurableOutcome;

// The consumer announces what is queued, as the supervisor does before it journals it: returns
// the views' slot and generation.
std::vector<ipc::ActiveRef> announce_all(ipc::Consumer& c) {
  std::vector<ipc::ActiveRef> out;
  for (const Priority level : {Priority::kHigh, Priority::kNormal, Priority::kLow}) {
    c.announce_new(level, [&](const ipc::ExecutionView& v, std::uint64_t) {
      out.push_back(ipc::ActiveRef{v.slot, v.generation});
    });
  }
  return out;
}

TEST(QueueDurableMarks, WithoutMarksAWaitAnswersUnavailableAtOnce) {
  TempSegment seg;
  ipc::Consumer c(seg.segment());
  ipc::Producer p(seg.segment());
  EXPECT_FALSE(p.durable_marks());
  const auto r = submit(p, "a", "u");
  ASSERT_TRUE(r.accepted());
  const auto t0 = Clock::now();
  EXPECT_EQ(p.wait_durable(r, 10s), DurableOutcome::kUnavailable);
  EXPECT_LT(Clock::now() - t0, 5s);
}

TEST(QueueDurableMarks, AMarkAnswersItsOwnEntryAndNoOther) {
  TempSegment seg;
  ipc::Consumer c(seg.segment());
  c.set_durable_marks(true);
  ipc::Producer p(seg.segment());
  ASSERT_TRUE(p.durable_marks());
  const auto a = submit(p, "a", "u");
  const auto b = submit(p, "b", "u");
  ASSERT_TRUE(a.accepted() && b.accepted());
  ASSERT_NE(a.slot, b.slot);
  const auto refs = announce_all(c);
  ASSERT_EQ(refs.size(), 2u);
  EXPECT_EQ(refs[0].slot, a.slot);
  EXPECT_EQ(refs[0].generation, a.generation);
  c.mark_durable(a.slot, a.generation);
  c.wake_durable_waiters();
  EXPECT_EQ(p.wait_durable(a, 1s), DurableOutcome::kDurable);
  EXPECT_EQ(p.wait_durable(b, 50ms), DurableOutcome::kTimedOut);
}

TEST(QueueDurableMarks, AMarkOfAnEarlierOccupantDoesNotAnswerForTheSlotsNextOne) {
  TempSegment seg;
  ipc::Consumer c(seg.segment());
  c.set_durable_marks(true);
  ipc::Producer p(seg.segment());
  const auto a = submit(p, "a", "u");
  ASSERT_TRUE(a.accepted());
  c.mark_durable(a.slot, a.generation);
  ASSERT_EQ(take_and_release(c), "a");
  const auto b = submit(p, "b", "u");  // the free stack hands a's slot out first
  ASSERT_TRUE(b.accepted());
  ASSERT_EQ(b.slot, a.slot);
  ASSERT_NE(b.generation, a.generation);
  EXPECT_EQ(p.wait_durable(b, 50ms), DurableOutcome::kTimedOut)
      << "a's mark answered for b, whose record was never written";
  EXPECT_EQ(p.wait_durable(a, 1s), DurableOutcome::kDurable) << "a's own mark is still there";
}

TEST(QueueDurableMarks, AnEntryThatLeftTheQueueUnmarkedIsEnded) {
  TempSegment seg;
  ipc::Consumer c(seg.segment());
  c.set_durable_marks(true);
  ipc::Producer p(seg.segment());
  const auto a = submit(p, "a", "u");
  ASSERT_TRUE(a.accepted());
  ipc::ActiveRef ref;
  ASSERT_EQ(take(c, &ref), "a");
  EXPECT_EQ(p.wait_durable(a, 30ms), DurableOutcome::kTimedOut) << "active: still unmarked";
  ASSERT_TRUE(c.release(ref));
  EXPECT_EQ(p.wait_durable(a, 1s), DurableOutcome::kEnded);
  ipc::SubmitResult refused;
  refused.admission = Admission::kQueueFull;
  EXPECT_EQ(p.wait_durable(refused, 1s), DurableOutcome::kEnded);
}

TEST(QueueDurableMarks, ASleepingWaiterIsWokenByTheMarkAndByMarksSwitchedOff) {
  TempSegment seg;
  ipc::Consumer c(seg.segment());
  c.set_durable_marks(true);
  ipc::Producer p(seg.segment());
  const auto a = submit(p, "a", "u");
  const auto b = submit(p, "b", "u");
  auto marked = std::async(std::launch::async, [&] { return p.wait_durable(a, 60s); });
  auto unmarked = std::async(std::launch::async, [&] { return p.wait_durable(b, 60s); });
  // Both asleep (counted) before the consumer acts, so that the wake-ups are what is tested.
  const auto deadline = Clock::now() + 10s;
  while (c.durable_waiters() < 2 && Clock::now() < deadline) std::this_thread::yield();
  ASSERT_EQ(c.durable_waiters(), 2u);
  c.mark_durable(a.slot, a.generation);
  c.wake_durable_waiters();
  EXPECT_EQ(marked.get(), DurableOutcome::kDurable);
  c.set_durable_marks(false);
  EXPECT_EQ(unmarked.get(), DurableOutcome::kUnavailable);
  EXPECT_EQ(c.durable_waiters(), 0u);
}

TEST(QueueDurableMarks, AWaiterInAnotherProcessIsWoken) {
  TempSegment seg;
  ipc::Consumer c(seg.segment());
  c.set_durable_marks(true);
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const std::string name = seg.name();
  const pid_t child = spawn([=] {
    ::close(fds[0]);
    auto s = ipc::Segment::attach(name);
    ipc::Producer p(s);
    const auto r = submit(p, "remote", "u");
    if (!r.accepted()) ::_exit(3);
    const auto outcome = p.wait_durable(r, 60s);
    const char o = static_cast<char>('0' + static_cast<int>(outcome));
    const ssize_t n = ::write(fds[1], &o, 1);
    (void)n;
  });
  ::close(fds[1]);
  const auto deadline = Clock::now() + 10s;
  while (c.durable_waiters() < 1 && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
  ASSERT_EQ(c.durable_waiters(), 1u);
  const auto refs = announce_all(c);
  ASSERT_EQ(refs.size(), 1u);
  c.mark_durable(refs[0].slot, refs[0].generation);
  c.wake_durable_waiters();
  char o = '?';
  ASSERT_EQ(::read(fds[0], &o, 1), 1);
  ::close(fds[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_EQ(o, '0' + static_cast<int>(DurableOutcome::kDurable));
}

TEST(QueueDurableMarks, OccupiedListsTheQueuedAndActiveEntries) {
  TempSegment seg;
  ipc::Consumer c(seg.segment());
  ipc::Producer p(seg.segment());
  const auto a = submit(p, "a", "u");
  const auto b = submit(p, "b", "u");
  const auto d = submit(p, "d", "u");
  ASSERT_EQ(take(c), "a");  // active
  ASSERT_EQ(take_and_release(c), "b");
  auto occupied = c.occupied();
  ASSERT_EQ(occupied.size(), 2u);
  std::sort(occupied.begin(), occupied.end(),
            [](const auto& x, const auto& y) { return x.slot < y.slot; });
  EXPECT_EQ(occupied[0].slot, a.slot);
  EXPECT_EQ(occupied[0].generation, a.generation);
  EXPECT_EQ(occupied[1].slot, d.slot);
  EXPECT_EQ(occupied[1].generation, d.generation);
  (void)b;
}

// Many producer threads submit and wait while the consumer announces and marks in batches, as the
// supervisor does, and gives slots back at once: every wait ends durable, or ended when its slot
// was taken over before the waiter looked; none times out (run under TSan: the marks, the
// wake-ups and the slots' reuse race the waiters' checks).
TEST(QueueDurableMarks, ManyWaitersAllSeeTheirMarks) {
  ipc::SegmentConfig cfg = small_config();
  cfg.max_queue_size = 256;
  cfg.max_executions_per_user = 1000;
  TempSegment seg(cfg);
  ipc::Consumer c(seg.segment());
  c.set_durable_marks(true);
  constexpr int kThreads = 4;
  constexpr int kEach = 300;
  std::atomic<int> durable{0}, ended{0}, other{0};
  std::atomic<bool> done{false};
  std::vector<std::thread> producers;
  for (int t = 0; t < kThreads; ++t) {
    producers.emplace_back([&, t] {
      ipc::Producer p(seg.segment());
      for (int i = 0; i < kEach; ++i) {
        const auto r = submit(p, "t" + std::to_string(t) + "-" + std::to_string(i), "u");
        if (!r.accepted()) {
          --i;  // full: the consumer drains
          std::this_thread::yield();
          continue;
        }
        switch (p.wait_durable(r, 30s)) {
          case DurableOutcome::kDurable:
            durable.fetch_add(1);
            break;
          case DurableOutcome::kEnded:
            ended.fetch_add(1);
            break;
          default:
            other.fetch_add(1);
        }
      }
    });
  }
  std::thread consumer([&] {
    while (!done) {
      const auto refs = announce_all(c);
      for (const auto& ref : refs) c.mark_durable(ref.slot, ref.generation);
      // Taken before they were announced: journaled (and marked) as they are taken, as the
      // supervisor does. An entry left unmarked would be found ended only at its waiter's next
      // bounded sleep (100 ms), since giving a slot back wakes nobody.
      std::vector<ipc::ActiveRef> taken;
      ipc::ActiveRef ref;
      while (!take(c, &ref).empty()) {
        c.mark_durable(ref.slot, ref.generation);
        taken.push_back(ref);
      }
      if (!refs.empty() || !taken.empty()) c.wake_durable_waiters();
      for (const auto& t : taken) c.release(t);
      // Polls as the supervisor's loop would (a spinning consumer starves the producers).
      if (refs.empty() && taken.empty()) std::this_thread::sleep_for(50us);
    }
  });
  for (auto& t : producers) t.join();
  done = true;
  consumer.join();
  EXPECT_EQ(durable.load() + ended.load(), kThreads * kEach);
  EXPECT_GT(durable.load(), 0);
  EXPECT_EQ(other.load(), 0) << "waits timed out or found marks switched off";
}

}  // namespace
}  // namespace shmsched::test
