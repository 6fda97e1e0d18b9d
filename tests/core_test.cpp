#include <gtest/gtest.h>

#include "shmsched/core/admission.h"
#include "shmsched/core/priority.h"
#include "shmsched/core/stable_hash.h"

namespace shmsched {
namespace {

TEST(Priority, NamesAndIntegersRoundTrip) {
  for (std::size_t i = 0; i < kPriorityLevels; ++i) {
    const auto p = static_cast<Priority>(i);
    EXPECT_EQ(parse_priority(priority_name(p)), p);
    EXPECT_EQ(priority_from_int(static_cast<std::int64_t>(i)), p);
  }
  EXPECT_EQ(parse_priority("urgent"), std::nullopt);
  EXPECT_EQ(parse_priority("Critical"), std::nullopt);
  EXPECT_EQ(priority_from_int(5), std::nullopt);
  EXPECT_EQ(priority_from_int(-1), std::nullopt);
}

TEST(Admission, ProtocolReasonNames) {
  EXPECT_EQ(admission_name(Admission::kQueueFull), "queue_full");
  EXPECT_EQ(admission_name(Admission::kUserLimit), "user_limit");
  EXPECT_EQ(admission_name(Admission::kDuplicate), "duplicate");
  EXPECT_EQ(admission_name(Admission::kPayloadTooLarge), "payload_too_large");
  EXPECT_EQ(admission_name(Admission::kInvalid), "invalid");
}

// FNV-1a("abc") = 0xe71fa2190541574b, then the murmur3 finaliser.
constexpr std::uint64_t kAbcHash = 0x33ebaf9927cbc5bdULL;

TEST(StableHash, FixedValuesAcrossBuilds) {
  // Producers built separately must agree on table positions: pin the function's output.
  static_assert(stable_hash("") != stable_hash("a"));
  EXPECT_EQ(stable_hash("exec-1"), stable_hash(std::string("exec-1")));
  EXPECT_EQ(stable_hash("abc"), kAbcHash);
  EXPECT_NE(stable_hash("exec-1"), stable_hash("exec-2"));
}

}  // namespace
}  // namespace shmsched
