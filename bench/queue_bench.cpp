// Micro-benchmarks of the shared-memory queue beside boost::lockfree::queue and
// moodycamel::ConcurrentQueue, measured in the same binary and run.
//
//   queue_bench [--benchmark_repetitions=5 ...]
//
// Throughput: P producer threads (1 or 2) hand N items to one consumer thread. Peers move a
// 64-bit value; shmsched moves an execution (16-byte payload, one of 8 users) with admission,
// dedup and priorities, and the consumer releases it. Also: the same with producers in child
// processes (shmsched only), enqueue latency percentiles, producer-to-consumer hand-off latency
// (consumer spinning, and consumer asleep on the futex), and enqueue cost at depth 10 vs 1M.
#include <benchmark/benchmark.h>
#include <concurrentqueue/concurrentqueue.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/lockfree/queue.hpp>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "bench_report.h"
#include "shmsched/ipc/queue.h"

namespace {

using namespace shmsched;
using Clock = std::chrono::steady_clock;

constexpr std::int64_t kItems = 200'000;

std::string segment_name(const char* tag) {
  return std::string("shmsched-bench-") + tag + "-" + std::to_string(::getpid());
}

ipc::SegmentConfig bench_config(std::uint64_t queue_size = 65536) {
  ipc::SegmentConfig c;
  c.max_queue_size = queue_size;
  c.max_payload_bytes = 64;
  c.max_extras_bytes = 0;
  c.max_users = 64;
  c.max_active = 64;
  c.max_participants = 16;
  c.max_executions_per_user = queue_size;
  c.mode = 0600;
  return c;
}

struct Segment {
  std::string name;
  std::shared_ptr<ipc::Segment> seg;
  explicit Segment(const char* tag, std::uint64_t size = 65536) : name(segment_name(tag)) {
    ipc::Segment::remove(name);
    seg = ipc::Segment::create(name, bench_config(size));
  }
  ~Segment() { ipc::Segment::remove(name); }
};

// Pre-built ids so the timed loop measures the queue, not string formatting.
std::vector<std::string> make_ids(const std::string& prefix, std::int64_t n) {
  std::vector<std::string> ids;
  ids.reserve(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) ids.push_back(prefix + std::to_string(i));
  return ids;
}

const std::array<std::string, 8> kUsers = {"u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"};
const char kPayload[16] = "print('hello')";

ipc::SubmitRequest request(const std::string& id, std::size_t n) {
  ipc::SubmitRequest r;
  r.execution_id = id;
  r.user_id = kUsers[n % kUsers.size()];
  r.priority = Priority::kNormal;
  r.payload = std::span<const std::byte>(reinterpret_cast<const std::byte*>(kPayload), 16);
  return r;
}

// Submits until accepted (spinning while the queue is full).
void submit_spin(ipc::Producer& p, const ipc::SubmitRequest& r) {
  for (;;) {
    const auto res = p.submit(r);
    if (res.accepted()) return;
    if (res.admission != Admission::kQueueFull && res.admission != Admission::kUserLimit)
      std::abort();
    std::this_thread::yield();
  }
}

void BM_Throughput_Shmsched(benchmark::State& state) {
  const int producers = static_cast<int>(state.range(0));
  Segment s("tp");
  std::vector<std::vector<std::string>> ids;
  for (int p = 0; p < producers; ++p)
    ids.push_back(make_ids("p" + std::to_string(p) + "-", kItems));
  ipc::Consumer consumer(s.seg);
  for (auto _ : state) {
    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p) {
      threads.emplace_back([&, p] {
        ipc::Producer prod(s.seg);
        for (std::int64_t i = 0; i < kItems; ++i) {
          submit_spin(prod, request(ids[static_cast<std::size_t>(p)][static_cast<std::size_t>(i)],
                                    static_cast<std::size_t>(i)));
        }
      });
    }
    std::int64_t got = 0;
    while (got < kItems * producers) {
      if (auto ref = consumer.dequeue()) {
        consumer.release(*ref);
        ++got;
      }
    }
    for (auto& t : threads) t.join();
  }
  state.counters["items_per_second"] = benchmark::Counter(
      static_cast<double>(kItems * producers * state.iterations()), benchmark::Counter::kIsRate);
}

void BM_Throughput_BoostLockfree(benchmark::State& state) {
  const int producers = static_cast<int>(state.range(0));
  boost::lockfree::queue<std::uint64_t> q(65536);
  for (auto _ : state) {
    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p) {
      threads.emplace_back([&] {
        for (std::int64_t i = 0; i < kItems; ++i) {
          while (!q.push(static_cast<std::uint64_t>(i))) std::this_thread::yield();
        }
      });
    }
    std::int64_t got = 0;
    std::uint64_t v = 0;
    while (got < kItems * producers) {
      if (q.pop(v)) ++got;
    }
    for (auto& t : threads) t.join();
  }
  state.counters["items_per_second"] = benchmark::Counter(
      static_cast<double>(kItems * producers * state.iterations()), benchmark::Counter::kIsRate);
}

void BM_Throughput_Moodycamel(benchmark::State& state) {
  const int producers = static_cast<int>(state.range(0));
  moodycamel::ConcurrentQueue<std::uint64_t> q(65536);
  for (auto _ : state) {
    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p) {
      threads.emplace_back([&] {
        moodycamel::ProducerToken tok(q);
        for (std::int64_t i = 0; i < kItems; ++i) q.enqueue(tok, static_cast<std::uint64_t>(i));
      });
    }
    std::int64_t got = 0;
    std::uint64_t v = 0;
    while (got < kItems * producers) {
      if (q.try_dequeue(v)) ++got;
    }
    for (auto& t : threads) t.join();
  }
  state.counters["items_per_second"] = benchmark::Counter(
      static_cast<double>(kItems * producers * state.iterations()), benchmark::Counter::kIsRate);
}

// Producers in child processes, consumer in this one.
void BM_Throughput_ShmschedProcesses(benchmark::State& state) {
  const int producers = static_cast<int>(state.range(0));
  Segment s("tpp");
  ipc::Consumer consumer(s.seg);
  int round = 0;
  for (auto _ : state) {
    std::vector<pid_t> children;
    for (int p = 0; p < producers; ++p) {
      const std::string name = s.name;
      const std::string prefix = "r" + std::to_string(round) + "p" + std::to_string(p) + "-";
      const pid_t pid = ::fork();
      if (pid == 0) {
        auto seg = ipc::Segment::attach(name);
        ipc::Producer prod(seg);
        const auto ids = make_ids(prefix, kItems);
        for (std::int64_t i = 0; i < kItems; ++i) {
          submit_spin(prod, request(ids[static_cast<std::size_t>(i)], static_cast<std::size_t>(i)));
        }
        ::_exit(0);
      }
      children.push_back(pid);
    }
    std::int64_t got = 0;
    while (got < kItems * producers) {
      if (auto ref = consumer.dequeue()) {
        consumer.release(*ref);
        ++got;
      }
    }
    for (pid_t pid : children) ::waitpid(pid, nullptr, 0);
    ++round;
  }
  state.counters["items_per_second"] = benchmark::Counter(
      static_cast<double>(kItems * producers * state.iterations()), benchmark::Counter::kIsRate);
}

void set_percentiles(benchmark::State& state, std::vector<double>& ns) {
  if (ns.empty()) return;
  std::sort(ns.begin(), ns.end());
  auto at = [&](double q) {
    return ns[std::min(ns.size() - 1, static_cast<std::size_t>(q * ns.size()))];
  };
  state.counters["p50_ns"] = at(0.50);
  state.counters["p99_ns"] = at(0.99);
  state.counters["p999_ns"] = at(0.999);
}

// Time of one submit call while a consumer drains on another thread.
void BM_EnqueueLatency_Shmsched(benchmark::State& state) {
  Segment s("lat");
  std::atomic<bool> stop{false};
  std::thread consumer_thread([&] {
    ipc::Consumer c(s.seg);
    while (!stop.load(std::memory_order_relaxed)) {
      if (auto ref = c.dequeue()) c.release(*ref);
    }
  });
  ipc::Producer prod(s.seg);
  const auto ids = make_ids("l-", 1'000'000);
  std::vector<double> ns;
  ns.reserve(1'000'000);
  std::size_t n = 0;
  for (auto _ : state) {
    const auto req = request(ids[n % ids.size()], n);
    const auto t0 = Clock::now();
    const auto res = prod.submit(req);
    const auto t1 = Clock::now();
    benchmark::DoNotOptimize(res);
    if (!res.accepted()) continue;
    ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count());
    ++n;
    if (n % ids.size() == 0) {
      // Ids are reused after a full cycle; wait for the consumer to have taken them.
      while (prod.stats().queued > 0) std::this_thread::yield();
    }
  }
  stop = true;
  consumer_thread.join();
  set_percentiles(state, ns);
}

// Producer-to-consumer hand-off: the payload carries the submit time; the consumer records the
// delay until it holds the execution. range(0) = 0: consumer spins; 1: consumer sleeps on the
// futex between items (the wake-up is included).
void BM_Handoff_Shmsched(benchmark::State& state) {
  const bool sleeping = state.range(0) == 1;
  Segment s("handoff");
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> received{0};
  std::vector<double> ns;
  ns.reserve(200'000);
  std::thread consumer_thread([&] {
    ipc::Consumer c(s.seg);
    while (!stop.load(std::memory_order_relaxed)) {
      auto ref = c.dequeue();
      if (!ref) {
        if (sleeping) c.wait_for_work(std::chrono::milliseconds(50));
        continue;
      }
      const auto now = Clock::now().time_since_epoch().count();
      const auto view = c.view(*ref);
      std::int64_t sent = 0;
      std::memcpy(&sent, view->payload.data(), sizeof sent);
      ns.push_back(static_cast<double>(now - sent));
      c.release(*ref);
      received.fetch_add(1, std::memory_order_release);
    }
  });
  ipc::Producer prod(s.seg);
  const auto ids = make_ids("h-", 1'000'000);
  std::size_t n = 0;
  for (auto _ : state) {
    state.PauseTiming();
    const auto expect = received.load(std::memory_order_acquire) + 1;
    // Let the consumer go back to sleep before the next item when measuring the wake-up.
    if (sleeping) {
      while (!prod.stats().consumer_sleeping) std::this_thread::yield();
    }
    state.ResumeTiming();
    std::int64_t stamp = Clock::now().time_since_epoch().count();
    ipc::SubmitRequest r = request(ids[n % ids.size()], n);
    r.payload =
        std::span<const std::byte>(reinterpret_cast<const std::byte*>(&stamp), sizeof stamp);
    submit_spin(prod, r);
    ++n;
    while (received.load(std::memory_order_acquire) < expect) {
    }
  }
  stop = true;
  consumer_thread.join();
  set_percentiles(state, ns);
}

// Cost of one submit with `range(0)` entries already queued (the consumer keeps the depth).
void BM_EnqueueAtDepth_Shmsched(benchmark::State& state) {
  const auto depth = static_cast<std::int64_t>(state.range(0));
  Segment s("depth", static_cast<std::uint64_t>(depth + 1024));
  ipc::Producer prod(s.seg);
  ipc::Consumer consumer(s.seg);
  const auto ids = make_ids("d-", depth + 2'000'000);
  std::size_t n = 0;
  for (; n < static_cast<std::size_t>(depth); ++n) submit_spin(prod, request(ids[n], n));
  std::vector<double> ns;
  for (auto _ : state) {
    const auto req = request(ids[n % ids.size()], n);
    const auto t0 = Clock::now();
    const auto res = prod.submit(req);
    const auto t1 = Clock::now();
    if (!res.accepted()) std::abort();
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
    ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count());
    ++n;
    if (auto ref = consumer.dequeue()) consumer.release(*ref);
  }
  set_percentiles(state, ns);
}

BENCHMARK(BM_Throughput_Shmsched)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Throughput_BoostLockfree)
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_Throughput_Moodycamel)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Throughput_ShmschedProcesses)
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_EnqueueLatency_Shmsched)->Iterations(300'000);
BENCHMARK(BM_Handoff_Shmsched)->Arg(0)->Iterations(100'000)->UseRealTime();
BENCHMARK(BM_Handoff_Shmsched)->Arg(1)->Iterations(20'000)->UseRealTime();
BENCHMARK(BM_EnqueueAtDepth_Shmsched)
    ->Arg(10)
    ->Arg(1'000'000)
    ->Iterations(200'000)
    ->UseManualTime();

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  shmsched::bench::RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  std::printf("\nRatios (same run; items/s, higher is better):\n");
  for (const char* p : {"1", "2"}) {
    const std::string ours = std::string("BM_Throughput_Shmsched/") + p + "/real_time";
    reporter.ratio(std::string(p) + " producer(s): shmsched vs boost::lockfree::queue", ours,
                   std::string("BM_Throughput_BoostLockfree/") + p + "/real_time",
                   "items_per_second");
    reporter.ratio(std::string(p) + " producer(s): shmsched vs moodycamel::ConcurrentQueue", ours,
                   std::string("BM_Throughput_Moodycamel/") + p + "/real_time", "items_per_second");
    reporter.ratio(std::string(p) + " producer(s): shmsched processes vs threads",
                   std::string("BM_Throughput_ShmschedProcesses/") + p + "/real_time", ours,
                   "items_per_second");
  }
  const double d10 =
      reporter.get("BM_EnqueueAtDepth_Shmsched/10/iterations:200000/manual_time", "p50_ns");
  const double d1m =
      reporter.get("BM_EnqueueAtDepth_Shmsched/1000000/iterations:200000/manual_time", "p50_ns");
  if (d10 > 0 && d1m > 0) {
    std::printf("%-58s depth 10 %8.0f ns  depth 1M %8.0f ns  ratio %6.2fx\n",
                "enqueue p50 at depth 1,000,000 vs depth 10", d10, d1m, d1m / d10);
  }
  benchmark::Shutdown();
  return 0;
}
