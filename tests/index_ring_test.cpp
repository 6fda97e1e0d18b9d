// White-box tests of the index ring: the states a process killed between its two CASes leaves.
#include <gtest/gtest.h>

#include <vector>

#include "index_ring.h"

namespace shmsched::ipc::detail {
namespace {

struct TestRing {
  std::vector<std::atomic<std::uint64_t>> cells;
  std::atomic<std::uint64_t> head{0};
  std::atomic<std::uint64_t> tail{0};
  RingRef ref;

  explicit TestRing(std::uint64_t shift)
      : cells(1ULL << shift), ref{cells.data(), &head, &tail, (1ULL << shift) - 1, shift} {}

  // What a producer killed after its cell CAS and before its tail CAS leaves behind.
  void half_push(std::uint32_t index) {
    const std::uint64_t t = tail.load();
    cells[t & ref.mask].store(RingRef::make(ref.lap(t), index + 1ULL));
  }
};

TEST(IndexRing, FifoAcrossLaps) {
  TestRing r(2);  // 4 cells
  for (std::uint32_t round = 0; round < 10; ++round) {
    for (std::uint32_t i = 0; i < 4; ++i) ASSERT_TRUE(r.ref.push(round * 4 + i).has_value());
    EXPECT_FALSE(r.ref.push(99).has_value()) << "full";
    for (std::uint32_t i = 0; i < 4; ++i) ASSERT_EQ(r.ref.pop(), round * 4 + i);
    EXPECT_FALSE(r.ref.pop().has_value()) << "empty";
  }
}

TEST(IndexRing, NextPushHelpsATailLeftBehind) {
  TestRing r(3);
  r.half_push(7);
  ASSERT_EQ(r.ref.push(8), 1u);
  EXPECT_EQ(r.ref.pop(), 7u);
  EXPECT_EQ(r.ref.pop(), 8u);
}

TEST(IndexRing, PushAfterTheConsumerTookACellWhoseTailWasLeftBehind) {
  // The consumer reads cells, not the tail: it can take the half-pushed entry, moving the head
  // past the stale tail. The next push must still make progress.
  TestRing r(3);
  r.half_push(5);
  ASSERT_EQ(r.ref.pop(), 5u);
  EXPECT_EQ(r.head.load(), 1u);
  EXPECT_EQ(r.tail.load(), 0u);
  const auto pos = r.ref.push(6);
  ASSERT_TRUE(pos.has_value());
  EXPECT_EQ(*pos, 1u);
  EXPECT_EQ(r.ref.pop(), 6u);
}

TEST(IndexRing, PeekHelpsAHeadLeftBehind) {
  TestRing r(3);
  ASSERT_TRUE(r.ref.push(1).has_value());
  ASSERT_TRUE(r.ref.push(2).has_value());
  // A consumer killed after its cell CAS, before moving the head.
  r.cells[0].store(RingRef::make(1, 0));
  EXPECT_EQ(r.ref.peek(), 2u);
  EXPECT_EQ(r.head.load(), 1u);
}

}  // namespace
}  // namespace shmsched::ipc::detail
