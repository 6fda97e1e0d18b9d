// etcd test helpers: Debian's etcd (etcd-server) as real members on free loopback ports, each
// with its own data directory, that a test can SIGKILL and start again with the same data and
// ports; and etcdctl (etcd-client), a separate process, as the independent client.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace shmsched::test {

// A loopback port that was free a moment ago (bound to port 0, then released).
inline int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    throw std::runtime_error(std::string("no free loopback port: ") + std::strerror(errno));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout and stderr
};

// Runs argv[0] with `input` on its stdin; waits for it.
inline CommandResult run_command(const std::vector<std::string>& argv,
                                 const std::string& input = "") {
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    ::dup2(out[1], 2);
    std::vector<char*> a;
    for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    ::execv(a[0], a.data());
    ::_exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  std::size_t at = 0;
  while (at < input.size()) {
    const ssize_t n = ::write(in[1], input.data() + at, input.size() - at);
    if (n <= 0) break;
    at += static_cast<std::size_t>(n);
  }
  ::close(in[1]);
  CommandResult r;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(out[0], buf, sizeof buf);
    if (n <= 0) break;
    r.out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(out[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// etcdctl (API v3) against `endpoints` ("127.0.0.1:p1,127.0.0.1:p2").
class Etcdctl {
 public:
  // `flags`: more global flags (--cacert=..., --user=...).
  explicit Etcdctl(std::string endpoints, std::vector<std::string> flags = {})
      : endpoints_(std::move(endpoints)), flags_(std::move(flags)) {}

  CommandResult run(std::vector<std::string> args, const std::string& input = "") const {
    args.insert(args.begin(), flags_.begin(), flags_.end());
    args.insert(args.begin(), {"/usr/bin/etcdctl", "--endpoints=" + endpoints_,
                               "--command-timeout=5s", "--dial-timeout=2s"});
    return run_command(args, input);
  }
  // The value of `key`, nullopt when it does not exist.
  std::optional<std::string> get(const std::string& key) const {
    // The value is printed raw, followed by a newline.
    const auto r = run({"get", key, "--print-value-only"});
    if (r.exit_code != 0) throw std::runtime_error("etcdctl get " + key + ": " + r.out);
    if (r.out.empty()) return std::nullopt;
    return r.out.substr(0, r.out.size() - 1);
  }
  // The keys under `prefix`.
  std::vector<std::string> keys(const std::string& prefix) const {
    const auto r = run({"get", prefix, "--prefix", "--keys-only"});
    if (r.exit_code != 0) throw std::runtime_error("etcdctl get --prefix " + prefix + ": " + r.out);
    std::vector<std::string> keys;
    std::size_t at = 0;
    while (at < r.out.size()) {
      std::size_t nl = r.out.find('\n', at);
      if (nl == std::string::npos) nl = r.out.size();
      if (nl > at) keys.push_back(r.out.substr(at, nl - at));
      at = nl + 1;
    }
    return keys;
  }
  bool put(const std::string& key, const std::string& value, const std::string& lease = "") const {
    std::vector<std::string> args = {"put", key, value};
    if (!lease.empty()) args.push_back("--lease=" + lease);
    return run(args).exit_code == 0;
  }
  // etcdctl txn with the text of its interactive form; true when it printed SUCCESS.
  bool txn(const std::string& text) const {
    const auto r = run({"txn"}, text);
    if (r.exit_code != 0) throw std::runtime_error("etcdctl txn: " + r.out);
    return r.out.rfind("SUCCESS", 0) == 0;
  }
  // The claim of the seeds: if owner is "unclaimed" then owner = worker.
  bool claim(const std::string& owner_key, const std::string& worker) const {
    return txn("value(\"" + owner_key + "\") = \"unclaimed\"\n\nput " + owner_key + " " + worker +
               "\n\n\n");
  }
  // A lease of `ttl` seconds: its id (hex, as etcdctl prints and takes it).
  std::string grant(int ttl) const {
    const auto r = run({"lease", "grant", std::to_string(ttl)});
    // "lease 694d7c5a3b2f1e0a granted with TTL(2s)"
    if (r.exit_code != 0 || r.out.rfind("lease ", 0) != 0) {
      throw std::runtime_error("etcdctl lease grant: " + r.out);
    }
    return r.out.substr(6, r.out.find(' ', 6) - 6);
  }
  std::int64_t revision() const {
    const auto r = run({"get", "/", "-w", "fields", "--limit=1"});
    const auto at = r.out.find("\"Revision\" : ");
    if (at == std::string::npos) throw std::runtime_error("etcdctl get -w fields: " + r.out);
    return std::stoll(r.out.substr(at + 13));
  }
  bool healthy() const { return run({"endpoint", "health"}).exit_code == 0; }

 private:
  std::string endpoints_;
  std::vector<std::string> flags_;
};

// A throwaway certificate authority and a server certificate for 127.0.0.1 signed by it (openssl),
// in `dir`: ca.crt, server.crt, server.key.
inline void make_test_certificates(const std::string& dir) {
  const std::string script =
      "set -e; cd '" + dir +
      "'; openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 "
      "-subj /CN=shmsched-test-ca 2>/dev/null; "
      "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr "
      "-subj /CN=127.0.0.1 2>/dev/null; "
      "printf 'subjectAltName=IP:127.0.0.1' > san.ext; "
      "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
      "-out server.crt -days 1 -extfile san.ext 2>/dev/null";
  const auto r = run_command({"/bin/sh", "-c", script});
  if (r.exit_code != 0) throw std::runtime_error("openssl: " + r.out);
}

// msgpack {capabilities: [...], capacity: n}: a worker's registration value (short strings only).
inline std::string registration_value(const std::vector<std::string>& capabilities, int capacity) {
  std::string v =
      "\x82\xac"
      "capabilities";
  v += static_cast<char>(0x90 | capabilities.size());
  for (const auto& c : capabilities) {
    v += static_cast<char>(0xa0 | c.size());
    v += c;
  }
  v += "\xa8"
       "capacity";
  v += static_cast<char>(capacity);
  return v;
}

// N etcd members on loopback forming one cluster.
class EtcdCluster {
 public:
  // With `tls`, clients speak https with a certificate from make_test_certificates (in dir()).
  // `extra`: more flags for every member (e.g. --auth-token-ttl=1).
  explicit EtcdCluster(int members = 1, bool tls = false, std::vector<std::string> extra = {})
      : tls_(tls), extra_(std::move(extra)) {
    dir_ = "/tmp/shmsched-etcd-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++);
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    if (tls_) make_test_certificates(dir_);
    std::string initial;
    for (int i = 0; i < members; ++i) {
      Member m;
      m.name = "m" + std::to_string(i);
      m.client_port = free_loopback_port();
      m.peer_port = free_loopback_port();
      initial += (i ? "," : "") + m.name + "=http://127.0.0.1:" + std::to_string(m.peer_port);
      members_.push_back(m);
    }
    initial_cluster_ = initial;
    for (int i = 0; i < members; ++i) start(i);
    wait_healthy();
  }
  ~EtcdCluster() {
    for (int i = 0; i < static_cast<int>(members_.size()); ++i) kill(i);
    std::filesystem::remove_all(dir_);
  }
  EtcdCluster(const EtcdCluster&) = delete;
  EtcdCluster& operator=(const EtcdCluster&) = delete;

  // "127.0.0.1:p0,127.0.0.1:p1,..."
  std::string endpoints() const {
    std::string s;
    for (const auto& m : members_) s += (s.empty() ? "" : ",") + address(m);
    return s;
  }
  std::string endpoint(int i) const { return address(members_[i]); }
  // Members that run now, for etcdctl.
  Etcdctl ctl() const {
    std::string s;
    for (const auto& m : members_) {
      if (m.pid > 0) s += (s.empty() ? "" : ",") + address(m);
    }
    if (tls_) return Etcdctl(s, {"--cacert=" + dir_ + "/ca.crt"});
    return Etcdctl(s);
  }
  const std::string& dir() const { return dir_; }

  // SIGKILL, and reaped.
  void kill(int i) {
    Member& m = members_[i];
    if (m.pid <= 0) return;
    ::kill(m.pid, SIGKILL);
    ::waitpid(m.pid, nullptr, 0);
    m.pid = -1;
  }
  // Starts member i again, with its data and ports (or another client port: the plugin, which
  // knows only the first, cannot reach it meanwhile).
  void start(int i, int client_port = 0) {
    Member& m = members_[i];
    const int port = client_port ? client_port : m.client_port;
    const std::string client =
        std::string(tls_ ? "https" : "http") + "://127.0.0.1:" + std::to_string(port);
    const std::string peer = "http://127.0.0.1:" + std::to_string(m.peer_port);
    std::vector<std::string> args = {"/usr/bin/etcd",
                                     "--name=" + m.name,
                                     "--data-dir=" + dir_ + "/" + m.name,
                                     "--listen-client-urls=" + client,
                                     "--advertise-client-urls=" + client,
                                     "--listen-peer-urls=" + peer,
                                     "--initial-advertise-peer-urls=" + peer,
                                     "--initial-cluster=" + initial_cluster_,
                                     "--initial-cluster-state=new",
                                     "--initial-cluster-token=shmsched-test",
                                     "--logger=zap",
                                     "--log-outputs=" + dir_ + "/" + m.name + ".log"};
    args.insert(args.end(), extra_.begin(), extra_.end());
    if (tls_) {
      args.push_back("--cert-file=" + dir_ + "/server.crt");
      args.push_back("--key-file=" + dir_ + "/server.key");
    }
    m.pid = ::fork();
    if (m.pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // no etcd outlives its test
      std::vector<char*> a;
      for (auto& s : args) a.push_back(s.data());
      a.push_back(nullptr);
      const int null = ::open("/dev/null", O_RDWR);
      ::dup2(null, 0);
      ::dup2(null, 1);
      ::dup2(null, 2);
      ::execv(a[0], a.data());
      ::_exit(127);
    }
  }
  // Until every running member answers (etcd needs a quorum for that).
  void wait_healthy(std::chrono::seconds limit = std::chrono::seconds(30)) const {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    const Etcdctl c = ctl();
    while (!c.healthy()) {
      if (std::chrono::steady_clock::now() > deadline) {
        throw std::runtime_error("etcd did not become healthy; logs in " + dir_);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  int client_port(int i) const { return members_[i].client_port; }
  // SIGKILL, its data directory removed, started again on the same ports: a store that begins
  // again at revision 1 (an operator wiped it, or restored an old backup).
  void wipe(int i) {
    kill(i);
    std::filesystem::remove_all(dir_ + "/" + members_[i].name);
    start(i);
  }

 private:
  struct Member {
    std::string name;
    int client_port = 0, peer_port = 0;
    pid_t pid = -1;
  };
  static std::string address(const Member& m) {
    return "127.0.0.1:" + std::to_string(m.client_port);
  }
  static int& counter() {
    static int n = 0;
    return n;
  }
  bool tls_ = false;
  std::vector<std::string> extra_;
  std::string dir_;
  std::string initial_cluster_;
  std::vector<Member> members_;
};

}  // namespace shmsched::test
