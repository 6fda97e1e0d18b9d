// shmschedd: the shmsched supervisor. See docs/operations.md.
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>

#include "config.h"
#include "journal_sink.h"
#include "lock_file.h"
#include "supervisor.h"
#include "transport_host.h"

using namespace shmsched::daemon;

namespace {

void setup_logging(const Config& c) {
  std::shared_ptr<spdlog::logger> logger;
  if (stderr_is_journal()) {
    // Under systemd: native journal entries, with priorities and structured fields (the journal
    // adds its own timestamp and the unit name).
    logger =
        std::make_shared<spdlog::logger>("shmschedd", std::make_shared<JournalSink>("shmschedd"));
  } else {
    logger = spdlog::stderr_color_mt("shmschedd");
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  }
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(c.log_level));
  spdlog::flush_on(spdlog::level::info);
}

}  // namespace

int main(int argc, char** argv) {
  LoadResult loaded;
  try {
    loaded = load_config(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "shmschedd: configuration error: " << e.what() << "\n";
    return 2;
  }
  if (loaded.show_help) {
    std::cout << loaded.help_text;
    return 0;
  }
  if (loaded.show_version) {
    std::cout << "shmschedd " << SHMSCHED_VERSION << "\n";
    return 0;
  }
  Config& config = loaded.config;
  if (loaded.check_only) {
    // The values are valid (load_config threw otherwise); each transport's plugin loads, speaks
    // this ABI and accepts its options (created and destroyed, not started: binding and
    // connecting happen at start). An optional transport's trouble is a warning, as at start.
    int code = 0;
    for (const auto& w : loaded.warnings) std::cout << "warning: " << w << "\n";
    HostCallbacks quiet;
    quiet.log = [](shmsched_log_level, const std::string& t, const std::string& m) {
      std::cout << "[" << t << "] " << m << "\n";
    };
    for (const auto& name : config.transports) {
      const bool optional =
          std::find(config.optional_transports.begin(), config.optional_transports.end(), name) !=
          config.optional_transports.end();
      try {
        const auto lib = PluginLibrary::load(config.plugin_dir, name);
        std::map<std::string, std::string> options;
        if (auto it = config.transport_options.find(name); it != config.transport_options.end()) {
          options = it->second;
        }
        options.emplace("runtime_dir", config.runtime_dir);
        Transport::check(*lib, name, options, &quiet);
        std::cout << "transport " << name << ": " << lib->path() << "\n";
      } catch (const std::exception& e) {
        std::cout << (optional ? "warning (optional transport): " : "error: ") << e.what() << "\n";
        if (!optional) code = 2;
      }
    }
    std::cout << (code == 0 ? "configuration OK\n" : "configuration has errors\n");
    return code;
  }
  setup_logging(config);
  for (const auto& w : loaded.warnings) spdlog::warn("{}", w);
  // Signals are taken by the supervisor's signal thread only: block them in every thread.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  try {
    std::error_code ec;
    std::filesystem::create_directories(config.runtime_dir, ec);
    if (ec) {
      throw std::runtime_error("cannot create runtime_dir " + config.runtime_dir + ": " +
                               ec.message());
    }
    if (config.standby) spdlog::info("standby: waiting for the running supervisor to exit");
    LockFile lock(config.runtime_dir + "/" + config.segment + ".lock", config.standby);
    Supervisor supervisor(config, argc, argv);
    return supervisor.run();
  } catch (const std::exception& e) {
    spdlog::critical("{}", e.what());
    return 1;
  }
}
