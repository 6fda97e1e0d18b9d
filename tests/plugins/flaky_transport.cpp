// A transport for tests: refuses or fails deliveries while told to, and records what it was
// given. Options:
//   fail_file  while this file exists, every CreatePodCommand fails (asynchronously, like a
//              broker that is down)
//   log_file   each delivered message is appended as "<type> <key>\n"
//   block_file while this file exists, a publish of a CreatePodCommand does not return (a plugin
//              call that hangs: the supervisor's loop is wedged)
//   refuse_file  while this file exists, publish_batch refuses every CreatePodCommand at once
//              (SHMSCHED_ERR_BUSY, a full local queue), taking the messages before it
//   delay_ms   report deliveries of commands this much later, from another thread (a slow broker)
//   inbound_dir  every <name>.req file that appears here is handed to the host as an inbound
//              operation (renamed <name>.taken first); the host's reply is written to
//              <name>.reply and its acknowledgement creates <name>.acked
// Built against include/shmsched/transport.h only, like any third-party transport.
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "shmsched/transport.h"

namespace {

struct Flaky {
  shmsched_host host;
  std::string fail_file;
  std::string refuse_file;
  std::string block_file;
  std::string log_file;
  int delay_ms = 0;
  std::string inbound_dir;
  std::atomic<bool> running{false};
  std::thread inbound;
  std::mutex mu;
  std::vector<std::thread> late;  // delayed delivery reports, joined by stop()
  std::atomic<std::size_t> outstanding{0};
};

struct InboundOp {
  std::string base;  // <inbound_dir>/<name>
};

// Never throws: it runs in the host's callbacks (the directory may be gone at the end of a test).
void write_file(const std::string& path, const void* data, size_t len) {
  std::ofstream out(path + ".tmp", std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(len));
  out.close();
  std::error_code ec;
  std::filesystem::rename(path + ".tmp", path, ec);
}

void on_reply(void* ctx, const uint8_t* body, size_t len) {
  write_file(static_cast<InboundOp*>(ctx)->base + ".reply", body, len);
}

void on_ack(void* ctx) {
  auto* op = static_cast<InboundOp*>(ctx);
  write_file(op->base + ".acked", "", 0);
  delete op;
}

void poll_inbound(Flaky* f) {
  namespace fs = std::filesystem;
  while (f->running) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(f->inbound_dir, ec)) {
      if (e.path().extension() != ".req") continue;
      const std::string base = (e.path().parent_path() / e.path().stem()).string();
      fs::rename(e.path(), base + ".taken", ec);
      if (ec) continue;
      std::ifstream in(base + ".taken", std::ios::binary);
      const std::string body((std::istreambuf_iterator<char>(in)), {});
      auto* op = new InboundOp{base};
      const shmsched_inbound_done done{on_reply, on_ack, op};
      if (f->host.inbound(f->host.host_ctx, reinterpret_cast<const uint8_t*>(body.data()),
                          body.size(), done) != SHMSCHED_OK) {
        delete op;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

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
    } else if (k == "block_file") {
      f->block_file = kv[i].value;
    } else if (k == "refuse_file") {
      f->refuse_file = kv[i].value;
    } else if (k == "log_file") {
      f->log_file = kv[i].value;
    } else if (k == "delay_ms") {
      f->delay_ms = std::atoi(kv[i].value);
    } else if (k == "inbound_dir") {
      f->inbound_dir = kv[i].value;
    } else if (k != "runtime_dir") {
      err_out(err, err_len,
              "unknown option flaky." + k +
                  " (known: fail_file, refuse_file, block_file, log_file, delay_ms, "
                  "inbound_dir)");
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

int start(shmsched_transport* t, char*, size_t) {
  auto* f = reinterpret_cast<Flaky*>(t);
  f->running = true;
  if (!f->inbound_dir.empty()) f->inbound = std::thread(poll_inbound, f);
  return SHMSCHED_OK;
}

int publish(shmsched_transport* t, const shmsched_message* m, uint64_t token) {
  auto* f = reinterpret_cast<Flaky*>(t);
  struct stat st {};
  while (m->is_command && !f->block_file.empty() && ::stat(f->block_file.c_str(), &st) == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
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
  if (m->is_command && f->delay_ms > 0) {
    std::lock_guard lock(f->mu);
    ++f->outstanding;
    f->late.emplace_back([f, token] {
      std::this_thread::sleep_for(std::chrono::milliseconds(f->delay_ms));
      f->host.delivery(f->host.host_ctx, token, 1, nullptr);
      --f->outstanding;
    });
    return SHMSCHED_OK;
  }
  f->host.delivery(f->host.host_ctx, token, 1, nullptr);
  return SHMSCHED_OK;
}

size_t publish_batch(shmsched_transport* t, const shmsched_message* msgs, const uint64_t* tokens,
                     size_t n, int* refusal) {
  auto* f = reinterpret_cast<Flaky*>(t);
  struct stat st {};
  const bool refusing = !f->refuse_file.empty() && ::stat(f->refuse_file.c_str(), &st) == 0;
  for (size_t i = 0; i < n; ++i) {
    if (refusing && msgs[i].is_command) {
      *refusal = SHMSCHED_ERR_BUSY;
      return i;
    }
    publish(t, &msgs[i], tokens[i]);
  }
  return n;
}

void join_late(Flaky* f) {
  std::vector<std::thread> late;
  {
    std::lock_guard lock(f->mu);
    late.swap(f->late);
  }
  for (auto& th : late) th.join();
}

// Waits up to timeout_ms for the late deliveries; returns how many are still due.
size_t flush(shmsched_transport* t, uint32_t timeout_ms) {
  auto* f = reinterpret_cast<Flaky*>(t);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (f->outstanding > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return f->outstanding;
}
void stop(shmsched_transport* t) {
  auto* f = reinterpret_cast<Flaky*>(t);
  f->running = false;
  if (f->inbound.joinable()) f->inbound.join();
  join_late(f);
}
void destroy(shmsched_transport* t) {
  stop(t);
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
                                     destroy,
                                     publish_batch};

}  // namespace

extern "C" __attribute__((visibility("default"))) const shmsched_transport_api*
shmsched_transport_entry(void) {
  return &kApi;
}
