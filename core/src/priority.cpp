#include "shmsched/core/priority.h"

namespace shmsched {

std::optional<Priority> parse_priority(std::string_view name) {
  for (std::size_t i = 0; i < kPriorityNames.size(); ++i) {
    if (kPriorityNames[i] == name) return static_cast<Priority>(i);
  }
  return std::nullopt;
}

std::optional<Priority> priority_from_int(std::int64_t value) {
  if (value < 0 || value >= static_cast<std::int64_t>(kPriorityLevels)) return std::nullopt;
  return static_cast<Priority>(value);
}

}  // namespace shmsched
