// A console reporter that also keeps each benchmark's counters, so a benchmark binary can print,
// after the run, the ratio of each peer to shmsched measured in the same run.
#pragma once

#include <benchmark/benchmark.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace shmsched::bench {

class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& run : runs) {
      // With repetitions, keep the median aggregate; otherwise the single run.
      if (run.run_type == Run::RT_Aggregate && run.aggregate_name != "median") continue;
      const std::string name = run.run_name.str();
      for (const auto& [key, counter] : run.counters) values_[name][key] = counter.value;
      values_[name]["real_ns"] = run.GetAdjustedRealTime();
    }
    ConsoleReporter::ReportRuns(runs);
  }

  double get(const std::string& name, const std::string& key) const {
    auto it = values_.find(name);
    if (it == values_.end()) return 0;
    auto jt = it->second.find(key);
    return jt == it->second.end() ? 0 : jt->second;
  }

  // Prints "peer / ours" for a counter where bigger is better.
  void ratio(const std::string& title, const std::string& ours, const std::string& peer,
             const std::string& key) const {
    const double a = get(ours, key);
    const double b = get(peer, key);
    if (a <= 0 || b <= 0) return;
    std::printf("%-58s ours %12.0f  peer %12.0f  ours/peer %6.2fx\n", title.c_str(), a, b, a / b);
  }

 private:
  std::map<std::string, std::map<std::string, double>> values_;
};

}  // namespace shmsched::bench
