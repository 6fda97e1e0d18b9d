// A transport that breaks the ABI's rule: its publish throws a C++ exception while its throw_file
// exists (as a C++ plugin whose allocation fails in publish might; host and plugin share
// libstdc++, so the exception reaches the host). The supervisor must stop in order.
// Options: throw_file (required to throw), log_file (each taken message: "<type> <key>").
#include <sys/stat.h>

#include <cstdio>
#include <stdexcept>
#include <string>

#include "shmsched/transport.h"

namespace {

struct Throwing {
  shmsched_host host;
  std::string throw_file;
  std::string log_file;
};

shmsched_transport* create(const shmsched_kv* kv, size_t n, const shmsched_host* host, char*,
                           size_t) {
  auto* t = new Throwing{*host, {}, {}};
  for (size_t i = 0; i < n; ++i) {
    const std::string k = kv[i].key;
    if (k == "throw_file") t->throw_file = kv[i].value;
    if (k == "log_file") t->log_file = kv[i].value;
  }
  return reinterpret_cast<shmsched_transport*>(t);
}
int start(shmsched_transport*, char*, size_t) {
  return SHMSCHED_OK;
}
int publish(shmsched_transport* h, const shmsched_message* m, uint64_t token) {
  auto* t = reinterpret_cast<Throwing*>(h);
  struct stat st {};
  if (!t->throw_file.empty() && ::stat(t->throw_file.c_str(), &st) == 0) {
    throw std::runtime_error("throwing transport: told to throw");
  }
  if (!t->log_file.empty()) {
    if (FILE* out = std::fopen(t->log_file.c_str(), "a")) {
      std::fprintf(out, "%s %s\n", m->type, m->key);
      std::fclose(out);
    }
  }
  t->host.delivery(t->host.host_ctx, token, 1, nullptr);
  return SHMSCHED_OK;
}
size_t publish_batch(shmsched_transport* h, const shmsched_message* msgs, const uint64_t* tokens,
                     size_t n, int*) {
  for (size_t i = 0; i < n; ++i) publish(h, &msgs[i], tokens[i]);
  return n;
}
size_t flush(shmsched_transport*, uint32_t) {
  return 0;
}
void stop(shmsched_transport*) {}
void destroy(shmsched_transport* h) {
  delete reinterpret_cast<Throwing*>(h);
}

const shmsched_transport_api kApi = {SHMSCHED_TRANSPORT_ABI_VERSION,
                                     sizeof(shmsched_transport_api),
                                     "throwing",
                                     "test transport whose publish throws on demand",
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
