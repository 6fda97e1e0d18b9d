#include "transport_host.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <algorithm>

namespace shmsched::daemon {

std::shared_ptr<PluginLibrary> PluginLibrary::load(const std::string& dir,
                                                   const std::string& name) {
  const std::string path = dir + "/libshmsched_transport_" + name + ".so";
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    throw PluginError("transport '" + name + "': no plugin file " + path +
                      " (check plugin_dir and the transports list)");
  }
  std::shared_ptr<PluginLibrary> lib(new PluginLibrary());
  lib->path_ = path;
  lib->handle_ = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib->handle_) {
    throw PluginError("transport '" + name + "': cannot load " + path + ": " + ::dlerror());
  }
  void* sym = ::dlsym(lib->handle_, SHMSCHED_TRANSPORT_ENTRY_SYMBOL);
  if (!sym) {
    throw PluginError("transport '" + name + "': " + path + " does not export " +
                      SHMSCHED_TRANSPORT_ENTRY_SYMBOL + ": it is not a shmsched transport plugin");
  }
  const auto entry = reinterpret_cast<shmsched_transport_entry_fn>(sym);
  const shmsched_transport_api* api = entry();
  if (!api) throw PluginError("transport '" + name + "': " + path + " returned no function table");
  if (api->abi_version != SHMSCHED_TRANSPORT_ABI_VERSION) {
    throw PluginError("transport '" + name + "': " + path + " was built for plugin ABI version " +
                      std::to_string(api->abi_version) + ", this shmschedd speaks version " +
                      std::to_string(SHMSCHED_TRANSPORT_ABI_VERSION) + ": rebuild the plugin");
  }
  if (api->struct_size < sizeof(shmsched_transport_api) || !api->create || !api->start ||
      !api->publish || !api->flush || !api->stop || !api->destroy) {
    throw PluginError("transport '" + name + "': " + path +
                      " has an incomplete function table: rebuild the plugin");
  }
  lib->api_ = api;
  return lib;
}

PluginLibrary::~PluginLibrary() {
  if (handle_) ::dlclose(handle_);
}

Transport::Transport(std::shared_ptr<PluginLibrary> library, std::string name,
                     std::uint64_t instance, std::map<std::string, std::string> options,
                     const HostCallbacks* callbacks)
    : library_(std::move(library)),
      name_(std::move(name)),
      instance_(instance),
      options_(std::move(options)),
      context_(std::make_unique<Context>(Context{callbacks, name_, instance})) {
  host_.host_ctx = context_.get();
  host_.log = [](void* ctx, shmsched_log_level level, const char* message) {
    auto* c = static_cast<Context*>(ctx);
    c->callbacks->log(level, c->name, message ? message : "");
  };
  host_.delivery = [](void* ctx, std::uint64_t token, int ok, const char* error) {
    auto* c = static_cast<Context*>(ctx);
    c->callbacks->delivery(c->instance, c->name, token, ok != 0, error ? error : "");
  };
  host_.inbound = [](void* ctx, const std::uint8_t* body, std::size_t len,
                     shmsched_inbound_done done) -> int {
    auto* c = static_cast<Context*>(ctx);
    const auto* b = reinterpret_cast<const std::byte*>(body);
    return c->callbacks->inbound(c->name, std::vector<std::byte>(b, b + len), done)
               ? SHMSCHED_OK
               : SHMSCHED_ERR_BUSY;
  };
  std::vector<shmsched_kv> kv;
  for (const auto& [k, v] : options_) kv.push_back({k.c_str(), v.c_str()});
  char err[512] = {0};
  handle_ = library_->api().create(kv.data(), kv.size(), &host_, err, sizeof err);
  if (!handle_) {
    throw PluginError("transport '" + name_ + "': " + (err[0] ? err : "create failed"));
  }
  if (library_->api().start(handle_, err, sizeof err) != SHMSCHED_OK) {
    library_->api().destroy(handle_);
    handle_ = nullptr;
    throw PluginError("transport '" + name_ + "': " + (err[0] ? err : "start failed"));
  }
}

void Transport::check(const PluginLibrary& library, const std::string& name,
                      const std::map<std::string, std::string>& options,
                      const HostCallbacks* callbacks) {
  Context context{callbacks, name, 0};
  shmsched_host host{};
  host.host_ctx = &context;
  host.log = [](void* ctx, shmsched_log_level level, const char* message) {
    auto* c = static_cast<Context*>(ctx);
    c->callbacks->log(level, c->name, message ? message : "");
  };
  host.delivery = [](void*, std::uint64_t, int, const char*) {};  // never started: none come
  host.inbound = [](void*, const std::uint8_t*, std::size_t, shmsched_inbound_done) -> int {
    return SHMSCHED_ERR_BUSY;
  };
  std::vector<shmsched_kv> kv;
  for (const auto& [k, v] : options) kv.push_back({k.c_str(), v.c_str()});
  char err[512] = {0};
  shmsched_transport* t = library.api().create(kv.data(), kv.size(), &host, err, sizeof err);
  if (!t) throw PluginError("transport '" + name + "': " + (err[0] ? err : "create failed"));
  library.api().destroy(t);
}

Transport::~Transport() {
  if (handle_) {
    library_->api().stop(handle_);
    library_->api().destroy(handle_);
  }
}

int Transport::publish(const shmsched_message& msg, std::uint64_t token) {
  return library_->api().publish(handle_, &msg, token);
}

std::size_t Transport::publish_batch(const shmsched_message* msgs, const std::uint64_t* tokens,
                                     std::size_t n, int* refusal) {
  *refusal = SHMSCHED_OK;
  if (n == 0) return 0;
  if (library_->api().publish_batch) {
    const std::size_t taken = library_->api().publish_batch(handle_, msgs, tokens, n, refusal);
    if (taken < n && *refusal == SHMSCHED_OK) *refusal = SHMSCHED_ERR_INTERNAL;
    return std::min(taken, n);
  }
  for (std::size_t i = 0; i < n; ++i) {
    const int rc = library_->api().publish(handle_, &msgs[i], tokens[i]);
    if (rc != SHMSCHED_OK) {
      *refusal = rc;
      return i;
    }
  }
  return n;
}

std::size_t Transport::flush(std::uint32_t timeout_ms) {
  return library_->api().flush(handle_, timeout_ms);
}

}  // namespace shmsched::daemon
