// Self-check of the etcd peer: starts a local etcd, resets a task's owner key, races two clients'
// claims on it (exactly one wins, and the key then names the winner), then measures the claim's
// latency: 2,000 rounds of reset + claim, only the claim timed (after 20 untimed warm-up rounds).
// Prints one line; exits 0, or 1 with the reason.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <latch>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "etcd_peer.h"

namespace {

using shmsched::bench::EtcdClaimClient;
using shmsched::bench::LocalEtcd;

constexpr int kRaces = 100;
constexpr int kWarmup = 20;
constexpr int kClaims = 2000;

// Nearest rank: the smallest sample with at least p of them at or below it.
double percentile(const std::vector<double>& sorted, double p) {
  const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  return sorted[std::max<std::size_t>(rank, 1) - 1];
}

}  // namespace

int main() {
  try {
    LocalEtcd etcd;
    EtcdClaimClient a(etcd.client_url());
    EtcdClaimClient b(etcd.client_url());
    const std::string key = "/tasks/etcd-peer-check/owner";

    for (int round = 0; round < kRaces; ++round) {
      a.reset(key);
      std::latch go(2);
      bool won_a = false;
      bool won_b = false;
      std::thread ta([&] {
        go.arrive_and_wait();
        won_a = a.claim(key, "worker-a");
      });
      std::thread tb([&] {
        go.arrive_and_wait();
        won_b = b.claim(key, "worker-b");
      });
      ta.join();
      tb.join();
      if (won_a == won_b) {
        throw std::runtime_error("race " + std::to_string(round) + ": " +
                                 (won_a ? "both clients won" : "neither client won"));
      }
      const std::string winner = won_a ? "worker-a" : "worker-b";
      const auto owner = a.get(key);
      if (owner != winner) {
        throw std::runtime_error("race " + std::to_string(round) + ": " + winner +
                                 " won but the key holds '" + owner.value_or("(missing)") + "'");
      }
      if (b.claim(key, "worker-b") || a.claim(key, "worker-a")) {
        throw std::runtime_error("race " + std::to_string(round) + ": a claimed key was claimed");
      }
    }

    std::vector<double> us;
    us.reserve(kClaims);
    for (int i = 0; i < kWarmup + kClaims; ++i) {
      a.reset(key);
      const auto t0 = std::chrono::steady_clock::now();
      const bool won = a.claim(key, "worker-a");
      const auto t1 = std::chrono::steady_clock::now();
      if (!won) throw std::runtime_error("claim " + std::to_string(i) + " of a reset key lost");
      if (i >= kWarmup) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    std::sort(us.begin(), us.end());

    std::printf(
        "etcd_peer_check: ok: etcd %s (%s, default fsync): exactly one winner in each of %d "
        "two-client races; claim latency over %d claims: p50 %.0f us, p99 %.0f us, max %.0f us\n",
        etcd.server_version().c_str(), etcd.client_url().c_str(), kRaces, kClaims,
        percentile(us, 0.50), percentile(us, 0.99), us.back());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "etcd_peer_check: FAILED: %s\n", e.what());
    return 1;
  }
}
