// Creating and attaching segments: sizes, permissions, and the refusals with their messages.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "queue_test_support.h"

namespace shmsched::test {
namespace {

using ::testing::HasSubstr;

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(Segment, CreateAttachAndConfigRoundTrip) {
  auto cfg = small_config();
  cfg.mode = 0640;
  TempSegment seg(cfg);
  auto again = ipc::Segment::attach(seg.name());
  const auto have = again->config();
  EXPECT_EQ(have.max_queue_size, cfg.max_queue_size);
  EXPECT_EQ(have.max_payload_bytes, cfg.max_payload_bytes);
  EXPECT_EQ(have.max_users, cfg.max_users);
  EXPECT_EQ(have.mode, 0640u);
  struct stat st {};
  ASSERT_EQ(::stat(("/dev/shm/" + seg.name()).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u) << "the configured mode must win over the umask";
  // Anything enqueued through one mapping is visible through the other.
  ipc::Producer p(seg.segment());
  ASSERT_TRUE(submit(p, "x", "u").accepted());
  ipc::Producer q(again);
  EXPECT_EQ(q.status("x")->user_id, "u");
}

TEST(Segment, AttachToMissingSegmentSaysToStartTheSupervisor) {
  EXPECT_THAT(error_of([] { ipc::Segment::attach(unique_segment_name("missing")); }),
              HasSubstr("start the supervisor"));
}

TEST(Segment, CreateRefusesAnExistingSegment) {
  TempSegment seg;
  EXPECT_THAT(error_of([&] { ipc::Segment::create(seg.name(), small_config()); }),
              HasSubstr("already exists"));
}

TEST(Segment, OpenOrCreateRefusesOtherSizesAndNamesThem) {
  TempSegment seg;
  auto other = small_config();
  other.max_queue_size = 128;
  EXPECT_THAT(error_of([&] { ipc::Segment::open_or_create(seg.name(), other); }),
              HasSubstr("max_queue_size=64"));
  EXPECT_NO_THROW(ipc::Segment::open_or_create(seg.name(), small_config()));
}

TEST(Segment, AttachRefusesAnotherLayoutVersion) {
  TempSegment seg;
  // Poke the version field (right after the 8-byte magic) as a newer build would have it.
  const int fd = ::shm_open(("/" + seg.name()).c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  std::uint32_t version = 99;
  ASSERT_EQ(::pwrite(fd, &version, sizeof version, 8), static_cast<ssize_t>(sizeof version));
  ::close(fd);
  const auto msg = error_of([&] { ipc::Segment::attach(seg.name()); });
  EXPECT_THAT(msg, HasSubstr("layout version 99"));
  EXPECT_THAT(msg, HasSubstr("remove it"));
}

TEST(Segment, AttachRefusesATruncatedOrForeignFile) {
  const std::string name = unique_segment_name("foreign");
  const int fd = ::shm_open(("/" + name).c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 100), 0);
  EXPECT_THAT(error_of([&] { ipc::Segment::attach(name); }), HasSubstr("too small"));
  ASSERT_EQ(::ftruncate(fd, 1 << 20), 0);
  EXPECT_THAT(error_of([&] { ipc::Segment::attach(name); }), HasSubstr("not initialised"));
  std::uint64_t junk = 0x1234;
  ASSERT_EQ(::pwrite(fd, &junk, sizeof junk, 0), static_cast<ssize_t>(sizeof junk));
  EXPECT_THAT(error_of([&] { ipc::Segment::attach(name); }), HasSubstr("not a shmsched queue"));
  ::close(fd);
  ipc::Segment::remove(name);
}

TEST(Segment, InvalidConfigurationNamesTheKey) {
  auto cfg = small_config();
  cfg.max_queue_size = 0;
  EXPECT_THAT(error_of([&] { cfg.validate(); }), HasSubstr("max_queue_size = 0"));
  cfg = small_config();
  cfg.mode = 0444;
  EXPECT_THAT(error_of([&] { cfg.validate(); }), HasSubstr("mode"));
}

TEST(Segment, OnlyOneLiveConsumer) {
  TempSegment seg;
  ipc::Consumer first(seg.segment());
  EXPECT_THAT(error_of([&] { ipc::Consumer second(seg.segment()); }),
              HasSubstr("already has a live consumer"));
}

// A supervisor killed by SIGKILL releases its lock file as its files close, a moment before the
// kernel has it gone: a standby that takes the lock then found the consumer still "live" and
// refused to start (CI, DaemonE2E.KilledSupervisorIsReplacedByAStandby). A consumer that is on
// its way out is waited for, as long as takeover_wait.
TEST(Segment, AConsumerOnItsWayOutIsWaitedFor) {
  TempSegment seg;
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ipc::Consumer dying(seg.segment());
    (void)!::write(ready[1], "r", 1);
    ::usleep(300'000);
    ::_exit(0);  // without deregistering, as a killed process
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ipc::ConsumerOptions o;
  o.takeover_wait = std::chrono::seconds(10);
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<ipc::Consumer> next;
  EXPECT_NO_THROW(next = std::make_unique<ipc::Consumer>(seg.segment(), o));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  ::waitpid(child, nullptr, 0);
  ::close(ready[0]);
  ::close(ready[1]);
}

TEST(Segment, ParticipantTableFullIsReported) {
  auto cfg = small_config();
  cfg.max_participants = 2;
  TempSegment seg(cfg);
  ipc::Producer a(seg.segment());
  ipc::Producer b(seg.segment());
  EXPECT_THAT(error_of([&] { ipc::Producer c(seg.segment()); }), HasSubstr("max_participants"));
}

}  // namespace
}  // namespace shmsched::test

namespace shmsched::test {
namespace {

// Pages of the shared-memory object /dev/shm/<name> that are in memory (another mapping of the
// same object, so that what the segment's own mapping did is seen from outside).
std::size_t resident_pages(const std::string& name) {
  const int fd = ::open(("/dev/shm/" + name).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  struct stat st {};
  ::fstat(fd, &st);
  const auto size = static_cast<std::size_t>(st.st_size);
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) return 0;
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> in((size + page - 1) / page);
  ::mincore(p, size, in.data());
  ::munmap(p, size);
  std::size_t n = 0;
  for (const unsigned char c : in) n += c & 1;
  return n;
}

// A refill from the journal maps the slots it will fill in ahead (one madvise instead of a fault
// per page); only what the entries need.
TEST(Segment, PrefaultMapsInTheSlotsOfTheEntriesAndNoMore) {
  ipc::SegmentConfig cfg = small_config();
  cfg.max_queue_size = 2000;
  cfg.max_payload_bytes = 8192;  // a slot spans more than two pages
  TempSegment seg(cfg);
  const std::size_t before = resident_pages(seg.name());
  ASSERT_EQ(seg.segment()->prefault(100), 0) << "madvise(MADV_POPULATE_WRITE) failed";
  const std::size_t after = resident_pages(seg.name());
  EXPECT_GE(after - before, 200u) << "100 slots of over 8 KiB each were not mapped in";
  EXPECT_LT(after - before, 1000u) << "more than the 100 entries' slots were mapped in";
}

}  // namespace
}  // namespace shmsched::test
