// The HTTP endpoint (docs/operations.md, "Metrics and the dashboard"): /metrics in Prometheus'
// text format, /healthz, the dashboard page and its live state. Served on the HTTP thread from
// what the loop already keeps: the segment's counters, the loop's atomics and the observations it
// publishes twice a second. Nothing here waits for the loop.
#include <pwd.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <condition_variable>
#include <msgpack.hpp>
#include <nlohmann/json.hpp>

#include "dashboard_page.h"
#include "peer_uid.h"
#include "prometheus_text.h"
#include "shmsched/ipc/client.h"
#include "shmsched/ipc/events.h"
#include "supervisor.h"

namespace shmsched::daemon {

namespace {

constexpr auto kObserveInterval = std::chrono::milliseconds(500);
// The heads' enqueue times (oldest waits) are this fresh: a head dispatched a moment ago may
// still count for this long.
constexpr auto kHeadsInterval = std::chrono::milliseconds(50);
// The loop passes at least every 100 ms; silent this long, it is stuck.
constexpr std::int64_t kLoopStuckNs = 5'000'000'000;
// The per-user top reads every slot of the segment: at most this often.
constexpr std::int64_t kTopEveryNs = 1'000'000'000;

// Ids are the clients' bytes, not necessarily UTF-8: shown with U+FFFD where they are not.
std::string dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::int64_t steady_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

HttpResponse text(unsigned status, std::string body) {
  return HttpResponse{status, "text/plain; charset=utf-8", std::move(body), {}};
}

HttpResponse json_reply(unsigned status, const nlohmann::json& body) {
  return HttpResponse{status, "application/json", dump(body), {}};
}

HttpResponse json_error(unsigned status, const std::string& code, const std::string& message) {
  return json_reply(status, {{"ok", false}, {"error", code}, {"message", message}});
}

// A cancel from the dashboard waits for the loop's answer like a transport's operation: the
// answer arrives through reply(), and ack() frees the handle (a loop that never answers leaks
// one small handle rather than touching freed memory).
struct PendingAnswer {
  std::mutex mutex;
  std::condition_variable answered;
  std::optional<std::vector<std::uint8_t>> body;
};

void answer_pending(void* ctx, const std::uint8_t* body, std::size_t len) {
  auto& p = **static_cast<std::shared_ptr<PendingAnswer>*>(ctx);
  {
    std::lock_guard lock(p.mutex);
    p.body.emplace(body, body + len);
  }
  p.answered.notify_all();
}

void release_pending(void* ctx) {
  delete static_cast<std::shared_ptr<PendingAnswer>*>(ctx);
}

// The page's own origin: http:// and the Host it was served under (host names are not case
// sensitive).
bool same_origin(const std::string& origin, const std::string& host) {
  const std::string expected = "http://" + host;
  return origin.size() == expected.size() &&
         std::equal(origin.begin(), origin.end(), expected.begin(), [](char a, char b) {
           return std::tolower(static_cast<unsigned char>(a)) ==
                  std::tolower(static_cast<unsigned char>(b));
         });
}

std::uint32_t primary_gid(uid_t uid) {
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  if (::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) == 0 && found) return found->pw_gid;
  return static_cast<std::uint32_t>(-1);  // no account: no group
}

}  // namespace

std::vector<std::pair<std::string, std::int64_t>> Supervisor::stats_counters(
    const ipc::QueueStats& st) const {
  auto c = [](const std::atomic<std::uint64_t>& a) {
    return static_cast<std::int64_t>(a.load(std::memory_order_relaxed));
  };
  auto i = [](std::uint64_t v) { return static_cast<std::int64_t>(v); };
  return {
      {"submitted", i(st.enqueued)},
      {"rejected_queue_full", i(st.rejected_queue_full)},
      {"rejected_user_limit", i(st.rejected_user_limit)},
      {"rejected_duplicate", i(st.rejected_duplicate)},
      {"rejected_payload_too_large", i(st.rejected_payload_too_large)},
      {"rejected_invalid", i(st.rejected_invalid)},
      {"dispatched", c(counters_.dispatched)},
      {"completed", c(counters_.completed)},
      {"failed", c(counters_.failed)},
      {"retried", c(counters_.retried)},
      {"cancelled", c(counters_.cancelled)},
      {"expired", c(counters_.expired)},
      {"publish_failures", c(counters_.publish_failures)},
      {"aged", c(counters_.aged)},
      {"timed_out", c(counters_.timed_out)},
      {"stale_reports", c(counters_.stale_reports)},
      {"held", c(counters_.held)},
      {"rejected_no_participant_entry", c(counters_.rejected_no_participant_entry)},
      {"maintenance_deferred", c(counters_.maintenance_deferred)},
      {"rejected_unauthorized", c(counters_.rejected_unauthorized)},
      {"pushed", c(counters_.pushed)},
      {"claims_won", c(counters_.claims_won)},
      {"claims_lost", c(counters_.claims_lost)},
      {"claim_timeouts", c(counters_.claim_timeouts)},
      {"workers_lost", c(counters_.workers_lost)},
      {"worker_lost_executions", c(counters_.worker_lost_executions)},
      {"blockers", c(counters_.blockers)},
      {"queued", i(st.queued)},
      {"held_in_segment", i(st.active)},
      {"maintenance_runs", i(st.maintenance_runs)},
      {"reaped_participants", i(st.reaped_participants)},
      {"ingress_requests", i(ingress_ ? ingress_->requests() : 0)},
      {"ingress_invalid", i(ingress_ ? ingress_->invalid_requests() : 0)},
  };
}

// ---- The loop's side ---------------------------------------------------------------------------

void Supervisor::observe_event(const core::Event& ev) {
  if (!http_) return;
  RecentEvent& r = observability_.remember();
  r.at_ns = ipc::events::now_ns();
  r.type = core::event_name(ev.type);
  r.execution_id = ev.execution_id;
  r.user_id = ev.user_id;
  if (ev.worker_id) {
    r.detail = *ev.worker_id;
  } else if (ev.error) {
    r.detail = *ev.error;
  } else {
    r.detail = ev.reason;
  }
}

void Supervisor::observe(Clock::time_point now) {
  observability_.loop_pulse_ns.store(steady_now_ns(), std::memory_order_relaxed);
  if (now >= next_heads_) {
    next_heads_ = now + kHeadsInterval;
    for (std::size_t l = 0; l < kPriorityLevels; ++l) {
      const auto level = static_cast<Priority>(l);
      const auto at =
          consumer_->depth(level) > 0 ? consumer_->head_enqueued_at(level) : std::nullopt;
      observability_.head_enqueued_at_ns[l].store(at.value_or(0), std::memory_order_relaxed);
    }
  }
  if (!http_ || now < next_observe_) return;
  next_observe_ = now + kObserveInterval;
  if (now >= next_history_) {
    next_history_ = now + std::chrono::seconds(1);
    HistoryPoint p;
    p.at_ms = ipc::events::now_ns() / 1'000'000;
    for (std::size_t l = 0; l < kPriorityLevels; ++l) {
      p.depth[l] = consumer_->depth(static_cast<Priority>(l));
    }
    p.active = core_.dispatched_now();
    p.capacity = config_.max_active_executions;
    p.submitted = consumer_->stats().enqueued;
    const auto& c = core_.counters();
    p.dispatched = c.dispatched;
    p.completed = c.completed;
    p.failed = c.failed;
    observability_.record(p);
  }
  LoopObservations o;
  o.published_at_ns = ipc::events::now_ns();
  for (const auto& [id, w] : core_.workers().all()) {
    o.workers.push_back(
        WorkerObservation{w.id, w.capabilities, w.capacity, w.load, w.last_heartbeat_ns});
  }
  o.waiting_by_capabilities = core_.waiting_by_capabilities();
  observability_.publish(std::move(o));
}

// ---- The HTTP thread's side --------------------------------------------------------------------

void Supervisor::start_http() {
  if (config_.metrics_listen.empty()) return;
  // The HTTP thread never reads config_ (a reload writes it on the loop's thread).
  http_cancel_ = config_.dashboard_cancel;
  http_ingress_socket_ = config_.runtime_dir + "/ingress.sock";
  http_access_ = std::make_unique<AccessPolicy>(
      AccessPolicy::Settings{config_.check_identity, config_.trusted_gid, config_.trusted_group,
                             config_.worker_gid, config_.worker_group});
  try {
    http_ = std::make_unique<HttpServer>(
        config_.metrics_listen, [this](const HttpRequest& r) { return serve_http(r); },
        HttpServer::Stream{"/api/stream", std::chrono::milliseconds(1000),
                           [this] { return dashboard_state(); }});
  } catch (const std::exception& e) {
    // Scheduling matters more than its figures: the supervisor runs on without them.
    spdlog::error("{}; the supervisor runs without metrics and dashboard", e.what());
    return;
  }
  http_->start();
  spdlog::info("metrics on http://{}/metrics, dashboard on http://{}/", http_->address(),
               http_->address());
}

void Supervisor::stop_http() {
  if (http_) http_->stop();
}

HttpResponse Supervisor::serve_http(const HttpRequest& r) {
  const auto path = r.target.substr(0, r.target.find('?'));
  if (path == "/api/cancel") {
    if (r.method != "POST") {
      auto res = json_error(405, "invalid", "POST a JSON body {\"execution_id\": ...}");
      res.headers.emplace_back("Allow", "POST");
      return res;
    }
    return http_cancel(r);
  }
  if (r.method != "GET" && r.method != "HEAD") {
    auto res = text(405, "read-only: only GET is served\n");
    res.headers.emplace_back("Allow", "GET, HEAD");
    return res;
  }
  if (path == "/metrics") {
    return HttpResponse{200, "text/plain; version=0.0.4; charset=utf-8", prometheus_text(), {}};
  }
  if (path == "/healthz") {
    if (!observability_.ready.load(std::memory_order_relaxed))
      return text(503, "not ready: starting or stopping\n");
    const auto silent = steady_now_ns() - observability_.loop_pulse_ns.load();
    if (silent > kLoopStuckNs) {
      return text(503, "the scheduling loop has not passed for " +
                           std::to_string(silent / 1'000'000) + " ms\n");
    }
    return text(200, "ok\n");
  }
  if (path == "/api/state") {
    return HttpResponse{200, "application/json", dashboard_state(), {}};
  }
  if (path == "/api/history") {
    return HttpResponse{200, "application/json", dashboard_history(), {}};
  }
  if (path == "/" || path == "/index.html") {
    return HttpResponse{200, "text/html; charset=utf-8", std::string(kDashboardPage), {}};
  }
  return text(404, "not found: try /metrics, /healthz or / (the dashboard)\n");
}

std::string Supervisor::prometheus_text() {
  const auto st = ipc::queue_stats(*segment_);
  const auto waits = observability_.oldest_waits_ns(ipc::events::now_ns());
  const auto seen = observability_.latest();
  auto c = [](const std::atomic<std::uint64_t>& a) {
    return static_cast<double>(a.load(std::memory_order_relaxed));
  };
  PrometheusText t;
  t.family("shmsched_build_info", "gauge", "The running shmschedd's version.");
  t.sample({{"version", SHMSCHED_VERSION}}, 1);
  t.family("shmsched_submissions_total", "counter", "Executions accepted into the queue.");
  t.sample({}, static_cast<double>(st.enqueued));
  t.family("shmsched_submissions_rejected_total", "counter",
           "Submissions refused, by reason (docs/protocol.md's error codes).");
  t.sample({{"reason", "queue_full"}}, static_cast<double>(st.rejected_queue_full));
  t.sample({{"reason", "user_limit"}}, static_cast<double>(st.rejected_user_limit));
  t.sample({{"reason", "duplicate"}}, static_cast<double>(st.rejected_duplicate));
  t.sample({{"reason", "payload_too_large"}}, static_cast<double>(st.rejected_payload_too_large));
  t.sample({{"reason", "invalid"}}, static_cast<double>(st.rejected_invalid));
  t.sample({{"reason", "no_participant_entry"}}, c(counters_.rejected_no_participant_entry));
  t.family("shmsched_requests_unauthorized_total", "counter",
           "Requests refused because the client may not act for that user or worker.");
  t.sample({}, c(counters_.rejected_unauthorized));
  const std::pair<const char*, const std::atomic<std::uint64_t>*> outcomes[] = {
      {"dispatched", &counters_.dispatched}, {"completed", &counters_.completed},
      {"failed", &counters_.failed},         {"retried", &counters_.retried},
      {"cancelled", &counters_.cancelled},   {"expired", &counters_.expired},
      {"timed_out", &counters_.timed_out},   {"aged", &counters_.aged}};
  for (const auto& [name, counter] : outcomes) {
    t.family(std::string("shmsched_executions_") + name + "_total", "counter",
             std::string("Executions ") + name + " (docs/operations.md, Metrics).");
    t.sample({}, c(*counter));
  }
  t.family("shmsched_stale_reports_total", "counter",
           "Completions and failures for an attempt that was no longer current.");
  t.sample({}, c(counters_.stale_reports));
  t.family("shmsched_publish_failures_total", "counter",
           "Events and commands a transport could not deliver, by transport.");
  for (const auto& [name, count] : observability_.publish_failures()) {
    t.sample({{"transport", name}}, static_cast<double>(count));
  }
  t.family("shmsched_task_pushes_total", "counter", "TaskPushes sent to workers.");
  t.sample({}, c(counters_.pushed));
  t.family("shmsched_claims_total", "counter", "Claims of pushed executions, by outcome.");
  t.sample({{"outcome", "won"}}, c(counters_.claims_won));
  t.sample({{"outcome", "lost"}}, c(counters_.claims_lost));
  t.family("shmsched_claim_timeouts_total", "counter",
           "Pushes not claimed in time and offered to another worker.");
  t.sample({}, c(counters_.claim_timeouts));
  t.family("shmsched_workers_lost_total", "counter",
           "Workers gone without unregistering (heartbeat timeout, process exit).");
  t.sample({}, c(counters_.workers_lost));
  t.family("shmsched_blockers_total", "counter", "Blockers reported by workers.");
  t.sample({}, c(counters_.blockers));

  t.family("shmsched_queue_depth", "gauge", "Executions queued, by priority.");
  for (std::size_t l = 0; l < kPriorityLevels; ++l) {
    t.sample({{"priority", std::string(kPriorityNames[l])}}, static_cast<double>(st.depth[l]));
  }
  t.family("shmsched_queue_oldest_wait_seconds", "gauge",
           "How long the oldest queued execution of each priority has waited.");
  for (std::size_t l = 0; l < kPriorityLevels; ++l) {
    t.sample({{"priority", std::string(kPriorityNames[l])}}, static_cast<double>(waits[l]) / 1e9);
  }
  t.family("shmsched_queue_capacity", "gauge", "Executions the queue holds at most.");
  t.sample({}, static_cast<double>(st.capacity));
  t.family("shmsched_active_executions", "gauge", "Executions dispatched and not finished.");
  t.sample({}, c(counters_.active));
  t.family("shmsched_max_active_executions", "gauge",
           "The capacity: executions dispatched at once at most.");
  t.sample({}, c(counters_.max_active));
  t.family("shmsched_held_executions", "gauge",
           "Executions taken from the queue and waiting for a retry or a transport.");
  t.sample({}, c(counters_.held));
  t.family("shmsched_workers", "gauge", "Live workers.");
  t.sample({}, c(counters_.workers));
  std::uint64_t load = 0, capacity = 0;
  for (const auto& w : seen->workers) {
    load += w.load;
    capacity += w.capacity;
  }
  t.family("shmsched_workers_load", "gauge", "Executions pushed to or claimed by live workers.");
  t.sample({}, static_cast<double>(load));
  t.family("shmsched_workers_capacity", "gauge", "What live workers take at once, summed.");
  t.sample({}, static_cast<double>(capacity));
  t.family("shmsched_waiting_for_workers", "gauge",
           "Executions waiting for a worker with the capabilities they need.");
  t.sample({}, c(counters_.waiting_for_workers));
  t.family("shmsched_ingress_requests_total", "counter", "Requests the ingress answered.");
  t.sample({}, static_cast<double>(ingress_ ? ingress_->requests() : 0));
  t.family("shmsched_ingress_invalid_requests_total", "counter",
           "Requests the ingress could not decode.");
  t.sample({}, static_cast<double>(ingress_ ? ingress_->invalid_requests() : 0));
  t.family("shmsched_queue_repairs_total", "counter",
           "Repairs of the queue after a process died inside an operation.");
  t.sample({}, static_cast<double>(st.maintenance_runs));
  t.family("shmsched_reaped_participants_total", "counter",
           "Dead producers and consumers cleaned up.");
  t.sample({}, static_cast<double>(st.reaped_participants));
  t.histogram("shmsched_queue_wait_seconds",
              "Time from acceptance until the scheduler takes the execution from the queue.",
              observability_.queue_wait.read());
  t.histogram("shmsched_submit_to_dispatch_seconds",
              "Time from acceptance until the first dispatch goes to the transports.",
              observability_.submit_to_dispatch.read());
  return t.finish();
}

// A cancel from the dashboard: the ingress's rules, with the kernel naming the local user behind
// the connection (a browser on this host). Only when dashboard_cancel = true.
HttpResponse Supervisor::http_cancel(const HttpRequest& r) {
  if (!http_cancel_) {
    return json_error(403, "read_only",
                      "the dashboard is read-only: set dashboard_cancel = true to allow cancels");
  }
  // A page of another origin cannot send this through a visitor's browser: a JSON body needs a
  // CORS preflight, which is never granted, and a browser names the page's origin.
  if (r.content_type.rfind("application/json", 0) != 0) {
    return json_error(415, "invalid", "send the cancel as Content-Type: application/json");
  }
  if (!r.origin.empty() && !same_origin(r.origin, r.host)) {
    return json_error(403, "unauthorized", "cancels from pages of another origin are refused");
  }
  ipc::protocol::CancelOp op;
  try {
    const auto body = nlohmann::json::parse(r.body);
    op.execution_id = body.at("execution_id").get<std::string>();
    if (body.contains("reason")) op.reason = body.at("reason").get<std::string>();
  } catch (const nlohmann::json::exception& e) {
    return json_error(
        400, "invalid",
        std::string("expected {\"execution_id\": string, \"reason\": string}: ") + e.what());
  }
  if (op.execution_id.empty() || op.execution_id.size() > 64) {
    return json_error(400, "invalid", "execution_id must be 1 to 64 bytes");
  }
  if (op.reason.empty()) op.reason = "cancelled from the dashboard";
  std::optional<std::string> as_user;
  std::string who = "anyone (check_identity = false)";
  if (http_access_->checks_identity()) {
    std::string why;
    const auto uid = loopback_peer_uid(r.peer, r.local, why);
    if (!uid) {
      return json_error(403, "unauthorized",
                        "cannot tell which local user is asking (" + why +
                            "): cancels from the dashboard are for users of this host");
    }
    const ipc::Peer peer{true, *uid, primary_gid(*uid), 0};
    std::lock_guard lock(http_access_mutex_);  // actions run on threads of their own
    // Only who may use the ingress: the HTTP port is open to every local account.
    if (auto refused = http_access_->cannot_reach(peer, http_ingress_socket_)) {
      return json_error(403, "unauthorized",
                        *refused + ": cancels from the dashboard are for users of the ingress");
    }
    as_user = http_access_->acting_for(peer);
    who = as_user ? "user " + *as_user : "a trusted user";
  }
  auto pending = std::make_shared<PendingAnswer>();
  shmsched_inbound_done done{answer_pending, release_pending,
                             new std::shared_ptr<PendingAnswer>(pending)};
  spdlog::info("dashboard: cancel of {} asked by {}", op.execution_id, who);
  inbox_->post(OpMessage{std::move(op), ReplyTo{0, done}, as_user});
  std::unique_lock lock(pending->mutex);
  if (!pending->answered.wait_for(lock, std::chrono::seconds(5),
                                  [&] { return pending->body.has_value(); })) {
    return json_error(503, "unavailable", "the supervisor did not answer within 5 s");
  }
  const auto handle =
      msgpack::unpack(reinterpret_cast<const char*>(pending->body->data()), pending->body->size());
  const auto& reply = handle.get();
  if (ipc::get_bool(reply, "ok").value_or(false)) return json_reply(200, {{"ok", true}});
  const auto code = ipc::get_string(reply, "error").value_or("internal");
  const unsigned status = code == "unauthorized" ? 403 : code == "not_found" ? 404 : 409;
  return json_error(status, code, ipc::get_string(reply, "message").value_or(""));
}

// The charts' last five minutes, one point per second: [[at_ms, [depth per priority], active,
// capacity, submitted, dispatched, completed, failed], ...], oldest first.
std::string Supervisor::dashboard_history() {
  nlohmann::json points = nlohmann::json::array();
  for (const auto& p : observability_.latest()->history) {
    points.push_back(nlohmann::json::array({p.at_ms, p.depth, p.active, p.capacity, p.submitted,
                                            p.dispatched, p.completed, p.failed}));
  }
  return dump(points);
}

std::string Supervisor::dashboard_state() {
  const auto now = steady_now_ns();
  if (!dashboard_cache_.empty() && now - dashboard_cached_at_ < 250'000'000) {
    return dashboard_cache_;  // several dashboards open: read the segment once
  }
  using nlohmann::json;
  const auto st = ipc::queue_stats(*segment_);
  const auto waits = observability_.oldest_waits_ns(ipc::events::now_ns());
  const auto seen = observability_.latest();
  json j;
  j["time_ms"] = ipc::events::now_ns() / 1'000'000;
  j["version"] = SHMSCHED_VERSION;
  j["cancel_enabled"] = http_cancel_;
  json depth = json::object(), oldest = json::object();
  for (std::size_t l = 0; l < kPriorityLevels; ++l) {
    const std::string name(kPriorityNames[l]);
    depth[name] = st.depth[l];
    oldest[name] = waits[l] / 1'000'000;
  }
  j["queue_depth"] = depth;
  j["oldest_wait_ms"] = oldest;
  j["active"] = counters_.active.load(std::memory_order_relaxed);
  j["capacity"] = counters_.max_active.load(std::memory_order_relaxed);
  j["queue_capacity"] = st.capacity;
  j["workers"] = counters_.workers.load(std::memory_order_relaxed);
  j["waiting_for_workers"] = counters_.waiting_for_workers.load(std::memory_order_relaxed);
  json counters = json::object();
  for (const auto& [k, v] : stats_counters(st)) counters[k] = v;
  j["counters"] = counters;
  json workers = json::array();
  for (const auto& w : seen->workers) {
    workers.push_back({{"worker_id", w.id},
                       {"capabilities", w.capabilities},
                       {"capacity", w.capacity},
                       {"load", w.load},
                       {"last_heartbeat_ms", w.last_heartbeat_ns / 1'000'000}});
  }
  j["worker_list"] = workers;
  j["waiting_by_capabilities"] = seen->waiting_by_capabilities;
  json events = json::array();
  for (const auto& e : seen->recent_events) {
    events.push_back({{"at_ms", e.at_ns / 1'000'000},
                      {"type", e.type},
                      {"execution_id", e.execution_id},
                      {"user_id", e.user_id},
                      {"detail", e.detail}});
  }
  j["recent_events"] = events;
  // The per-user top: queued and running executions per user, the ten with the most.
  if (now - top_users_at_ >= kTopEveryNs) {
    top_users_at_ = now;
    std::vector<std::pair<std::string, ipc::UserTally>> top;
    for (auto& [user, t] : ipc::tally_by_user(*segment_)) top.emplace_back(user, t);
    const auto more = [](const auto& a, const auto& b) {
      const auto ta = a.second.queued + a.second.active, tb = b.second.queued + b.second.active;
      return ta != tb ? ta > tb : a.first < b.first;
    };
    const std::size_t keep = std::min<std::size_t>(top.size(), 10);
    std::partial_sort(top.begin(), top.begin() + static_cast<std::ptrdiff_t>(keep), top.end(),
                      more);
    top.resize(keep);
    top_users_ = std::move(top);
  }
  json users = json::array();
  for (const auto& [user, t] : top_users_) {
    users.push_back({{"user_id", user}, {"queued", t.queued}, {"active", t.active}});
  }
  j["top_users"] = users;
  dashboard_cache_ = dump(j);
  dashboard_cached_at_ = now;
  return dashboard_cache_;
}

}  // namespace shmsched::daemon
