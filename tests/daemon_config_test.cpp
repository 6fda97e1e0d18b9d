// End-to-end: what the configuration says happens. A transport that cannot start stops the start
// unless it is optional; settings that take no effect are named; --check-config; a reload whose
// new transport is bad keeps the running configuration; docs/operations.md agrees with --help.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include "daemon_support.h"

namespace shmsched::test {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;

struct Output {
  int code = -1;
  std::string text;
};

// Runs shmschedd to completion (--help, --check-config) with `env` added; stdout and stderr.
Output run_shmschedd(const std::vector<std::string>& args,
                     const std::map<std::string, std::string>& env = {}) {
  const std::string out_file = temp_dir("run-out") + "/out";
  const pid_t pid = ::fork();
  if (pid == 0) {
    for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
    std::FILE* f = std::fopen(out_file.c_str(), "w");
    ::dup2(::fileno(f), 1);
    ::dup2(::fileno(f), 2);
    std::vector<std::string> argv = {SHMSCHED_BIN_DIR "/shmschedd"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    ::execv(cargv[0], cargv.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  std::ifstream in(out_file);
  Output o;
  o.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  o.text = std::string(std::istreambuf_iterator<char>(in), {});
  return o;
}

std::int64_t counter_of(Ingress& ingress, const std::string& name) {
  const Map stats = ingress.call(MapBuilder().str("op", "stats").finish());
  const auto* counters = ipc::find_field(stats.get(), "counters");
  return counters ? ipc::get_int(*counters, name).value_or(-1) : -1;
}

bool eventually(const std::function<bool()>& ok) {
  const auto deadline = Clock::now() + 10s;
  while (Clock::now() < deadline) {
    if (ok()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

// A transport named in `transports` that cannot start used to be skipped while the others ran:
// a silent loss for an audit or billing sink. It stops the start now, unless it is optional.
TEST(DaemonConfig, ARequiredTransportThatCannotStartStopsTheStart) {
  const std::string dir = temp_dir("required");
  const std::string segment = segment_name("required");
  ipc::Segment::remove(segment);
  Daemon required(dir, segment, {"--transports=zeromq,nosuch"});
  required.start(false);
  EXPECT_EQ(required.wait_exit(), 1);
  EXPECT_THAT(required.log_text(), HasSubstr("libshmsched_transport_nosuch.so"));
  EXPECT_THAT(required.log_text(), HasSubstr("'nosuch' could not start (see above) and is "
                                             "required"));
  // A flaky transport without its required option: the plugin's own message, and the stop.
  Daemon bad_option(dir, segment, {"--transports=zeromq,flaky"});
  bad_option.start(false);
  EXPECT_EQ(bad_option.wait_exit(), 1);
  EXPECT_THAT(bad_option.log_text(), HasSubstr("flaky.log_file is required"));
  // Optional: logged, and the others run.
  Daemon optional(dir, segment, {"--transports=zeromq,nosuch", "--optional-transports=nosuch"});
  optional.start();
  EXPECT_THAT(optional.log_text(), HasSubstr("transport nosuch is optional and not running"));
  Ingress ingress(optional.endpoint());
  EXPECT_TRUE(ingress.submit("o-1", "u").ok());
  EXPECT_EQ(optional.signal(SIGTERM), 0);
  // optional_transports names transports of the list only.
  const Output typo = run_shmschedd({"--transports=zeromq", "--optional-transports=kafka"});
  EXPECT_EQ(typo.code, 2);
  EXPECT_THAT(typo.text, HasSubstr("optional_transports = kafka is out of range"));
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// Options of a transport that is not listed, and SHMSCHED_* variables that name no option, took
// no effect and said nothing: a typo passed for a setting.
TEST(DaemonConfig, SettingsWithoutEffectAreNamedAndCheckConfigReportsThem) {
  const std::string dir = temp_dir("check");
  const std::string conf = dir + "/shmschedd.conf";
  std::ofstream(conf) << "transports = zeromq\nmax_active_executions = 5\n[kafka]\n"
                         "brokers = localhost:9092\n";
  const std::map<std::string, std::string> env = {{"SHMSCHED_MAX_QUEUE_SIZ", "10"},
                                                  {"SHMSCHED_TRANSPORT", "kafka"}};
  const Output ok = run_shmschedd(
      {"--config=" + conf, "--plugin-dir=" SHMSCHED_PLUGIN_DIR, "--check-config"}, env);
  EXPECT_EQ(ok.code, 0) << ok.text;
  EXPECT_THAT(ok.text, HasSubstr("configuration OK"));
  EXPECT_THAT(ok.text, HasSubstr("libshmsched_transport_zeromq.so"));
  EXPECT_THAT(ok.text, HasSubstr("option kafka.brokers (in " + conf +
                                 ") is ignored: transport 'kafka' is not in transports (zeromq)"));
  EXPECT_THAT(ok.text, HasSubstr("environment SHMSCHED_MAX_QUEUE_SIZ is ignored"));
  EXPECT_THAT(ok.text, HasSubstr("environment SHMSCHED_TRANSPORT is ignored"));
  // A bad value: exit 2, naming the key; a plugin that does not load: exit 2, naming the file.
  const Output bad = run_shmschedd({"--max-active-executions=0", "--check-config"});
  EXPECT_EQ(bad.code, 2);
  EXPECT_THAT(bad.text, HasSubstr("max_active_executions = 0 is out of range"));
  const Output old = run_shmschedd(
      {"--transports=zeromq,oldabi", "--plugin-dir=" SHMSCHED_PLUGIN_DIR, "--check-config"});
  EXPECT_EQ(old.code, 2) << old.text;
  EXPECT_THAT(old.text, HasSubstr("rebuild the plugin"));
  EXPECT_THAT(old.text, HasSubstr("configuration has errors"));
  // The running daemon logs the same warnings.
  const std::string segment = segment_name("check");
  ipc::Segment::remove(segment);
  Daemon d(dir, segment, {"--config=" + conf, "--kafka.topic=x"});
  d.env() = env;
  d.start();
  EXPECT_THAT(d.log_text(), HasSubstr("option kafka.topic (--kafka.topic) is ignored"));
  EXPECT_THAT(d.log_text(), HasSubstr("environment SHMSCHED_MAX_QUEUE_SIZ is ignored"));
  EXPECT_EQ(d.signal(SIGTERM), 0);
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// A reload that adds a required transport whose options its plugin refuses fails as a whole:
// the running configuration stays, the new scheduling settings included.
TEST(DaemonConfig, AReloadWithABadRequiredTransportKeepsTheRunningConfiguration) {
  const std::string dir = temp_dir("reload-bad");
  const std::string conf = dir + "/shmschedd.conf";
  const std::string segment = segment_name("reload-bad");
  ipc::Segment::remove(segment);
  std::ofstream(conf) << "transports = zeromq\nmax_active_executions = 3\n";
  Daemon d(dir, segment, {"--config=" + conf});
  d.start();
  Ingress ingress(d.endpoint());
  std::ofstream(conf) << "transports = zeromq,flaky\nmax_active_executions = 7\n";
  d.signal(SIGHUP);
  ASSERT_TRUE(eventually([&] {
    return d.log_text().find("reload failed, keeping the running configuration") !=
           std::string::npos;
  })) << d.log_text();
  EXPECT_THAT(d.log_text(), HasSubstr("flaky.log_file is required"));
  EXPECT_EQ(ingress.call(MapBuilder().str("op", "stats").finish()).integer("capacity"), 3);
  // Optional, the same transport does not hold the reload up.
  std::ofstream(conf) << "transports = zeromq,flaky\noptional_transports = flaky\n"
                         "max_active_executions = 7\n";
  d.signal(SIGHUP);
  ASSERT_TRUE(eventually([&] {
    return d.log_text().find("configuration reloaded") != std::string::npos;
  })) << d.log_text();
  EXPECT_EQ(ingress.call(MapBuilder().str("op", "stats").finish()).integer("capacity"), 7);
  EXPECT_EQ(d.signal(SIGTERM), 0);
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// docs/operations.md drifted from the code once (idle_spin_us documented as 50, 200 in --help):
// every key of --help is in the page's table with the same default, and every key of the table
// is an option.
TEST(DaemonConfig, TheOperationsPageAgreesWithHelp) {
  const Output help = run_shmschedd({"--help"});
  ASSERT_EQ(help.code, 0);
  std::map<std::string, std::string> help_defaults;  // key -> default ("" when none)
  const std::regex option(R"(^  --([a-z_]+)( arg)?( \(=([^)]*)\))?)");
  std::istringstream lines(help.text);
  for (std::string line; std::getline(lines, line);) {
    std::smatch m;
    if (std::regex_search(line, m, option)) help_defaults[m[1]] = m[4];
  }
  ASSERT_GT(help_defaults.size(), 25u) << help.text;
  std::ifstream page(SHMSCHED_SOURCE_DIR "/docs/operations.md");
  ASSERT_TRUE(page) << "docs/operations.md";
  std::map<std::string, std::string> documented;  // key -> first word of its default column
  const std::regex row(R"(^\| `([a-z_]+)` \| ([^|]*) \|)");
  bool in_table = false;  // the table headed "| key | default | meaning |"
  for (std::string line; std::getline(page, line);) {
    if (line.rfind("| key | default |", 0) == 0) in_table = true;
    if (line.empty()) in_table = false;
    std::smatch m;
    if (!in_table || !std::regex_search(line, m, row)) continue;
    std::string value = m[2];
    value.erase(std::remove(value.begin(), value.end(), '`'), value.end());
    value = value.substr(0, value.find(' '));
    documented[m[1]] = value;
  }
  for (const auto& [key, def] : help_defaults) {
    if (key == "help" || key == "version" || key == "config" || key == "check_config") continue;
    ASSERT_TRUE(documented.count(key)) << "--" << key << " is not in docs/operations.md";
    if (!def.empty()) {
      EXPECT_EQ(documented[key], def) << "the default of " << key;
    }
  }
  for (const auto& [key, def] : documented) {
    EXPECT_TRUE(help_defaults.count(key)) << key << " is documented but is no option";
  }
}

}  // namespace
}  // namespace shmsched::test

namespace shmsched::test {
namespace {

// The minimal C transport of docs/plugins.md, built from the header alone, runs beside zeromq.
TEST(DaemonConfig, TheMinimalCTransportOfThePluginPageWorks) {
  const std::string dir = temp_dir("minimal");
  const std::string segment = segment_name("minimal");
  const std::string out = dir + "/messages";
  ipc::Segment::remove(segment);
  Daemon d(dir, segment, {"--transports=zeromq,minimal", "--minimal.path=" + out});
  d.start();
  Ingress ingress(d.endpoint());
  ASSERT_TRUE(ingress.submit("m-1", "u").ok());
  EXPECT_TRUE(eventually([&] {
    std::ifstream in(out);
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    return text.find("ExecutionAccepted m-1\nCreatePodCommand m-1\n") != std::string::npos;
  }));
  EXPECT_TRUE(eventually([&] { return counter_of(ingress, "dispatched") == 1; }));
  EXPECT_EQ(d.signal(SIGTERM), 0);
  // Its own checks: a missing option is named.
  Daemon bad(dir, segment, {"--transports=minimal"});
  bad.start(false);
  EXPECT_EQ(bad.wait_exit(), 1);
  EXPECT_THAT(bad.log_text(), HasSubstr("minimal.path is required"));
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// A reload that adds a required transport which cannot start (zeromq binds in start(), here on
// an endpoint whose directory does not exist) fails as a whole: the pre-flight used to create
// the plugin only, the reload "succeeded", and dispatch went on without a required transport.
TEST(DaemonConfig, AReloadAddingARequiredTransportThatCannotStartFails) {
  const std::string dir = temp_dir("reload-start");
  const std::string conf = dir + "/shmschedd.conf";
  const std::string segment = segment_name("reload-start");
  ipc::Segment::remove(segment);
  std::ofstream(conf) << "transports = flaky\nflaky.log_file = " << dir << "/delivered\n";
  Daemon d(dir, segment, {"--config=" + conf});
  d.start();
  Ingress ingress(d.endpoint());
  std::ofstream(conf) << "transports = flaky,zeromq\nflaky.log_file = " << dir
                      << "/delivered\nzeromq.endpoint = ipc://" << dir << "/missing/events.sock\n";
  d.signal(SIGHUP);
  ASSERT_TRUE(eventually([&] {
    return d.log_text().find("reload failed") != std::string::npos ||
           d.log_text().find("configuration reloaded") != std::string::npos;
  })) << d.log_text();
  EXPECT_THAT(d.log_text(), HasSubstr("reload failed, keeping the running configuration"))
      << d.log_text();
  EXPECT_THAT(d.log_text(), Not(HasSubstr("configuration reloaded: transports flaky,zeromq")));
  // The running configuration goes on: work is dispatched through flaky as before.
  ASSERT_TRUE(ingress.submit("r-1", "u").ok());
  EXPECT_TRUE(eventually([&] { return counter_of(ingress, "dispatched") >= 1; }));
  EXPECT_EQ(d.signal(SIGTERM), 0);
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
}

// --check-config agrees with a start: it asks the plugins about their options (it passed one that
// cannot start), and an optional transport's missing plugin is a warning (it failed one that
// starts).
TEST(DaemonConfig, CheckConfigAgreesWithWhatTheStartDoes) {
  const Output bad_option =
      run_shmschedd({"--plugin-dir=" SHMSCHED_PLUGIN_DIR, "--zeromq.bogus=1", "--check-config"});
  EXPECT_EQ(bad_option.code, 2) << "start exits 1 on it: " << bad_option.text;
  const Output optional_missing =
      run_shmschedd({"--plugin-dir=" SHMSCHED_PLUGIN_DIR, "--transports=zeromq,nosuch",
                     "--optional-transports=nosuch", "--check-config"});
  EXPECT_EQ(optional_missing.code, 0) << "the daemon starts with it: " << optional_missing.text;
}

// SHMSCHED_CHECK_CONFIG (like SHMSCHED_HELP, SHMSCHED_VERSION) is not taken from the
// environment: one such line in an EnvironmentFile turned every start into a check.
TEST(DaemonConfig, CheckConfigIsNotTakenFromTheEnvironment) {
  const std::string dir = temp_dir("env-check");
  // A start (that fails at once: its transport does not exist), not a check.
  const Output o = run_shmschedd({"--plugin-dir=" SHMSCHED_PLUGIN_DIR, "--runtime-dir=" + dir,
                                  "--segment=" + segment_name("env-check"), "--transports=nosuch"},
                                 {{"SHMSCHED_CHECK_CONFIG", "1"}});
  EXPECT_THAT(o.text, Not(HasSubstr("configuration OK"))) << "exit " << o.code << ": " << o.text;
  EXPECT_EQ(o.code, 1) << o.text;
  EXPECT_THAT(o.text, HasSubstr("environment SHMSCHED_CHECK_CONFIG is ignored"));
  std::filesystem::remove_all(dir);
}

// Review: the unsigned validate overload dropped boost's check_first_occurrence: a setting
// given twice is refused for every other type ("cannot be specified more than once") but an
// unsigned one took the last value silently (on the command line and in the config file).
TEST(DaemonConfig, FifthReviewAnUnsignedSettingGivenTwiceIsRefusedLikeAStringOne) {
  const Output str = run_shmschedd({"--plugin-dir=" SHMSCHED_PLUGIN_DIR, "--log-level=info",
                                    "--log-level=debug", "--check-config"});
  EXPECT_EQ(str.code, 2) << str.text;
  const Output flags = run_shmschedd({"--plugin-dir=" SHMSCHED_PLUGIN_DIR, "--max-queue-size=100",
                                      "--max-queue-size=200000", "--check-config"});
  EXPECT_EQ(flags.code, 2) << "taken silently: " << flags.text;
  const std::string dir = temp_dir("twice");
  {
    std::ofstream f(dir + "/shmschedd.conf");
    f << "max_queue_size = 100\nmax_queue_size = 200000\n";
  }
  const Output file = run_shmschedd({"--plugin-dir=" SHMSCHED_PLUGIN_DIR,
                                     "--config=" + dir + "/shmschedd.conf", "--check-config"});
  EXPECT_EQ(file.code, 2) << "taken silently: " << file.text;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shmsched::test
