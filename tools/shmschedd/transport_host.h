// Loading transport plugins (dlopen) and driving them through the C ABI of
// include/shmsched/transport.h. Nothing in a plugin can throw into the supervisor: every call is
// checked, every callback only queues a message for the main loop.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "shmsched/transport.h"

namespace shmsched::daemon {

class PluginError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What a plugin reports back; delivered to the supervisor's inbox by the callbacks.
struct HostCallbacks {
  std::function<void(shmsched_log_level, const std::string& transport, const std::string&)> log;
  std::function<void(std::uint64_t instance, const std::string& transport, std::uint64_t token,
                     bool ok, const std::string& error)>
      delivery;
  std::function<bool(const std::string& transport, std::vector<std::byte> body,
                     shmsched_inbound_done done)>
      inbound;
};

// One loaded shared object; kept loaded while any instance of it lives.
class PluginLibrary {
 public:
  // Loads <dir>/libshmsched_transport_<name>.so. Throws PluginError naming the file and the
  // cause: missing file, missing entry symbol, ABI version or table size mismatch.
  static std::shared_ptr<PluginLibrary> load(const std::string& dir, const std::string& name);
  ~PluginLibrary();

  const shmsched_transport_api& api() const { return *api_; }
  const std::string& path() const { return path_; }

 private:
  PluginLibrary() = default;
  void* handle_ = nullptr;
  const shmsched_transport_api* api_ = nullptr;
  std::string path_;
};

// A running transport instance.
class Transport {
 public:
  // Creates an instance and destroys it again without starting it: the plugin validates its
  // options (a reload checks a new configuration before it touches the running one). Throws
  // PluginError with the plugin's own message.
  static void check(const PluginLibrary& library, const std::string& name,
                    const std::map<std::string, std::string>& options,
                    const HostCallbacks* callbacks);
  // Creates and starts it. Throws PluginError with the plugin's own message on failure.
  Transport(std::shared_ptr<PluginLibrary> library, std::string name, std::uint64_t instance,
            std::map<std::string, std::string> options, const HostCallbacks* callbacks);
  ~Transport();
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  const std::string& name() const { return name_; }
  // Unique among every instance this process started (a reload starts new ones).
  std::uint64_t instance() const { return instance_; }
  const std::map<std::string, std::string>& options() const { return options_; }

  // SHMSCHED_OK when the message was taken (a delivery callback follows for `token`).
  int publish(const shmsched_message& msg, std::uint64_t token);
  // msgs[0 .. n) in order (publish_batch, or publish() one by one for a plugin without it):
  // how many were taken; *refusal says why msgs[taken] was not.
  std::size_t publish_batch(const shmsched_message* msgs, const std::uint64_t* tokens,
                            std::size_t n, int* refusal);
  std::size_t flush(std::uint32_t timeout_ms);

 private:
  struct Context {
    const HostCallbacks* callbacks;
    std::string name;
    std::uint64_t instance;
  };
  std::shared_ptr<PluginLibrary> library_;
  std::string name_;
  std::uint64_t instance_;
  std::map<std::string, std::string> options_;
  std::unique_ptr<Context> context_;
  shmsched_host host_{};
  shmsched_transport* handle_ = nullptr;
};

}  // namespace shmsched::daemon
