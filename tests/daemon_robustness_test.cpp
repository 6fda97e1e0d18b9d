// End-to-end: shmschedd under conditions the queue's other users create, found in review
// (issue 7): a full participant table, participants frozen inside an operation.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "daemon_support.h"
#include "shmsched/ipc/queue.h"

namespace shmsched::test {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

std::string segment_name(const std::string& tag) {
  static int n = 0;
  return "shmsched-rb-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
}

std::vector<std::byte> bytes_of(const std::string& s) {
  const auto* b = reinterpret_cast<const std::byte*>(s.data());
  return {b, b + s.size()};
}

std::optional<std::string> wait_for_file(const std::string& path, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (std::filesystem::exists(path)) {
      std::ifstream in(path, std::ios::binary);
      return std::string((std::istreambuf_iterator<char>(in)), {});
    }
    std::this_thread::sleep_for(10ms);
  }
  return std::nullopt;
}

// Hands a submit of `id` to the flaky transport's inbound directory, as a broker would.
void drop_request(const std::string& dir, const std::string& name, const std::string& id) {
  const auto req = MapBuilder()
                       .str("op", "submit")
                       .str("execution_id", id)
                       .str("user_id", "u")
                       .bin("payload", bytes_of("x"))
                       .finish();
  std::ofstream(dir + "/" + name + ".tmp", std::ios::binary)
      .write(reinterpret_cast<const char*>(req.data()), static_cast<std::streamsize>(req.size()));
  std::filesystem::rename(dir + "/" + name + ".tmp", dir + "/" + name + ".req");
}

Map stats_of(Ingress& in) {
  return in.call(MapBuilder().str("op", "stats").finish());
}

std::int64_t counter(const Map& stats, const std::string& name) {
  const auto* counters = ipc::find_field(stats.get(), "counters");
  return counters ? ipc::get_int(*counters, name).value_or(-1) : -1;
}

// Item 3: with every participant entry taken by other processes, shmschedd used to abort (its
// ingress thread could not register) and a transport's inbound submit threw out of the loop.
// A full table is an error answered to the one request, logged and counted.
TEST(DaemonRobustness, FullParticipantTableIsAnErrorForTheRequestNotACrash) {
  const std::string dir = temp_dir("full-table");
  const std::string inbound = dir + "/inbound";
  std::filesystem::create_directories(inbound);
  const std::string segment = segment_name("full-table");
  ipc::Segment::remove(segment);
  // Consumer + ingress producer + the loop's producer for transport submits = 3 entries.
  Daemon daemon(dir, segment,
                {"--max-participants=3", "--transports=zeromq,flaky",
                 "--flaky.log_file=" + dir + "/delivered", "--flaky.inbound_dir=" + inbound});
  daemon.start();
  ASSERT_EQ(daemon.signal(SIGTERM), 0);
  // Other processes take every entry the supervisor would use.
  auto seg = ipc::Segment::attach(segment);
  std::vector<std::unique_ptr<ipc::Producer>> hogs;
  for (int i = 0; i < 2; ++i) hogs.push_back(std::make_unique<ipc::Producer>(seg));
  daemon.start();
  Ingress ingress(daemon.endpoint());

  auto r = ingress.submit("zmq-1", "u");
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.str("error"), "queue_full");
  EXPECT_THAT(r.str("message"), HasSubstr("max_participants"));
  // A submit arriving through a transport is answered (and acknowledged) too.
  drop_request(inbound, "t1", "kafka-1");
  const auto reply = wait_for_file(inbound + "/t1.reply", 10s);
  ASSERT_TRUE(reply) << daemon.log_text();
  const Map decoded = decode(reply->data(), reply->size());
  EXPECT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.str("error"), "queue_full");
  EXPECT_TRUE(wait_for_file(inbound + "/t1.acked", 10s));

  // Still running, and it says what happened.
  EXPECT_EQ(::waitpid(daemon.pid(), nullptr, WNOHANG), 0) << daemon.log_text();
  const auto stats = stats_of(ingress);
  EXPECT_TRUE(stats.ok());
  EXPECT_GE(counter(stats, "rejected_no_participant_entry"), 2);
  EXPECT_THAT(daemon.log_text(), HasSubstr("max_participants"));

  // Entries free again: submits go through, by both ways.
  hogs.clear();
  EXPECT_TRUE(ingress.submit("zmq-2", "u").ok());
  drop_request(inbound, "t2", "kafka-2");
  const auto reply2 = wait_for_file(inbound + "/t2.reply", 10s);
  ASSERT_TRUE(reply2);
  EXPECT_TRUE(decode(reply2->data(), reply2->size()).ok());
  EXPECT_EQ(daemon.signal(SIGTERM), 0);
  seg.reset();
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shmsched::test
