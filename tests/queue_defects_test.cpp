// Defects found in review of the queue, each reproduced by driving a process into the state the
// review described (killed or frozen at a precise point), then checking that nothing wedges and
// nothing is lost. Each test failed on the code before its fix (issue 7).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <thread>

#include "process_support.h"
#include "queue_internals.h"
#include "queue_test_support.h"
#include "shmsched/core/stable_hash.h"
#include "slot_text.h"

namespace shmsched::test {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// Runs `body` in a child process and waits at most `limit` for it: a wedged operation shows up
// as a timeout instead of a hung test. Returns the child's exit code, or -1 on a timeout.
int run_bounded(const std::function<void()>& body, std::chrono::milliseconds limit) {
  const pid_t pid = spawn(body);
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(2ms);
  }
  kill_and_reap(pid);
  return -1;
}

// Exposes a handle's participant index to tests.
struct IndexedProducer : ipc::Producer {
  using ipc::Producer::Producer;
  std::uint32_t index() const { return self_; }
};

// Item 1: a maintainer SIGKILLed mid-rebuild is reaped, a new producer registers in the same
// participant entry, and then every operation waited for that "live" maintainer forever.
TEST(QueueDefects, KilledMaintainerWhoseEntryIsReusedDoesNotWedgeTheQueue) {
  auto cfg = small_config();
  cfg.max_queue_size = 300000;  // a rebuild long enough to be killed inside
  cfg.max_executions_per_user = 300000;
  cfg.max_participants = 2;
  TempSegment seg(cfg, "dead-maintainer");
  const auto& v = ipc::detail::view_of(*seg.segment());
  {
    // Touch many slots so that the rebuild has work to do.
    CancellingProducer p(seg.segment());
    for (int i = 0; i < 20000; ++i) ASSERT_TRUE(submit(p, "w" + std::to_string(i), "u").accepted());
  }
  const std::string name = seg.name();
  bool killed_inside = false;
  for (int round = 0; round < 50 && !killed_inside; ++round) {
    const pid_t maintainer = spawn([&] {
      CancellingProducer p(ipc::Segment::attach(name));
      for (;;) p.run_maintenance();
    });
    const auto deadline = Clock::now() + 5s;
    while (v.hdr->maintenance.load() == 0 && Clock::now() < deadline) {
    }
    ::kill(maintainer, SIGKILL);
    ::waitpid(maintainer, nullptr, 0);
    killed_inside = v.hdr->maintenance.load() != 0;
  }
  ASSERT_TRUE(killed_inside) << "could not kill a maintainer inside its rebuild";

  // A live producer holds the other entry; a newcomer must reap the dead maintainer's entry to
  // register, and then submit.
  ipc::Producer filler(seg.segment());
  EXPECT_EQ(run_bounded(
                [&] {
                  ipc::Producer newcomer(ipc::Segment::attach(name));
                  const auto r = submit(newcomer, "after", "u");
                  ::_exit(r.accepted() ? 0 : 3);
                },
                10s),
            0)
      << "a submit after the maintainer's death did not complete";
  // A supervisor starting now must be able to attach as the consumer.
  EXPECT_EQ(run_bounded(
                [&] {
                  ipc::Consumer c(ipc::Segment::attach(name));
                  ::_exit(c.status("after") ? 0 : 4);
                },
                10s),
            0)
      << "a consumer could not attach after the maintainer's death";
}

// Item 2: a producer dies between its dedup insert and its ring push. cancel() used to read the
// slot's owner (stored as index + 1) as an index, and spun on the liveness of the neighbour.
TEST(QueueDefects, CancelOfAnEntryWhoseProducerDiedBeforeItsRingPushReturns) {
  TempSegment seg(small_config(), "cancel-owner");
  const std::string name = seg.name();
  // The dying producer takes entry 0; two live producers take entries 1 and 2.
  Pipe ready;
  const pid_t dying = spawn([&] {
    auto s = ipc::Segment::attach(name);
    IndexedProducer p(s);
    const auto& v = ipc::detail::view_of(*s);
    using namespace ipc::detail;
    // What submit() does up to its dedup insert, then death (no destructor, no ring push).
    const std::string id = "half-done";
    const std::uint64_t h = stable_hash(id);
    const auto index = take_slot(v);
    Slot& slot = v.slot(*index);
    const std::uint32_t gen = ctrl_gen(slot.ctrl.load()) + 1;
    slot.ctrl.store(ctrl_make(gen, p.index() + 1, SlotState::kPending));
    slot.id_hash.store(h);
    std::atomic_ref<std::uint8_t>(slot.id_len).store(static_cast<std::uint8_t>(id.size()));
    store_text(slot.id_words, id);
    DedupIndex{&v}.insert(h, id, *index);
    send(ready.write_fd(), Report::make('P', id));
    ::_exit(0);
  });
  ASSERT_EQ(wait_exit_code(dying), 0);
  ipc::Producer neighbour1(seg.segment());
  ipc::Producer neighbour2(seg.segment());
  EXPECT_EQ(run_bounded(
                [&] {
                  CancellingProducer p(ipc::Segment::attach(name));
                  const auto outcome = p.cancel("half-done");
                  ::_exit(outcome == ipc::CancelOutcome::kNotFound ? 0 : 5);
                },
                10s),
            0)
      << "cancel of an entry that never reached a ring did not return not_found";
  // Once the dead producer is reaped and its leftovers rebuilt, the id is free again.
  ipc::Consumer consumer(seg.segment());
  consumer.reap_dead();
  CancellingProducer p(seg.segment());
  EXPECT_TRUE(submit(p, "half-done", "u").accepted());
}

}  // namespace
}  // namespace shmsched::test
