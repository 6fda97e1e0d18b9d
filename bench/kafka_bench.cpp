// Kafka dispatch load generator: a real shmschedd with the kafka transport, librdkafka's mock
// cluster as the broker. Measures acknowledged dispatches per second (submitted through shared
// memory, counted by the supervisor once Kafka acknowledged them) and the latency from a submit
// to the moment a consumer can read its CreatePodCommand from saga_commands (an upper bound of
// submit-to-acknowledgement).
//
//   kafka_bench [--n 100000] [--latency 500] [--linger-ms 5]
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../tests/kafka_support.h"
#include "shmsched/ipc/client.h"

namespace {

using namespace shmsched;
using ipc::protocol::MapBuilder;
using Clock = std::chrono::steady_clock;

std::int64_t wall_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::int64_t counter(ipc::Client& c, const char* name) {
  auto oh = c.call(MapBuilder().str("op", "stats").finish());
  const auto* counters = ipc::find_field(oh.get(), "counters");
  return counters ? ipc::get_int(*counters, name).value_or(0) : 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t n = 100000;
  int n_latency = 500;
  std::string linger = "5";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--n")
      n = std::strtoull(argv[i + 1], nullptr, 10);
    else if (k == "--latency")
      n_latency = std::atoi(argv[i + 1]);
    else if (k == "--linger-ms")
      linger = argv[i + 1];
  }
  test::KafkaMock mock;
  const std::string dir = "/tmp/shmsched-kafka-bench-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string segment = "shmsched-kbench-" + std::to_string(::getpid());
  ipc::Segment::remove(segment);
  const std::string cap = std::to_string(n + static_cast<std::uint64_t>(n_latency) + 1000);
  std::vector<std::string> args = {SHMSCHED_BIN_DIR "/shmschedd",
                                   "--runtime-dir=" + dir,
                                   "--segment=" + segment,
                                   "--plugin-dir=" SHMSCHED_PLUGIN_DIR,
                                   "--transports=kafka",
                                   "--metrics-listen=off",
                                   "--kafka.brokers=" + mock.bootstrap(),
                                   "--kafka.group_id=bench-" + std::to_string(::getpid()),
                                   "--kafka.rdkafka.linger.ms=" + linger,
                                   "--max-queue-size=" + cap,
                                   "--max-active=" + cap,
                                   "--max-active-executions=" + cap,
                                   "--max-executions-per-user=" + cap,
                                   "--max-payload-bytes=256",
                                   "--max-extras-bytes=64",
                                   "--log-level=warn"};
  struct Reaper {  // the daemon goes down with us, however we leave
    pid_t pid = -1;
    ~Reaper() {
      if (pid > 0) {
        ::kill(pid, SIGTERM);
        ::waitpid(pid, nullptr, 0);
      }
    }
  } reaper;
  const pid_t pid = ::fork();
  reaper.pid = pid;
  if (pid == 0) {
    const int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(devnull, 1);
    ::dup2(devnull, 2);
    std::vector<char*> a;
    for (auto& s : args) a.push_back(s.data());
    a.push_back(nullptr);
    ::execv(a[0], a.data());
    ::_exit(127);
  }
  ipc::ClientOptions o;
  o.segment = segment;
  o.endpoint = "ipc://" + dir + "/ingress.sock";
  o.timeout = std::chrono::milliseconds(200);
  std::unique_ptr<ipc::Client> client;
  for (int i = 0; i < 100 && !client; ++i) {
    try {
      auto c = std::make_unique<ipc::Client>(o);
      c->call(MapBuilder().str("op", "stats").finish());
      client = std::move(c);
    } catch (const std::exception&) {
    }
  }
  // Attach again now that the segment exists (the first client was made before it did).
  if (client) client = std::make_unique<ipc::Client>(o);
  if (!client || !client->shared_memory()) {
    std::fprintf(stderr, "kafka_bench: shmschedd did not start\n");
    return 1;
  }

  // A consumer of saga_commands, to see each command as soon as Kafka serves it.
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", mock.bootstrap().c_str(), err, sizeof err);
  rd_kafka_conf_set(conf, "group.id", ("bench-reader-" + std::to_string(::getpid())).c_str(), err,
                    sizeof err);
  rd_kafka_conf_set(conf, "auto.offset.reset", "latest", err, sizeof err);
  rd_kafka_conf_set(conf, "fetch.wait.max.ms", "1", err, sizeof err);
  rd_kafka_conf_set(conf, "log_level", "0", err, sizeof err);
  rd_kafka_t* reader = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  rd_kafka_poll_set_consumer(reader);
  rd_kafka_topic_partition_list_t* topics = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(topics, "saga_commands", RD_KAFKA_PARTITION_UA);
  rd_kafka_subscribe(reader, topics);
  rd_kafka_topic_partition_list_destroy(topics);

  ipc::protocol::SubmitOp op;
  op.user_id = "bench";
  op.payload.assign(64, std::byte{'x'});
  // Warm up until the reader has its partition and sees commands.
  for (int i = 0;; ++i) {
    op.execution_id = "warm-" + std::to_string(i);
    client->submit(op);
    rd_kafka_message_t* m = rd_kafka_consumer_poll(reader, 500);
    const bool got = m && !m->err;
    if (m) rd_kafka_message_destroy(m);
    if (got) break;
    if (i > 60) {
      std::fprintf(stderr, "kafka_bench: the reader never saw a command\n");
      return 1;
    }
  }
  while (rd_kafka_message_t* m = rd_kafka_consumer_poll(reader, 200)) rd_kafka_message_destroy(m);

  std::vector<double> us;
  for (int i = 0; i < n_latency; ++i) {
    op.execution_id = "lat-" + std::to_string(i);
    const std::int64_t t0 = wall_ns();
    client->submit(op);
    for (;;) {
      rd_kafka_message_t* m = rd_kafka_consumer_poll(reader, 5000);
      if (!m) break;
      const bool mine =
          !m->err && m->key_len == op.execution_id.size() &&
          std::string(static_cast<const char*>(m->key), m->key_len) == op.execution_id;
      rd_kafka_message_destroy(m);
      if (mine) {
        us.push_back(static_cast<double>(wall_ns() - t0) / 1000.0);
        break;
      }
    }
  }
  std::sort(us.begin(), us.end());
  auto at = [&](double q) {
    return us.empty() ? 0.0 : us[std::min(us.size() - 1, static_cast<std::size_t>(q * us.size()))];
  };

  const std::int64_t before = counter(*client, "dispatched");
  const auto t0 = Clock::now();
  for (std::uint64_t i = 0; i < n; ++i) {
    op.execution_id = "tp-" + std::to_string(i);
    client->submit(op);
  }
  const double submit_s = std::chrono::duration<double>(Clock::now() - t0).count();
  while (counter(*client, "dispatched") - before < static_cast<std::int64_t>(n)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (Clock::now() - t0 > std::chrono::seconds(300)) break;
  }
  const double total_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const std::int64_t acked = counter(*client, "dispatched") - before;
  const std::int64_t failures = counter(*client, "publish_failures");

  std::printf(
      "kafka transport into librdkafka's mock cluster (3 brokers, 1 partition per topic), "
      "linger.ms=%s:\n",
      linger.c_str());
  std::printf(
      "  submit -> CreatePodCommand readable by a consumer (%zu samples): p50 %.0f us  p99 %.0f "
      "us\n",
      us.size(), at(0.5), at(0.99));
  std::printf(
      "  %llu submits through shared memory in %.2f s; acknowledged by Kafka after %.2f s\n",
      static_cast<unsigned long long>(n), submit_s, total_s);
  std::printf("  acknowledged dispatches/s: %.0f (goal >= 100,000); publish failures: %lld\n",
              static_cast<double>(acked) / total_s, static_cast<long long>(failures));
  rd_kafka_consumer_close(reader);
  rd_kafka_destroy(reader);
  ipc::Segment::remove(segment);
  std::filesystem::remove_all(dir);
  return 0;
}
