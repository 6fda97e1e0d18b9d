#include "observability.h"

#include <algorithm>

namespace shmsched::daemon {

void LatencyHistogram::observe_ns(std::int64_t ns) {
  ns = std::max<std::int64_t>(ns, 0);  // wall clocks step back
  const double s = static_cast<double>(ns) / 1e9;
  const auto at = std::lower_bound(kBounds.begin(), kBounds.end(), s) - kBounds.begin();
  buckets_[static_cast<std::size_t>(at)].fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(static_cast<std::uint64_t>(ns), std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

LatencyHistogram::Reading LatencyHistogram::read() const {
  Reading r;
  // Relaxed reads may catch an observation in a bucket and not yet in the count or the other
  // way round: the exposition clamps cumulative buckets to the count (the +Inf bucket).
  r.count = count_.load(std::memory_order_relaxed);
  for (std::size_t i = 0; i < kBounds.size(); ++i) {
    r.buckets[i] = buckets_[i].load(std::memory_order_relaxed);
  }
  r.sum_seconds = static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9;
  return r;
}

std::array<std::int64_t, kPriorityLevels> Observability::oldest_waits_ns(
    std::int64_t now_ns) const {
  std::array<std::int64_t, kPriorityLevels> waits{};
  for (std::size_t l = 0; l < kPriorityLevels; ++l) {
    const auto at = head_enqueued_at_ns[l].load(std::memory_order_relaxed);
    if (at != 0) waits[l] = std::max<std::int64_t>(0, now_ns - at);
  }
  return waits;
}

RecentEvent& Observability::remember() {
  RecentEvent& e = recent_[recent_next_];
  recent_next_ = (recent_next_ + 1) % kRecentEvents;
  recent_count_ = std::min(recent_count_ + 1, kRecentEvents);
  return e;
}

void Observability::record(const HistoryPoint& p) {
  history_.push_back(p);
  if (history_.size() > kHistory) history_.pop_front();
}

void Observability::publish(LoopObservations o) {
  o.history.assign(history_.begin(), history_.end());
  o.recent_events.reserve(recent_count_);
  for (std::size_t i = 0; i < recent_count_; ++i) {
    o.recent_events.push_back(
        recent_[(recent_next_ + kRecentEvents - recent_count_ + i) % kRecentEvents]);
  }
  auto next = std::make_shared<const LoopObservations>(std::move(o));
  std::shared_ptr<const LoopObservations> old;
  std::lock_guard lock(mutex_);
  old.swap(latest_);  // freed after the lock (by `old`), not under it
  latest_ = std::move(next);
}

std::shared_ptr<const LoopObservations> Observability::latest() const {
  std::lock_guard lock(mutex_);
  return latest_;
}

void Observability::publish_failed(const std::string& transport) {
  std::lock_guard lock(mutex_);
  ++failures_[transport];
}

std::map<std::string, std::uint64_t> Observability::publish_failures() const {
  std::lock_guard lock(mutex_);
  return failures_;
}

}  // namespace shmsched::daemon
