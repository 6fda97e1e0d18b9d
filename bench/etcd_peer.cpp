#include "etcd_peer.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace shmsched::bench {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr std::string_view kUnclaimed = "unclaimed";

// ---- base64 (OpenSSL) ----------------------------------------------------------------------

std::string b64_encode(std::string_view in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');  // + EVP_EncodeBlock's NUL
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(in.data()),
                                static_cast<int>(in.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

std::string b64_decode(std::string_view in) {
  if (in.size() % 4 != 0) {
    throw std::runtime_error("etcd: bad base64 (length " + std::to_string(in.size()) + ")");
  }
  std::string out(in.size() / 4 * 3 + 1, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(in.data()),
                                static_cast<int>(in.size()));
  if (n < 0) throw std::runtime_error("etcd: bad base64 '" + std::string(in) + "'");
  // EVP_DecodeBlock counts the zero bytes that the '=' padding stands for: drop one per '='.
  std::size_t pad = 0;
  if (!in.empty() && in.back() == '=') ++pad;
  if (in.size() >= 2 && in[in.size() - 2] == '=') ++pad;
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

// ---- HTTP (libcurl) ------------------------------------------------------------------------

void curl_global_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
      throw std::runtime_error("etcd: curl_global_init failed");
    }
  });
}

// One easy handle: libcurl keeps its connection open between requests (HTTP/1.1 keep-alive).
class Http {
 public:
  explicit Http(std::chrono::milliseconds timeout) {
    curl_global_once();
    h_ = curl_easy_init();
    if (h_ == nullptr) throw std::runtime_error("etcd: curl_easy_init failed");
    headers_ = curl_slist_append(nullptr, "Content-Type: application/json");
    // No "Expect: 100-continue" round trip for a POST body, whatever its size.
    headers_ = curl_slist_append(headers_, "Expect:");
    if (headers_ == nullptr) {
      curl_easy_cleanup(h_);
      throw std::runtime_error("etcd: curl_slist_append failed");
    }
    curl_easy_setopt(h_, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h_, CURLOPT_NOPROXY, "*");  // loopback: never through an http_proxy
    curl_easy_setopt(h_, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h_, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout.count()));
    curl_easy_setopt(h_, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(timeout.count()));
    curl_easy_setopt(h_, CURLOPT_HTTPHEADER, headers_);
    curl_easy_setopt(h_, CURLOPT_ERRORBUFFER, errbuf_);
    curl_easy_setopt(h_, CURLOPT_WRITEFUNCTION, &Http::on_write);
    curl_easy_setopt(h_, CURLOPT_WRITEDATA, &reply_);
  }
  ~Http() {
    curl_easy_cleanup(h_);
    curl_slist_free_all(headers_);
  }
  Http(const Http&) = delete;
  Http& operator=(const Http&) = delete;

  struct Result {
    bool ok = false;    // a reply arrived
    std::string error;  // why not, when !ok
    long status = 0;
    const std::string* body = nullptr;
  };

  // POST `post` when non-null, GET otherwise.
  Result perform(const std::string& url, const std::string* post) {
    reply_.clear();
    errbuf_[0] = '\0';
    curl_easy_setopt(h_, CURLOPT_URL, url.c_str());
    if (post != nullptr) {
      curl_easy_setopt(h_, CURLOPT_POSTFIELDS, post->data());
      curl_easy_setopt(h_, CURLOPT_POSTFIELDSIZE, static_cast<long>(post->size()));
    } else {
      curl_easy_setopt(h_, CURLOPT_HTTPGET, 1L);
    }
    Result r;
    const CURLcode rc = curl_easy_perform(h_);
    if (rc != CURLE_OK) {
      r.error = errbuf_[0] != '\0' ? std::string(errbuf_) : std::string(curl_easy_strerror(rc));
      return r;
    }
    curl_easy_getinfo(h_, CURLINFO_RESPONSE_CODE, &r.status);
    r.ok = true;
    r.body = &reply_;
    return r;
  }

 private:
  static size_t on_write(char* data, size_t size, size_t n, void* user) {
    static_cast<std::string*>(user)->append(data, size * n);
    return size * n;
  }

  CURL* h_ = nullptr;
  curl_slist* headers_ = nullptr;
  char errbuf_[CURL_ERROR_SIZE] = {};
  std::string reply_;
};

std::string clip(const std::string& s, std::size_t n = 300) {
  return s.size() <= n ? s : s.substr(0, n) + "...";
}

// ---- process helpers -----------------------------------------------------------------------

int free_loopback_port(int& fd_out) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("etcd: socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int e = errno;
    ::close(fd);
    throw std::runtime_error(std::string("etcd: bind to a free loopback port: ") +
                             std::strerror(e));
  }
  fd_out = fd;
  return ntohs(addr.sin_port);
}

std::string file_tail(const std::string& path, std::size_t n = 1500) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "(no log at " + path + ")";
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return all.size() <= n ? all : "..." + all.substr(all.size() - n);
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "stopped (status " + std::to_string(status) + ")";
}

}  // namespace

// ---- LocalEtcd -----------------------------------------------------------------------------

LocalEtcd::LocalEtcd(std::string binary, std::chrono::milliseconds start_timeout)
    : binary_(std::move(binary)) {
  if (::access(binary_.c_str(), X_OK) != 0) {
    throw std::runtime_error("etcd: " + binary_ + " is missing or not executable (" +
                             std::strerror(errno) +
                             "): install etcd with `apt-get install etcd-server` (Debian 12, "
                             "etcd 3.4; scripts/install-deps.sh installs it)");
  }
  std::string tmpl = (std::filesystem::temp_directory_path() / "shmsched-etcd-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    throw std::runtime_error("etcd: mkdtemp " + tmpl + ": " + std::strerror(errno));
  }
  dir_ = tmpl;

  // The ports are free when picked but not held: another process can take one before etcd binds
  // it. Try again with fresh ports when that happens.
  std::string failure;
  bool started = false;
  try {
    for (int attempt = 0; attempt < 3 && !started; ++attempt) {
      started = start_once(start_timeout, failure);
      if (!started && failure.find("address already in use") == std::string::npos) break;
    }
  } catch (...) {
    stop();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    throw;
  }
  if (!started) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    throw std::runtime_error(failure);
  }

  // {"etcdserver":"3.4.23","etcdcluster":"3.4.0"}
  Http http(std::chrono::seconds(5));
  const auto r = http.perform(client_url_ + "/version", nullptr);
  const json v = r.ok ? json::parse(*r.body, nullptr, false) : json();
  if (v.is_object() && v.contains("etcdserver") && v["etcdserver"].is_string()) {
    server_version_ = v["etcdserver"].get<std::string>();
  } else {
    server_version_ = "unknown";
  }
}

LocalEtcd::~LocalEtcd() {
  stop();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

bool LocalEtcd::start_once(std::chrono::milliseconds timeout, std::string& failure) {
  int client_fd = -1;
  int peer_fd = -1;
  const int client_port = free_loopback_port(client_fd);
  int peer_port = 0;
  try {
    peer_port = free_loopback_port(peer_fd);  // while the first is held: the two differ
  } catch (...) {
    ::close(client_fd);
    throw;
  }
  ::close(client_fd);
  ::close(peer_fd);

  const std::string data = dir_ + "/data";
  std::error_code ec;
  std::filesystem::remove_all(data, ec);  // a fresh member on each attempt
  client_url_ = "http://127.0.0.1:" + std::to_string(client_port);
  const std::string peer_url = "http://127.0.0.1:" + std::to_string(peer_port);

  // Default durability, as a real deployment runs it: every write is fsynced to the WAL before
  // etcd answers (no --unsafe-no-fsync), so a claim's latency includes that fsync.
  std::vector<std::string> args = {binary_,
                                   "--name=shmsched-bench",
                                   "--data-dir=" + data,
                                   "--listen-client-urls=" + client_url_,
                                   "--advertise-client-urls=" + client_url_,
                                   "--listen-peer-urls=" + peer_url,
                                   "--initial-advertise-peer-urls=" + peer_url,
                                   "--initial-cluster=shmsched-bench=" + peer_url,
                                   "--initial-cluster-state=new",
                                   "--logger=zap",
                                   "--log-outputs=stderr"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  const std::string log = log_path();
  const int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) throw std::runtime_error("etcd: open " + log + ": " + std::strerror(errno));
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd < 0) {
    ::close(log_fd);
    throw std::runtime_error(std::string("etcd: open /dev/null: ") + std::strerror(errno));
  }

  const pid_t pid = ::fork();
  if (pid < 0) {
    const int e = errno;
    ::close(log_fd);
    ::close(null_fd);
    throw std::runtime_error(std::string("etcd: fork: ") + std::strerror(e));
  }
  if (pid == 0) {
    // Only async-signal-safe calls here. etcd dies with the benchmark, however it ends.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::dup2(null_fd, STDIN_FILENO);
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(log_fd);
  ::close(null_fd);
  pid_ = pid;

  // Ready when /health says so (etcd 3.4 answers {"health":"true"}: a string, not a boolean).
  Http http(std::chrono::milliseconds(1000));
  const auto deadline = Clock::now() + timeout;
  std::string last;
  while (Clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      failure = "etcd: " + binary_ + " " + describe_status(status) + " before answering on " +
                client_url_ + "; the log (" + log + ") ends:\n" + file_tail(log);
      return false;
    }
    const auto r = http.perform(client_url_ + "/health", nullptr);
    if (r.ok) {
      const json h = json::parse(*r.body, nullptr, false);
      if (r.status == 200 && h.is_object() && h.contains("health") &&
          (h["health"] == "true" || h["health"] == true)) {
        return true;
      }
      last = "HTTP " + std::to_string(r.status) + " " + clip(*r.body);
    } else {
      last = r.error;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  stop();
  failure = "etcd: " + binary_ + " did not answer " + client_url_ + "/health within " +
            std::to_string(timeout.count()) + " ms (last: " + last + "); the log (" + log +
            ") ends:\n" + file_tail(log);
  return false;
}

void LocalEtcd::stop() noexcept {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  int status = 0;
  while (Clock::now() < deadline) {
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_ || (r < 0 && errno != EINTR)) {
      pid_ = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid_, SIGKILL);
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

// ---- EtcdClaimClient -----------------------------------------------------------------------

struct EtcdClaimClient::Impl {
  Impl(const std::string& client_url, std::chrono::milliseconds timeout)
      : http(timeout),
        put_url(client_url + "/v3/kv/put"),
        txn_url(client_url + "/v3/kv/txn"),
        range_url(client_url + "/v3/kv/range"),
        unclaimed_b64(b64_encode(kUnclaimed)) {}

  // One gateway call. etcd's errors come back as a non-200 status with
  // {"error": "...", "message": "...", "code": <grpc code>}.
  json call(const std::string& url, const json& request) {
    const std::string body = request.dump();
    const auto r = http.perform(url, &body);
    if (!r.ok) throw std::runtime_error("etcd: POST " + url + ": " + r.error);
    json reply = json::parse(*r.body, nullptr, false);
    if (r.status != 200) {
      std::string why = clip(*r.body);
      if (reply.is_object() && reply.contains("message") && reply["message"].is_string()) {
        why = reply["message"].get<std::string>();
      }
      throw std::runtime_error("etcd: POST " + url + ": HTTP " + std::to_string(r.status) + ": " +
                               why);
    }
    if (!reply.is_object()) {
      throw std::runtime_error("etcd: POST " + url + ": not a JSON object: " + clip(*r.body));
    }
    if (reply.contains("error")) {
      throw std::runtime_error("etcd: POST " + url + ": " + reply["error"].dump());
    }
    if (!reply.contains("header")) {
      throw std::runtime_error("etcd: POST " + url + ": reply without a header: " + clip(*r.body));
    }
    return reply;
  }

  Http http;
  std::string put_url;
  std::string txn_url;
  std::string range_url;
  std::string unclaimed_b64;
};

EtcdClaimClient::EtcdClaimClient(std::string client_url, std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>(client_url, timeout)) {}

EtcdClaimClient::~EtcdClaimClient() = default;
EtcdClaimClient::EtcdClaimClient(EtcdClaimClient&&) noexcept = default;
EtcdClaimClient& EtcdClaimClient::operator=(EtcdClaimClient&&) noexcept = default;

void EtcdClaimClient::reset(const std::string& key) {
  json req = json::object();
  req["key"] = b64_encode(key);
  req["value"] = impl_->unclaimed_b64;
  impl_->call(impl_->put_url, req);
}

bool EtcdClaimClient::claim(const std::string& key, const std::string& worker) {
  const std::string k = b64_encode(key);
  json compare = json::object();
  compare["key"] = k;
  compare["result"] = "EQUAL";
  compare["target"] = "VALUE";
  compare["value"] = impl_->unclaimed_b64;
  json put = json::object();
  put["key"] = k;
  put["value"] = b64_encode(worker);
  json op = json::object();
  op["request_put"] = std::move(put);
  json req = json::object();
  req["compare"] = json::array({std::move(compare)});
  req["success"] = json::array({std::move(op)});

  const json reply = impl_->call(impl_->txn_url, req);
  // The gateway marshals proto3 JSON without defaults: a failed compare's reply has no
  // "succeeded" at all (and no "responses"), not "succeeded": false.
  const auto it = reply.find("succeeded");
  if (it == reply.end()) return false;
  if (!it->is_boolean()) {
    throw std::runtime_error("etcd: POST " + impl_->txn_url +
                             ": \"succeeded\" is not a boolean: " + clip(reply.dump()));
  }
  if (!it->get<bool>()) return false;
  const auto rs = reply.find("responses");
  if (rs == reply.end() || !rs->is_array() || rs->size() != 1 ||
      !(*rs)[0].contains("response_put")) {
    throw std::runtime_error("etcd: POST " + impl_->txn_url +
                             ": succeeded without the put's response: " + clip(reply.dump()));
  }
  return true;
}

std::optional<std::string> EtcdClaimClient::get(const std::string& key) {
  json req = json::object();
  req["key"] = b64_encode(key);
  const json reply = impl_->call(impl_->range_url, req);
  // No "kvs" (and no "count") when nothing matched; no "value" when the value is empty.
  const auto kvs = reply.find("kvs");
  if (kvs == reply.end() || !kvs->is_array() || kvs->empty()) return std::nullopt;
  const json& kv = (*kvs)[0];
  if (!kv.contains("value")) return std::string();
  if (!kv["value"].is_string()) {
    throw std::runtime_error("etcd: POST " + impl_->range_url +
                             ": value is not a string: " + clip(reply.dump()));
  }
  return b64_decode(kv["value"].get<std::string>());
}

}  // namespace shmsched::bench
