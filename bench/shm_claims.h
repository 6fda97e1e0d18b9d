// The shared-memory claim, timed: one taken execution in a segment of the benchmark's own, claimed
// by a producer (one compare-and-swap on its claim word), its claims reopened for each new attempt
// (untimed). Used by claim_bench and etcd_transport_bench, which print it beside their peers.
#pragma once

#include <string>
#include <vector>

#include "bench_support.h"
#include "shmsched/ipc/queue.h"

namespace shmsched::bench {

inline double ns_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
}

// One taken execution in a segment of our own, its claims reopened for each new attempt.
struct SharedMemoryClaims {
  std::string name = "shmsched-claim-bench-" + std::to_string(::getpid());
  std::shared_ptr<ipc::Segment> segment;
  std::unique_ptr<ipc::Consumer> consumer;
  std::unique_ptr<ipc::Producer> producer;
  ipc::ActiveRef ref;

  SharedMemoryClaims() {
    ipc::Segment::remove(name);
    ipc::SegmentConfig cfg;
    cfg.max_queue_size = 1024;
    cfg.mode = 0600;
    segment = ipc::Segment::create(name, cfg);
    consumer = std::make_unique<ipc::Consumer>(segment);
    producer = std::make_unique<ipc::Producer>(segment);
    ipc::SubmitRequest r;
    r.execution_id = "claimed";
    r.user_id = "bench";
    if (!producer->submit(r).accepted()) throw std::runtime_error("submit failed");
    auto taken = consumer->dequeue();
    if (!taken) throw std::runtime_error("dequeue failed");
    ref = *taken;
  }
  ~SharedMemoryClaims() {
    producer.reset();
    consumer.reset();
    ipc::Segment::remove(name);
  }
};

inline Percentiles shm_claim_latency(int n) {
  SharedMemoryClaims s;
  std::vector<double> ns;
  ns.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    const auto attempt = static_cast<std::uint32_t>(i + 1);
    s.consumer->open_claims(s.ref, attempt);
    const auto t0 = Clock::now();
    const auto r = s.producer->claim("claimed", attempt, 7);
    ns.push_back(ns_since(t0));
    if (r.outcome != ipc::ClaimOutcome::kWon) throw std::runtime_error("a lone claim lost");
  }
  return percentiles(ns);
}

}  // namespace shmsched::bench
