#include "etcd_options.h"

#include <charconv>
#include <fstream>

namespace shmsched::etcd {
namespace {

constexpr const char* kKnown =
    "endpoints, prefix, dial_timeout_ms, request_timeout_ms, tls_ca_file, tls_cert_file, "
    "tls_key_file, user, password, retention_seconds, worker_heartbeat_ms, batch_size, "
    "max_in_flight, max_queued, write_events";

bool parse_uint(const std::string& key, const std::string& value, std::uint64_t min,
                std::uint64_t max, std::uint64_t& out, std::string& error) {
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), out);
  if (ec != std::errc() || end != value.data() + value.size() || out < min || out > max) {
    error = "etcd." + key + " = '" + value + "': must be a whole number from " +
            std::to_string(min) + " to " + std::to_string(max);
    return false;
  }
  return true;
}

// "http://h:p", "https://h:p" or "h:p", separated by commas.
bool parse_endpoints(const std::string& value, std::vector<Endpoint>& out, std::string& error) {
  std::size_t at = 0;
  while (at <= value.size()) {
    std::size_t comma = value.find(',', at);
    if (comma == std::string::npos) comma = value.size();
    std::string item = value.substr(at, comma - at);
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    at = comma + 1;
    if (item.empty()) continue;
    Endpoint e;
    if (item.rfind("https://", 0) == 0) {
      e.tls = true;
      item = item.substr(8);
    } else if (item.rfind("http://", 0) == 0) {
      item = item.substr(7);
    } else if (item.find("://") != std::string::npos) {
      error =
          "etcd.endpoints: '" + item + "' has an unknown scheme (use http://, https:// or none)";
      return false;
    }
    if (!item.empty() && item.back() == '/') item.pop_back();
    if (item.find(':') == std::string::npos) {
      error = "etcd.endpoints: '" + item + "' has no port (e.g. 127.0.0.1:2379)";
      return false;
    }
    e.address = item;
    out.push_back(std::move(e));
  }
  if (out.empty()) {
    error = "etcd.endpoints is empty (e.g. etcd.endpoints = http://127.0.0.1:2379)";
    return false;
  }
  return true;
}

bool readable(const std::string& key, const std::string& path, std::string& error) {
  std::ifstream in(path);
  if (in) return true;
  error = "etcd." + key + " = " + path + ": cannot read the file (check the path and permissions)";
  return false;
}

}  // namespace

bool Options::tls() const {
  if (!tls_ca_file.empty() || !tls_cert_file.empty()) return true;
  for (const auto& e : endpoints) {
    if (e.tls) return true;
  }
  return false;
}

std::optional<Options> parse_options(const shmsched_kv* kv, std::size_t n, std::string& error) {
  Options o;
  bool have_endpoints = false;
  for (std::size_t i = 0; i < n; ++i) {
    const std::string key = kv[i].key ? kv[i].key : "";
    const std::string value = kv[i].value ? kv[i].value : "";
    std::uint64_t u = 0;
    if (key == "endpoints") {
      if (!parse_endpoints(value, o.endpoints, error)) return std::nullopt;
      have_endpoints = true;
    } else if (key == "prefix") {
      o.prefix = value;
      while (!o.prefix.empty() && o.prefix.back() == '/') o.prefix.pop_back();
      if (o.prefix.empty() || o.prefix.front() != '/') {
        error = "etcd.prefix = '" + value + "': must start with / and name a path (e.g. /shmsched)";
        return std::nullopt;
      }
    } else if (key == "dial_timeout_ms") {
      if (!parse_uint(key, value, 100, 600000, u, error)) return std::nullopt;
      o.dial_timeout = std::chrono::milliseconds(u);
    } else if (key == "request_timeout_ms") {
      if (!parse_uint(key, value, 100, 600000, u, error)) return std::nullopt;
      o.request_timeout = std::chrono::milliseconds(u);
    } else if (key == "tls_ca_file") {
      o.tls_ca_file = value;
    } else if (key == "tls_cert_file") {
      o.tls_cert_file = value;
    } else if (key == "tls_key_file") {
      o.tls_key_file = value;
    } else if (key == "user") {
      o.user = value;
    } else if (key == "password") {
      o.password = value;
    } else if (key == "retention_seconds") {
      if (!parse_uint(key, value, 1, 30 * 86400, u, error)) return std::nullopt;
      o.retention = std::chrono::seconds(u);
    } else if (key == "worker_heartbeat_ms") {
      if (!parse_uint(key, value, 100, 3600000, u, error)) return std::nullopt;
      o.worker_heartbeat = std::chrono::milliseconds(u);
    } else if (key == "batch_size") {
      // Each execution takes one operation of the outer transaction and its own nested ones.
      if (!parse_uint(key, value, 1, 100, u, error)) return std::nullopt;
      o.batch_size = u;
    } else if (key == "max_in_flight") {
      if (!parse_uint(key, value, 1, 256, u, error)) return std::nullopt;
      o.max_in_flight = u;
    } else if (key == "max_queued") {
      if (!parse_uint(key, value, 1, 10000000, u, error)) return std::nullopt;
      o.max_queued = u;
    } else if (key == "write_events") {
      if (value != "true" && value != "false") {
        error = "etcd.write_events = '" + value + "': must be true or false";
        return std::nullopt;
      }
      o.write_events = value == "true";
    } else if (key == "runtime_dir") {
      // Every plugin gets it; etcd has no local endpoint to place there.
    } else {
      error = "unknown option etcd." + key + " (known: " + kKnown + ")";
      return std::nullopt;
    }
  }
  if (!have_endpoints) {
    error = "etcd.endpoints is required (e.g. etcd.endpoints = http://127.0.0.1:2379)";
    return std::nullopt;
  }
  if (o.user.empty() != o.password.empty()) {
    error = "etcd.user and etcd.password go together: set both or neither";
    return std::nullopt;
  }
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    error =
        "etcd.tls_cert_file and etcd.tls_key_file go together (a client certificate and its key)";
    return std::nullopt;
  }
  for (const auto& [key, path] :
       {std::pair{"tls_ca_file", o.tls_ca_file}, std::pair{"tls_cert_file", o.tls_cert_file},
        std::pair{"tls_key_file", o.tls_key_file}}) {
    if (!path.empty() && !readable(key, path, error)) return std::nullopt;
  }
  return o;
}

}  // namespace shmsched::etcd
