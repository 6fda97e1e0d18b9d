#include "shmsched/ipc/client.h"

namespace shmsched::ipc {

Client::Client(ClientOptions options) : options_(std::move(options)) {
  if (options_.use_shared_memory) {
    try {
      segment_ = Segment::attach(options_.segment);
      producer_ = std::make_unique<Producer>(segment_);
    } catch (const SegmentError&) {
      // Not allowed or not there: every submit goes over the ingress.
      producer_.reset();
      segment_.reset();
    }
  }
  if (!options_.endpoint.empty()) connect();
}

Client::~Client() = default;

void Client::connect() {
  socket_ = std::make_unique<zmq::socket_t>(context_, zmq::socket_type::req);
  socket_->set(zmq::sockopt::linger, 0);
  socket_->set(zmq::sockopt::rcvtimeo, static_cast<int>(options_.timeout.count()));
  socket_->set(zmq::sockopt::sndtimeo, static_cast<int>(options_.timeout.count()));
  socket_->connect(options_.endpoint);
}

msgpack::object_handle Client::call(const std::vector<std::byte>& request) {
  if (!socket_) throw ClientError("no ingress endpoint configured");
  zmq::message_t reply;
  bool ok = false;
  try {
    ok = socket_->send(zmq::buffer(request.data(), request.size()), zmq::send_flags::none)
             .has_value() &&
         socket_->recv(reply, zmq::recv_flags::none).has_value();
  } catch (const zmq::error_t& e) {
    connect();
    throw ClientError(std::string("ingress error: ") + e.what());
  }
  if (!ok) {
    connect();  // a REQ socket that timed out cannot be reused
    throw ClientError("no answer from the supervisor at " + options_.endpoint + " within " +
                      std::to_string(options_.timeout.count()) + " ms: is shmschedd running?");
  }
  try {
    auto oh = msgpack::unpack(static_cast<const char*>(reply.data()), reply.size());
    if (oh.get().type != msgpack::type::MAP) throw ClientError("the reply is not a map");
    return oh;
  } catch (const msgpack::unpack_error& e) {
    throw ClientError(std::string("the reply is not msgpack: ") + e.what());
  }
}

bool Client::wants_disk(const protocol::SubmitOp& op) const {
  return op.durability ? *op.durability == protocol::Durability::kDisk
                       : segment_ && segment_->default_durability_disk();
}

namespace {

std::string not_confirmed(const std::string& what, std::chrono::milliseconds timeout) {
  return what + " queued in shared memory, but shmschedd did not confirm it on disk within " +
         std::to_string(timeout.count()) +
         " ms: is shmschedd running? It survives a process crash, and may not survive a reboot "
         "(the same id answers duplicate while it is queued)";
}

}  // namespace

ClientSubmitResult Client::submit(const protocol::SubmitOp& op) {
  ClientSubmitResult out;
  out.execution_id = op.execution_id.empty() ? protocol::new_uuid() : op.execution_id;
  // Shared memory acknowledges once the entry is in the segment. A disk submit (asked for, or
  // the supervisor's default, which it publishes in the segment) goes there too when the
  // supervisor marks entries once they are on disk, and waits for the mark; else through the
  // ingress, where the supervisor answers (or refuses) it.
  const bool disk = wants_disk(op);
  if (producer_ && (!disk || producer_->durable_marks())) {
    out.result = producer_->submit(protocol::to_submit_request(op, out.execution_id));
    out.via_shared_memory = true;
    if (disk && out.result.accepted() &&
        !await_disk(out, std::chrono::steady_clock::now() + options_.timeout)) {
      throw ClientError(not_confirmed("execution " + out.execution_id + " is", options_.timeout));
    }
    return out;
  }
  protocol::MapBuilder m;
  m.str("op", "submit")
      .str("execution_id", out.execution_id)
      .str("user_id", op.user_id)
      .str("priority", priority_name(op.priority))
      .bin("payload", op.payload);
  if (!op.required_capabilities.empty())
    m.strings("required_capabilities", op.required_capabilities);
  if (!op.metadata.empty()) m.string_map("metadata", op.metadata);
  if (op.timeout_seconds) m.integer("timeout_seconds", op.timeout_seconds);
  if (op.durability) {
    m.str("durability", *op.durability == protocol::Durability::kDisk ? "disk" : "memory");
  }
  auto oh = call(m.finish());
  const auto& r = oh.get();
  if (get_bool(r, "ok").value_or(false)) {
    out.result.admission = Admission::kAccepted;
    out.result.queue_position =
        static_cast<std::uint64_t>(get_int(r, "queue_position").value_or(0));
    return out;
  }
  const std::string code = get_string(r, "error").value_or("invalid");
  out.result.message = get_string(r, "message").value_or("");
  for (auto a : {Admission::kQueueFull, Admission::kUserLimit, Admission::kDuplicate,
                 Admission::kPayloadTooLarge, Admission::kInvalid, Admission::kUnauthorized}) {
    if (admission_name(a) == code) out.result.admission = a;
  }
  return out;
}

std::vector<ClientSubmitResult> Client::submit_many(std::span<const protocol::SubmitOp> ops) {
  std::vector<ClientSubmitResult> out;
  out.reserve(ops.size());
  std::vector<std::size_t> to_await;  // accepted in shared memory, waiting for their marks
  std::optional<std::string> failed;  // why the op at out.size() got no answer
  std::string failed_id;
  for (const auto& op : ops) {
    const bool disk = wants_disk(op);
    if (producer_ && (!disk || producer_->durable_marks())) {
      ClientSubmitResult r;
      r.execution_id = op.execution_id.empty() ? protocol::new_uuid() : op.execution_id;
      r.result = producer_->submit(protocol::to_submit_request(op, r.execution_id));
      r.via_shared_memory = true;
      if (disk && r.result.accepted()) to_await.push_back(out.size());
      out.push_back(std::move(r));
      continue;
    }
    // Its id is chosen here, so that the caller learns it even when no answer comes.
    protocol::SubmitOp named = op;
    if (named.execution_id.empty()) named.execution_id = protocol::new_uuid();
    try {
      out.push_back(submit(named));
    } catch (const ClientError& e) {
      // What went into the segment before it is still waited for and reported.
      failed = std::string(e.what());
      failed_id = named.execution_id;
      break;
    }
  }
  // One deadline for the batch: the marks come per journal batch, so after the first wait the
  // rest are mostly there already.
  const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
  std::vector<std::size_t> unconfirmed;
  for (const auto i : to_await) {
    if (!await_disk(out[i], deadline)) unconfirmed.push_back(i);
  }
  if (!failed && unconfirmed.empty()) return out;
  std::string what;
  if (failed) {
    what = "op " + std::to_string(out.size()) + " of the batch, execution " + failed_id +
           ", got no answer: " + *failed +
           " (whether it is queued is not known: submitted again under the same id, it is "
           "answered duplicate if it is); the " +
           std::to_string(ops.size() - out.size() - 1) + " after it were not submitted";
  }
  if (!unconfirmed.empty()) {
    if (!what.empty()) what += ". ";
    what += not_confirmed(std::to_string(unconfirmed.size()) + " of the batch's " +
                              std::to_string(ops.size()) + " executions are",
                          options_.timeout);
  }
  std::string queued;
  std::size_t listed = 0;
  for (const auto& r : out) {
    if (!r.result.accepted()) continue;
    if (listed++ == 20) {
      queued += ", ...";
      break;
    }
    queued += (queued.empty() ? "" : ", ") + r.execution_id;
  }
  if (!queued.empty()) what += ". Queued (see the exception's results()): " + queued;
  throw ClientBatchError(what, std::move(out), std::move(unconfirmed), failed_id);
}

bool Client::await_disk(ClientSubmitResult& out, std::chrono::steady_clock::time_point deadline) {
  const auto left = std::max(deadline - std::chrono::steady_clock::now(),
                             std::chrono::steady_clock::duration::zero());
  switch (producer_->wait_durable(out.result, left)) {
    case DurableOutcome::kDurable:
    case DurableOutcome::kEnded:  // finished or cancelled already: nothing left to lose
      return true;
    case DurableOutcome::kUnavailable:
      out.result.admission = Admission::kQueueFull;
      out.result.message =
          "execution " + out.execution_id +
          " is queued, but shmschedd stopped confirming durability (its journal failed, or it "
          "stopped) before it was on disk: it survives a process crash, and may not survive a "
          "reboot. Do not submit it again under another id (the same id answers duplicate while "
          "it is queued)";
      return true;
    case DurableOutcome::kTimedOut:
      return false;
  }
  return false;
}

ClientClaimResult Client::claim(const std::string& worker_id, std::uint32_t worker_number,
                                const std::string& execution_id, std::uint32_t attempt) {
  ClientClaimResult out;
  if (producer_ && worker_number != 0) {
    const ClaimResult r = producer_->claim(execution_id, attempt, worker_number);
    if (r.outcome == ClaimOutcome::kWon || r.outcome == ClaimOutcome::kLost) {
      out.claimed = r.outcome == ClaimOutcome::kWon;
      out.owner_number = r.owner;
      if (out.claimed) out.owner = worker_id;
      out.via_shared_memory = true;
      if (!out.claimed) out.reason = "claimed";
      return out;
    }
  }
  auto oh = call(protocol::MapBuilder()
                     .str("op", "claim")
                     .str("worker_id", worker_id)
                     .str("execution_id", execution_id)
                     .finish());
  const auto& r = oh.get();
  if (!get_bool(r, "ok").value_or(false)) {
    out.reason = get_string(r, "error").value_or("invalid");
    return out;
  }
  out.claimed = get_bool(r, "claimed").value_or(false);
  out.owner = get_string(r, "owner").value_or("");
  out.reason = get_string(r, "reason").value_or("");
  return out;
}

const msgpack::object* find_field(const msgpack::object& map, std::string_view key) {
  if (map.type != msgpack::type::MAP) return nullptr;
  for (const auto& kv : map.via.map) {
    if (kv.key.type == msgpack::type::STR &&
        std::string_view(kv.key.via.str.ptr, kv.key.via.str.size) == key) {
      return &kv.val;
    }
  }
  return nullptr;
}

std::optional<std::string> get_string(const msgpack::object& map, std::string_view key) {
  const auto* o = find_field(map, key);
  if (!o || o->type != msgpack::type::STR) return std::nullopt;
  return std::string(o->via.str.ptr, o->via.str.size);
}

std::optional<std::int64_t> get_int(const msgpack::object& map, std::string_view key) {
  const auto* o = find_field(map, key);
  if (!o) return std::nullopt;
  if (o->type == msgpack::type::POSITIVE_INTEGER) return static_cast<std::int64_t>(o->via.u64);
  if (o->type == msgpack::type::NEGATIVE_INTEGER) return o->via.i64;
  return std::nullopt;
}

std::optional<bool> get_bool(const msgpack::object& map, std::string_view key) {
  const auto* o = find_field(map, key);
  if (!o || o->type != msgpack::type::BOOLEAN) return std::nullopt;
  return o->via.boolean;
}

}  // namespace shmsched::ipc

namespace shmsched::ipc {
std::string resolve_runtime_dir(const std::string& configured) {
  if (const char* env = std::getenv("RUNTIME_DIRECTORY"); env && *env) {
    // systemd may list several directories separated by ':'; ours is the first.
    std::string dir(env);
    return dir.substr(0, dir.find(':'));
  }
  if (!configured.empty()) return configured;
  return "/run/shmsched";
}
}  // namespace shmsched::ipc
