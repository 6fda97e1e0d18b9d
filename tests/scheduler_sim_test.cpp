// The scheduler under seeded simulation (scheduler_sim.h): 10,000 seeds x 1,000 steps by
// default, every invariant checked after every step. A failure prints the seed, the command
// that replays it, and the shrunk trace.
//   SHMSCHED_SIM_SEED=<seed>   replay one seed (with the trace)
//   SHMSCHED_SIM_SEEDS=<n>     how many seeds (the `long` label runs 1,000,000)
//   SHMSCHED_SIM_FIRST=<seed>  where the seeds start
//   SHMSCHED_SIM_STEPS=<n>     steps per seed
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "scheduler_sim.h"

#ifndef SHMSCHED_SIM_SEEDS
#define SHMSCHED_SIM_SEEDS 10000
#endif

namespace shmsched::sim {
namespace {

std::uint64_t env(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v ? std::strtoull(v, nullptr, 10) : fallback;
}

void report(std::uint64_t seed, std::size_t steps, const SimResult& r) {
  const auto trace = shrink(generate(seed, steps));
  std::string text;
  for (std::size_t i = 0; i < trace.size(); ++i) {
    text += "    " + std::to_string(i) + ": " + describe(trace[i]) + "\n";
  }
  ADD_FAILURE() << "seed " << seed << " broke an invariant after step " << r.failed_at << ": "
                << r.failure << "\n  replay: SHMSCHED_SIM_SEED=" << seed
                << " SHMSCHED_SIM_STEPS=" << steps
                << " tests/scheduler_sim_test --gtest_filter='*Replay*'\n  shrunk to "
                << trace.size() << " steps:\n"
                << text << "  which ends with: " << run(trace).failure;
}

TEST(SchedulerSim, SeedsKeepEveryInvariant) {
  const std::uint64_t first = env("SHMSCHED_SIM_FIRST", 1);
  const std::uint64_t seeds = env("SHMSCHED_SIM_SEEDS", SHMSCHED_SIM_SEEDS);
  const std::size_t steps = env("SHMSCHED_SIM_STEPS", 1000);
  std::uint64_t dispatches = 0;
  std::uint64_t finished = 0;
  for (std::uint64_t seed = first; seed < first + seeds; ++seed) {
    const SimResult r = run(generate(seed, steps));
    if (!r.ok) {
      report(seed, steps, r);
      return;
    }
    dispatches += r.dispatches;
    finished += r.finished;
  }
  std::printf("[ sim      ] %llu seeds x %zu steps: %llu dispatches, %llu executions ended\n",
              static_cast<unsigned long long>(seeds), steps,
              static_cast<unsigned long long>(dispatches),
              static_cast<unsigned long long>(finished));
  EXPECT_GT(finished, seeds) << "the workload ended too few executions to mean anything";
}

TEST(SchedulerSim, Replay) {
  const char* seed = std::getenv("SHMSCHED_SIM_SEED");
  if (!seed) GTEST_SKIP() << "set SHMSCHED_SIM_SEED to replay one seed";
  const std::size_t steps = env("SHMSCHED_SIM_STEPS", 1000);
  const auto workload = generate(std::strtoull(seed, nullptr, 10), steps);
  const SimResult r = run(workload);
  if (!r.ok) report(std::strtoull(seed, nullptr, 10), steps, r);
}

}  // namespace
}  // namespace shmsched::sim
