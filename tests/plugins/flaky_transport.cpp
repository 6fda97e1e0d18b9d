// A transport for tests: refuses or fails deliveries while told to, and records what it was
// given. Options:
//   fail_file  while this file exists, every CreatePodCommand fails (asynchronously, like a
//              broker that is down)
//   log_file   each delivered message is appended as "<type> <key> <attempt-token>\n"
//   delay_ms   report deliveries of commands this much later, from another thread (a slow broker)
// Built against include/shmsched/transport.h only, like any third-party transport.
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "shmsched/transport.h"

namespace {

struct Flaky {
  shmsched_host host;
  std::string fail_file;
  std::string log_file;
  int delay_ms = 0;
  std::mutex mu;
  std::vector<std::thread> late;  // delayed delivery reports, joined by stop()
};

void err_out(char* err, size_t len, const std::string& m) {
  if (err && len) std::snprintf(err, len, "%s", m.c_str());
}

shmsched_transport* create(const shmsched_kv* kv, size_t n, const shmsched_host* host, char* err,
                           size_t err_len) {
  auto* f = new Flaky();
  f->host = *host;
  for (size_t i = 0; i < n; ++i) {
    const std::string k = kv[i].key;
    if (k == "fail_file") {
      f->fail_file = kv[i].value;
    } else if (k == "log_file") {
      f->log_file = kv[i].value;
    } else if (k == "delay_ms") {
      f->delay_ms = std::atoi(kv[i].value);
    } else if (k != "runtime_dir") {
      err_out(err, err_len,
              "unknown option flaky." + k + " (known: fail_file, log_file, delay_ms)");
      delete f;
      return nullptr;
    }
  }
  if (f->log_file.empty()) {
    err_out(err, err_len, "flaky.log_file is required");
    delete f;
    return nullptr;
  }
  return reinterpret_cast<shmsched_transport*>(f);
}

int start(shmsched_transport*, char*, size_t) {
  return SHMSCHED_OK;
}

int publish(shmsched_transport* t, const shmsched_message* m, uint64_t token) {
  auto* f = reinterpret_cast<Flaky*>(t);
  struct stat st {};
  const bool failing =
      m->is_command && !f->fail_file.empty() && ::stat(f->fail_file.c_str(), &st) == 0;
  if (failing) {
    f->host.delivery(f->host.host_ctx, token, 0, "flaky: told to fail");
    return SHMSCHED_OK;
  }
  {
    std::lock_guard lock(f->mu);
    if (FILE* out = std::fopen(f->log_file.c_str(), "a")) {
      std::fprintf(out, "%s %s\n", m->type, m->key);
      std::fclose(out);
    }
  }
  f->host.delivery(f->host.host_ctx, token, 1, nullptr);
  return SHMSCHED_OK;
}

size_t flush(shmsched_transport*, uint32_t) {
  return 0;
}
void stop(shmsched_transport*) {}
void destroy(shmsched_transport* t) {
  delete reinterpret_cast<Flaky*>(t);
}

const shmsched_transport_api kApi = {SHMSCHED_TRANSPORT_ABI_VERSION,
                                     sizeof(shmsched_transport_api),
                                     "flaky",
                                     "test transport that fails on demand",
                                     create,
                                     start,
                                     publish,
                                     flush,
                                     stop,
                                     destroy};

}  // namespace

extern "C" __attribute__((visibility("default"))) const shmsched_transport_api*
shmsched_transport_entry(void) {
  return &kApi;
}
