// Producers SIGKILLed at random moments, again and again, while a consumer drains.
//
// After each storm: everything a producer saw accepted is dequeued exactly once, nothing is
// dequeued twice, the queue never wedges, and what dead producers held (half-written slots, user
// counts, dedup entries, participant entries) comes back, so capacity and counts are exact.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <unordered_set>

#include "process_support.h"
#include "queue_test_support.h"

#ifndef SHMSCHED_KILL_STORM_KILLS
#define SHMSCHED_KILL_STORM_KILLS 200
#endif

namespace shmsched::test {
namespace {

constexpr int kProducers = 3;
constexpr int kUsers = 8;

int kills_wanted() {
  if (const char* env = std::getenv("SHMSCHED_KILLS")) return std::atoi(env);
  return SHMSCHED_KILL_STORM_KILLS;
}

// A producer that submits as fast as it can and reports every accepted id.
void producer_body(const std::string& segment, int generation, int report_fd) {
  auto seg = ipc::Segment::attach(segment);
  CancellingProducer p(seg);
  std::mt19937 rng(static_cast<unsigned>(generation * 7919 + 1));
  for (std::uint64_t seq = 0;; ++seq) {
    const std::string id = "k" + std::to_string(generation) + "-" + std::to_string(seq);
    const std::string user = "u" + std::to_string(rng() % kUsers);
    const auto prio = static_cast<Priority>(rng() % kPriorityLevels);
    Req r(id, user, prio, std::string(rng() % 200, 'p'));
    const auto res = p.submit(r.get());
    if (res.accepted()) send(report_fd, Report::make('A', id, user));
    // Now and then cancel what we just queued: cancels are killed mid-way too.
    // ('I' first: a producer killed between its cancel and its report leaves an id that may
    // rightly be either cancelled or dequeued.)
    if (res.accepted() && seq % 16 == 5) {
      send(report_fd, Report::make('I', id, user));
      if (p.cancel(id) == ipc::CancelOutcome::kCancelled)
        send(report_fd, Report::make('C', id, user));
    }
  }
}

// What happened to each id "k<generation>-<seq>", as flags: ids are dense per generation, so a
// 10,000-kill storm needs a few megabytes, not a set of millions of strings.
enum Flag : std::uint8_t { kAccepted = 1, kCancelTried = 2, kCancelled = 4, kDequeued = 8 };

struct Ledger {
  std::vector<std::vector<std::uint8_t>> flags;  // [generation][seq]
  std::uint64_t malformed = 0;

  std::uint8_t* at(const std::string& id) {
    unsigned gen = 0;
    unsigned long long seq = 0;
    if (std::sscanf(id.c_str(), "k%u-%llu", &gen, &seq) != 2 || gen > 1'000'000 ||
        seq > 100'000'000) {
      ++malformed;
      return nullptr;
    }
    if (flags.size() <= gen) flags.resize(gen + 1);
    auto& v = flags[gen];
    if (v.size() <= seq) v.resize(seq + 1, 0);
    return &v[seq];
  }
};

struct Storm {
  TempSegment seg;
  Pipe reports;
  std::vector<Report> scratch;
  Ledger ledger;
  std::uint64_t accepted = 0;
  std::uint64_t dequeued = 0;
  std::vector<pid_t> children;
  int generation = 0;
  std::uint64_t duplicates = 0;

  explicit Storm(const ipc::SegmentConfig& cfg) : seg(cfg, "storm") {}
  ~Storm() {
    for (pid_t pid : children) kill_and_reap(pid);  // also when an assertion ends the test early
  }

  void start_producer(std::size_t at) {
    const int gen = generation++;
    const std::string name = seg.name();
    const int fd = reports.write_fd();
    const pid_t pid = spawn([=] { producer_body(name, gen, fd); });
    if (at < children.size()) {
      children[at] = pid;
    } else {
      children.push_back(pid);
    }
  }

  // Dequeues and releases up to `max` entries; returns how many.
  int consume(ipc::Consumer& c, int max) {
    int n = 0;
    for (; n < max; ++n) {
      auto ref = c.dequeue();
      if (!ref) break;
      const auto view = c.view(*ref);
      if (std::uint8_t* f = ledger.at(std::string(view->execution_id))) {
        if (*f & kDequeued) ++duplicates;
        *f |= kDequeued;
      }
      ++dequeued;
      c.release(*ref);
    }
    return n;
  }

  void read_reports() {
    scratch.clear();
    reports.drain(scratch);
    for (const auto& r : scratch) {
      std::uint8_t* f = ledger.at(r.id_str());
      if (!f) continue;
      if (r.kind == 'A') {
        *f |= kAccepted;
        ++accepted;
      } else if (r.kind == 'I') {
        *f |= kCancelTried;
      } else if (r.kind == 'C') {
        *f |= kCancelled;
      }
    }
  }
};

ipc::SegmentConfig storm_config() {
  ipc::SegmentConfig cfg;
  cfg.max_queue_size = 2048;
  cfg.max_payload_bytes = 256;
  cfg.max_extras_bytes = 64;
  cfg.max_users = 64;
  cfg.max_active = 16;
  cfg.max_participants = 16;
  cfg.max_executions_per_user = 400;  // below max_queue_size / kUsers * 2: user_limit happens too
  cfg.mode = 0600;
  return cfg;
}

TEST(QueueKillStorm, SigkilledProducersLoseNothingAndLeakNothing) {
  const int wanted = kills_wanted();
  Storm storm(storm_config());
  auto& seg = storm.seg;
  ipc::Consumer consumer(seg.segment());
  for (int i = 0; i < kProducers; ++i) storm.start_producer(static_cast<std::size_t>(i));

  std::mt19937 rng(12345);
  using clock = std::chrono::steady_clock;
  std::chrono::nanoseconds worst_reclaim{0};
  int kills = 0;
  auto next_kill = clock::now() + std::chrono::microseconds(rng() % 3000);
  while (kills < wanted) {
    storm.consume(consumer, 256);
    storm.read_reports();
    if (clock::now() < next_kill) continue;
    const std::size_t victim = rng() % storm.children.size();
    kill_and_reap(storm.children[victim]);
    // Reclaim what it held, as the supervisor's periodic reaper would, and time it.
    const auto t0 = clock::now();
    // (0 when it died before it had attached.)
    ASSERT_LE(consumer.reap_dead(), 1u);
    worst_reclaim = std::max(worst_reclaim, clock::now() - t0);
    // The consumer and at most the other producers remain registered.
    ASSERT_LE(consumer.stats().participants, static_cast<std::uint64_t>(kProducers))
        << "the dead producer's entry was not reclaimed";
    ++kills;
    if (kills % 1000 == 0) std::printf("[ storm    ] %d kills\n", kills);
    storm.start_producer(victim);
    // The queue must not wedge: some progress (ours or theirs) must follow every kill.
    const auto enq_before = consumer.stats().enqueued + consumer.stats().rejected_queue_full +
                            consumer.stats().rejected_user_limit;
    const auto deadline = clock::now() + std::chrono::seconds(20);
    for (;;) {
      storm.consume(consumer, 256);
      storm.read_reports();  // a full pipe would block the producers
      const auto st = consumer.stats();
      if (st.enqueued + st.rejected_queue_full + st.rejected_user_limit > enq_before) break;
      ASSERT_LT(clock::now(), deadline) << "no producer made progress after kill " << kills;
      std::this_thread::yield();
    }
    next_kill = clock::now() + std::chrono::microseconds(rng() % 3000);
  }
  for (pid_t pid : storm.children) kill_and_reap(pid);
  storm.children.clear();
  consumer.reap_dead();
  storm.reports.close_write();
  while (storm.consume(consumer, 1 << 20) > 0) {
  }
  storm.read_reports();

  // Everything a producer saw accepted (and did not itself cancel) was dequeued exactly once.
  std::uint64_t lost = 0;
  std::uint64_t resurrected = 0;
  std::uint64_t invented = 0;
  for (std::size_t gen = 0; gen < storm.ledger.flags.size(); ++gen) {
    const auto& v = storm.ledger.flags[gen];
    for (std::size_t seq = 0; seq < v.size(); ++seq) {
      const std::uint8_t f = v[seq];
      if ((f & kAccepted) && !(f & kCancelTried) && !(f & kDequeued) && ++lost <= 5) {
        const std::string id = "k" + std::to_string(gen) + "-" + std::to_string(seq);
        ADD_FAILURE() << "lost " << id
                      << (consumer.status(id) ? " (still in the queue)" : " (gone)");
      }
      if ((f & kCancelled) && (f & kDequeued)) ++resurrected;
      // Dequeued without a report is fine only if its producer was killed before reporting.
      if ((f & kDequeued) && !(f & kAccepted)) ++invented;
    }
  }
  EXPECT_EQ(lost, 0u) << "accepted executions were lost";
  EXPECT_EQ(storm.duplicates, 0u) << "executions were dequeued twice";
  EXPECT_EQ(resurrected, 0u) << "cancelled executions were dequeued";
  EXPECT_EQ(storm.ledger.malformed, 0u) << "dequeued ids that no producer submitted";
  EXPECT_LE(invented, static_cast<std::uint64_t>(kills) + kProducers)
      << "more unreported entries than kills";
  EXPECT_GT(storm.accepted, static_cast<std::uint64_t>(wanted)) << "the storm did too little";

  // Counts and capacity are back exactly.
  const auto st = consumer.stats();
  EXPECT_EQ(st.queued, 0u);
  EXPECT_EQ(st.active, 0u);
  for (std::uint64_t d : st.depth) EXPECT_EQ(d, 0u);
  for (int u = 0; u < kUsers; ++u) EXPECT_EQ(consumer.user_count("u" + std::to_string(u)), 0u);
  EXPECT_GE(st.maintenance_runs, 2u) << "no kill landed inside an operation";
  CancellingProducer p(seg.segment());
  const auto cfg = storm_config();
  for (std::uint64_t i = 0; i < cfg.max_queue_size; ++i) {
    const auto r = submit(p, "after-" + std::to_string(i),
                          "v" + std::to_string(i % 8));  // 8 users x 256 < per-user cap
    ASSERT_TRUE(r.accepted()) << i << ": " << r.message;
  }
  EXPECT_EQ(submit(p, "one-too-many", "w").admission, Admission::kQueueFull);
  std::printf(
      "[ storm    ] %d kills, %llu accepted, %llu dequeued, %llu maintenance runs, "
      "%llu slots reclaimed, worst reap %.2f ms\n",
      kills, static_cast<unsigned long long>(storm.accepted),
      static_cast<unsigned long long>(storm.dequeued),
      static_cast<unsigned long long>(st.maintenance_runs),
      static_cast<unsigned long long>(st.reclaimed_slots),
      std::chrono::duration<double, std::milli>(worst_reclaim).count());
}

// The consumer itself dies at random moments; each new consumer carries on with all state.
TEST(QueueKillStorm, SigkilledConsumerIsReplacedWithAllState) {
  auto cfg = storm_config();
  cfg.max_queue_size = 32768;
  cfg.max_executions_per_user = 32768;
  TempSegment seg(cfg, "consumer-storm");
  constexpr int kRounds = 30;
  constexpr std::size_t kSlack = 200;  // entries a consumer may take past its target
  constexpr int kTotal = kRounds * (60 + kSlack + 1) + 1000;
  std::set<std::string> submitted;
  {
    CancellingProducer p(seg.segment());
    for (int i = 0; i < kTotal; ++i) {
      const std::string id = "x" + std::to_string(i);
      ASSERT_TRUE(
          submit(p, id, "u" + std::to_string(i % 5), static_cast<Priority>(i % 5)).accepted());
      submitted.insert(id);
    }
  }
  Pipe reports;
  std::vector<Report> received;
  std::mt19937 rng(99);
  for (int round = 0; round < kRounds; ++round) {
    const std::string name = seg.name();
    const int fd = reports.write_fd();
    // Each consumer takes at most `quota` entries and is killed on the way, wherever it is; the
    // run is sized so that the rounds can never drain the queue, however fast the machine.
    const std::size_t target = received.size() + 1 + rng() % 60;
    const std::size_t quota = target - received.size() + kSlack;
    const pid_t pid = spawn([=] {
      auto s = ipc::Segment::attach(name);
      ipc::Consumer c(s);
      for (std::size_t taken = 0; taken < quota;) {
        auto ref = c.dequeue();
        if (!ref) continue;
        ++taken;
        send(fd, Report::make('D', std::string(c.view(*ref)->execution_id)));
        c.release(*ref);
      }
      for (;;) ::pause();
    });
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (received.size() < target && std::chrono::steady_clock::now() < deadline) {
      reports.drain(received);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 50));
    kill_and_reap(pid);
  }
  reports.close_write();
  reports.drain(received);

  // The final consumer takes over: the dead consumers' active executions are still there.
  ipc::Consumer last(seg.segment());
  std::multiset<std::string> delivered;
  for (const auto& r : received) delivered.insert(r.id_str());
  const auto active = last.active();
  EXPECT_LE(active.size(), static_cast<std::size_t>(kRounds));
  std::size_t redelivered = 0;
  for (const auto& ref : active) {
    const std::string id(last.view(ref)->execution_id);
    redelivered += delivered.count(id);
    delivered.insert(id);
    ASSERT_TRUE(last.release(ref));
  }
  // An execution can only be seen twice if its consumer died between reporting and releasing.
  EXPECT_LE(redelivered, static_cast<std::size_t>(kRounds));
  while (true) {
    auto ref = last.dequeue();
    if (!ref) break;
    delivered.insert(std::string(last.view(*ref)->execution_id));
    last.release(*ref);
  }
  std::set<std::string> unique(delivered.begin(), delivered.end());
  EXPECT_EQ(unique, submitted) << "an accepted execution was lost or invented";
  EXPECT_EQ(delivered.size() - unique.size(), redelivered);
  const auto st = last.stats();
  EXPECT_EQ(st.queued, 0u);
  EXPECT_EQ(st.active, 0u);
  for (int u = 0; u < 5; ++u) EXPECT_EQ(last.user_count("u" + std::to_string(u)), 0u);
}

}  // namespace
}  // namespace shmsched::test
