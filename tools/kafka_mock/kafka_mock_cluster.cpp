// kafka-mock-cluster: librdkafka's mock Kafka cluster (a real Kafka protocol endpoint on
// loopback) for tests and benchmarks. Prints "bootstrap <servers>" on stdout, creates the given
// topics, then takes commands on stdin, one per line, answering "ok" or "error ...":
//   down <broker_id>   set a broker down (connections refused/closed)
//   up <broker_id>     bring it back
//   quit               exit (so does end of input or SIGTERM)
//
//   kafka-mock-cluster [--brokers 3] [--topic saga_commands:1] [--topic execution_events:1]
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  int brokers = 3;
  std::vector<std::pair<std::string, int>> topics;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--brokers" && i + 1 < argc) {
      brokers = std::atoi(argv[++i]);
    } else if (a == "--topic" && i + 1 < argc) {
      const std::string t = argv[++i];
      const auto colon = t.find(':');
      topics.emplace_back(t.substr(0, colon),
                          colon == std::string::npos ? 1 : std::atoi(t.c_str() + colon + 1));
    } else if (a == "--help" || a == "-h") {
      std::cout << "usage: kafka-mock-cluster [--brokers N] [--topic NAME[:PARTITIONS]]...\n"
                   "stdin commands: down <id> | up <id> | quit\n";
      return 0;
    } else {
      std::cerr << "kafka-mock-cluster: unknown argument " << a << " (see --help)\n";
      return 2;
    }
  }
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  // The mock cluster needs an rd_kafka_t to live in; a producer handle is the lightest.
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (!rk) {
    std::cerr << "kafka-mock-cluster: " << err << "\n";
    return 1;
  }
  rd_kafka_mock_cluster_t* mc = rd_kafka_mock_cluster_new(rk, brokers);
  if (!mc) {
    std::cerr << "kafka-mock-cluster: cannot create the mock cluster\n";
    return 1;
  }
  for (const auto& [name, partitions] : topics) {
    if (rd_kafka_mock_topic_create(mc, name.c_str(), partitions, std::min(brokers, 3)) !=
        RD_KAFKA_RESP_ERR_NO_ERROR) {
      std::cerr << "kafka-mock-cluster: cannot create topic " << name << "\n";
      return 1;
    }
  }
  std::cout << "bootstrap " << rd_kafka_mock_cluster_bootstraps(mc) << std::endl;
  std::string line;
  while (std::getline(std::cin, line)) {
    std::string cmd;
    int id = -1;
    char word[32] = {0};
    if (std::sscanf(line.c_str(), "%31s %d", word, &id) < 1) continue;
    cmd = word;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (cmd == "quit") break;
    if (cmd == "down") {
      e = rd_kafka_mock_broker_set_down(mc, id);
    } else if (cmd == "up") {
      e = rd_kafka_mock_broker_set_up(mc, id);
    } else {
      std::cout << "error unknown command " << cmd << std::endl;
      continue;
    }
    if (e)
      std::cout << "error " << rd_kafka_err2str(e) << std::endl;
    else
      std::cout << "ok" << std::endl;
  }
  rd_kafka_mock_cluster_destroy(mc);
  rd_kafka_destroy(rk);
  return 0;
}
