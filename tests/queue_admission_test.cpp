// Single-process behaviour of the queue: ordering, admission, cancel, rank, sweep, records.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "queue_test_support.h"

namespace shmsched::test {
namespace {

using ipc::CancelOutcome;

TEST(QueueOrder, PriorityFirstThenFifoWithinALevel) {
  TempSegment seg;
  CancellingProducer p(seg.segment());
  ipc::Consumer c(seg.segment());
  ASSERT_TRUE(submit(p, "n1", "u", Priority::kNormal).accepted());
  ASSERT_TRUE(submit(p, "b1", "u", Priority::kBackground).accepted());
  ASSERT_TRUE(submit(p, "n2", "u", Priority::kNormal).accepted());
  ASSERT_TRUE(submit(p, "c1", "u", Priority::kCritical).accepted());
  ASSERT_TRUE(submit(p, "h1", "u", Priority::kHigh).accepted());
  ASSERT_TRUE(submit(p, "l1", "u", Priority::kLow).accepted());
  ASSERT_TRUE(submit(p, "c2", "u", Priority::kCritical).accepted());
  std::vector<std::string> order;
  for (std::string id; !(id = take_and_release(c)).empty();) order.push_back(id);
  EXPECT_EQ(order, (std::vector<std::string>{"c1", "c2", "h1", "n1", "n2", "l1", "b1"}));
}

TEST(QueueOrder, SubmitReportsTheTrueRank) {
  TempSegment seg;
  CancellingProducer p(seg.segment());
  EXPECT_EQ(submit(p, "a", "u", Priority::kNormal).queue_position, 0u);
  EXPECT_EQ(submit(p, "b", "u", Priority::kNormal).queue_position, 1u);
  EXPECT_EQ(submit(p, "c", "u", Priority::kCritical).queue_position, 0u);
  EXPECT_EQ(submit(p, "d", "u", Priority::kLow).queue_position, 3u);
  EXPECT_EQ(submit(p, "e", "u", Priority::kHigh).queue_position, 1u);
  // Ranks move as higher entries arrive: a is now behind c and e.
  EXPECT_EQ(p.queue_position("a"), 2u);
  EXPECT_EQ(p.queue_position("b"), 3u);
  EXPECT_EQ(p.queue_position("d"), 4u);
  // A cancel ahead of b moves b up by one; entries before it do not move.
  EXPECT_EQ(p.cancel("a"), CancelOutcome::kCancelled);
  EXPECT_EQ(p.queue_position("b"), 2u);
  EXPECT_EQ(p.queue_position("e"), 1u);
  EXPECT_EQ(p.queue_position("d"), 3u);
  EXPECT_FALSE(p.queue_position("a").has_value());
}

TEST(QueueAdmission, QueueFullAtCapacityAndBackAfterRelease) {
  auto cfg = small_config();
  cfg.max_queue_size = 3;
  TempSegment seg(cfg);
  CancellingProducer p(seg.segment());
  ipc::Consumer c(seg.segment());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(submit(p, "e" + std::to_string(i), "u").accepted());
  const auto full = submit(p, "e3", "u");
  EXPECT_EQ(full.admission, Admission::kQueueFull);
  EXPECT_NE(full.message.find("max_queue_size"), std::string::npos) << full.message;
  // Dequeued (active) entries no longer count against the queue's capacity.
  ipc::ActiveRef ref;
  ASSERT_EQ(take(c, &ref), "e0");
  EXPECT_TRUE(submit(p, "e3", "u").accepted());
  EXPECT_EQ(submit(p, "e4", "u").admission, Admission::kQueueFull);
  EXPECT_EQ(p.cancel("e1"), CancelOutcome::kCancelled);
  EXPECT_TRUE(submit(p, "e4", "u").accepted());
  EXPECT_EQ(p.stats().rejected_queue_full, 2u);
}

TEST(QueueAdmission, UserLimitCountsQueuedAndActive) {
  auto cfg = small_config();
  cfg.max_executions_per_user = 2;
  TempSegment seg(cfg);
  CancellingProducer p(seg.segment());
  ipc::Consumer c(seg.segment());
  ASSERT_TRUE(submit(p, "a1", "alice").accepted());
  ASSERT_TRUE(submit(p, "a2", "alice").accepted());
  EXPECT_EQ(submit(p, "a3", "alice").admission, Admission::kUserLimit);
  EXPECT_TRUE(submit(p, "b1", "bob").accepted());
  EXPECT_EQ(p.user_count("alice"), 2u);
  ipc::ActiveRef ref;
  ASSERT_EQ(take(c, &ref), "a1");
  // Still active: still counts.
  EXPECT_EQ(submit(p, "a3", "alice").admission, Admission::kUserLimit);
  ASSERT_TRUE(c.release(ref));
  EXPECT_EQ(p.user_count("alice"), 1u);
  EXPECT_TRUE(submit(p, "a3", "alice").accepted());
  // The owner may change the cap at run time.
  seg.segment()->set_max_executions_per_user(3);
  EXPECT_TRUE(submit(p, "a4", "alice").accepted());
  EXPECT_EQ(submit(p, "a5", "alice").admission, Admission::kUserLimit);
}

TEST(QueueAdmission, DuplicateWhileQueuedOrActiveOnly) {
  TempSegment seg;
  CancellingProducer p(seg.segment());
  ipc::Consumer c(seg.segment());
  ASSERT_TRUE(submit(p, "x", "u").accepted());
  EXPECT_EQ(submit(p, "x", "other").admission, Admission::kDuplicate);
  ipc::ActiveRef ref;
  ASSERT_EQ(take(c, &ref), "x");
  EXPECT_EQ(submit(p, "x", "u").admission, Admission::kDuplicate);
  ASSERT_TRUE(c.release(ref));
  EXPECT_TRUE(submit(p, "x", "u").accepted());
  EXPECT_EQ(p.cancel("x"), CancelOutcome::kCancelled);
  EXPECT_TRUE(submit(p, "x", "u").accepted());
}

TEST(QueueAdmission, PayloadTooLargeAndInvalidRequests) {
  TempSegment seg;  // max_payload_bytes = 256, max_extras_bytes = 256
  CancellingProducer p(seg.segment());
  Req big{"big", "u"};
  big.payload.assign(257, 'x');
  const auto r = p.submit(big.get());
  EXPECT_EQ(r.admission, Admission::kPayloadTooLarge);
  EXPECT_NE(r.message.find("max_payload_bytes"), std::string::npos);
  big.payload.assign(256, 'x');
  EXPECT_TRUE(p.submit(big.get()).accepted());
  Req meta{"meta", "u"};
  meta.metadata.push_back({"k", std::string(300, 'v')});
  EXPECT_EQ(p.submit(meta.get()).admission, Admission::kPayloadTooLarge);
  EXPECT_EQ(submit(p, "", "u").admission, Admission::kInvalid);
  EXPECT_EQ(submit(p, std::string(65, 'i'), "u").admission, Admission::kInvalid);
  EXPECT_TRUE(submit(p, std::string(64, 'i'), "u").accepted());
  EXPECT_EQ(submit(p, "no-user", "").admission, Admission::kInvalid);
  const auto st = p.stats();
  EXPECT_EQ(st.rejected_payload_too_large, 2u);
  EXPECT_EQ(st.rejected_invalid, 3u);
  EXPECT_EQ(st.enqueued, 2u);
}

TEST(QueueCancel, CancelledEntriesAreNeverDequeuedAndGiveCountsBack) {
  TempSegment seg;
  CancellingProducer p(seg.segment());
  ipc::Consumer c(seg.segment());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(submit(p, "e" + std::to_string(i), "u").accepted());
  EXPECT_EQ(p.cancel("e0"), CancelOutcome::kCancelled);
  EXPECT_EQ(p.cancel("e2"), CancelOutcome::kCancelled);
  EXPECT_EQ(p.cancel("e2"), CancelOutcome::kNotFound);
  EXPECT_EQ(p.cancel("nope"), CancelOutcome::kNotFound);
  EXPECT_EQ(p.user_count("u"), 3u);
  EXPECT_EQ(p.stats().queued, 3u);
  EXPECT_EQ(p.stats().depth[priority_index(Priority::kNormal)], 3u);
  ipc::ActiveRef ref;
  ASSERT_EQ(take(c, &ref), "e1");
  EXPECT_EQ(c.cancel("e1"), CancelOutcome::kActive);
  EXPECT_EQ(take_and_release(c), "e3");
  EXPECT_EQ(take_and_release(c), "e4");
  EXPECT_EQ(take_and_release(c), "");
  ASSERT_TRUE(c.release(ref));
  EXPECT_FALSE(c.release(ref)) << "a stale reference must be refused";
  EXPECT_EQ(p.user_count("u"), 0u);
  const auto st = p.stats();
  EXPECT_EQ(st.queued, 0u);
  EXPECT_EQ(st.active, 0u);
  EXPECT_EQ(st.cancelled, 2u);
}

TEST(QueueCancel, TombstonesBeyondTheHeadroomAreCompacted) {
  auto cfg = small_config();
  cfg.max_queue_size = 8;
  cfg.max_participants = 2;
  cfg.max_active = 1;
  TempSegment seg(cfg);  // slots: 8 + 1 + 2 + 64 headroom
  CancellingProducer p(seg.segment());
  // One live entry at the head keeps every later tombstone in the ring.
  ASSERT_TRUE(submit(p, "head", "u").accepted());
  for (int i = 0; i < 200; ++i) {
    const std::string id = "t" + std::to_string(i);
    ASSERT_TRUE(submit(p, id, "u").accepted()) << i;
    ASSERT_EQ(p.cancel(id), CancelOutcome::kCancelled);
  }
  EXPECT_GE(p.stats().maintenance_runs, 1u);
  EXPECT_EQ(p.queue_position("head"), 0u);
  ipc::Consumer c(seg.segment());
  EXPECT_EQ(take_and_release(c), "head");
  EXPECT_EQ(take_and_release(c), "");
}

TEST(QueueSweep, StaleEntriesAreReturnedAndTheirCountsGiven) {
  TempSegment seg;
  CancellingProducer p(seg.segment());
  ipc::Consumer c(seg.segment());
  const auto now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  const std::int64_t hour = 3600LL * 1'000'000'000;
  Req old1{"old1", "u", Priority::kHigh};
  old1.enqueued_at_ns = now - 2 * hour;
  Req old2{"old2", "u", Priority::kLow};
  old2.enqueued_at_ns = now - 2 * hour;
  ASSERT_TRUE(p.submit(old1.get()).accepted());
  ASSERT_TRUE(p.submit(old2.get()).accepted());
  ASSERT_TRUE(submit(p, "fresh", "u", Priority::kHigh).accepted());
  const auto expired = c.sweep_stale(std::chrono::seconds(3600), now);
  ASSERT_EQ(expired.size(), 2u);
  EXPECT_EQ(expired[0].execution_id, "old1");
  EXPECT_EQ(expired[1].execution_id, "old2");
  EXPECT_EQ(expired[1].priority, Priority::kLow);
  EXPECT_EQ(p.user_count("u"), 1u);
  EXPECT_EQ(p.stats().expired, 2u);
  EXPECT_EQ(take_and_release(c), "fresh");
  EXPECT_EQ(take_and_release(c), "");
}

TEST(QueueRecords, StatusAndViewCarryEveryField) {
  TempSegment seg;
  CancellingProducer p(seg.segment());
  ipc::Consumer c(seg.segment());
  Req r{"exec-1", "alice", Priority::kHigh, std::string("\x00\x01payload", 9)};
  r.capabilities = {"gpu", "python"};
  r.metadata = {{"lang", "py"}, {"ver", "3.11"}};
  ipc::SubmitRequest req = r.get();
  req.timeout_seconds = 30;
  ASSERT_TRUE(p.submit(req).accepted());
  auto st = p.status("exec-1");
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->user_id, "alice");
  EXPECT_EQ(st->priority, Priority::kHigh);
  EXPECT_EQ(st->state, ipc::ExecutionState::kQueued);
  EXPECT_EQ(st->queue_position, 0u);
  EXPECT_EQ(st->timeout_seconds, 30u);
  EXPECT_EQ(st->attempt, 1u);
  EXPECT_EQ(st->required_capabilities, r.capabilities);
  EXPECT_EQ(st->metadata, r.metadata);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(st->payload.data()), st->payload.size()),
            r.payload);
  ipc::ActiveRef ref;
  ASSERT_EQ(take(c, &ref), "exec-1");
  auto rec = c.record(ref);
  ASSERT_TRUE(rec.has_value());
  EXPECT_EQ(rec->required_capabilities, r.capabilities);
  EXPECT_EQ(p.status("exec-1")->state, ipc::ExecutionState::kActive);
  EXPECT_FALSE(p.status("exec-1")->queue_position.has_value());
  ASSERT_EQ(c.active().size(), 1u);
  c.release(ref);
  EXPECT_FALSE(p.status("exec-1").has_value());
}

TEST(QueueWake, ConsumerSleepsUntilASubmitRingsIt) {
  TempSegment seg;
  ipc::Consumer c(seg.segment());
  EXPECT_FALSE(c.wait_for_work(std::chrono::milliseconds(1)));
  CancellingProducer p(seg.segment());
  std::atomic<bool> woke{false};
  std::chrono::steady_clock::duration slept{};
  std::thread sleeper([&] {
    const auto t0 = std::chrono::steady_clock::now();
    // Without a wake-up this would sleep the full minute.
    woke = c.wait_for_work(std::chrono::seconds(60));
    slept = std::chrono::steady_clock::now() - t0;
  });
  // Submit only once the consumer has announced that it sleeps, so the futex path is taken.
  while (!p.stats().consumer_sleeping) std::this_thread::yield();
  ASSERT_TRUE(submit(p, "wake", "u").accepted());
  sleeper.join();
  EXPECT_TRUE(woke.load());
  EXPECT_LT(slept, std::chrono::seconds(30)) << "the submit did not wake the consumer";
}

TEST(QueueUsers, FullUserTableIsCompactedToLiveUsers) {
  auto cfg = small_config();
  cfg.max_users = 4;
  TempSegment seg(cfg);
  CancellingProducer p(seg.segment());
  ipc::Consumer c(seg.segment());
  for (int round = 0; round < 5; ++round) {
    for (int u = 0; u < 4; ++u) {
      const std::string id = "r" + std::to_string(round) + "u" + std::to_string(u);
      ASSERT_TRUE(submit(p, id, "user-" + std::to_string(round * 4 + u)).accepted()) << id;
    }
    // Four distinct users are live: a fifth is refused until one finishes.
    EXPECT_EQ(submit(p, "extra" + std::to_string(round), "someone-else").admission,
              Admission::kUserLimit);
    for (int u = 0; u < 4; ++u) ASSERT_FALSE(take_and_release(c).empty());
  }
  EXPECT_GE(p.stats().maintenance_runs, 1u);
}

TEST(QueueScale, AMillionEntriesFillDrainAndRefuseOneMore) {
  ipc::SegmentConfig cfg;
  cfg.max_queue_size = 1'000'000;
  cfg.max_payload_bytes = 32;
  cfg.max_extras_bytes = 0;
  cfg.max_users = 1024;
  cfg.max_active = 16;
  cfg.max_executions_per_user = 1'000'000;
  TempSegment seg(cfg, "million");
  CancellingProducer p(seg.segment());
  for (int i = 0; i < 1'000'000; ++i) {
    const auto r = submit(p, "m" + std::to_string(i), "u" + std::to_string(i % 100),
                          static_cast<Priority>(i % 5));
    ASSERT_TRUE(r.accepted()) << i << " " << r.message;
  }
  EXPECT_EQ(submit(p, "one-more", "u").admission, Admission::kQueueFull);
  EXPECT_EQ(p.queue_position("m0"), 0u);        // first critical
  EXPECT_EQ(p.queue_position("m5"), 1u);        // second critical
  EXPECT_EQ(p.queue_position("m4"), 800'000u);  // first background, behind 4 x 200,000
  ipc::Consumer c(seg.segment());
  std::uint64_t drained = 0;
  Priority last = Priority::kCritical;
  for (;;) {
    auto ref = c.dequeue();
    if (!ref) break;
    const auto v = c.view(*ref);
    ASSERT_GE(priority_index(v->priority), priority_index(last));
    last = v->priority;
    c.release(*ref);
    ++drained;
  }
  EXPECT_EQ(drained, 1'000'000u);
  EXPECT_EQ(p.stats().queued, 0u);
}

}  // namespace
}  // namespace shmsched::test
