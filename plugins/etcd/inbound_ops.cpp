#include "inbound_ops.h"

#include <chrono>
#include <msgpack.hpp>
#include <thread>

namespace shmsched::etcd {
namespace {

using Packer = msgpack::packer<msgpack::sbuffer>;

std::string finish(const msgpack::sbuffer& buf) {
  return std::string(buf.data(), buf.size());
}

void pair(Packer& p, std::string_view key, std::string_view value) {
  p.pack(key);
  p.pack(value);
}

const msgpack::object* field(const msgpack::object& map, std::string_view key) {
  if (map.type != msgpack::type::MAP) return nullptr;
  for (const auto& kv : map.via.map) {
    if (kv.key.type == msgpack::type::STR &&
        std::string_view(kv.key.via.str.ptr, kv.key.via.str.size) == key) {
      return &kv.val;
    }
  }
  return nullptr;
}

}  // namespace

namespace ops {

std::string claim(std::string_view worker_id, std::string_view execution_id) {
  msgpack::sbuffer buf;
  Packer p(buf);
  p.pack_map(3);
  pair(p, "op", "claim");
  pair(p, "worker_id", worker_id);
  pair(p, "execution_id", execution_id);
  return finish(buf);
}

std::string complete(std::string_view execution_id, std::string_view worker_id) {
  msgpack::sbuffer buf;
  Packer p(buf);
  p.pack_map(3);  // no exit_code: the owner key does not carry one
  pair(p, "op", "complete");
  pair(p, "execution_id", execution_id);
  pair(p, "worker_id", worker_id);
  return finish(buf);
}

std::string fail(std::string_view execution_id, std::string_view worker_id) {
  msgpack::sbuffer buf;
  Packer p(buf);
  p.pack_map(4);
  pair(p, "op", "fail");
  pair(p, "execution_id", execution_id);
  pair(p, "worker_id", worker_id);
  pair(p, "error",
       "worker " + std::string(worker_id) + " wrote failed:" + std::string(worker_id) +
           " into etcd");
  return finish(buf);
}

std::string register_worker(std::string_view worker_id,
                            const std::vector<std::string>& capabilities, std::uint32_t capacity) {
  msgpack::sbuffer buf;
  Packer p(buf);
  p.pack_map(4);
  pair(p, "op", "register_worker");
  pair(p, "worker_id", worker_id);
  p.pack(std::string_view("capabilities"));
  p.pack(capabilities);
  p.pack(std::string_view("capacity"));
  p.pack(capacity);
  return finish(buf);
}

std::string unregister_worker(std::string_view worker_id) {
  msgpack::sbuffer buf;
  Packer p(buf);
  p.pack_map(2);
  pair(p, "op", "unregister_worker");
  pair(p, "worker_id", worker_id);
  return finish(buf);
}

std::string heartbeat(std::string_view worker_id) {
  msgpack::sbuffer buf;
  Packer p(buf);
  p.pack_map(2);
  pair(p, "op", "heartbeat");
  pair(p, "worker_id", worker_id);
  return finish(buf);
}

std::string undeliverable(std::string_view execution_id, std::int64_t attempt,
                          std::string_view error) {
  msgpack::sbuffer buf;
  Packer p(buf);
  p.pack_map(attempt > 0 ? 5 : 4);
  pair(p, "op", "fail");
  pair(p, "execution_id", execution_id);
  pair(p, "error", error);
  p.pack(std::string_view("retry"));
  p.pack(false);
  if (attempt > 0) {
    p.pack(std::string_view("attempt"));
    p.pack(attempt);
  }
  return finish(buf);
}

}  // namespace ops

bool parse_registration(std::string_view value, std::vector<std::string>& capabilities,
                        std::uint32_t& capacity, std::string& error) {
  capabilities.clear();
  capacity = 1;
  if (value.empty()) return true;
  msgpack::object_handle oh;
  try {
    oh = msgpack::unpack(value.data(), value.size());
  } catch (const std::exception& e) {
    error = std::string("not msgpack (") + e.what() + ")";
    return false;
  }
  const msgpack::object& m = oh.get();
  if (m.type != msgpack::type::MAP) {
    error = "not a msgpack map";
    return false;
  }
  if (const auto* caps = field(m, "capabilities")) {
    if (caps->type != msgpack::type::ARRAY) {
      error = "capabilities is not an array of strings";
      return false;
    }
    for (const auto& c : caps->via.array) {
      if (c.type != msgpack::type::STR) {
        error = "capabilities is not an array of strings";
        return false;
      }
      capabilities.emplace_back(c.via.str.ptr, c.via.str.size);
    }
  }
  if (const auto* cap = field(m, "capacity")) {
    if (cap->type != msgpack::type::POSITIVE_INTEGER || cap->via.u64 == 0 ||
        cap->via.u64 > 1000000) {
      error = "capacity is not a whole number from 1 to 1000000";
      return false;
    }
    capacity = static_cast<std::uint32_t>(cap->via.u64);
  }
  return true;
}

MessageFields read_fields(const std::uint8_t* body, std::size_t len) {
  MessageFields f;
  try {
    const auto oh = msgpack::unpack(reinterpret_cast<const char*>(body), len);
    const msgpack::object& m = oh.get();
    if (const auto* a = field(m, "attempt"); a && a->type == msgpack::type::POSITIVE_INTEGER) {
      f.attempt = static_cast<std::int64_t>(a->via.u64);
    }
    if (const auto* w = field(m, "worker_id"); w && w->type == msgpack::type::STR) {
      f.worker_id.assign(w->via.str.ptr, w->via.str.size);
    }
    if (const auto* r = field(m, "will_retry"); r && r->type == msgpack::type::BOOLEAN) {
      f.will_retry = r->via.boolean;
    }
  } catch (const std::exception&) {
    // The supervisor's own encoding: never malformed; the defaults write a plain dispatch.
  }
  return f;
}

// ---- Supervisor ------------------------------------------------------------------------------

namespace {
struct ReplyContext {
  std::shared_ptr<Supervisor> to;
  std::string what;
  bool quiet;
  Supervisor::Refused refused;
};
}  // namespace

std::shared_ptr<Supervisor> make_supervisor(const shmsched_host& host) {
  auto s = std::make_shared<Supervisor>(host);
  s->self_ = s;
  return s;
}

void Supervisor::log(shmsched_log_level level, const std::string& message) {
  std::lock_guard lock(mu_);
  if (attached_ && host_.log) host_.log(host_.host_ctx, level, message.c_str());
}

void Supervisor::detach() {
  std::lock_guard lock(mu_);
  attached_ = false;
}

bool Supervisor::hand_over(const std::string& op, const std::string& what,
                           const std::atomic<bool>& running, bool quiet, Refused refused) {
  auto* ctx = new ReplyContext{self_.lock(), what, quiet, std::move(refused)};
  const shmsched_inbound_done done{on_reply, on_ack, ctx};
  while (running) {
    if (host_.inbound(host_.host_ctx, reinterpret_cast<const std::uint8_t*>(op.data()), op.size(),
                      done) == SHMSCHED_OK) {
      return true;
    }
    // Refused only while the supervisor is overloaded: offered again shortly.
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  delete ctx;
  return false;
}

// The supervisor's answer: refusals are worth a line (a claim lost to another claimant, an
// unknown worker); successes are not.
void Supervisor::on_reply(void* c, const std::uint8_t* body, std::size_t len) {
  auto* ctx = static_cast<ReplyContext*>(c);
  try {
    const auto oh = msgpack::unpack(reinterpret_cast<const char*>(body), len);
    const msgpack::object& m = oh.get();
    const auto* ok = field(m, "ok");
    const auto* claimed = field(m, "claimed");
    const bool refused = ok && ok->type == msgpack::type::BOOLEAN && !ok->via.boolean;
    const bool lost = claimed && claimed->type == msgpack::type::BOOLEAN && !claimed->via.boolean;
    if (refused && ctx->refused) {
      const auto* error = field(m, "error");
      ctx->refused(error && error->type == msgpack::type::STR
                       ? std::string(error->via.str.ptr, error->via.str.size)
                       : std::string());
    }
    if (!refused && !lost) return;
    std::string text;
    for (const char* key : {"error", "message", "owner", "reason"}) {
      if (const auto* v = field(m, key); v && v->type == msgpack::type::STR) {
        text += std::string(text.empty() ? "" : ", ") + key + " " +
                std::string(v->via.str.ptr, v->via.str.size);
      }
    }
    ctx->to->log(ctx->quiet ? SHMSCHED_LOG_DEBUG : SHMSCHED_LOG_INFO,
                 "etcd: the supervisor " + std::string(refused ? "refused " : "did not grant ") +
                     ctx->what + " (" + text + ")");
  } catch (const std::exception& e) {
    ctx->to->log(SHMSCHED_LOG_WARN,
                 "etcd: unreadable answer to " + ctx->what + ": " + std::string(e.what()));
  }
}

void Supervisor::on_ack(void* c) {
  delete static_cast<ReplyContext*>(c);
}

}  // namespace shmsched::etcd
