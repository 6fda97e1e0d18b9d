// Prometheus' text exposition format (version 0.0.4): families with HELP and TYPE, samples with
// escaped labels, and histograms with cumulative `le` buckets, _sum and _count.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "observability.h"

namespace shmsched::daemon {

class PrometheusText {
 public:
  using Labels = std::vector<std::pair<std::string, std::string>>;

  // Starts a family; its samples follow (a family's samples must be contiguous).
  void family(const std::string& name, const char* type, const std::string& help);
  void sample(const Labels& labels, double value);
  void histogram(const std::string& name, const std::string& help,
                 const LatencyHistogram::Reading& r);
  std::string finish() { return std::move(out_); }

 private:
  void line(const std::string& name, const Labels& labels, double value);
  std::string out_;
  std::string name_;
};

}  // namespace shmsched::daemon
