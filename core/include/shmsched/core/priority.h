// Priority levels shared by every part of shmsched: lower values run first.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

namespace shmsched {

enum class Priority : std::uint8_t {
  kCritical = 0,
  kHigh = 1,
  kNormal = 2,
  kLow = 3,
  kBackground = 4,
};

inline constexpr std::size_t kPriorityLevels = 5;

inline constexpr std::array<std::string_view, kPriorityLevels> kPriorityNames = {
    "critical", "high", "normal", "low", "background"};

constexpr std::string_view priority_name(Priority p) {
  return kPriorityNames[static_cast<std::size_t>(p)];
}

constexpr std::size_t priority_index(Priority p) {
  return static_cast<std::size_t>(p);
}

// Accepts the protocol's names ("critical" ... "background"); nullopt for anything else.
std::optional<Priority> parse_priority(std::string_view name);

// Accepts the protocol's integers 0..4; nullopt for anything else.
std::optional<Priority> priority_from_int(std::int64_t value);

}  // namespace shmsched
