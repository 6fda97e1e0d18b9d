// The zeromq transport (docs/protocol.md): a PUB socket, two frames per message, topic then
// body. The topic is the event type; a TaskPush is "TaskPush.<worker_id>". A PUB socket has no
// acknowledgement, so a message is delivered when the socket took it.
//
// Options: endpoint (default ipc://<runtime_dir>/events.sock), sndhwm (default 100000).
// Built against include/shmsched/transport.h only.
#include <zmq.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "shmsched/transport.h"

namespace {

struct ZeromqTransport {
  shmsched_host host;
  std::string endpoint;
  int sndhwm = 100000;
  void* context = nullptr;
  void* socket = nullptr;
};

void write_err(char* err, size_t len, const std::string& msg) {
  if (err && len) std::snprintf(err, len, "%s", msg.c_str());
}

shmsched_transport* create(const shmsched_kv* config, size_t n, const shmsched_host* host,
                           char* err, size_t err_len) {
  try {
    auto* t = new ZeromqTransport();
    t->host = *host;
    std::string runtime_dir = "/run/shmsched";
    for (size_t i = 0; i < n; ++i) {
      const std::string key = config[i].key;
      const std::string value = config[i].value;
      if (key == "endpoint") {
        t->endpoint = value;
      } else if (key == "runtime_dir") {
        runtime_dir = value;
      } else if (key == "sndhwm") {
        char* end = nullptr;
        const long v = std::strtol(value.c_str(), &end, 10);
        if (!end || *end || v < 1 || v > 100000000) {
          write_err(err, err_len,
                    "zeromq.sndhwm = " + value + " must be an integer 1 .. 100000000");
          delete t;
          return nullptr;
        }
        t->sndhwm = static_cast<int>(v);
      } else {
        write_err(err, err_len, "unknown option zeromq." + key + " (known: endpoint, sndhwm)");
        delete t;
        return nullptr;
      }
    }
    if (t->endpoint.empty()) t->endpoint = "ipc://" + runtime_dir + "/events.sock";
    return reinterpret_cast<shmsched_transport*>(t);
  } catch (...) {
    write_err(err, err_len, "out of memory");
    return nullptr;
  }
}

int start(shmsched_transport* handle, char* err, size_t err_len) {
  auto* t = reinterpret_cast<ZeromqTransport*>(handle);
  t->context = zmq_ctx_new();
  t->socket = zmq_socket(t->context, ZMQ_PUB);
  const int linger = 1000;
  zmq_setsockopt(t->socket, ZMQ_LINGER, &linger, sizeof linger);
  zmq_setsockopt(t->socket, ZMQ_SNDHWM, &t->sndhwm, sizeof t->sndhwm);
  if (zmq_bind(t->socket, t->endpoint.c_str()) != 0) {
    write_err(err, err_len,
              "zeromq.endpoint = " + t->endpoint + ": cannot bind: " + zmq_strerror(errno));
    zmq_close(t->socket);
    zmq_ctx_term(t->context);
    t->socket = t->context = nullptr;
    return SHMSCHED_ERR_IO;
  }
  return SHMSCHED_OK;
}

int send_one(ZeromqTransport* t, const shmsched_message* msg) {
  if (!t->socket || !msg || !msg->topic) return SHMSCHED_ERR_INTERNAL;
  const size_t topic_len = std::strlen(msg->topic);
  if (zmq_send(t->socket, msg->topic, topic_len, ZMQ_SNDMORE) < 0 ||
      zmq_send(t->socket, msg->body, msg->body_len, 0) < 0) {
    return errno == EAGAIN ? SHMSCHED_ERR_BUSY : SHMSCHED_ERR_IO;
  }
  return SHMSCHED_OK;
}

int publish(shmsched_transport* handle, const shmsched_message* msg, uint64_t token) {
  auto* t = reinterpret_cast<ZeromqTransport*>(handle);
  const int rc = send_one(t, msg);
  if (rc == SHMSCHED_OK && t->host.delivery) t->host.delivery(t->host.host_ctx, token, 1, nullptr);
  return rc;
}

size_t publish_batch(shmsched_transport* handle, const shmsched_message* msgs,
                     const uint64_t* tokens, size_t n, int* refusal) {
  auto* t = reinterpret_cast<ZeromqTransport*>(handle);
  for (size_t i = 0; i < n; ++i) {
    const int rc = send_one(t, &msgs[i]);
    if (rc != SHMSCHED_OK) {
      *refusal = rc;
      return i;
    }
    if (t->host.delivery) t->host.delivery(t->host.host_ctx, tokens[i], 1, nullptr);
  }
  return n;
}

size_t flush(shmsched_transport*, uint32_t) {
  return 0;
}

void stop(shmsched_transport* handle) {
  auto* t = reinterpret_cast<ZeromqTransport*>(handle);
  if (t->socket) zmq_close(t->socket);
  if (t->context) zmq_ctx_term(t->context);
  t->socket = t->context = nullptr;
}

void destroy(shmsched_transport* handle) {
  delete reinterpret_cast<ZeromqTransport*>(handle);
}

const shmsched_transport_api kApi = {
    SHMSCHED_TRANSPORT_ABI_VERSION,
    sizeof(shmsched_transport_api),
    "zeromq",
    "ZeroMQ PUB socket: topic frame, then the msgpack body",
    create,
    start,
    publish,
    flush,
    stop,
    destroy,
    publish_batch,
};

}  // namespace

extern "C" __attribute__((visibility("default"))) const shmsched_transport_api*
shmsched_transport_entry(void) {
  return &kApi;
}
