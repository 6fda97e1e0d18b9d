// A worker process for the claim race test: registers over the ingress, then claims each
// execution named on stdin ("<execution_id> <attempt>" per line), through shared memory or over
// the ingress, and answers each on stdout ("won <owner_number> <owner>" or "lost ...").
// A random pause of up to <jitter_us> before each claim lets the slower path win now and then.
//   claim_racer <ingress endpoint> <segment> <worker_id> <shm|ingress> <jitter_us>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <random>
#include <string>

#include "shmsched/ipc/client.h"

using namespace shmsched;

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s <endpoint> <segment> <worker_id> <shm|ingress> <jitter_us>\n",
                 argv[0]);
    return 2;
  }
  const std::string worker = argv[3];
  const bool shm = std::string(argv[4]) == "shm";
  ipc::ClientOptions o;
  o.endpoint = argv[1];
  o.segment = argv[2];
  o.use_shared_memory = shm;
  o.timeout = std::chrono::seconds(20);
  ipc::Client client(o);
  if (shm && !client.shared_memory()) {
    std::fprintf(stderr, "cannot open segment %s\n", argv[2]);
    return 1;
  }
  auto reg = client.call(ipc::protocol::MapBuilder()
                             .str("op", "register_worker")
                             .str("worker_id", worker)
                             .strings("capabilities", {"race"})
                             .integer("capacity", 1000000)
                             .finish());
  if (!ipc::get_bool(reg.get(), "ok").value_or(false)) {
    std::fprintf(stderr, "register_worker: %s\n",
                 ipc::get_string(reg.get(), "message").value_or("?").c_str());
    return 1;
  }
  const auto number =
      static_cast<std::uint32_t>(ipc::get_int(reg.get(), "worker_number").value_or(0));
  std::printf("ready %u\n", number);
  std::fflush(stdout);
  std::string id;
  std::string attempt_text;
  std::mt19937 rng(static_cast<unsigned>(std::hash<std::string>{}(worker)));
  const int jitter = std::atoi(argv[5]);
  // "<execution_id> <attempt>" claims it; "complete <execution_id>" reports it done as this
  // worker ("ok" or the error code).
  while (std::cin >> id >> attempt_text) {
    if (id == "complete") {
      auto r = client.call(ipc::protocol::MapBuilder()
                               .str("op", "complete")
                               .str("execution_id", attempt_text)
                               .str("worker_id", worker)
                               .integer("exit_code", 0)
                               .finish());
      std::printf("%s\n", ipc::get_bool(r.get(), "ok").value_or(false)
                              ? "ok"
                              : ipc::get_string(r.get(), "error").value_or("?").c_str());
      std::fflush(stdout);
      continue;
    }
    const auto attempt = static_cast<std::uint32_t>(std::stoul(attempt_text));
    if (jitter > 0) {
      const auto until = std::chrono::steady_clock::now() +
                         std::chrono::microseconds(static_cast<int>(rng() % (jitter + 1)));
      while (std::chrono::steady_clock::now() < until) {
      }
    }
    const auto r = client.claim(worker, shm ? number : 0, id, attempt);
    std::printf("%s %u %s %s\n", r.claimed ? "won" : "lost", r.owner_number,
                r.owner.empty() ? "-" : r.owner.c_str(), r.reason.empty() ? "-" : r.reason.c_str());
    std::fflush(stdout);
  }
  return 0;
}
