// The ingress thread: answers submit, status, list and stats itself, straight from the shared
// segment (it is just another producer), and hands cancel, complete and fail to the loop, which
// owns dispatch state and replies later; so are status and list of finished executions, which
// only the scheduler remembers.
#include <signal.h>
#include <spdlog/spdlog.h>

#include "access_policy.h"
#include "shmsched/ipc/events.h"
#include "supervisor.h"
#include "worker_sessions.h"

namespace shmsched::daemon {

using ipc::protocol::MapBuilder;
namespace protocol = ipc::protocol;

namespace {

const char* state_of(const ipc::ExecutionRecord& r) {
  if (r.state == ipc::ExecutionState::kQueued) return "queued";
  const auto phase = core::phase_of(r.annotation);
  if (phase == core::Phase::kFinished) {
    // Ended; only the release of its slot is pending.
    return core::final_state_name(static_cast<core::FinalState>((r.annotation >> 32) & 0xff))
        .data();
  }
  if (phase == core::Phase::kHeld || phase == core::Phase::kUnknown) return "queued";
  // Claimed by a worker: it runs there.
  return r.claimed_by != 0 ? "running" : "dispatched";
}

}  // namespace

std::vector<std::byte> Supervisor::execution_map(const ipc::ExecutionRecord& r,
                                                 bool ok_field) const {
  MapBuilder m;
  if (ok_field) m.boolean("ok", true);
  m.str("execution_id", r.execution_id)
      .str("state", state_of(r))
      .str("priority", priority_name(r.priority))
      .str("user_id", r.user_id)
      .integer("attempt", r.attempt)
      .integer("enqueued_at", r.enqueued_at_ns);
  if (r.queue_position) m.integer("queue_position", static_cast<std::int64_t>(*r.queue_position));
  if (r.claimed_by != 0 && r.state == ipc::ExecutionState::kActive) {
    m.str("worker_id", worker_name(r.claimed_by));
  }
  return m.finish();
}

std::string Supervisor::worker_name(std::uint32_t number) const {
  std::lock_guard lock(worker_names_mutex_);
  auto it = worker_names_.find(number);
  return it != worker_names_.end() ? it->second : "#" + std::to_string(number);
}

void Supervisor::start_ingress() {
  std::vector<std::string> endpoints = {config_.ingress_endpoint()};
  if (!config_.ingress_tcp.empty()) endpoints.push_back(config_.ingress_tcp);
  ingress_ = std::make_unique<ipc::IngressServer>(zmq_, endpoints);
  // The ingress thread never reads config_ (a reload writes it on the loop's thread): what it
  // needs is copied here. Identity settings take effect at start.
  AccessPolicy::Settings access{config_.check_identity, config_.trusted_gid, config_.trusted_group,
                                config_.worker_gid, config_.worker_group};
  ingress_thread_ = std::thread([this, access] { ingress_main(access); });
}

void Supervisor::ingress_main(const AccessPolicy::Settings& access_settings) {
  // Signals are for the signal thread only (they are blocked in main() before threads start).
  // The ingress registers with the queue on first use, and again after a failure: with every
  // participant entry taken by other processes, a submit is refused, not the whole process.
  std::unique_ptr<ipc::Producer> registered;
  Clock::time_point next_error_log{};
  auto producer_or_error = [&](std::string& error) -> ipc::Producer* {
    if (registered) return registered.get();
    try {
      // Clients are answered within a second even while a stopped process holds a repair up;
      // repairs themselves are the loop's (the consumer's) to run.
      ipc::ProducerOptions bounded;
      bounded.wait = std::chrono::seconds(1);
      bounded.ask_consumer_in_process = true;
      registered = std::make_unique<ipc::Producer>(segment_, bounded);
      return registered.get();
    } catch (const ipc::SegmentError& e) {
      error = std::string("the supervisor cannot submit to the queue now: ") + e.what();
      if (Clock::now() >= next_error_log) {
        next_error_log = Clock::now() + std::chrono::seconds(5);
        spdlog::error("the ingress refuses submits: {}", e.what());
      }
      return nullptr;
    }
  };
  AccessPolicy access(access_settings);
  SessionCache sessions;
  auto handler = [&](const protocol::Request& req, std::uint64_t token, const ipc::Peer& peer) {
    std::string error;
    // Who the kernel says the client is decides what it may do; a refusal changes nothing.
    if (auto why = access.refusal(peer, req)) {
      counters_.rejected_unauthorized.fetch_add(1, std::memory_order_relaxed);
      return std::optional<ipc::IngressServer::Reply>(
          protocol::error_reply(why->code, why->message));
    }
    if (const auto* s = std::get_if<protocol::SubmitOp>(&req)) {
      const std::string id = s->execution_id.empty() ? protocol::new_uuid() : s->execution_id;
      ipc::Producer* producer = producer_or_error(error);
      if (!producer) {
        counters_.rejected_no_participant_entry.fetch_add(1, std::memory_order_relaxed);
        inbox_->post(RejectedMessage{id, s->user_id, "queue_full", error});
        return std::optional<ipc::IngressServer::Reply>(protocol::error_reply("queue_full", error));
      }
      const bool disk = s->durability ? *s->durability == protocol::Durability::kDisk
                                      : default_disk_.load(std::memory_order_relaxed);
      if (disk) {
        if (auto why = durable_refusal()) {
          inbox_->post(RejectedMessage{id, s->user_id, why->first, why->second});
          return std::optional<ipc::IngressServer::Reply>(
              protocol::error_reply(why->first, why->second));
        }
      }
      const auto res = producer->submit(protocol::to_submit_request(*s, id));
      if (res.accepted()) {
        auto reply = MapBuilder()
                         .boolean("ok", true)
                         .str("execution_id", id)
                         .integer("queue_position", static_cast<std::int64_t>(res.queue_position))
                         .finish();
        if (!disk) return std::optional<ipc::IngressServer::Reply>(std::move(reply));
        // Answered by the loop once its record is on disk.
        inbox_->post(DurableWaitMessage{id, ReplyTo{token, std::nullopt}, std::move(reply)});
        return std::optional<ipc::IngressServer::Reply>();
      }
      const std::string reason(admission_name(res.admission));
      inbox_->post(RejectedMessage{id, s->user_id, reason, res.message});
      return std::optional<ipc::IngressServer::Reply>(protocol::error_reply(reason, res.message));
    }
    // Reads need a registration too (a bracket), except stats, which reads the segment's
    // counters and the oldest waits the loop publishes; cancel, complete and fail go to the loop.
    const bool reads = std::holds_alternative<protocol::StatusOp>(req) ||
                       std::holds_alternative<protocol::ListOp>(req);
    ipc::Producer* producer = reads ? producer_or_error(error) : registered.get();
    if (!producer && reads) {
      return std::optional<ipc::IngressServer::Reply>(protocol::error_reply("queue_full", error));
    }
    if (const auto* s = std::get_if<protocol::StatusOp>(&req)) {
      const auto rec = producer->status(s->execution_id);
      if (!rec) {
        // Finished (the scheduler remembers it), or unknown: the loop answers.
        inbox_->post(OpMessage{req, ReplyTo{token, std::nullopt}});
        return std::optional<ipc::IngressServer::Reply>();
      }
      return std::optional<ipc::IngressServer::Reply>(execution_map(*rec, true));
    }
    if (const auto* l = std::get_if<protocol::ListOp>(&req);
        l && l->state && *l->state != "queued" && *l->state != "dispatched" &&
        *l->state != "running") {
      inbox_->post(OpMessage{req, ReplyTo{token, std::nullopt}});
      return std::optional<ipc::IngressServer::Reply>();
    }
    if (const auto* l = std::get_if<protocol::ListOp>(&req)) {
      std::optional<std::string_view> user;
      if (l->user_id) user = *l->user_id;
      std::vector<std::vector<std::byte>> items;
      // Without payloads; and without a state to filter by, only as many as answered.
      const std::size_t scan = l->state ? SIZE_MAX : l->limit;
      for (const auto& rec : producer->list(user, scan, false)) {
        if (items.size() >= l->limit) break;
        if (l->state && *l->state != state_of(rec)) continue;
        items.push_back(execution_map(rec, false));
      }
      return std::optional<ipc::IngressServer::Reply>(
          MapBuilder().boolean("ok", true).raw_array("executions", items).finish());
    }
    if (std::holds_alternative<protocol::StatsOp>(req)) {
      const auto st = ipc::queue_stats(*segment_);
      std::vector<std::pair<std::string, std::int64_t>> depth;
      std::vector<std::pair<std::string, std::int64_t>> waits;
      const auto oldest = observability_.oldest_waits_ns(ipc::events::now_ns());
      for (std::size_t l = 0; l < kPriorityLevels; ++l) {
        depth.emplace_back(std::string(kPriorityNames[l]), static_cast<std::int64_t>(st.depth[l]));
        waits.emplace_back(std::string(kPriorityNames[l]), oldest[l] / 1'000'000);
      }
      auto c = [](const std::atomic<std::uint64_t>& a) {
        return static_cast<std::int64_t>(a.load(std::memory_order_relaxed));
      };
      const auto counters = stats_counters(st);
      MapBuilder reply;
      if (journal_) {
        // The journal's health: a failed one refuses disk submits until a restart.
        const auto h = journal_->health();
        const auto js = journal_->stats();
        MapBuilder j;
        j.boolean("ok", h.ok)
            .str("dir", journal_->dir())
            .integer("durable_lsn", static_cast<std::int64_t>(js.durable_lsn))
            .integer("bytes", static_cast<std::int64_t>(js.journal_bytes))
            .integer("segments", static_cast<std::int64_t>(js.segments))
            .integer("snapshots", static_cast<std::int64_t>(js.snapshots))
            .boolean("durable_marks", segment_->durable_marks())
            .integer("durable_waiters", segment_->durable_waiters());
        if (!h.ok) j.str("error", h.error.message);
        reply.raw("journal", j.finish());
      }
      return std::optional<ipc::IngressServer::Reply>(
          reply.boolean("ok", true)
              .int_map("queue_depth", depth)
              .int_map("oldest_wait_ms", waits)
              .integer("active", c(counters_.active))
              .integer("capacity", c(counters_.max_active))
              .integer("queue_capacity", static_cast<std::int64_t>(st.capacity))
              .integer("workers", c(counters_.workers))
              .integer("waiting_for_workers", c(counters_.waiting_for_workers))
              .int_map("counters", counters)
              .finish());
    }
    // cancel, complete, fail and the worker operations: the loop owns dispatch state and the
    // workers; it replies through the server, and checks the owner where it acts (a check here
    // would race with the loop). A local client names its process: a worker registered from one
    // process is acted for from that process only.
    OpMessage m{req, ReplyTo{token, std::nullopt}, access.acting_for(peer)};
    if (peer.local && names_a_worker(req)) {
      m.session = sessions.of(peer.pid);
      m.pid = peer.pid;
    }
    inbox_->post(std::move(m));
    return std::optional<ipc::IngressServer::Reply>();
  };
  try {
    ingress_->run(handler, ingress_stop_);
  } catch (const std::exception& e) {
    spdlog::critical("the ingress stopped: {}", e.what());
    inbox_->post(SignalMessage{SIGTERM});
  }
}

}  // namespace shmsched::daemon
