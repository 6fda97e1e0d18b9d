// End-to-end helpers: the real shmschedd process in a temporary runtime directory, a client on
// its ingress, and a subscriber on the zeromq transport's events.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <msgpack.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "shmsched/ipc/client.h"
#include "shmsched/ipc/protocol.h"

namespace shmsched::test {

using ipc::protocol::MapBuilder;
using Clock = std::chrono::steady_clock;

inline std::string temp_dir(const std::string& tag) {
  static int counter = 0;
  const std::string dir = "/tmp/shmsched-e2e-" + tag + "-" + std::to_string(::getpid()) + "-" +
                          std::to_string(counter++);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// CPU time (user + system) the process used so far, in clock ticks.
inline long cpu_ticks(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(in, line);
  std::istringstream rest(line.substr(line.rfind(')') + 2));
  std::string field;
  long utime = 0;
  long stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stol(field);
    if (i == 15) stime = std::stol(field);
  }
  return utime + stime;
}

// The peak resident set of a process so far (VmHWM), in KiB.
inline long peak_rss_kb(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  }
  return 0;
}

// A segment name of its own for each test (tests run in parallel).
inline std::string segment_name(const std::string& tag) {
  static int n = 0;
  return "shmsched-test-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
}

// Runs tests/tools/crash_point_producer: a producer that submits `id` and stops ("stop") or
// dies ("kill") at the first crash point matching `site`. Returns its pid and wait status once
// it has.
inline std::pair<pid_t, int> crash_point_producer(const std::string& segment,
                                                  const std::string& how, const std::string& site,
                                                  const std::string& id) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl(SHMSCHED_BIN_DIR "/crash_point_producer", "crash_point_producer", segment.c_str(),
            how.c_str(), site.c_str(), id.c_str(), "p", nullptr);
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, WUNTRACED);
  return {pid, status};
}

// One running shmschedd.
class Daemon {
 public:
  Daemon(std::string runtime_dir, std::string segment, std::vector<std::string> args)
      : runtime_dir_(std::move(runtime_dir)),
        segment_(std::move(segment)),
        args_(std::move(args)) {}

  ~Daemon() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  // Starts the process; with `wait_ready`, returns once the ingress answers.
  void start(bool wait_ready = true) {
    std::vector<std::string> argv = {SHMSCHED_BIN_DIR "/shmschedd",
                                     "--runtime-dir=" + runtime_dir_,
                                     "--segment=" + segment_,
                                     "--plugin-dir=" SHMSCHED_PLUGIN_DIR,
                                     "--idle-spin-us=0",
                                     "--log-level=debug"};
    argv.insert(argv.end(), args_.begin(), args_.end());
    // The HTTP endpoint is off unless a test asks for it: tests run in parallel, and its
    // default port would be taken by the first.
    if (std::none_of(args_.begin(), args_.end(),
                     [](const std::string& a) { return a.rfind("--metrics-listen", 0) == 0; })) {
      argv.push_back("--metrics-listen=off");
    }
    argv.insert(argv.begin(), prefix_.begin(), prefix_.end());
    log_ = runtime_dir_ + "/shmschedd-" + std::to_string(starts_++) + ".log";
    pid_ = ::fork();
    if (pid_ == 0) {
      for (const auto& [k, v] : env_) ::setenv(k.c_str(), v.c_str(), 1);
      const int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      if (env_.count("JOURNAL_STREAM") && env_.at("JOURNAL_STREAM") == "auto") {
        // As systemd does: stderr's device and inode, so the daemon knows it is "the journal".
        struct stat st {};
        ::fstat(2, &st);
        ::setenv("JOURNAL_STREAM",
                 (std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino)).c_str(), 1);
      }
      std::vector<char*> cargv;
      for (auto& a : argv) cargv.push_back(a.data());
      cargv.push_back(nullptr);
      ::execv(cargv[0], cargv.data());
      ::_exit(127);
    }
    if (wait_ready) wait_until_ready();
  }

  void wait_until_ready() {
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    while (Clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("shmschedd exited during start-up:\n" + log_text());
      }
      try {
        ipc::ClientOptions o;
        o.endpoint = endpoint();
        o.use_shared_memory = false;
        o.timeout = std::chrono::milliseconds(200);
        ipc::Client c(o);
        c.call(MapBuilder().str("op", "stats").finish());
        return;
      } catch (const std::exception&) {
      }
    }
    throw std::runtime_error("shmschedd did not answer within 20 s:\n" + log_text());
  }

  // Sends a signal; for SIGTERM/SIGINT waits for the exit and returns its code.
  int signal(int sig) {
    ::kill(pid_, sig);
    if (sig != SIGTERM && sig != SIGINT && sig != SIGKILL) return 0;
    return wait_exit();
  }

  int wait_exit() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  pid_t pid() const { return pid_; }
  std::string endpoint() const { return "ipc://" + runtime_dir_ + "/ingress.sock"; }
  std::string events_endpoint() const { return "ipc://" + runtime_dir_ + "/events.sock"; }
  const std::string& runtime_dir() const { return runtime_dir_; }
  const std::string& segment() const { return segment_; }
  std::vector<std::string>& args() { return args_; }
  // Environment variables set in the daemon's process (NOTIFY_SOCKET, WATCHDOG_USEC, ...).
  std::map<std::string, std::string>& env() { return env_; }
  // A command the daemon runs under ("unshare", ...); it must exec its arguments in place.
  std::vector<std::string>& prefix() { return prefix_; }

  std::string log_text() const {
    std::ifstream in(log_);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

 private:
  std::string runtime_dir_;
  std::string segment_;
  std::vector<std::string> args_;
  std::map<std::string, std::string> env_;
  std::vector<std::string> prefix_;
  std::string log_;
  pid_t pid_ = -1;
  int starts_ = 0;
};

// A decoded event or reply, with its bytes kept alive.
struct Map {
  std::shared_ptr<msgpack::object_handle> handle;
  const msgpack::object& get() const { return handle->get(); }
  std::string str(std::string_view key) const { return ipc::get_string(get(), key).value_or(""); }
  std::int64_t integer(std::string_view key) const { return ipc::get_int(get(), key).value_or(-1); }
  bool has(std::string_view key) const { return ipc::find_field(get(), key) != nullptr; }
  bool ok() const { return ipc::get_bool(get(), "ok").value_or(false); }
};

inline Map decode(const void* data, std::size_t n) {
  return Map{
      std::make_shared<msgpack::object_handle>(msgpack::unpack(static_cast<const char*>(data), n))};
}

// Subscribes to every event of the zeromq transport.
class Events {
 public:
  explicit Events(const std::string& endpoint) : sub_(ctx_, zmq::socket_type::sub) {
    sub_.set(zmq::sockopt::subscribe, "");
    sub_.set(zmq::sockopt::rcvtimeo, 200);
    sub_.connect(endpoint);
  }

  // The next event of `type` (others are kept in history), or nullopt after `timeout`.
  std::optional<Map> next(const std::string& type,
                          std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      for (std::size_t i = cursor_.count(type) ? cursor_[type] : synced_at_; i < history_.size();
           ++i) {
        // The topic is the type, or "<type>.<worker>" for a message meant for one worker.
        const std::string& topic = history_[i].first;
        if (topic == type || topic.rfind(type + ".", 0) == 0) {
          cursor_[type] = i + 1;
          return history_[i].second;
        }
      }
      cursor_[type] = history_.size();
      if (Clock::now() > deadline) return std::nullopt;
      zmq::message_t topic, body;
      if (!sub_.recv(topic)) continue;
      if (!sub_.recv(body)) continue;
      history_.emplace_back(topic.to_string(), decode(body.data(), body.size()));
    }
  }

  // Collects events for `quiet` (no event of `type` may arrive): returns how many arrived.
  std::size_t count_for(const std::string& type, std::chrono::milliseconds window) {
    std::size_t n = 0;
    while (next(type, window)) ++n;
    return n;
  }

  const std::vector<std::pair<std::string, Map>>& history() const { return history_; }

  // A SUB socket misses what is published before its subscription reaches the publisher. This
  // sends harmless rejected submits (an over-long id) until one's ExecutionRejected arrives.
  template <typename IngressT>
  void sync(IngressT& ingress) {
    const std::string probe(70, 'p');
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    while (Clock::now() < deadline) {
      ingress.submit(probe, "probe");
      if (auto e = next("ExecutionRejected", std::chrono::milliseconds(100))) {
        if (e->str("execution_id") == probe) {
          // Forget everything before now.
          while (next("ExecutionRejected", std::chrono::milliseconds(50))) {
          }
          for (auto& [type, idx] : cursor_) idx = history_.size();
          synced_at_ = history_.size();
          return;
        }
      }
    }
    throw std::runtime_error("the events subscription never became active");
  }

 private:
  zmq::context_t ctx_;
  zmq::socket_t sub_;
  std::vector<std::pair<std::string, Map>> history_;
  std::map<std::string, std::size_t> cursor_;
  std::size_t synced_at_ = 0;
};

// A REQ client on the ingress.
class Ingress {
 public:
  explicit Ingress(const std::string& endpoint) {
    ipc::ClientOptions o;
    o.endpoint = endpoint;
    o.use_shared_memory = false;
    o.timeout = std::chrono::seconds(10);
    client_ = std::make_unique<ipc::Client>(o);
  }
  Map call(const std::vector<std::byte>& request) {
    auto oh = client_->call(request);
    return Map{std::make_shared<msgpack::object_handle>(std::move(oh))};
  }
  Map submit(const std::string& id, const std::string& user, const std::string& priority = "normal",
             const std::string& payload = "print('hi')") {
    const auto* b = reinterpret_cast<const std::byte*>(payload.data());
    return call(MapBuilder()
                    .str("op", "submit")
                    .str("execution_id", id)
                    .str("user_id", user)
                    .str("priority", priority)
                    .bin("payload", std::vector<std::byte>(b, b + payload.size()))
                    .finish());
  }
  Map op(const std::string& name, const std::string& id) {
    return call(MapBuilder().str("op", name).str("execution_id", id).finish());
  }
  Map complete(const std::string& id, std::int64_t exit_code = 0) {
    return call(MapBuilder()
                    .str("op", "complete")
                    .str("execution_id", id)
                    .integer("exit_code", exit_code)
                    .finish());
  }
  Map fail(const std::string& id, const std::string& error, bool retry) {
    return call(MapBuilder()
                    .str("op", "fail")
                    .str("execution_id", id)
                    .str("error", error)
                    .boolean("retry", retry)
                    .finish());
  }

 private:
  std::unique_ptr<ipc::Client> client_;
};

// A shmschedd of its own for one test: a temporary runtime directory and segment, a client on its
// ingress, and a subscriber on its events that has seen a sync (nothing published before the
// test started is waiting in it). "{dir}" in an argument stands for the runtime directory.
struct DaemonFixture {
  std::string dir;
  std::string segment;
  std::unique_ptr<Daemon> daemon;
  std::unique_ptr<Ingress> ingress;
  std::unique_ptr<Events> events;

  DaemonFixture(const std::string& tag, std::vector<std::string> args,
                std::map<std::string, std::string> env = {})
      : dir(temp_dir(tag)), segment(segment_name(tag)) {
    ipc::Segment::remove(segment);
    for (auto& a : args) {
      if (const auto at = a.find("{dir}"); at != std::string::npos) a.replace(at, 5, dir);
    }
    daemon = std::make_unique<Daemon>(dir, segment, std::move(args));
    daemon->env() = std::move(env);
    daemon->start();
    ingress = std::make_unique<Ingress>(daemon->endpoint());
    events = std::make_unique<Events>(daemon->events_endpoint());
    events->sync(*ingress);
  }
  ~DaemonFixture() {
    daemon.reset();
    ipc::Segment::remove(segment);
    std::filesystem::remove_all(dir);
  }
  DaemonFixture(const DaemonFixture&) = delete;
  DaemonFixture& operator=(const DaemonFixture&) = delete;
};

}  // namespace shmsched::test
