#include "prometheus_text.h"

#include <fmt/format.h>

#include <cmath>

namespace shmsched::daemon {

namespace {

void escape_into(std::string& out, const std::string& s, bool quote) {
  for (const char ch : s) {
    if (ch == '\\') {
      out += "\\\\";
    } else if (ch == '\n') {
      out += "\\n";
    } else if (ch == '"' && quote) {
      out += "\\\"";
    } else {
      out += ch;
    }
  }
}

std::string number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

}  // namespace

void PrometheusText::family(const std::string& name, const char* type, const std::string& help) {
  name_ = name;
  out_ += "# HELP " + name + " ";
  escape_into(out_, help, false);
  out_ += "\n# TYPE " + name + " " + type + "\n";
}

void PrometheusText::sample(const Labels& labels, double value) {
  line(name_, labels, value);
}

void PrometheusText::line(const std::string& name, const Labels& labels, double value) {
  out_ += name;
  if (!labels.empty()) {
    out_ += '{';
    for (std::size_t i = 0; i < labels.size(); ++i) {
      if (i) out_ += ',';
      out_ += labels[i].first + "=\"";
      escape_into(out_, labels[i].second, true);
      out_ += '"';
    }
    out_ += '}';
  }
  out_ += ' ' + number(value) + '\n';
}

void PrometheusText::histogram(const std::string& name, const std::string& help,
                               const LatencyHistogram::Reading& r) {
  family(name, "histogram", help);
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < LatencyHistogram::kBounds.size(); ++i) {
    cumulative += r.buckets[i];
    // Read after the count, a bucket may hold an observation the count does not yet.
    line(name + "_bucket", {{"le", number(LatencyHistogram::kBounds[i])}},
         static_cast<double>(std::min(cumulative, r.count)));
  }
  line(name + "_bucket", {{"le", "+Inf"}}, static_cast<double>(r.count));
  line(name + "_sum", {}, r.sum_seconds);
  line(name + "_count", {}, static_cast<double>(r.count));
}

}  // namespace shmsched::daemon
