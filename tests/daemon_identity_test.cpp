// End-to-end: identity on the local ingress. Real clients under other uids (throwaway users the
// test creates, as root) talk to a real shmschedd: a client acts for its own user only, members
// of the trusted group for anyone, and a refused operation changes nothing in the queue.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>

#include "daemon_support.h"
#include "shmsched/ipc/queue.h"

namespace shmsched::test {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

const char* const kAlice = "shmt-alice";
const char* const kBob = "shmt-bob";
const char* const kOrch = "shmt-orch";         // a member of the trusted group
const char* const kGroup = "shmt-orchestras";  // the trusted group

int run(const std::string& command) {
  const int status = std::system((command + " >/dev/null 2>&1").c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Throwaway users and a group, removed again at the end (also when a run before failed).
class Users {
 public:
  Users() {
    cleanup();
    run(std::string("groupadd --system ") + kGroup);
    for (const char* u : {kAlice, kBob, kOrch}) {
      run(std::string("useradd --system --no-create-home --user-group --shell /usr/sbin/nologin ") +
          u);
    }
    run(std::string("usermod -aG ") + kGroup + " " + kOrch);
  }
  ~Users() { cleanup(); }
  bool ok() const {
    return run(std::string("id ") + kAlice) == 0 && run(std::string("id ") + kOrch) == 0;
  }

 private:
  static void cleanup() {
    for (const char* u : {kAlice, kBob, kOrch}) run(std::string("userdel ") + u);
    run(std::string("groupdel ") + kGroup);
  }
};

struct Output {
  int code = -1;
  std::string text;
};

// shmschedctl over the ingress, as `user` (its own groups, as login would give them).
Output ctl_as(const std::string& user, const std::string& runtime_dir, const std::string& args) {
  const std::string cmd = "setpriv --reuid=" + user + " --regid=" + user + " --init-groups " +
                          SHMSCHED_BIN_DIR "/shmschedctl --runtime-dir " + runtime_dir +
                          " --json " + args + " 2>&1";
  Output o;
  std::FILE* p = ::popen(cmd.c_str(), "r");
  char buf[4096];
  while (p && std::fgets(buf, sizeof buf, p)) o.text += buf;
  const int status = p ? ::pclose(p) : -1;
  o.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return o;
}

TEST(DaemonIdentity, LocalClientsActForThemselvesUnlessTrusted) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to create throwaway users";
  Users users;
  ASSERT_TRUE(users.ok()) << "useradd failed";
  const std::string dir = temp_dir("identity");
  std::filesystem::permissions(dir, std::filesystem::perms::all);  // others reach the socket
  const std::string segment = segment_name("identity");
  ipc::Segment::remove(segment);
  Daemon d(dir, segment, {std::string("--trusted-group=") + kGroup});
  // Its sockets writable by everyone (under systemd: the runtime directory's group instead).
  d.prefix() = {"/bin/sh", "-c", "umask 000; exec \"$0\" \"$@\""};
  d.start();
  Ingress root(d.endpoint());
  auto submitted = [&] {
    const Map stats = root.call(MapBuilder().str("op", "stats").finish());
    return ipc::get_int(*ipc::find_field(stats.get(), "counters"), "submitted").value_or(-1);
  };

  // For itself: yes. For another user: unauthorized, and nothing is queued.
  Output o = ctl_as(kAlice, dir, std::string("submit --via-ingress --id a1 --user ") + kAlice);
  EXPECT_EQ(o.code, 0) << o.text;
  EXPECT_THAT(o.text, HasSubstr("\"ok\":true"));
  const auto before = submitted();
  o = ctl_as(kAlice, dir, std::string("submit --via-ingress --id a2 --user ") + kBob);
  EXPECT_EQ(o.code, 1) << o.text;
  EXPECT_THAT(o.text, HasSubstr("unauthorized"));
  EXPECT_THAT(o.text, HasSubstr("local user 'shmt-alice'"));
  EXPECT_EQ(submitted(), before);
  EXPECT_EQ(root.op("status", "a2").str("error"), "not_found");

  // Bob's execution: Alice may not cancel it (it stays queued), Bob may.
  ASSERT_TRUE(root.submit("b1", kBob).ok());
  ASSERT_TRUE(root.submit("b2", kBob).ok());
  o = ctl_as(kAlice, dir, "cancel b1");
  EXPECT_THAT(o.text, HasSubstr("unauthorized")) << o.text;
  EXPECT_THAT(root.op("status", "b1").str("state"), Not(HasSubstr("cancelled")));
  EXPECT_EQ(root.op("status", "b1").str("execution_id"), "b1");
  o = ctl_as(kAlice, dir, "complete b1");
  EXPECT_THAT(o.text, HasSubstr("not_owner")) << o.text;
  o = ctl_as(kBob, dir, "cancel b1");
  EXPECT_EQ(o.code, 0) << o.text;

  // A member of the trusted group acts for anyone; reads are open to everyone.
  o = ctl_as(kOrch, dir, std::string("submit --via-ingress --id o1 --user ") + kAlice);
  EXPECT_EQ(o.code, 0) << o.text;
  o = ctl_as(kOrch, dir, "cancel b2");
  EXPECT_EQ(o.code, 0) << o.text;
  o = ctl_as(kAlice, dir, "status o1");
  EXPECT_THAT(o.text, HasSubstr("\"user_id\":\"shmt-alice\"")) << o.text;
  o = ctl_as(kBob, dir, "stats");
  EXPECT_THAT(o.text, HasSubstr("\"rejected_unauthorized\":3")) << o.text;

  EXPECT_EQ(d.signal(SIGTERM), 0);

  // The check can be turned off: every local client is trusted, as before it was checked.
  Daemon open(dir, segment, {"--check-identity=false"});
  open.prefix() = d.prefix();
  open.start();
  o = ctl_as(kAlice, dir, std::string("submit --via-ingress --id x1 --user ") + kBob);
  EXPECT_EQ(o.code, 0) << o.text;
  EXPECT_EQ(open.signal(SIGTERM), 0);
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// The owner is checked where the loop acts, not when the request arrives: a cancel of an id that
// nobody held yet, carried out after its owner submitted it, does not cancel it (it did once,
// when the ingress checked on arrival).
TEST(DaemonIdentity, ACancelArrivingBeforeTheOwnersSubmitDoesNotCancelIt) {
  using namespace std::chrono_literals;
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to create throwaway users";
  Users users;
  ASSERT_TRUE(users.ok()) << "useradd failed";
  const std::string dir = temp_dir("identity-toctou");
  std::filesystem::permissions(dir, std::filesystem::perms::all);
  const std::string segment = segment_name("identity-toctou");
  const std::string block_file = dir + "/block";
  ipc::Segment::remove(segment);
  Daemon d(dir, segment,
           {std::string("--trusted-group=") + kGroup, "--transports=zeromq,flaky",
            "--flaky.log_file=" + dir + "/delivered", "--flaky.block_file=" + block_file});
  d.prefix() = {"/bin/sh", "-c", "umask 000; exec \"$0\" \"$@\""};
  d.start();
  Ingress root(d.endpoint());
  // The loop is busy (here: in a slow transport call) ...
  std::ofstream(block_file).put('x');
  ASSERT_TRUE(root.submit("w", kBob).ok());
  const auto until = Clock::now() + 10s;
  while (Clock::now() < until) {
    std::ifstream in(dir + "/delivered");
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    if (text.find("ExecutionAccepted w") != std::string::npos) break;
    std::this_thread::sleep_for(10ms);
  }
  // ... Alice cancels "v1", which nobody holds yet (the loop has it in its inbox) ...
  const auto requests = [&] {
    const Map stats = root.call(MapBuilder().str("op", "stats").finish());
    return ipc::get_int(*ipc::find_field(stats.get(), "counters"), "ingress_requests").value_or(0);
  };
  const auto before_cancel = requests();
  auto alice = std::async(std::launch::async, [&] { return ctl_as(kAlice, dir, "cancel v1"); });
  const auto arrived = Clock::now() + 10s;
  while (requests() < before_cancel + 2 && Clock::now() < arrived) {  // + this stats call
    std::this_thread::sleep_for(10ms);
  }
  // ... Bob submits v1 (the ingress answers submits itself) ...
  ASSERT_TRUE(root.submit("v1", kBob).ok());
  std::filesystem::remove(block_file);
  const Output o = alice.get();
  // ... and Alice's cancel, carried out by the loop now, cancels Bob's execution.
  EXPECT_THAT(o.text, Not(HasSubstr("\"ok\":true"))) << "Alice cancelled Bob's v1: " << o.text;
  const Map st = root.op("status", "v1");
  EXPECT_NE(st.str("state"), "cancelled") << "v1 of " << st.str("user_id") << " is cancelled";
  EXPECT_EQ(d.signal(SIGTERM), 0);
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// The check does not depend on the ingress reading the queue: with every participant entry taken
// by other producers (the ingress cannot look anything up), a complete of another user's
// dispatched execution is still refused (it went through once: "cannot look up" read as "not
// queued").
TEST(DaemonIdentity, WithoutAParticipantEntryNobodyCompletesAnotherUsersExecution) {
  using namespace std::chrono_literals;
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to create throwaway users";
  Users users;
  ASSERT_TRUE(users.ok()) << "useradd failed";
  const std::string dir = temp_dir("identity-full");
  std::filesystem::permissions(dir, std::filesystem::perms::all);
  const std::string segment = segment_name("identity-full");
  ipc::Segment::remove(segment);
  // Consumer + ingress producer + the loop's producer = 3 entries.
  Daemon d(dir, segment, {std::string("--trusted-group=") + kGroup, "--max-participants=3"});
  d.prefix() = {"/bin/sh", "-c", "umask 000; exec \"$0\" \"$@\""};
  d.start();  // ready = stats answered, which registers nothing
  // Producers of the shared-memory path (shmschedctl without --via-ingress) hold the entries.
  auto seg = ipc::Segment::attach(segment);
  std::vector<std::unique_ptr<ipc::Producer>> producers;
  for (int i = 0; i < 2; ++i) producers.push_back(std::make_unique<ipc::Producer>(seg));
  ipc::protocol::SubmitOp op;
  op.user_id = kBob;
  ASSERT_TRUE(producers[0]->submit(ipc::protocol::to_submit_request(op, "b1")).accepted());
  Ingress root(d.endpoint());
  const auto until = Clock::now() + 10s;
  while (Clock::now() < until) {
    const Map stats = root.call(MapBuilder().str("op", "stats").finish());
    if (ipc::get_int(*ipc::find_field(stats.get(), "counters"), "dispatched").value_or(0) >= 1) {
      break;
    }
    std::this_thread::sleep_for(20ms);
  }
  const Output o = ctl_as(kAlice, dir, "complete b1");
  EXPECT_THAT(o.text, Not(HasSubstr("\"ok\":true"))) << "Alice completed Bob's b1: " << o.text;
  producers.clear();
  EXPECT_EQ(root.op("status", "b1").str("state"), "dispatched")
      << root.op("status", "b1").str("state");
  EXPECT_EQ(d.signal(SIGTERM), 0);
  seg.reset();
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shmsched::test
