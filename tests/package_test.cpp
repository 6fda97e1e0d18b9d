// The Debian packages, as an operator gets them: built with cpack from this build tree, unpacked
// into a scratch root (nothing on the machine changes), the unit checked by systemd-analyze, and
// the installed shmschedd started with the installed configuration and used through the
// installed shmschedctl.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "daemon_support.h"

namespace shmsched::test {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

struct Shell {
  int code = -1;
  std::string out;
};

// Runs a shell command; its exit code and what it printed (stdout and stderr).
Shell sh(const std::string& command) {
  Shell r;
  std::FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  while (std::fgets(buf.data(), buf.size(), p)) r.out += buf.data();
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string shell_quote(const std::string& s) {
  return "'" + s + "'";
}

TEST(Package, BuildsInstallsAndRuns) {
  const std::string dir = temp_dir("package");
  const std::string out = dir + "/out";
  const std::string root = dir + "/root";
  const Shell cpack = sh("cpack --config " + shell_quote(SHMSCHED_BINARY_DIR "/CPackConfig.cmake") +
                         " -B " + shell_quote(out));
  ASSERT_EQ(cpack.code, 0) << cpack.out;
  std::string server_deb, kafka_deb, etcd_deb;
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("shmsched_", 0) == 0 && e.path().extension() == ".deb") server_deb = e.path();
    if (name.rfind("shmsched-transport-kafka_", 0) == 0) kafka_deb = e.path();
    if (name.rfind("shmsched-transport-etcd_", 0) == 0) etcd_deb = e.path();
  }
  ASSERT_FALSE(server_deb.empty()) << cpack.out;
  ASSERT_FALSE(kafka_deb.empty()) << cpack.out;
  ASSERT_FALSE(etcd_deb.empty()) << cpack.out;

  // Runtime libraries only; librdkafka only with the kafka transport; the configuration is a
  // conffile.
  const Shell depends = sh("dpkg-deb -f " + shell_quote(server_deb) + " Depends");
  EXPECT_THAT(depends.out, HasSubstr("libzmq5"));
  EXPECT_THAT(depends.out, Not(HasSubstr("rdkafka")));
  EXPECT_THAT(depends.out, Not(HasSubstr("-dev")));
  EXPECT_THAT(sh("dpkg-deb -f " + shell_quote(kafka_deb) + " Depends").out,
              HasSubstr("librdkafka"));
  EXPECT_THAT(depends.out, Not(HasSubstr("grpc")));  // gRPC only with the etcd transport
  EXPECT_THAT(sh("dpkg-deb -f " + shell_quote(etcd_deb) + " Depends").out, HasSubstr("libgrpc"));
  EXPECT_THAT(sh("dpkg-deb --contents " + shell_quote(etcd_deb)).out,
              HasSubstr("/shmsched/plugins/libshmsched_transport_etcd.so"));
  const Shell conffiles = sh("dpkg-deb --info " + shell_quote(server_deb) + " conffiles");
  EXPECT_THAT(conffiles.out, HasSubstr(SHMSCHED_CONFIG_FILE));
  const Shell contents = sh("dpkg-deb --contents " + shell_quote(server_deb));
  EXPECT_THAT(contents.out, HasSubstr("sysusers.d/shmsched.conf"));
  EXPECT_THAT(contents.out, HasSubstr("/shmsched/plugins/libshmsched_transport_zeromq.so"));
  EXPECT_THAT(contents.out, Not(HasSubstr("transport_kafka")));
  EXPECT_THAT(contents.out, Not(HasSubstr("transport_flaky")));  // no test plugins

  ASSERT_EQ(sh("dpkg-deb -x " + shell_quote(server_deb) + " " + shell_quote(root)).code, 0);
  ASSERT_EQ(sh("dpkg-deb -x " + shell_quote(kafka_deb) + " " + shell_quote(root)).code, 0);
  const std::string prefix = root + SHMSCHED_INSTALL_PREFIX;
  const std::string unit = prefix + "/lib/systemd/system/shmschedd.service";
  std::ifstream unit_in(unit);
  const std::string unit_text((std::istreambuf_iterator<char>(unit_in)), {});
  // systemd-analyze checks the unit against this machine's systemd (its targets, /bin/kill) and
  // that ExecStart's binary exists: the same unit, with ExecStart pointing into the scratch root.
  const std::string checked = dir + "/verify/shmschedd.service";
  fs::create_directories(dir + "/verify");
  {
    std::string text = unit_text;
    const std::string from = "ExecStart=" SHMSCHED_INSTALL_PREFIX "/bin/";
    const auto at = text.find(from);
    ASSERT_NE(at, std::string::npos) << text;
    text.replace(at, from.size(), "ExecStart=" + prefix + "/bin/");
    std::ofstream(checked) << text;
  }
  const Shell verify = sh("systemd-analyze verify " + shell_quote(checked));
  EXPECT_EQ(verify.code, 0) << verify.out;
  EXPECT_THAT(unit_text, HasSubstr("ExecStart=" SHMSCHED_INSTALL_PREFIX
                                   "/bin/shmschedd --config=" SHMSCHED_CONFIG_FILE));

  // The installed daemon, with the installed configuration, finds its installed plugins.
  const std::string run_dir = dir + "/run";
  const std::string segment = segment_name("package");
  ipc::Segment::remove(segment);
  const std::string daemon_bin = prefix + "/bin/shmschedd";
  const Shell check =
      sh(shell_quote(daemon_bin) + " --config=" + shell_quote(root + SHMSCHED_CONFIG_FILE) +
         " --transports=zeromq,kafka --kafka.brokers=localhost:1 --check-config");
  EXPECT_EQ(check.code, 0) << check.out;
  EXPECT_THAT(check.out, HasSubstr(prefix));  // its plugins, not the build tree's
  const pid_t pid = ::fork();
  if (pid == 0) {
    const std::string log = dir + "/shmschedd.log";
    std::FILE* f = std::fopen(log.c_str(), "w");
    ::dup2(::fileno(f), 1);
    ::dup2(::fileno(f), 2);
    const std::string config = "--config=" + root + SHMSCHED_CONFIG_FILE;
    const std::string runtime = "--runtime-dir=" + run_dir;
    const std::string seg = "--segment=" + segment;
    // The installed configuration keeps an audit log in /var/lib/shmsched: here, in the test's.
    const std::string audit = "--audit-dir=" + dir + "/audit";
    ::execl(daemon_bin.c_str(), daemon_bin.c_str(), config.c_str(), runtime.c_str(), seg.c_str(),
            audit.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  const std::string ctl =
      shell_quote(prefix + "/bin/shmschedctl") + " --runtime-dir " + shell_quote(run_dir);
  Shell submit;
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  do {
    submit = sh(ctl + " submit --user alice --payload 'print(1)'");
  } while (submit.code != 0 && Clock::now() < deadline &&
           (std::this_thread::sleep_for(std::chrono::milliseconds(50)), true));
  EXPECT_EQ(submit.code, 0) << submit.out;
  EXPECT_THAT(sh(ctl + " stats").out, HasSubstr("dispatched"));
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  // The installed shmschedctl checks the log the installed daemon kept.
  const Shell audit_verify = sh(shell_quote(prefix + "/bin/shmschedctl") + " audit verify --dir " +
                                shell_quote(dir + "/audit"));
  EXPECT_EQ(audit_verify.code, 0) << audit_verify.out;
  EXPECT_THAT(audit_verify.out, HasSubstr("chain intact"));
  ipc::Segment::remove(segment);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace shmsched::test
