// What the HTTP thread (metrics, dashboard) reads of the scheduling loop, without ever taking a
// lock the loop holds while it dispatches: histograms are atomics the loop adds to, and the rest
// is a snapshot the loop publishes twice a second (one pointer swap under a mutex of its own).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "shmsched/core/priority.h"

namespace shmsched::daemon {

// A Prometheus histogram of durations, written by one thread and read by any: each bucket is an
// atomic counter (relaxed; a scrape may see an observation in `count` before its bucket, which
// the exposition tolerates as a scrape taken a moment earlier).
class LatencyHistogram {
 public:
  // Upper bounds in seconds: 100 µs to an hour (queue waits reach hours under load).
  static constexpr std::array<double, 20> kBounds = {
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
      0.25,   0.5,     1,      2.5,   5,      10,    30,   60,    300,  3600};

  void observe_ns(std::int64_t ns);

  struct Reading {
    std::array<std::uint64_t, kBounds.size()> buckets{};  // not cumulative
    std::uint64_t count = 0;
    double sum_seconds = 0;
  };
  Reading read() const;

 private:
  std::array<std::atomic<std::uint64_t>, kBounds.size() + 1> buckets_{};  // the last: +Inf
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_ns_{0};
};

// One event of the recent-events list on the dashboard.
struct RecentEvent {
  std::int64_t at_ns = 0;  // wall clock
  std::string type;
  std::string execution_id;
  std::string user_id;
  std::string detail;  // a worker, a reason, an error
};

// A live worker as the dashboard shows it.
struct WorkerObservation {
  std::string id;
  std::vector<std::string> capabilities;
  std::uint32_t capacity = 0;
  std::uint32_t load = 0;
  std::int64_t last_heartbeat_ns = 0;
};

// One second of the dashboard's charts.
struct HistoryPoint {
  std::int64_t at_ms = 0;  // wall clock
  std::array<std::uint64_t, kPriorityLevels> depth{};
  std::uint64_t active = 0;
  std::uint64_t capacity = 0;
  std::uint64_t submitted = 0, dispatched = 0, completed = 0, failed = 0;  // totals
};

// What only the loop knows, published as a whole.
struct LoopObservations {
  std::int64_t published_at_ns = 0;
  std::vector<HistoryPoint> history;  // oldest first, one per second
  std::vector<WorkerObservation> workers;
  std::map<std::string, std::uint64_t> waiting_by_capabilities;
  std::vector<RecentEvent> recent_events;  // oldest first
};

class Observability {
 public:
  LatencyHistogram queue_wait;          // enqueued -> taken from the queue by the scheduler
  LatencyHistogram submit_to_dispatch;  // enqueued -> first dispatch handed to the transports

  // Enqueue times (wall clock, ns) of each priority's head, 0 when empty: the loop reads them
  // every kHeadsInterval, so that readers need no registration with the queue.
  std::array<std::atomic<std::int64_t>, kPriorityLevels> head_enqueued_at_ns{};
  // How long each priority's head has waited at `now_ns` (0 when empty).
  std::array<std::int64_t, kPriorityLevels> oldest_waits_ns(std::int64_t now_ns) const;

  // The loop's pulse: steady-clock nanoseconds of its last pass (healthz).
  std::atomic<std::int64_t> loop_pulse_ns{0};
  std::atomic<bool> ready{false};

  // Loop thread: the slot for the next recent event, overwriting the oldest (its strings keep
  // their capacity, so that steady state allocates nothing on the dispatch path).
  RecentEvent& remember();
  // Loop thread: a point of the charts' history (bounded to kHistory, the oldest dropped).
  void record(const HistoryPoint& p);
  // Loop thread: publishes the loop's view (the recent events and the history are added here).
  void publish(LoopObservations o);
  // Any thread: the last publication (never null).
  std::shared_ptr<const LoopObservations> latest() const;

  // A transport's failed delivery (any thread: transports report from their own).
  void publish_failed(const std::string& transport);
  std::map<std::string, std::uint64_t> publish_failures() const;

  static constexpr std::size_t kRecentEvents = 50;
  static constexpr std::size_t kHistory = 300;  // five minutes, as the charts show

 private:
  // A ring, loop thread only.
  std::array<RecentEvent, kRecentEvents> recent_{};
  std::size_t recent_next_ = 0;
  std::size_t recent_count_ = 0;
  std::deque<HistoryPoint> history_;  // loop thread only
  mutable std::mutex mutex_;
  std::shared_ptr<const LoopObservations> latest_ = std::make_shared<LoopObservations>();
  std::map<std::string, std::uint64_t> failures_;
};

}  // namespace shmsched::daemon
