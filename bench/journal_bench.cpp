// The journal's group commit on the disk it runs on: durably acknowledged appends per second and
// the latency of each (append, then wait_durable) with 1, 8 and 64 appenders, each appending
// its next record once the last one is durable (as a daemon replying with `disk` does).
//
//   journal_bench [--dir DIR] [--seconds S] [--payload BYTES] [--recovery-records N]
//
// Then the time recovery takes to read N records (1,000,000 by default; 0 skips it).
// DIR (default: a fresh directory under the current one) must be on the disk to measure: not
// tmpfs, where fdatasync costs nothing. It is removed afterwards.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "shmsched/journal/writer.h"

namespace {

using Clock = std::chrono::steady_clock;
using namespace shmsched::journal;

struct Figures {
  double per_second = 0;
  double p50_us = 0;
  double p99_us = 0;
  double per_batch = 0;
};

Figures run(const std::string& dir, int appenders, double seconds, std::size_t payload_bytes) {
  std::filesystem::remove_all(dir);
  WriterOptions options;
  options.dir = dir;
  auto opened = Writer::open(options);
  if (!opened) {
    std::fprintf(stderr, "%s\n", opened.error().message.c_str());
    std::exit(1);
  }
  Writer& writer = **opened;
  const std::string payload(payload_bytes, 'x');
  std::atomic<bool> go{false}, stop{false};
  std::vector<std::vector<double>> latencies(static_cast<std::size_t>(appenders));
  std::vector<std::thread> threads;
  for (int t = 0; t < appenders; ++t) {
    threads.emplace_back([&, t] {
      auto& mine = latencies[static_cast<std::size_t>(t)];
      mine.reserve(1 << 16);
      while (!go.load()) std::this_thread::yield();
      while (!stop.load(std::memory_order_relaxed)) {
        const auto t0 = Clock::now();
        auto lsn = writer.append(1, payload);
        if (!lsn || !writer.wait_durable(*lsn).ok()) {
          std::fprintf(stderr, "journal_bench: %s\n",
                       lsn ? "wait failed" : lsn.error().message.c_str());
          std::exit(1);
        }
        mine.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      }
    });
  }
  const auto before = writer.stats();
  const auto t0 = Clock::now();
  go = true;
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  const auto after = writer.stats();
  std::vector<double> all;
  for (auto& v : latencies) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  Figures f;
  f.per_second = static_cast<double>(all.size()) / elapsed;
  if (!all.empty()) {
    f.p50_us = all[all.size() / 2];
    f.p99_us = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  }
  const auto batches = after.batches - before.batches;
  f.per_batch = batches ? static_cast<double>(after.durable_lsn - before.durable_lsn) /
                              static_cast<double>(batches)
                        : 0;
  opened->reset();
  std::filesystem::remove_all(dir);
  return f;
}

// Recovery of a journal of `records` records of `payload_bytes` (written without waiting, the
// queue's bound respected), read back with the page cache warm, as after a daemon restart.
void recovery(const std::string& dir, std::uint64_t records, std::size_t payload_bytes) {
  std::filesystem::remove_all(dir);
  {
    WriterOptions options;
    options.dir = dir;
    auto opened = Writer::open(options);
    if (!opened) {
      std::fprintf(stderr, "%s\n", opened.error().message.c_str());
      std::exit(1);
    }
    Writer& writer = **opened;
    const std::string payload(payload_bytes, 'r');
    Lsn last = 0;
    for (std::uint64_t i = 0; i < records;) {
      auto lsn = writer.append(1, payload);
      if (lsn) {
        last = *lsn;
        ++i;
      } else if (lsn.error().code == Errc::kQueueFull) {
        (void)writer.wait_durable(last);
      } else {
        std::fprintf(stderr, "journal_bench: %s\n", lsn.error().message.c_str());
        std::exit(1);
      }
    }
    if (!writer.wait_durable(last).ok()) std::exit(1);
  }
  std::uint64_t seen = 0, bytes = 0;
  RecoverOptions options;
  options.dir = dir;
  const auto t0 = Clock::now();
  auto report = recover(options, [&](const Record& r) {
    ++seen;
    bytes += r.payload.size();
  });
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  if (!report || seen != records) {
    std::fprintf(stderr, "journal_bench: recovery failed: %s\n", report.error().message.c_str());
    std::exit(1);
  }
  std::printf("recovery: %llu records (%.0f MB of payload, %zu segments) in %.0f ms\n",
              static_cast<unsigned long long>(seen), static_cast<double>(bytes) / 1e6,
              report->segments, ms);
  std::filesystem::remove_all(dir);
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir =
      std::filesystem::current_path().string() + "/journal-bench-" + std::to_string(::getpid());
  double seconds = 2;
  std::size_t payload = 200;
  std::uint64_t recovery_records = 1000000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--dir")) {
      dir = argv[i + 1];
    } else if (!std::strcmp(argv[i], "--seconds")) {
      seconds = std::atof(argv[i + 1]);
    } else if (!std::strcmp(argv[i], "--payload")) {
      payload = static_cast<std::size_t>(std::atol(argv[i + 1]));
    } else if (!std::strcmp(argv[i], "--recovery-records")) {
      recovery_records = std::strtoull(argv[i + 1], nullptr, 10);
    } else {
      std::fprintf(stderr,
                   "usage: journal_bench [--dir DIR] [--seconds S] [--payload BYTES] "
                   "[--recovery-records N]\n");
      return 2;
    }
  }
  std::printf("journal_bench: %s, %zu-byte payloads, %.1f s per run, fdatasync per batch\n",
              dir.c_str(), payload, seconds);
  std::printf("%10s %16s %12s %12s %18s\n", "appenders", "durable/s", "p50 (us)", "p99 (us)",
              "records/fdatasync");
  for (const int n : {1, 8, 64}) {
    const Figures f = run(dir, n, seconds, payload);
    std::printf("%10d %16.0f %12.1f %12.1f %18.1f\n", n, f.per_second, f.p50_us, f.p99_us,
                f.per_batch);
  }
  if (recovery_records > 0) recovery(dir, recovery_records, payload);
  return 0;
}
