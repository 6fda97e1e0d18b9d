// The kafka transport (docs/protocol.md, kafka): librdkafka's idempotent producer publishes
// CreatePodCommand/TaskPush to command_topic and every other event to event_topic, key =
// execution_id, header `type`; a dispatch is delivered only when Kafka acknowledged it. A
// consumer (group group_id) reads event_topic and hands ExecutionRequested, ExecutionCompleted,
// ExecutionFailed and ExecutionCancelled to the supervisor as ingress operations; offsets are
// committed only after the supervisor has taken each one. Messages this transport published
// itself (header origin=shmsched) and other types are skipped; malformed ones are logged,
// counted and skipped.
//
// Options: brokers (required), command_topic (saga_commands), event_topic (execution_events),
// group_id (default: one group per supervisor, shmsched.<host>.<hash of runtime_dir>),
// auto_offset_reset (latest), consume (true), and rdkafka.<property> (or rdkafka_<property with
// _ for .>) passed to librdkafka as is. Built against include/shmsched/transport.h, librdkafka
// and msgpack-cxx only.
//
// Partition ownership: a rebalance callback tracks which partitions this consumer owns, with an
// epoch per assignment. An acknowledgement commits only for a partition still owned in the
// epoch its message was read in, so a revoked partition's late acknowledgements never move the
// group's offset (possibly backwards) under its new owner. Commit results are counted and
// failures logged.
#include <librdkafka/rdkafka.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <msgpack.hpp>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "shmsched/transport.h"

namespace {

// Offsets are committed in order, and only up to the first message that is not done yet (taken
// by the supervisor, or skipped): a crash never loses an operation the supervisor had not taken.
// Shared with the acknowledgements, which may outlive the transport (the supervisor may hold one
// while a reload replaces us).
struct Commits {
  using Partition = std::pair<std::string, std::int32_t>;
  std::mutex mu;
  rd_kafka_t* consumer = nullptr;  // null once stopped: acknowledgements then commit nothing
  std::uint64_t next_epoch = 1;
  std::map<Partition, std::uint64_t> owned;  // partition -> epoch of its current assignment
  std::map<Partition, std::map<std::int64_t, bool>> outstanding;

  // The epoch a message just read belongs to (0: its partition is not ours any more).
  std::uint64_t track(const std::string& topic, std::int32_t partition, std::int64_t offset) {
    std::lock_guard lock(mu);
    auto it = owned.find({topic, partition});
    if (it == owned.end()) return 0;
    outstanding[{topic, partition}][offset] = false;
    return it->second;
  }

  void assign(const rd_kafka_topic_partition_list_t* parts) {
    std::lock_guard lock(mu);
    for (int i = 0; i < parts->cnt; ++i) {
      const Partition p{parts->elems[i].topic, parts->elems[i].partition};
      owned[p] = next_epoch++;
      outstanding.erase(p);
    }
  }

  void revoke(const rd_kafka_topic_partition_list_t* parts) {
    std::lock_guard lock(mu);
    for (int i = 0; i < parts->cnt; ++i) {
      const Partition p{parts->elems[i].topic, parts->elems[i].partition};
      owned.erase(p);
      outstanding.erase(p);
    }
  }

  void revoke_all() {
    std::lock_guard lock(mu);
    owned.clear();
    outstanding.clear();
  }

  void done(const std::string& topic, std::int32_t partition, std::int64_t offset,
            std::uint64_t epoch) {
    std::lock_guard lock(mu);
    auto own = owned.find({topic, partition});
    if (own == owned.end() || own->second != epoch) return;  // revoked since it was read
    auto& offsets = outstanding[{topic, partition}];
    auto it = offsets.find(offset);
    if (it == offsets.end()) return;
    it->second = true;
    std::int64_t last = -1;
    while (!offsets.empty() && offsets.begin()->second) {
      last = offsets.begin()->first;
      offsets.erase(offsets.begin());
    }
    if (last < 0 || !consumer) return;
    rd_kafka_topic_partition_list_t* l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic.c_str(), partition)->offset = last + 1;
    rd_kafka_commit(consumer, l, 1);
    rd_kafka_topic_partition_list_destroy(l);
  }
};

struct Kafka {
  shmsched_host host{};
  std::shared_ptr<Commits> commits = std::make_shared<Commits>();
  std::string brokers;
  std::string command_topic = "saga_commands";
  std::string event_topic = "execution_events";
  std::string group_id;  // empty: one per supervisor (default_group_id)
  std::string auto_offset_reset = "latest";
  std::string runtime_dir;
  bool consume = true;
  std::vector<std::pair<std::string, std::string>> properties;
  rd_kafka_t* producer = nullptr;
  rd_kafka_t* consumer = nullptr;
  std::atomic<bool> running{false};
  std::thread poller;
  std::thread reader;
  std::atomic<std::uint64_t> malformed{0};
  std::atomic<std::uint64_t> skipped{0};
  std::atomic<std::uint64_t> handed{0};
  std::atomic<std::uint64_t> commits_ok{0};
  std::atomic<std::uint64_t> commit_failures{0};
  std::atomic<std::uint64_t> rebalances{0};
};

void log(Kafka* k, shmsched_log_level level, const std::string& msg) {
  if (k->host.log) k->host.log(k->host.host_ctx, level, msg.c_str());
}

void write_err(char* err, size_t len, const std::string& msg) {
  if (err && len) std::snprintf(err, len, "%s", msg.c_str());
}

bool set(rd_kafka_conf_t* conf, const std::string& key, const std::string& value,
         std::string& why) {
  char err[512];
  if (rd_kafka_conf_set(conf, key.c_str(), value.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) {
    why = "kafka.rdkafka." + key + " = " + value + ": " + err;
    return false;
  }
  return true;
}

// Delivery reports: the token travels as the message's opaque.
void on_delivery(rd_kafka_t*, const rd_kafka_message_t* m, void* opaque) {
  auto* k = static_cast<Kafka*>(opaque);
  const auto token = reinterpret_cast<std::uintptr_t>(m->_private);
  if (m->err) {
    k->host.delivery(k->host.host_ctx, token, 0, rd_kafka_err2str(m->err));
  } else {
    k->host.delivery(k->host.host_ctx, token, 1, nullptr);
  }
}

// The default consumer group: one per supervisor (host and runtime directory), so that two
// supervisors on one cluster never take each other's lifecycle events.
std::string default_group_id(const std::string& runtime_dir) {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "localhost");
  std::uint32_t h = 2166136261u;  // FNV-1a
  for (unsigned char c : runtime_dir) h = (h ^ c) * 16777619u;
  char out[320];
  std::snprintf(out, sizeof out, "shmsched.%s.%08x", host, h);
  return out;
}

std::string partitions_text(const rd_kafka_topic_partition_list_t* parts) {
  std::string out;
  for (int i = 0; i < parts->cnt; ++i) {
    if (!out.empty()) out += ",";
    out +=
        std::string(parts->elems[i].topic) + "[" + std::to_string(parts->elems[i].partition) + "]";
  }
  return out.empty() ? "none" : out;
}

void on_rebalance(rd_kafka_t* rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* parts,
                  void* opaque) {
  auto* k = static_cast<Kafka*>(opaque);
  k->rebalances++;
  const char* protocol = rd_kafka_rebalance_protocol(rk);
  const bool cooperative = protocol && std::strcmp(protocol, "COOPERATIVE") == 0;
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    k->commits->assign(parts);
    if (cooperative) {
      if (rd_kafka_error_t* e = rd_kafka_incremental_assign(rk, parts)) rd_kafka_error_destroy(e);
    } else {
      rd_kafka_assign(rk, parts);
    }
    log(k, SHMSCHED_LOG_INFO,
        "kafka: assigned " + partitions_text(parts) + " (group " + k->group_id + ")");
    return;
  }
  // Revoked (or an error): acknowledgements of what was read from these partitions no longer
  // commit; their next owner reads them again from the last committed offset (at least once).
  if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
    k->commits->revoke(parts);
    log(k, SHMSCHED_LOG_INFO, "kafka: revoked " + partitions_text(parts));
  } else {
    k->commits->revoke_all();
    log(k, SHMSCHED_LOG_WARN, std::string("kafka: rebalance error: ") + rd_kafka_err2str(err));
  }
  if (cooperative && err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
    if (rd_kafka_error_t* e = rd_kafka_incremental_unassign(rk, parts)) rd_kafka_error_destroy(e);
  } else if (cooperative) {
    // After an error, give up everything we hold, not only what the callback named.
    rd_kafka_topic_partition_list_t* held = nullptr;
    if (rd_kafka_assignment(rk, &held) == RD_KAFKA_RESP_ERR_NO_ERROR && held) {
      if (rd_kafka_error_t* e = rd_kafka_incremental_unassign(rk, held)) rd_kafka_error_destroy(e);
      rd_kafka_topic_partition_list_destroy(held);
    }
  } else {
    rd_kafka_assign(rk, nullptr);
  }
}

void on_commit(rd_kafka_t*, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* offsets,
               void* opaque) {
  auto* k = static_cast<Kafka*>(opaque);
  if (err == RD_KAFKA_RESP_ERR__NO_OFFSET) return;  // nothing was due
  std::string failed;
  if (err) failed = rd_kafka_err2str(err);
  for (int i = 0; offsets && i < offsets->cnt && !err; ++i) {
    if (offsets->elems[i].err) {
      failed = std::string(offsets->elems[i].topic) + "[" +
               std::to_string(offsets->elems[i].partition) +
               "]: " + rd_kafka_err2str(offsets->elems[i].err);
    }
  }
  if (failed.empty()) {
    k->commits_ok++;
    return;
  }
  k->commit_failures++;
  log(k, SHMSCHED_LOG_WARN,
      "kafka: committing consumer offsets failed (" + failed + "; " +
          std::to_string(k->commit_failures.load()) +
          " failure(s) so far): those messages are read again after a restart or rebalance");
}

void on_log(const rd_kafka_t* rk, int level, const char*, const char* buf) {
  auto* k = static_cast<Kafka*>(rd_kafka_opaque(rk));
  log(k,
      level <= 3   ? SHMSCHED_LOG_ERROR
      : level <= 4 ? SHMSCHED_LOG_WARN
                   : SHMSCHED_LOG_DEBUG,
      buf);
}

shmsched_transport* create(const shmsched_kv* kv, size_t n, const shmsched_host* host, char* err,
                           size_t err_len) {
  try {
    auto* k = new Kafka();
    k->host = *host;
    for (size_t i = 0; i < n; ++i) {
      const std::string key = kv[i].key;
      const std::string value = kv[i].value;
      if (key == "brokers")
        k->brokers = value;
      else if (key == "command_topic")
        k->command_topic = value;
      else if (key == "event_topic")
        k->event_topic = value;
      else if (key == "group_id")
        k->group_id = value;
      else if (key == "auto_offset_reset")
        k->auto_offset_reset = value;
      else if (key == "runtime_dir")
        k->runtime_dir = value;
      else if (key == "consume")
        k->consume = value != "false" && value != "0" && value != "no";
      else if (key.rfind("rdkafka.", 0) == 0)
        k->properties.emplace_back(key.substr(8), value);
      else if (key.rfind("rdkafka_", 0) == 0) {
        // From the environment: SHMSCHED_KAFKA_RDKAFKA_COMPRESSION_TYPE -> compression.type.
        std::string prop = key.substr(8);
        for (char& c : prop) c = c == '_' ? '.' : c;
        k->properties.emplace_back(prop, value);
      } else {
        write_err(err, err_len,
                  "unknown option kafka." + key +
                      " (known: brokers, command_topic, event_topic, group_id, "
                      "auto_offset_reset, consume, rdkafka.<property>)");
        delete k;
        return nullptr;
      }
    }
    if (k->auto_offset_reset != "latest" && k->auto_offset_reset != "earliest") {
      write_err(err, err_len,
                "kafka.auto_offset_reset = " + k->auto_offset_reset +
                    ": must be latest (a new group starts at the end of the event topic) or "
                    "earliest (a new group reads the topic's whole history)");
      delete k;
      return nullptr;
    }
    if (k->group_id.empty()) k->group_id = default_group_id(k->runtime_dir);
    if (k->brokers.empty()) {
      write_err(err, err_len, "kafka.brokers is required (e.g. kafka.brokers = localhost:9092)");
      delete k;
      return nullptr;
    }
    return reinterpret_cast<shmsched_transport*>(k);
  } catch (...) {
    write_err(err, err_len, "out of memory");
    return nullptr;
  }
}

rd_kafka_t* make_client(Kafka* k, rd_kafka_type_t type, std::string& why) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  bool ok = set(conf, "bootstrap.servers", k->brokers, why);
  if (type == RD_KAFKA_PRODUCER) {
    ok = ok && set(conf, "enable.idempotence", "true", why) && set(conf, "linger.ms", "2", why);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  } else {
    ok = ok && set(conf, "group.id", k->group_id, why) &&
         set(conf, "enable.auto.commit", "false", why) &&
         set(conf, "auto.offset.reset", k->auto_offset_reset, why);
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_conf_set_offset_commit_cb(conf, on_commit);
  }
  for (const auto& [key, value] : k->properties) {
    // Producer-only or consumer-only properties are refused by the other client: apply each
    // where librdkafka accepts it, and fail only if neither does (checked by the producer).
    std::string ignored;
    if (!set(conf, key, value, type == RD_KAFKA_PRODUCER ? why : ignored) &&
        type == RD_KAFKA_PRODUCER) {
      ok = false;
    }
  }
  rd_kafka_conf_set_log_cb(conf, on_log);
  rd_kafka_conf_set_opaque(conf, k);
  if (!ok) {
    rd_kafka_conf_destroy(conf);
    return nullptr;
  }
  char err[512];
  rd_kafka_t* rk = rd_kafka_new(type, conf, err, sizeof err);
  if (!rk) why = err;
  return rk;
}

// What the supervisor does with an inbound event type.
const char* op_for(std::string_view type) {
  if (type == "ExecutionRequested") return "submit";
  if (type == "ExecutionCompleted") return "complete";
  if (type == "ExecutionFailed") return "fail";
  if (type == "ExecutionCancelled") return "cancel";
  return nullptr;
}

struct Ack {
  std::shared_ptr<Commits> commits;
  std::string topic;
  std::int32_t partition;
  std::int64_t offset;
  std::uint64_t epoch;
};

void ack_cb(void* ctx) {
  auto* a = static_cast<Ack*>(ctx);
  a->commits->done(a->topic, a->partition, a->offset, a->epoch);
  delete a;
}

std::string header(const rd_kafka_message_t* m, const char* name) {
  rd_kafka_headers_t* hdrs = nullptr;
  if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR) return "";
  const void* v = nullptr;
  size_t len = 0;
  if (rd_kafka_header_get_last(hdrs, name, &v, &len) != RD_KAFKA_RESP_ERR_NO_ERROR || !v) return "";
  return std::string(static_cast<const char*>(v), len);
}

void handle(Kafka* k, const rd_kafka_message_t* m) {
  const std::uint64_t epoch =
      k->commits->track(rd_kafka_topic_name(m->rkt), m->partition, m->offset);
  // A message that needs nothing from the supervisor is done at once.
  auto commit_now = [&](Kafka* kk, const rd_kafka_message_t* mm) {
    kk->commits->done(rd_kafka_topic_name(mm->rkt), mm->partition, mm->offset, epoch);
  };
  if (header(m, "origin") == "shmsched") {  // our own publications
    k->skipped++;
    commit_now(k, m);
    return;
  }
  msgpack::object_handle oh;
  try {
    oh = msgpack::unpack(static_cast<const char*>(m->payload), m->len);
  } catch (const std::exception& e) {
    k->malformed++;
    log(k, SHMSCHED_LOG_WARN,
        "skipped a malformed message on " + k->event_topic + " at offset " +
            std::to_string(m->offset) + ": not msgpack (" + e.what() + ")");
    commit_now(k, m);
    return;
  }
  const msgpack::object& body = oh.get();
  std::string type = header(m, "type");
  if (body.type != msgpack::type::MAP) {
    k->malformed++;
    log(k, SHMSCHED_LOG_WARN,
        "skipped a malformed message on " + k->event_topic + " at offset " +
            std::to_string(m->offset) + ": not a map");
    commit_now(k, m);
    return;
  }
  if (type.empty()) {
    for (const auto& kv : body.via.map) {
      if (kv.key.type == msgpack::type::STR &&
          std::string_view(kv.key.via.str.ptr, kv.key.via.str.size) == "type" &&
          kv.val.type == msgpack::type::STR) {
        type.assign(kv.val.via.str.ptr, kv.val.via.str.size);
      }
    }
  }
  const char* op = op_for(type);
  if (!op) {
    k->skipped++;
    commit_now(k, m);
    return;
  }
  // The same map with "op" in front: a request of the ingress protocol.
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  std::uint32_t fields = 1;
  for (const auto& kv : body.via.map) {
    if (!(kv.key.type == msgpack::type::STR &&
          std::string_view(kv.key.via.str.ptr, kv.key.via.str.size) == "op"))
      ++fields;
  }
  pk.pack_map(fields);
  pk.pack(std::string_view("op"));
  pk.pack(std::string_view(op));
  for (const auto& kv : body.via.map) {
    if (kv.key.type == msgpack::type::STR &&
        std::string_view(kv.key.via.str.ptr, kv.key.via.str.size) == "op")
      continue;
    pk.pack(kv.key);
    pk.pack(kv.val);
  }
  auto* ack = new Ack{k->commits, rd_kafka_topic_name(m->rkt), m->partition, m->offset, epoch};
  shmsched_inbound_done done{nullptr, ack_cb, ack};
  // Offered until the host takes it (it is only refused while it is overloaded).
  while (k->running &&
         k->host.inbound(k->host.host_ctx, reinterpret_cast<const uint8_t*>(buf.data()), buf.size(),
                         done) != SHMSCHED_OK) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  k->handed++;
}

int start(shmsched_transport* t, char* err, size_t err_len) {
  auto* k = reinterpret_cast<Kafka*>(t);
  std::string why;
  k->producer = make_client(k, RD_KAFKA_PRODUCER, why);
  if (!k->producer) {
    write_err(err, err_len, "cannot create the Kafka producer: " + why);
    return SHMSCHED_ERR_CONFIG;
  }
  if (k->consume) {
    k->consumer = make_client(k, RD_KAFKA_CONSUMER, why);
    if (!k->consumer) {
      write_err(err, err_len, "cannot create the Kafka consumer: " + why);
      rd_kafka_destroy(k->producer);
      k->producer = nullptr;
      return SHMSCHED_ERR_CONFIG;
    }
    rd_kafka_poll_set_consumer(k->consumer);
    {
      std::lock_guard lock(k->commits->mu);
      k->commits->consumer = k->consumer;  // acknowledgements commit from now on
    }
    rd_kafka_topic_partition_list_t* topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, k->event_topic.c_str(), RD_KAFKA_PARTITION_UA);
    const rd_kafka_resp_err_t e = rd_kafka_subscribe(k->consumer, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (e) {
      write_err(
          err, err_len,
          "cannot subscribe to kafka.event_topic = " + k->event_topic + ": " + rd_kafka_err2str(e));
      return SHMSCHED_ERR_IO;
    }
  }
  k->running = true;
  k->poller = std::thread([k] {
    while (k->running) rd_kafka_poll(k->producer, 100);
  });
  if (k->consumer) {
    k->reader = std::thread([k] {
      while (k->running) {
        rd_kafka_message_t* m = rd_kafka_consumer_poll(k->consumer, 100);
        if (!m) continue;
        if (m->err) {
          if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            log(k, SHMSCHED_LOG_WARN, std::string("consumer: ") + rd_kafka_message_errstr(m));
          }
        } else {
          handle(k, m);
        }
        rd_kafka_message_destroy(m);
      }
    });
  }
  log(k, SHMSCHED_LOG_INFO,
      "kafka: producing to " + k->command_topic + " and " + k->event_topic +
          (k->consumer ? ", consuming " + k->event_topic + " as group " + k->group_id
                       : std::string()) +
          " on " + k->brokers);
  return SHMSCHED_OK;
}

int publish(shmsched_transport* t, const shmsched_message* msg, uint64_t token) {
  auto* k = reinterpret_cast<Kafka*>(t);
  if (!k->producer) return SHMSCHED_ERR_INTERNAL;
  const std::string& topic = msg->is_command ? k->command_topic : k->event_topic;
  const rd_kafka_resp_err_t e = rd_kafka_producev(
      k->producer, RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_KEY(msg->key, std::strlen(msg->key)),
      RD_KAFKA_V_VALUE(const_cast<uint8_t*>(msg->body), msg->body_len),
      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADER("type", msg->type, -1),
      RD_KAFKA_V_HEADER("origin", "shmsched", -1),
      RD_KAFKA_V_OPAQUE(reinterpret_cast<void*>(static_cast<std::uintptr_t>(token))),
      RD_KAFKA_V_END);
  if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL) return SHMSCHED_ERR_BUSY;
  if (e) {
    log(k, SHMSCHED_LOG_WARN, std::string("kafka: produce failed: ") + rd_kafka_err2str(e));
    return SHMSCHED_ERR_IO;
  }
  return SHMSCHED_OK;
}

size_t flush(shmsched_transport* t, uint32_t timeout_ms) {
  auto* k = reinterpret_cast<Kafka*>(t);
  if (!k->producer) return 0;
  rd_kafka_flush(k->producer, static_cast<int>(timeout_ms));
  return static_cast<size_t>(rd_kafka_outq_len(k->producer));
}

void stop(shmsched_transport* t) {
  auto* k = reinterpret_cast<Kafka*>(t);
  if (!k->running.exchange(false)) return;
  if (k->reader.joinable()) k->reader.join();
  {
    std::lock_guard lock(k->commits->mu);
    k->commits->consumer = nullptr;
  }
  if (k->consumer) {
    rd_kafka_consumer_close(k->consumer);
    rd_kafka_destroy(k->consumer);
    k->consumer = nullptr;
  }
  if (k->poller.joinable()) k->poller.join();
  if (k->producer) {
    const int left = rd_kafka_outq_len(k->producer);
    if (left > 0) {
      log(k, SHMSCHED_LOG_WARN,
          "kafka: stopping with " + std::to_string(left) +
              " message(s) undelivered; the supervisor publishes dispatches again");
    }
    rd_kafka_destroy(k->producer);
    k->producer = nullptr;
  }
  log(k, SHMSCHED_LOG_INFO,
      "kafka: stopped (" + std::to_string(k->handed.load()) + " operations taken, " +
          std::to_string(k->skipped.load()) + " messages skipped, " +
          std::to_string(k->malformed.load()) + " malformed, " +
          std::to_string(k->commits_ok.load()) + " offset commits, " +
          std::to_string(k->commit_failures.load()) + " failed)");
}

void destroy(shmsched_transport* t) {
  stop(t);
  delete reinterpret_cast<Kafka*>(t);
}

const shmsched_transport_api kApi = {SHMSCHED_TRANSPORT_ABI_VERSION,
                                     sizeof(shmsched_transport_api),
                                     "kafka",
                                     "Kafka (librdkafka): commands and events out, lifecycle in",
                                     create,
                                     start,
                                     publish,
                                     flush,
                                     stop,
                                     destroy,
                                     nullptr};  // no publish_batch: produce() is per message

}  // namespace

extern "C" __attribute__((visibility("default"))) const shmsched_transport_api*
shmsched_transport_entry(void) {
  return &kApi;
}
