// Kafka test helpers: librdkafka's mock cluster in its own process (tools/kafka_mock), and kcat
// (a separate process) to produce and consume like any Kafka client would.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace shmsched::test {

class KafkaMock {
 public:
  KafkaMock() {
    int in[2], out[2];
    if (::pipe(in) != 0 || ::pipe(out) != 0) throw std::runtime_error("pipe");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      const int devnull = ::open("/dev/null", O_WRONLY);
      ::dup2(devnull, 2);
      ::close(in[1]);
      ::close(out[0]);
      ::execl(SHMSCHED_BIN_DIR "/kafka-mock-cluster", "kafka-mock-cluster", "--topic",
              "saga_commands:1", "--topic", "execution_events:1", nullptr);
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    to_ = ::fdopen(in[1], "w");
    from_ = ::fdopen(out[0], "r");
    const std::string line = read_line();
    if (line.rfind("bootstrap ", 0) != 0) throw std::runtime_error("mock cluster said: " + line);
    bootstrap_ = line.substr(10);
  }
  ~KafkaMock() {
    if (to_) std::fclose(to_);
    if (from_) std::fclose(from_);
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
  }
  const std::string& bootstrap() const { return bootstrap_; }
  bool command(const std::string& c) {
    std::fprintf(to_, "%s\n", c.c_str());
    std::fflush(to_);
    return read_line() == "ok";
  }
  void all_down() {
    for (int b = 1; b <= 3; ++b) command("down " + std::to_string(b));
  }
  void all_up() {
    for (int b = 1; b <= 3; ++b) command("up " + std::to_string(b));
  }

 private:
  std::string read_line() {
    std::array<char, 4096> buf{};
    if (!std::fgets(buf.data(), buf.size(), from_)) return "";
    std::string s(buf.data());
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    return s;
  }
  pid_t pid_ = -1;
  FILE* to_ = nullptr;
  FILE* from_ = nullptr;
  std::string bootstrap_;
};

inline std::string run(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  std::array<char, 4096> buf{};
  while (std::fgets(buf.data(), buf.size(), p)) out += buf.data();
  ::pclose(p);
  return out;
}

// Every message of a topic, as "key|headers" lines (kcat -C ... -e exits at the end).
inline std::vector<std::string> kcat_consume(const std::string& brokers, const std::string& topic) {
  const std::string out = run("kcat -b '" + brokers + "' -C -t " + topic +
                              " -o beginning -e -q -f '%k|%h\\n' 2>/dev/null");
  std::vector<std::string> lines;
  std::string line;
  for (char c : out) {
    if (c == '\n') {
      if (!line.empty()) lines.push_back(line);
      line.clear();
    } else {
      line += c;
    }
  }
  return lines;
}

// Produces one message whose value is `body` (bytes), with a type header and a key.
inline bool kcat_produce(const std::string& brokers, const std::string& topic,
                         const std::string& type, const std::string& key,
                         const std::vector<std::byte>& body, const std::string& scratch_dir) {
  const std::string file = scratch_dir + "/kcat-" + key + "-" + type + ".bin";
  std::ofstream(file, std::ios::binary)
      .write(reinterpret_cast<const char*>(body.data()), static_cast<std::streamsize>(body.size()));
  const int rc = std::system(("kcat -b '" + brokers + "' -P -t " + topic + " -H type=" + type +
                              " -k '" + key + "' '" + file + "' 2>/dev/null")
                                 .c_str());
  return rc == 0;
}

// How many times each key appears among messages whose headers contain `type=<type>`.
inline std::map<std::string, int> count_keys(const std::vector<std::string>& lines,
                                             const std::string& type) {
  std::map<std::string, int> n;
  for (const auto& l : lines) {
    const auto bar = l.find('|');
    if (bar == std::string::npos) continue;
    if (l.find("type=" + type, bar) == std::string::npos) continue;
    ++n[l.substr(0, bar)];
  }
  return n;
}

}  // namespace shmsched::test
