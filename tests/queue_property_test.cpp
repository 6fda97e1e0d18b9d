// Random operations from several processes against a simple model.
//
// Child processes submit (fresh ids, re-submissions, oversized and invalid requests), cancel any
// id and query status; the parent, as consumer, dequeues and releases at random meanwhile. Every
// outcome is reported. Once all are done, the queue must agree with the model built from the
// reports: every count, every state, every rank, and the order in which the rest drains.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>

#include "process_support.h"
#include "queue_test_support.h"

namespace shmsched::test {
namespace {

constexpr int kChildren = 3;
constexpr int kOpsPerChild = 20000;
constexpr int kIdsPerChild = 600;
constexpr int kUsers = 6;
// Six users at this cap hold at most 180 < max_queue_size (256): every saturation of the queue
// is a saturation of some user first, so user_limit is always exercised.
constexpr std::uint64_t kUserCap = 30;

std::string user_of(const std::string& id) {
  return "u" + std::to_string(std::hash<std::string>{}(id) % kUsers);
}

void child_body(const std::string& segment, int child, int fd, unsigned seed) {
  auto seg = ipc::Segment::attach(segment);
  CancellingProducer p(seg);
  std::mt19937 rng(seed);
  for (int op = 0; op < kOpsPerChild; ++op) {
    const unsigned dice = rng() % 100;
    if (dice < 70) {
      const std::string id =
          "p" + std::to_string(child) + "-" + std::to_string(rng() % kIdsPerChild);
      const auto prio = static_cast<Priority>(rng() % kPriorityLevels);
      std::string payload(rng() % 300, 'x');  // > 256 now and then: payload_too_large
      std::string user = user_of(id);
      if (rng() % 50 == 0) user.clear();  // invalid
      Req r(id, user, prio, payload);
      const auto res = p.submit(r.get());
      send(fd, Report::make(res.accepted() ? 'A' : 'R', id, user, static_cast<char>(res.admission),
                            static_cast<char>(prio)));
    } else if (dice < 90) {
      const std::string id =
          "p" + std::to_string(rng() % kChildren) + "-" + std::to_string(rng() % kIdsPerChild);
      const auto outcome = p.cancel(id);
      send(fd, Report::make(outcome == ipc::CancelOutcome::kCancelled ? 'C' : 'N', id));
    } else {
      const std::string id =
          "p" + std::to_string(rng() % kChildren) + "-" + std::to_string(rng() % kIdsPerChild);
      const auto st = p.status(id);
      if (st && st->user_id != user_of(id)) send(fd, Report::make('!', id, st->user_id));
    }
  }
}

struct Model {
  std::map<std::string, int> accepted, cancelled, dequeued, released;
  std::map<std::string, Priority> priority;  // of the latest accepted instance
};

TEST(QueueProperty, RandomOperationsFromSeveralProcessesMatchTheModel) {
  auto cfg = small_config();
  cfg.max_queue_size = 256;
  cfg.max_executions_per_user = kUserCap;
  cfg.max_users = 16;
  cfg.max_active = 16;
  TempSegment seg(cfg, "property");
  Pipe reports;
  std::vector<pid_t> children;
  for (int c = 0; c < kChildren; ++c) {
    const std::string name = seg.name();
    const int fd = reports.write_fd();
    children.push_back(spawn([=] { child_body(name, c, fd, 1000u + static_cast<unsigned>(c)); }));
  }
  Model m;
  std::vector<Report> received;
  {
    ipc::Consumer consumer(seg.segment());
    std::vector<std::pair<ipc::ActiveRef, std::string>> active;
    std::mt19937 rng(7);
    int running = kChildren;
    std::vector<bool> done(kChildren, false);
    while (running > 0) {
      reports.drain(received);
      const unsigned dice = rng() % 100;
      if (dice < 45 && active.size() < cfg.max_active) {
        ipc::ActiveRef ref;
        const std::string id = take(consumer, &ref);
        if (!id.empty()) {
          ++m.dequeued[id];
          active.emplace_back(ref, id);
        }
      } else if (dice < 90 && !active.empty()) {
        const std::size_t k = rng() % active.size();
        ASSERT_TRUE(consumer.release(active[k].first));
        ++m.released[active[k].second];
        active.erase(active.begin() + static_cast<std::ptrdiff_t>(k));
      }
      for (int c = 0; c < kChildren; ++c) {
        int status = 0;
        if (!done[c] && ::waitpid(children[c], &status, WNOHANG) == children[c]) {
          ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child " << c;
          done[c] = true;
          --running;
        }
      }
    }
    reports.close_write();
    reports.drain(received);

    for (const auto& r : received) {
      const std::string id = r.id_str();
      switch (r.kind) {
        case 'A':
          ++m.accepted[id];
          m.priority[id] = static_cast<Priority>(r.priority);
          break;
        case 'C':
          ++m.cancelled[id];
          break;
        case '!':
          ADD_FAILURE() << "status of " << id << " showed user " << r.user_str();
          break;
        case 'R': {
          const auto why = static_cast<Admission>(r.outcome);
          EXPECT_NE(why, Admission::kAccepted);
          if (r.user_str().empty()) {
            EXPECT_EQ(why, Admission::kInvalid) << id;
          }
          break;
        }
        default:
          break;
      }
    }

    // Per id: queued = accepted - cancelled - dequeued, active = dequeued - released; each 0 or
    // 1, never both.
    std::uint64_t queued_total = 0;
    std::uint64_t active_total = 0;
    std::array<std::uint64_t, kPriorityLevels> depth{};
    std::map<std::string, std::uint64_t> per_user;
    std::vector<std::string> queued_ids;
    for (const auto& [id, a] : m.accepted) {
      const int q = a - m.cancelled[id] - m.dequeued[id];
      const int act = m.dequeued[id] - m.released[id];
      ASSERT_TRUE(q == 0 || q == 1) << id << " queued " << q;
      ASSERT_TRUE(act == 0 || act == 1) << id << " active " << act;
      ASSERT_LE(q + act, 1) << id << " is live twice";
      const auto st = consumer.status(id);
      if (q == 1) {
        ASSERT_TRUE(st && st->state == ipc::ExecutionState::kQueued) << id;
        EXPECT_EQ(st->priority, m.priority[id]) << id;
        ++depth[priority_index(m.priority[id])];
        queued_ids.push_back(id);
      } else if (act == 1) {
        ASSERT_TRUE(st && st->state == ipc::ExecutionState::kActive) << id;
      } else {
        EXPECT_FALSE(st.has_value()) << id << " should be gone";
      }
      queued_total += static_cast<std::uint64_t>(q);
      active_total += static_cast<std::uint64_t>(act);
      per_user[user_of(id)] += static_cast<std::uint64_t>(q + act);
    }
    const auto st = consumer.stats();
    EXPECT_EQ(st.queued, queued_total);
    EXPECT_EQ(st.active, active_total);
    EXPECT_EQ(st.depth, depth);
    for (int u = 0; u < kUsers; ++u) {
      const std::string user = "u" + std::to_string(u);
      EXPECT_EQ(consumer.user_count(user), per_user[user]) << user;
      EXPECT_LE(consumer.user_count(user), kUserCap) << user;
    }
    std::uint64_t accepted_total = 0, cancelled_total = 0;
    for (const auto& [id, n] : m.accepted) accepted_total += static_cast<std::uint64_t>(n);
    for (const auto& [id, n] : m.cancelled) cancelled_total += static_cast<std::uint64_t>(n);
    EXPECT_EQ(st.enqueued, accepted_total);
    EXPECT_EQ(st.cancelled, cancelled_total);
    EXPECT_GT(st.rejected_user_limit, 0u);
    EXPECT_GT(st.rejected_duplicate, 0u);
    EXPECT_GT(st.rejected_payload_too_large, 0u);

    std::printf(
        "[ model    ] %llu accepted, %llu cancelled, %llu dequeued, %llu queued and %llu "
        "active at the check; rejected: %llu user_limit, %llu queue_full, %llu duplicate\n",
        static_cast<unsigned long long>(accepted_total),
        static_cast<unsigned long long>(cancelled_total),
        static_cast<unsigned long long>(st.dequeued), static_cast<unsigned long long>(queued_total),
        static_cast<unsigned long long>(active_total),
        static_cast<unsigned long long>(st.rejected_user_limit),
        static_cast<unsigned long long>(st.rejected_queue_full),
        static_cast<unsigned long long>(st.rejected_duplicate));
    // Ranks are exactly 0..n-1 and the queue drains in rank order.
    std::vector<std::pair<std::uint64_t, std::string>> ranked;
    for (const auto& id : queued_ids) ranked.emplace_back(*consumer.queue_position(id), id);
    std::sort(ranked.begin(), ranked.end());
    for (std::size_t i = 0; i < ranked.size(); ++i) ASSERT_EQ(ranked[i].first, i);
    for (auto& [ref, id] : active) ASSERT_TRUE(consumer.release(ref));
    for (const auto& [rank, id] : ranked) ASSERT_EQ(take_and_release(consumer), id);
    EXPECT_EQ(take_and_release(consumer), "");
    const auto end = consumer.stats();
    EXPECT_EQ(end.queued, 0u);
    EXPECT_EQ(end.active, 0u);
    for (int u = 0; u < kUsers; ++u) EXPECT_EQ(consumer.user_count("u" + std::to_string(u)), 0u);
  }
}

}  // namespace
}  // namespace shmsched::test
