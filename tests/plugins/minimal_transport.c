/* The minimal transport of docs/plugins.md, in C: each message becomes a line "<type> <key>" in
 * the file named by its one option, `path`; a message is delivered once it is written.
 * Built against include/shmsched/transport.h alone, and loaded by a test. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shmsched/transport.h"

struct shmsched_transport {
  shmsched_host host; /* callbacks: copied, the host's struct may go away */
  FILE* out;
  char path[4096];
};

static void say(char* err, size_t len, const char* a, const char* b) {
  if (err && len) snprintf(err, len, "%s%s", a, b);
}

static shmsched_transport* create(const shmsched_kv* config, size_t n, const shmsched_host* host,
                                  char* err, size_t err_len) {
  shmsched_transport* t = calloc(1, sizeof *t);
  if (!t) {
    say(err, err_len, "out of memory", "");
    return NULL;
  }
  t->host = *host;
  for (size_t i = 0; i < n; ++i) {
    if (strcmp(config[i].key, "path") == 0) {
      snprintf(t->path, sizeof t->path, "%s", config[i].value);
    } else if (strcmp(config[i].key, "runtime_dir") != 0) { /* every plugin gets runtime_dir */
      say(err, err_len, "unknown option minimal.", config[i].key);
      free(t);
      return NULL;
    }
  }
  if (!t->path[0]) {
    say(err, err_len, "minimal.path is required", "");
    free(t);
    return NULL;
  }
  return t;
}

static int start(shmsched_transport* t, char* err, size_t err_len) {
  t->out = fopen(t->path, "a");
  if (!t->out) {
    say(err, err_len, "minimal.path: cannot open ", t->path);
    return SHMSCHED_ERR_IO;
  }
  return SHMSCHED_OK;
}

static int publish(shmsched_transport* t, const shmsched_message* msg, uint64_t token) {
  if (fprintf(t->out, "%s %s\n", msg->type, msg->key) < 0 || fflush(t->out) != 0) {
    return SHMSCHED_ERR_IO; /* not taken: no delivery callback follows */
  }
  t->host.delivery(t->host.host_ctx, token, 1, NULL); /* taken and delivered */
  return SHMSCHED_OK;
}

static size_t flush(shmsched_transport* t, uint32_t timeout_ms) {
  (void)t;
  (void)timeout_ms;
  return 0; /* nothing is ever outstanding */
}

static void stop(shmsched_transport* t) {
  if (t->out) fclose(t->out);
  t->out = NULL;
}

static void destroy(shmsched_transport* t) {
  free(t);
}

static const shmsched_transport_api api = {
    SHMSCHED_TRANSPORT_ABI_VERSION,
    sizeof(shmsched_transport_api),
    "minimal",
    "one line per message in a file",
    create,
    start,
    publish,
    flush,
    stop,
    destroy,
    NULL, /* publish_batch: optional */
};

__attribute__((visibility("default"))) const shmsched_transport_api* shmsched_transport_entry(
    void) {
  return &api;
}
