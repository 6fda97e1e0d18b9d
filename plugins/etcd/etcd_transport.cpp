// The etcd transport (docs/protocol.md, etcd): the plugin ABI's entry points over the pieces of
// this folder. etcd_options: the configuration; etcd_keys: the key layout; etcd_connection: the
// channels to the endpoints; dispatch_writer: the supervisor's messages into etcd, in batched
// transactions; state_watcher: what workers write into etcd, back to the supervisor as
// operations; inbound_ops: the encoding of those operations. Built against
// include/shmsched/transport.h, gRPC, protobuf, msgpack-cxx and etcd's own v3 protos only.
#include <cstdio>
#include <memory>
#include <string>

#include "dispatch_writer.h"
#include "etcd_connection.h"
#include "etcd_keys.h"
#include "etcd_options.h"
#include "inbound_ops.h"
#include "shmsched/transport.h"
#include "state_watcher.h"

namespace shmsched::etcd {
namespace {

struct Transport {
  Options options;
  Keys keys;
  shmsched_host host;
  std::shared_ptr<Supervisor> supervisor;
  std::unique_ptr<Connection> connection;
  std::unique_ptr<DispatchWriter> writer;
  std::unique_ptr<StateWatcher> watcher;
  bool started = false;
};

void write_err(char* err, std::size_t len, const std::string& msg) {
  if (err && len) std::snprintf(err, len, "%s", msg.c_str());
}

Transport* self(shmsched_transport* t) {
  return reinterpret_cast<Transport*>(t);
}

shmsched_transport* create(const shmsched_kv* kv, size_t n, const shmsched_host* host, char* err,
                           size_t err_len) {
  try {
    std::string error;
    auto options = parse_options(kv, n, error);
    if (!options) {
      write_err(err, err_len, error);
      return nullptr;
    }
    auto* t = new Transport{
        *options, Keys(options->prefix), *host, make_supervisor(*host), nullptr, nullptr, nullptr};
    return reinterpret_cast<shmsched_transport*>(t);
  } catch (const std::exception& e) {
    write_err(err, err_len, std::string("etcd: cannot create the transport: ") + e.what());
    return nullptr;
  }
}

int start(shmsched_transport* handle, char* err, size_t err_len) {
  Transport* t = self(handle);
  try {
    t->connection = std::make_unique<Connection>(t->options);
    std::string error;
    if (!t->connection->connect(error)) {
      write_err(err, err_len, error);
      return SHMSCHED_ERR_IO;
    }
    t->writer = std::make_unique<DispatchWriter>(t->options, t->keys, *t->connection, t->host,
                                                 t->supervisor);
    t->watcher = std::make_unique<StateWatcher>(t->options, t->keys, *t->connection, t->supervisor,
                                                *t->writer);
    t->writer->start();
    t->watcher->start();
    t->started = true;
    std::string endpoints;
    for (const auto& e : t->options.endpoints) {
      endpoints += (endpoints.empty() ? "" : ",") + e.address;
    }
    t->supervisor->log(SHMSCHED_LOG_INFO, "etcd: connected to " + endpoints + " under prefix " +
                                              t->options.prefix + "/ (batches of up to " +
                                              std::to_string(t->options.batch_size) +
                                              " executions)");
    return SHMSCHED_OK;
  } catch (const std::exception& e) {
    write_err(err, err_len, std::string("etcd: cannot start: ") + e.what());
    return SHMSCHED_ERR_INTERNAL;
  }
}

size_t publish_batch(shmsched_transport* handle, const shmsched_message* msgs,
                     const uint64_t* tokens, size_t n, int* refusal) {
  Transport* t = self(handle);
  try {
    if (!t->writer) {
      *refusal = SHMSCHED_ERR_INTERNAL;
      return 0;
    }
    return t->writer->take(msgs, tokens, n, refusal);
  } catch (const std::exception& e) {
    t->supervisor->log(SHMSCHED_LOG_ERROR, std::string("etcd: publish failed: ") + e.what());
    *refusal = SHMSCHED_ERR_INTERNAL;
    return 0;
  }
}

int publish(shmsched_transport* handle, const shmsched_message* msg, uint64_t token) {
  int refusal = SHMSCHED_OK;
  return publish_batch(handle, msg, &token, 1, &refusal) == 1 ? SHMSCHED_OK : refusal;
}

size_t flush(shmsched_transport* handle, uint32_t timeout_ms) {
  Transport* t = self(handle);
  return t->writer ? t->writer->flush(std::chrono::milliseconds(timeout_ms)) : 0;
}

void stop(shmsched_transport* handle) {
  Transport* t = self(handle);
  if (!t->started) return;
  t->started = false;
  // The watcher first: it may be handing an operation over; then the writer settles every
  // message it took (written, or reported as not written).
  t->watcher->stop();
  t->writer->stop();
  t->supervisor->log(SHMSCHED_LOG_INFO, "etcd: stopped");
  t->supervisor->detach();
}

void destroy(shmsched_transport* handle) {
  stop(handle);
  Transport* t = self(handle);
  t->watcher.reset();
  t->writer.reset();
  t->connection.reset();
  delete t;
}

const shmsched_transport_api kApi = {
    SHMSCHED_TRANSPORT_ABI_VERSION,
    sizeof(shmsched_transport_api),
    "etcd",
    "etcd v3: commands and pushes as keys in batched transactions; claims, completions and "
    "registrations from workers through a watch",
    create,
    start,
    publish,
    flush,
    stop,
    destroy,
    publish_batch};

}  // namespace
}  // namespace shmsched::etcd

extern "C" __attribute__((visibility("default"))) const shmsched_transport_api*
shmsched_transport_entry(void) {
  return &shmsched::etcd::kApi;
}
