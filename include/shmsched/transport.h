/*
 * shmsched transport plugin ABI, version 2 (version 2 added publish_batch; shmschedd refuses a
 * plugin built for another version, with a message that says to rebuild it).
 *
 * A transport is a shared object that the supervisor (shmschedd) loads with dlopen. It exports
 * one symbol, shmsched_transport_entry, returning a table of functions over an opaque handle.
 * The supervisor checks abi_version and struct_size before it uses anything else in the table.
 *
 * Threading: the host calls create/start/publish/flush/stop/destroy from one thread. A plugin
 * may call host->log from create() on, and delivery and inbound from any thread between start()
 * and the return of stop(). No C++ exception may cross this boundary; errors are return codes
 * plus text. During a reload two instances of one plugin may live at once (the old one flushing).
 *
 * Memory: everything the host passes is valid only for the duration of the call (copy the
 * shmsched_host struct in create(); host_ctx inside it stays valid until destroy() returns); a
 * plugin copies what it keeps. Everything a plugin passes to a callback is valid only for the
 * duration of that callback.
 *
 * See docs/plugins.md for a walk-through and a minimal example.
 */
#ifndef SHMSCHED_TRANSPORT_H
#define SHMSCHED_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHMSCHED_TRANSPORT_ABI_VERSION 2u
#define SHMSCHED_TRANSPORT_ENTRY_SYMBOL "shmsched_transport_entry"

/* Return codes. */
#define SHMSCHED_OK 0
#define SHMSCHED_ERR_CONFIG 1   /* bad or missing configuration key; err names it */
#define SHMSCHED_ERR_IO 2       /* could not bind/connect/produce */
#define SHMSCHED_ERR_BUSY 3     /* temporarily unable to take the message: retry later */
#define SHMSCHED_ERR_INTERNAL 4 /* anything else */

typedef struct shmsched_transport shmsched_transport; /* the plugin's opaque handle */

/* Log levels of the host's logger. */
typedef enum {
  SHMSCHED_LOG_DEBUG = 0,
  SHMSCHED_LOG_INFO = 1,
  SHMSCHED_LOG_WARN = 2,
  SHMSCHED_LOG_ERROR = 3
} shmsched_log_level;

/* One outbound message: an event or a command of docs/protocol.md. */
typedef struct {
  const char* type;    /* event type, e.g. "CreatePodCommand"; NUL-terminated */
  const char* key;     /* the execution_id, for every event and command today; NUL-terminated */
  const char* topic;   /* suggested topic: type, or "TaskPush.<worker_id>" */
  const uint8_t* body; /* msgpack map, as in docs/protocol.md */
  size_t body_len;
  int is_command; /* 1 for CreatePodCommand and TaskPush, 0 for lifecycle events */
} shmsched_message;

/* Inbound operations a transport may feed back (a remote submit, completion, ...): the body is
 * a request map of the ingress protocol ({"op": "submit", ...}), exactly as a ZeroMQ client
 * would send it. The host answers through reply(), with a reply map of the same protocol; a
 * transport that has nobody to answer may ignore it. `ack` is called when the host has taken
 * the operation (e.g. so that a Kafka transport commits its offset only then). */
typedef struct {
  void (*reply)(void* op_ctx, const uint8_t* body, size_t len);
  void (*ack)(void* op_ctx);
  void* op_ctx;
} shmsched_inbound_done;

/* Callbacks the host provides. Every function may be called from any plugin thread. */
typedef struct {
  void* host_ctx;
  /* Logging through the host (to the journal). */
  void (*log)(void* host_ctx, shmsched_log_level level, const char* message);
  /* The outcome of publish(token): ok = 1 when the transport's peer has the message
   * (e.g. Kafka acknowledged it), ok = 0 with a reason otherwise. Exactly once per token. */
  void (*delivery)(void* host_ctx, uint64_t token, int ok, const char* error);
  /* An inbound operation (see shmsched_inbound_done). Returns SHMSCHED_OK if the host queued it;
   * the host copies body before returning. */
  int (*inbound)(void* host_ctx, const uint8_t* body, size_t len, shmsched_inbound_done done);
} shmsched_host;

/* Configuration: key/value strings (the keys of "<name>.<key>" in the host's configuration,
 * without the prefix). */
typedef struct {
  const char* key;
  const char* value;
} shmsched_kv;

typedef struct {
  uint32_t abi_version; /* SHMSCHED_TRANSPORT_ABI_VERSION */
  uint32_t struct_size; /* sizeof(shmsched_transport_api) */
  const char* name;     /* "zeromq", "kafka", ... */
  const char* description;

  /* Creates an instance from configuration. On failure returns NULL and writes a message into
   * err (at most err_len bytes, NUL-terminated) that names the offending key. */
  shmsched_transport* (*create)(const shmsched_kv* config, size_t config_len,
                                const shmsched_host* host, char* err, size_t err_len);
  /* Binds/connects and starts any threads. SHMSCHED_OK or an error code with err filled. */
  int (*start)(shmsched_transport* t, char* err, size_t err_len);
  /* Queues a message for delivery and returns at once. The outcome arrives later (or within the
   * call) through host->delivery(token, ...). A non-OK return means the message was not taken
   * and no delivery callback will follow for this token. */
  int (*publish)(shmsched_transport* t, const shmsched_message* msg, uint64_t token);
  /* Waits up to timeout_ms for outstanding deliveries; returns how many are still outstanding. */
  size_t (*flush)(shmsched_transport* t, uint32_t timeout_ms);
  /* Stops threads; after it returns no callback is made. Messages whose outcome was not reported
   * by then count as not delivered (the host publishes them again where needed). */
  void (*stop)(shmsched_transport* t);
  void (*destroy)(shmsched_transport* t);

  /* Since version 2, optional (NULL: the host calls publish() once per message).
   * Queues msgs[0 .. n) in order, each as publish(msgs[i], tokens[i]) would, and returns how
   * many it took: all n, or a prefix when msgs[taken] was refused, with the reason in *refusal
   * (SHMSCHED_ERR_BUSY, SHMSCHED_ERR_IO, ...). Refused and later messages are not taken and get
   * no delivery callback; the host deals with the refused one and offers the rest again. The
   * host hands over every message it has for this transport at once (one wake-up of the
   * supervisor's loop), so a transport can send them as a batch. */
  size_t (*publish_batch)(shmsched_transport* t, const shmsched_message* msgs,
                          const uint64_t* tokens, size_t n, int* refusal);
} shmsched_transport_api;

/* The one exported symbol: a plugin defines it (with default visibility); the host finds it with
 * dlsym(SHMSCHED_TRANSPORT_ENTRY_SYMBOL). */
const shmsched_transport_api* shmsched_transport_entry(void);
typedef const shmsched_transport_api* (*shmsched_transport_entry_fn)(void);

#ifdef __cplusplus
}
#endif

#endif /* SHMSCHED_TRANSPORT_H */
