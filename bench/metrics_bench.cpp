// What watching costs: sustained submit-and-dispatch throughput of a real shmschedd over shared
// memory, with its HTTP endpoint on and nobody looking, beside the same with a scraper hitting
// /metrics 100 times a second and an open dashboard (/api/state once a second). Rounds alternate
// (a fresh supervisor each) so that the machine's drift hits both alike; medians and their ratio
// are printed, with the scrape latencies.
//
//   metrics_bench [--throughput N] [--rounds R] [--scrape-hz H]
#include <curl/curl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.h"

namespace {

using namespace shmsched;
using namespace shmsched::bench;

std::size_t discard(char*, std::size_t size, std::size_t n, void* bytes) {
  *static_cast<std::size_t*>(bytes) += size * n;
  return size * n;
}

// GETs `url` every `period` until stopped; one connection kept alive, as Prometheus does.
struct Scraper {
  std::atomic<bool> stop{false};
  std::vector<double> ns;  // each scrape's time
  std::size_t bytes = 0;
  std::uint64_t failures = 0;

  void run(const std::string& metrics, const std::string& state, std::chrono::microseconds period) {
    CURL* curl = curl_easy_init();
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &bytes);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 2000L);
    auto next = Clock::now();
    for (std::uint64_t i = 0; !stop.load(); ++i) {
      // Every 100th request is the dashboard's state (once a second at 100 Hz).
      const std::string& url = i % 100 == 99 ? state : metrics;
      curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
      const auto t0 = Clock::now();
      long code = 0;
      if (curl_easy_perform(curl) != CURLE_OK ||
          curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code) != CURLE_OK || code != 200) {
        ++failures;
      }
      if (&url == &metrics) {
        ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count());
      }
      next += period;
      std::this_thread::sleep_until(next);
    }
    curl_easy_cleanup(curl);
  }
};

// One round: a fresh supervisor, n submits over shared memory, until all are dispatched.
double round_throughput(const std::string& dir, std::uint64_t n, double scrape_hz,
                        Scraper* scraper) {
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const int port = free_port();
  g_daemon_args = {"--metrics-listen=127.0.0.1:" + std::to_string(port)};
  Daemon d;
  d.dir = dir;
  start_daemon(d, SHMSCHED_BIN_DIR, SHMSCHED_PLUGIN_DIR, n + 100);
  zmq::context_t ctx;
  Commands commands(ctx, "ipc://" + dir + "/events.sock");
  auto load = warmed_shm_load(d, commands);
  ipc::Client& client = *load.client;
  ipc::protocol::SubmitOp& op = load.op;
  std::thread scraping;
  if (scraper) {
    scraper->stop = false;
    const std::string base = "http://127.0.0.1:" + std::to_string(port);
    scraping = std::thread([scraper, base, scrape_hz] {
      scraper->run(base + "/metrics", base + "/api/state",
                   std::chrono::microseconds(static_cast<std::int64_t>(1e6 / scrape_hz)));
    });
  }
  const auto t0 = Clock::now();
  for (std::uint64_t i = 0; i < n; ++i) {
    op.execution_id = "m-" + std::to_string(i);
    client.submit(op);
  }
  commands.count(n);
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (scraper) {
    scraper->stop = true;
    scraping.join();
  }
  return static_cast<double>(n) / s;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t n = 100000;
  int rounds = 5;
  double hz = 100;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--throughput") n = std::strtoull(argv[i + 1], nullptr, 10);
    if (k == "--rounds") rounds = std::atoi(argv[i + 1]);
    if (k == "--scrape-hz") hz = std::atof(argv[i + 1]);
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const std::string dir = "/tmp/shmsched-metrics-bench-" + std::to_string(::getpid());
  std::vector<double> quiet, watched;
  Scraper scraper;
  for (int r = 0; r < rounds; ++r) {
    quiet.push_back(round_throughput(dir, n, hz, nullptr));
    watched.push_back(round_throughput(dir, n, hz, &scraper));
    std::printf("  round %d: %10.0f /s unwatched, %10.0f /s scraped\n", r + 1, quiet.back(),
                watched.back());
  }
  std::filesystem::remove_all(dir);
  const double q = median(quiet), w = median(watched);
  std::printf("\nshmschedd over shared memory, %llu submits a round, %d rounds, median:\n",
              static_cast<unsigned long long>(n), rounds);
  std::printf("  %-52s %10.0f /s\n", "submitted and dispatched, nobody scraping", q);
  std::printf("  %-52s %10.0f /s\n", "... /metrics scraped at 100 Hz, /api/state at 1 Hz", w);
  std::printf("  %-52s %10.3f\n", "ratio scraped / unwatched", w / q);
  const auto p = percentiles(scraper.ns);
  std::printf("  %-52s %10zu (%llu failed), %zu bytes read\n", "scrapes", scraper.ns.size(),
              static_cast<unsigned long long>(scraper.failures), scraper.bytes);
  print_latency("scrape of /metrics during the load", p);
  curl_global_cleanup();
  return scraper.failures == 0 ? 0 : 1;
}
