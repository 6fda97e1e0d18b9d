// An example shmsched worker in C++ on the client library (shmsched::ipc): it registers with its
// capabilities, listens for the TaskPush messages meant for it on the zeromq transport's PUB
// socket, claims each one (through shared memory when it may open the segment: one
// compare-and-swap, no round trip; over the ingress otherwise), runs it and reports the outcome,
// with heartbeats meanwhile. Running a task here means: the payload is text; "sleep:<ms>" sleeps
// that long, "fail:<text>" fails with retry, anything else succeeds. Replace run() with your work.
//
//   shmsched_worker --worker-id w1 --capabilities py,gpu --capacity 4
//                   [--runtime-dir /run/shmsched] [--segment shmsched]
#include <signal.h>

#include <atomic>
#include <boost/program_options.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "shmsched/ipc/client.h"

namespace po = boost::program_options;
using namespace shmsched;
using ipc::protocol::MapBuilder;

namespace {

std::atomic<bool> g_stop{false};

struct Outcome {
  bool ok = true;
  std::string error;
};

Outcome run(const std::string& payload) {
  if (payload.rfind("sleep:", 0) == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(std::stoi(payload.substr(6))));
    return {};
  }
  if (payload.rfind("fail:", 0) == 0) return {false, payload.substr(5)};
  return {};
}

struct Task {
  std::string id;
  std::uint32_t attempt = 1;
  std::string payload;
};

}  // namespace

int main(int argc, char** argv) {
  std::string worker, runtime_dir, segment;
  std::vector<std::string> capabilities;
  int capacity = 1;
  po::options_description opts("shmsched_worker: an example worker");
  opts.add_options()("help", "this text")("worker-id", po::value<std::string>(&worker)->required(),
                                          "this worker's id")(
      "capabilities", po::value<std::string>()->default_value(""), "comma-separated")(
      "capacity", po::value<int>(&capacity)->default_value(1), "tasks run at once")(
      "runtime-dir", po::value<std::string>(&runtime_dir)->default_value(""),
      "shmschedd's runtime directory (ingress.sock, events.sock)")(
      "segment", po::value<std::string>(&segment)->default_value("shmsched"),
      "the queue's segment, for claims through shared memory");
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, opts), vm);
    if (vm.count("help")) {
      std::cout << opts << "\n";
      return 0;
    }
    po::notify(vm);
  } catch (const std::exception& e) {
    std::cerr << "shmsched_worker: " << e.what() << "\n" << opts << "\n";
    return 2;
  }
  for (std::size_t at = 0, comma; at < vm["capabilities"].as<std::string>().size();
       at = comma + 1) {
    const std::string& all = vm["capabilities"].as<std::string>();
    comma = all.find(',', at);
    if (comma == std::string::npos) comma = all.size();
    if (comma > at) capabilities.push_back(all.substr(at, comma - at));
  }
  const std::string dir = ipc::resolve_runtime_dir(runtime_dir);
  ipc::ClientOptions o;
  o.endpoint = "ipc://" + dir + "/ingress.sock";
  o.segment = segment;
  signal(SIGTERM, [](int) { g_stop = true; });
  signal(SIGINT, [](int) { g_stop = true; });

  try {
    ipc::Client control(o);
    // Subscribe before registering: pushes follow the registration at once. A ZeroMQ topic is a
    // prefix ("TaskPush.w1" also matches "TaskPush.w10"): the body's worker_id decides.
    zmq::context_t ctx;
    zmq::socket_t sub(ctx, zmq::socket_type::sub);
    sub.set(zmq::sockopt::subscribe, "TaskPush." + worker);
    sub.set(zmq::sockopt::rcvtimeo, 200);
    sub.connect("ipc://" + dir + "/events.sock");
    auto registration = [&](ipc::Client& c) {
      return c.call(MapBuilder()
                        .str("op", "register_worker")
                        .str("worker_id", worker)
                        .strings("capabilities", capabilities)
                        .integer("capacity", capacity)
                        .string_map("metadata", {{"language", "c++"}})
                        .finish());
    };
    auto reg = registration(control);
    if (!ipc::get_bool(reg.get(), "ok").value_or(false)) {
      std::cerr << "register_worker refused: " << ipc::get_string(reg.get(), "error").value_or("")
                << ": " << ipc::get_string(reg.get(), "message").value_or("") << "\n";
      return 2;
    }
    const auto number =
        static_cast<std::uint32_t>(ipc::get_int(reg.get(), "worker_number").value_or(0));
    const auto interval =
        std::chrono::milliseconds(ipc::get_int(reg.get(), "heartbeat_interval_ms").value_or(10000));
    std::printf("registered %s (%s)%s\n", worker.c_str(),
                vm["capabilities"].as<std::string>().c_str(),
                control.shared_memory() ? ", claiming through shared memory" : "");
    std::fflush(stdout);

    std::thread heartbeat([&] {
      ipc::Client c(o);  // a client per thread: ZeroMQ sockets are not shared
      auto next = std::chrono::steady_clock::now() + interval;
      while (!g_stop) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        if (std::chrono::steady_clock::now() < next) continue;
        next += interval;
        try {
          auto r = c.call(MapBuilder().str("op", "heartbeat").str("worker_id", worker).finish());
          // Forgotten (the supervisor restarted, or we were silent too long): register again.
          if (!ipc::get_bool(r.get(), "ok").value_or(false)) registration(c);
        } catch (const std::exception& e) {
          std::fprintf(stderr, "heartbeat: %s\n", e.what());
        }
      }
    });

    // `capacity` runners, each with a client of its own, take the pushes in order.
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Task> pending;
    std::vector<std::thread> runners;
    for (int i = 0; i < capacity; ++i) {
      runners.emplace_back([&] {
        ipc::Client c(o);
        for (;;) {
          Task t;
          {
            std::unique_lock lock(mu);
            cv.wait_for(lock, std::chrono::milliseconds(200),
                        [&] { return g_stop || !pending.empty(); });
            if (g_stop) return;
            if (pending.empty()) continue;
            t = std::move(pending.front());
            pending.pop_front();
          }
          try {
            const auto claim = c.claim(worker, number, t.id, t.attempt);
            if (!claim.claimed) continue;  // another worker has it (or it is gone)
            std::printf("claimed %s attempt %u%s\n", t.id.c_str(), t.attempt,
                        claim.via_shared_memory ? " (shared memory)" : "");
            std::fflush(stdout);
            const Outcome out = run(t.payload);
            MapBuilder m;
            m.str("op", out.ok ? "complete" : "fail")
                .str("execution_id", t.id)
                .str("worker_id", worker)
                .integer("attempt", t.attempt);
            if (out.ok) {
              m.integer("exit_code", 0);
            } else {
              m.str("error", out.error).boolean("retry", true);
            }
            c.call(m.finish());
          } catch (const std::exception& e) {
            std::fprintf(stderr, "%s: %s\n", t.id.c_str(), e.what());
          }
        }
      });
    }
    while (!g_stop) {
      zmq::message_t topic, body;
      if (!sub.recv(topic) || !sub.recv(body)) continue;
      const auto msg = msgpack::unpack(static_cast<const char*>(body.data()), body.size());
      if (ipc::get_string(msg.get(), "worker_id").value_or("") != worker) continue;
      Task t;
      t.id = ipc::get_string(msg.get(), "execution_id").value_or("");
      t.attempt = static_cast<std::uint32_t>(ipc::get_int(msg.get(), "attempt").value_or(1));
      if (const auto* p = ipc::find_field(msg.get(), "payload"); p && p->type == msgpack::type::BIN)
        t.payload.assign(p->via.bin.ptr, p->via.bin.size);
      std::lock_guard lock(mu);
      pending.push_back(std::move(t));
      cv.notify_one();
    }
    cv.notify_all();
    for (auto& r : runners) r.join();
    heartbeat.join();
    control.call(MapBuilder().str("op", "unregister_worker").str("worker_id", worker).finish());
  } catch (const std::exception& e) {
    std::cerr << "shmsched_worker: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
