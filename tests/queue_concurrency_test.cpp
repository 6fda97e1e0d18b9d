// Producers and a consumer on threads of one process: the same algorithms as across processes,
// in a form ThreadSanitizer can check (this file is also built with -fsanitize=thread).
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_set>

#include "queue_test_support.h"

namespace shmsched::test {
namespace {

ipc::SegmentConfig concurrency_config() {
  auto cfg = small_config();
  cfg.max_queue_size = 512;
  cfg.max_users = 64;
  cfg.max_active = 8;
  cfg.max_participants = 16;
  cfg.max_executions_per_user = 10000;
  return cfg;
}

TEST(QueueConcurrency, ManyProducersOneConsumerEveryAcceptedEntryExactlyOnce) {
  TempSegment seg(concurrency_config());
  constexpr int kThreads = 3;
  constexpr int kPerThread = 20000;
  std::atomic<int> producers_done{0};
  std::mutex mu;
  std::unordered_set<std::string> accepted;
  std::unordered_set<std::string> cancelled;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      CancellingProducer p(seg.segment());
      std::vector<std::string> mine;
      std::vector<std::string> gone;
      for (int i = 0; i < kPerThread;) {
        const std::string id = "t" + std::to_string(t) + "-" + std::to_string(i);
        const auto r = submit(p, id, "u" + std::to_string(i % 7), static_cast<Priority>(i % 5));
        if (r.admission == Admission::kQueueFull) {
          std::this_thread::yield();
          continue;
        }
        ASSERT_TRUE(r.accepted()) << r.message;
        mine.push_back(id);
        if (i % 11 == 3 && p.cancel(id) == ipc::CancelOutcome::kCancelled) gone.push_back(id);
        ++i;
      }
      std::lock_guard lock(mu);
      accepted.insert(mine.begin(), mine.end());
      cancelled.insert(gone.begin(), gone.end());
      ++producers_done;
    });
  }
  std::vector<std::string> dequeued;
  {
    ipc::Consumer c(seg.segment());
    while (producers_done.load() < kThreads || c.has_work()) {
      const std::string id = take_and_release(c);
      if (id.empty()) {
        c.wait_for_work(std::chrono::milliseconds(1));
      } else {
        dequeued.push_back(id);
      }
    }
    while (true) {
      const std::string id = take_and_release(c);
      if (id.empty()) break;
      dequeued.push_back(id);
    }
    for (auto& th : threads) th.join();
    const auto st = c.stats();
    EXPECT_EQ(st.queued, 0u);
    EXPECT_EQ(st.active, 0u);
    for (int u = 0; u < 7; ++u) EXPECT_EQ(c.user_count("u" + std::to_string(u)), 0u);
  }
  std::unordered_set<std::string> seen;
  for (const auto& id : dequeued) {
    EXPECT_TRUE(seen.insert(id).second) << id << " dequeued twice";
    EXPECT_EQ(cancelled.count(id), 0u) << id << " was cancelled";
  }
  EXPECT_EQ(seen.size() + cancelled.size(), accepted.size());
}

// Cancel, status and list read slots that producers may be filling or reusing at that moment:
// each must return a whole record or none (TSan: every such read is an atomic access).
TEST(QueueConcurrency, ReadersOfSlotsBeingReusedSeeWholeRecordsOrNone) {
  auto cfg = concurrency_config();
  cfg.max_queue_size = 16;  // few slots, so that every slot is reused again and again
  TempSegment seg(cfg);
  constexpr int kProducers = 2;
  constexpr int kPerProducer = 6000;
  // Everything in a record follows from its id, so a record mixed from two generations shows.
  auto user_of = [](const std::string& id) { return "user-of-" + id.substr(0, id.find('-')); };
  auto payload_of = [](const std::string& id) { return "payload:" + id + ":" + id; };
  std::atomic<int> producers_done{0};
  std::atomic<long> records_read{0};
  std::atomic<std::uint32_t> latest[kProducers] = {};
  std::vector<std::thread> threads;
  for (int t = 0; t < kProducers; ++t) {
    threads.emplace_back([&, t] {
      ipc::Producer p(seg.segment());
      for (int i = 0; i < kPerProducer;) {
        const std::string id = "p" + std::to_string(t) + "-" + std::to_string(i);
        Req req(id, user_of(id), static_cast<Priority>(i % 5), payload_of(id));
        const auto r = p.submit(req.get());
        if (r.admission == Admission::kQueueFull) {
          std::this_thread::yield();
          continue;
        }
        ASSERT_TRUE(r.accepted()) << r.message;
        latest[t].store(static_cast<std::uint32_t>(i), std::memory_order_relaxed);
        ++i;
      }
      ++producers_done;
    });
  }
  auto check = [&](const ipc::ExecutionRecord& rec) {
    const std::string payload(reinterpret_cast<const char*>(rec.payload.data()),
                              rec.payload.size());
    EXPECT_EQ(rec.user_id, user_of(rec.execution_id));
    EXPECT_EQ(payload, payload_of(rec.execution_id));
    ++records_read;
  };
  threads.emplace_back([&] {
    CancellingProducer reader(seg.segment());
    for (std::uint32_t round = 0; producers_done.load() < kProducers; ++round) {
      for (const auto& rec : reader.list(std::nullopt, 64)) check(rec);
      const int t = static_cast<int>(round % kProducers);
      const std::string id =
          "p" + std::to_string(t) + "-" + std::to_string(latest[t].load(std::memory_order_relaxed));
      if (const auto rec = reader.status(id)) check(*rec);
      if (round % 3 == 0) reader.cancel(id);
    }
  });
  {
    ipc::Consumer c(seg.segment());
    while (producers_done.load() < kProducers || c.has_work()) {
      if (take_and_release(c).empty()) c.wait_for_work(std::chrono::milliseconds(1));
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(c.stats().queued, 0u);
  }
  EXPECT_GT(records_read.load(), 0);
}

// Claimants on threads race for each taken execution's claim word while the consumer opens
// claims, moves to a new attempt and releases: exactly one winner per attempt, and every loser
// names it.
TEST(QueueConcurrency, ClaimsOfOneAttemptHaveExactlyOneWinner) {
  TempSegment seg(concurrency_config());
  constexpr int kClaimants = 3;
  constexpr int kRounds = 1000;
  ipc::Consumer c(seg.segment());
  CancellingProducer submitter(seg.segment());
  std::atomic<int> round_ready{-1};
  std::atomic<int> answered{0};
  std::array<ipc::ClaimResult, kClaimants> results{};
  std::string current;
  std::mutex mu;
  std::vector<std::thread> threads;
  std::atomic<bool> stop{false};
  for (int t = 0; t < kClaimants; ++t) {
    threads.emplace_back([&, t] {
      ipc::Producer p(seg.segment());
      int seen = -1;
      while (!stop.load()) {
        const int r = round_ready.load();
        if (r == seen) {
          std::this_thread::yield();
          continue;
        }
        seen = r;
        std::string id;
        {
          std::lock_guard lock(mu);
          id = current;
        }
        results[t] = p.claim(id, 1 + r % 3, static_cast<std::uint32_t>(100 + t));
        ++answered;
      }
    });
  }
  for (int r = 0; r < kRounds; ++r) {
    const std::string id = "claim-" + std::to_string(r);
    ASSERT_TRUE(submit(submitter, id, "u").accepted());
    ipc::ActiveRef ref;
    ASSERT_EQ(take(c, &ref), id);
    c.open_claims(ref, 1 + r % 3);
    {
      std::lock_guard lock(mu);
      current = id;
    }
    answered = 0;
    round_ready = r;
    // The supervisor claims for a worker on the ingress at the same moment.
    const auto mine = c.claim(ref, 1 + r % 3, 7);
    while (answered.load() < kClaimants) std::this_thread::yield();
    int winners = mine.outcome == ipc::ClaimOutcome::kWon ? 1 : 0;
    std::uint32_t owner = mine.outcome == ipc::ClaimOutcome::kWon ? 7 : 0;
    for (const auto& res : results) {
      if (res.outcome == ipc::ClaimOutcome::kWon) {
        ++winners;
        owner = res.owner;
      }
    }
    ASSERT_EQ(winners, 1) << "round " << r;
    for (const auto& res : results) {
      ASSERT_TRUE(res.outcome == ipc::ClaimOutcome::kWon || res.outcome == ipc::ClaimOutcome::kLost)
          << "round " << r << ": " << ipc::claim_outcome_name(res.outcome);
      ASSERT_EQ(res.owner, owner) << "round " << r;
    }
    // A new attempt has no owner; the old attempt's claims are refused.
    c.open_claims(ref, 2 + r % 3);
    ASSERT_EQ(c.claim(ref, 2 + r % 3, 0).owner, 0u);
    ASSERT_EQ(submitter.claim(id, 1 + r % 3, 9).outcome, ipc::ClaimOutcome::kNotCurrent);
    ASSERT_TRUE(c.release(ref));
    // Released: nothing to claim.
    ASSERT_EQ(submitter.claim(id, 2 + r % 3, 9).outcome, ipc::ClaimOutcome::kNotFound);
  }
  stop = true;
  for (auto& th : threads) th.join();
}

TEST(QueueConcurrency, ConcurrentSubmitsOfOneIdAcceptAtMostOne) {
  TempSegment seg(concurrency_config());
  constexpr int kThreads = 4;
  for (int round = 0; round < 300; ++round) {
    const std::string id = "same-" + std::to_string(round);
    std::atomic<int> go{0};
    std::atomic<int> accepted{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&] {
        CancellingProducer p(seg.segment());
        ++go;
        while (go.load() < kThreads) std::this_thread::yield();
        if (submit(p, id, "u").accepted()) ++accepted;
      });
    }
    for (auto& th : threads) th.join();
    ASSERT_LE(accepted.load(), 1) << "round " << round;
    CancellingProducer p(seg.segment());
    if (accepted.load() == 1) {
      ASSERT_EQ(p.cancel(id), ipc::CancelOutcome::kCancelled);
    } else {
      // Both withdrew in the narrow race: the id is free, as a retry would find.
      ASSERT_TRUE(submit(p, id, "u").accepted());
      ASSERT_EQ(p.cancel(id), ipc::CancelOutcome::kCancelled);
    }
  }
}

TEST(QueueConcurrency, PerUserCapHoldsUnderContention) {
  auto cfg = concurrency_config();
  cfg.max_executions_per_user = 37;
  TempSegment seg(cfg);
  constexpr int kThreads = 4;
  std::atomic<int> accepted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      CancellingProducer p(seg.segment());
      for (int i = 0; i < 100; ++i) {
        const auto r = submit(p, "c" + std::to_string(t) + "-" + std::to_string(i), "alice");
        if (r.accepted())
          ++accepted;
        else
          EXPECT_EQ(r.admission, Admission::kUserLimit);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(accepted.load(), 37);
  CancellingProducer p(seg.segment());
  EXPECT_EQ(p.user_count("alice"), 37u);
}

TEST(QueueConcurrency, CancelRacesDequeueAndExactlyOneWins) {
  TempSegment seg(concurrency_config());
  CancellingProducer p(seg.segment());
  ipc::Consumer c(seg.segment());
  int cancelled = 0;
  int taken = 0;
  for (int round = 0; round < 2000; ++round) {
    const std::string id = "r" + std::to_string(round);
    ASSERT_TRUE(submit(p, id, "u").accepted());
    ipc::CancelOutcome outcome{};
    std::thread canceller([&] {
      CancellingProducer other(seg.segment());
      outcome = other.cancel(id);
    });
    const std::string got = take_and_release(c);
    canceller.join();
    if (outcome == ipc::CancelOutcome::kCancelled) {
      ++cancelled;
      ASSERT_EQ(got, "") << "a cancelled entry was dequeued";
    } else {
      ++taken;
      ASSERT_EQ(got, id);
    }
    ASSERT_EQ(p.user_count("u"), 0u);
    ASSERT_EQ(p.stats().queued, 0u);
  }
  EXPECT_EQ(cancelled + taken, 2000);
}

}  // namespace
}  // namespace shmsched::test
