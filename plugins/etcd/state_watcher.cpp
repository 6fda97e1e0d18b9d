#include "state_watcher.h"

#include <algorithm>
#include <vector>

namespace shmsched::etcd {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::string_view kUnclaimed = "unclaimed";
constexpr std::string_view kCompleted = "completed:";
constexpr std::string_view kFailed = "failed:";
constexpr std::int64_t kPage = 5000;  // keys per read of a resync

bool starts_with(std::string_view s, std::string_view p) {
  return s.substr(0, p.size()) == p;
}

}  // namespace

StateWatcher::StateWatcher(const Options& options, const Keys& keys, Connection& connection,
                           std::shared_ptr<Supervisor> supervisor, DispatchWriter& writer)
    : options_(options),
      keys_(keys),
      connection_(connection),
      supervisor_(std::move(supervisor)),
      writer_(writer) {}

StateWatcher::~StateWatcher() {
  stop();
}

void StateWatcher::start() {
  running_ = true;
  thread_ = std::thread([this] { run(); });
  heartbeat_thread_ = std::thread([this] { beat(); });
}

void StateWatcher::stop() {
  {
    std::lock_guard lock(mu_);
    running_ = false;
    if (stream_) stream_->TryCancel();
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
}

void StateWatcher::pause(std::chrono::milliseconds d) {
  std::unique_lock lock(mu_);
  wake_.wait_for(lock, d, [&] { return !running_; });
}

void StateWatcher::send(const std::string& op, const std::string& what, bool quiet) {
  supervisor_->log(SHMSCHED_LOG_DEBUG, "etcd: handing over " + what);
  supervisor_->hand_over(op, what, running_, quiet);
}

void StateWatcher::run() {
  std::chrono::milliseconds backoff{100};
  while (running_) {
    std::int64_t revision = 0;
    if (!resync(revision)) {
      pause(backoff);
      backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
      continue;
    }
    backoff = std::chrono::milliseconds(100);
    for (;;) {
      const End end = watch(revision);
      if (end == End::kStopped || !running_) return;
      if (end == End::kCompacted) break;  // read the current state again
      pause(backoff);
      backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
    }
  }
}

// Reads tasks/ and the registrations at one revision and hands over what they say.
bool StateWatcher::resync(std::int64_t& revision) {
  const auto stubs = connection_.current();
  auto fail = [&](const grpc::Status& s) {
    connection_.failed(stubs.index, s);
    if (Clock::now() >= next_failure_log_) {
      next_failure_log_ = Clock::now() + std::chrono::seconds(5);
      supervisor_->log(SHMSCHED_LOG_WARN, "etcd: cannot read the current state from " +
                                              connection_.address(stubs.index) + " (" +
                                              describe(s) + "): trying again");
    }
    return false;
  };
  // Pages of one range at one revision (the first page's).
  auto range = [&](const std::string& from, const std::string& end, bool keys_only,
                   const std::function<void(const mvccpb::KeyValue&)>& each) -> grpc::Status {
    std::string key = from;
    for (;;) {
      etcdserverpb::RangeRequest req;
      req.set_key(key);
      req.set_range_end(end);
      req.set_limit(kPage);
      req.set_revision(revision);
      req.set_keys_only(keys_only);
      etcdserverpb::RangeResponse resp;
      auto ctx = connection_.context();
      const grpc::Status s = stubs.kv->Range(ctx.get(), req, &resp);
      if (!s.ok()) return s;
      if (revision == 0) revision = resp.header().revision();
      for (const auto& kv : resp.kvs()) each(kv);
      if (!resp.more() || resp.kvs().empty()) return grpc::Status::OK;
      key = resp.kvs(resp.kvs_size() - 1).key() + std::string(1, '\0');
    }
  };
  struct Owner {
    std::string id, value;
    bool leased;
  };
  std::vector<Owner> owners;
  grpc::Status s =
      range(keys_.tasks(), prefix_end(keys_.tasks()), false, [&](const mvccpb::KeyValue& kv) {
        const auto p = keys_.parse(kv.key());
        if (p.kind == Keys::Parsed::kOwner) {
          owners.push_back({p.id, kv.value(), kv.lease() != 0});
        }
      });
  if (!s.ok()) return fail(s);
  std::vector<std::string> registrations;
  s = range(keys_.workers(), prefix_end(keys_.workers()), true, [&](const mvccpb::KeyValue& kv) {
    const auto p = keys_.parse(kv.key());
    if (p.kind == Keys::Parsed::kRegistration) registrations.push_back(p.id);
  });
  if (!s.ok()) return fail(s);
  std::vector<std::pair<std::string, std::string>> values;
  for (const auto& w : registrations) {
    s = range(keys_.registration(w), "", false,
              [&](const mvccpb::KeyValue& kv) { values.emplace_back(w, kv.value()); });
    if (!s.ok()) return fail(s);
  }

  // Workers first: a claim names a worker the supervisor must know.
  std::set<std::string> present;
  for (const auto& [w, value] : values) {
    present.insert(w);
    registered(w, value, true);
  }
  std::vector<std::string> vanished;
  {
    std::lock_guard lock(mu_);
    for (const auto& [w, value] : workers_) {
      if (!present.count(w)) vanished.push_back(w);
    }
  }
  for (const auto& w : vanished) gone(w);
  for (const auto& o : owners) {
    owner(o.id, o.value, true);
    // Finished, but not yet under the retention lease (its final event was never written).
    if (!o.leased && (starts_with(o.value, kCompleted) || starts_with(o.value, kFailed))) {
      writer_.retain(o.id, o.value.substr(o.value.find(':') + 1));
    }
  }
  supervisor_->log(SHMSCHED_LOG_INFO, "etcd: read the current state at revision " +
                                          std::to_string(revision) + " from " +
                                          connection_.address(stubs.index) + " (" +
                                          std::to_string(owners.size()) + " tasks, " +
                                          std::to_string(values.size()) + " registered workers)");
  return true;
}

StateWatcher::End StateWatcher::watch(std::int64_t& last) {
  const auto stubs = connection_.current();
  auto ctx = connection_.context(false);
  {
    std::lock_guard lock(mu_);
    if (!running_) return End::kStopped;
    stream_ = ctx.get();
  }
  auto stream = stubs.watch->Watch(ctx.get());
  etcdserverpb::WatchRequest req;
  auto* create = req.mutable_create_request();
  create->set_key(keys_.tasks());
  create->set_range_end(prefix_end(keys_.workers()));  // tasks/ .. workers/, nothing else
  create->set_start_revision(last + 1);
  // No previous values: etcd would read each one back from its database, which halved the rate
  // at which executions finish (their keys are put again under the retention lease, each such
  // put an event here). What they served is told apart without them (below).
  End end = End::kBroken;
  std::string why;
  if (stream->Write(req)) {
    etcdserverpb::WatchResponse resp;
    while (stream->Read(&resp)) {
      if (resp.header().revision() > 0 && resp.header().revision() < last) {
        // The store is behind what this watch has seen: etcd began again (its data directory
        // wiped, an old backup restored). Waiting for revision last + 1 would miss everything
        // written until the store gets there again: read the current state instead.
        supervisor_->log(SHMSCHED_LOG_WARN,
                         "etcd: " + connection_.address(stubs.index) + " is at revision " +
                             std::to_string(resp.header().revision()) + ", behind revision " +
                             std::to_string(last) +
                             " that the watch had seen (etcd lost its data or was restored from "
                             "a backup): reading the current state instead");
        end = End::kCompacted;
        ctx->TryCancel();
        break;
      }
      if (resp.canceled()) {
        if (resp.compact_revision() > 0) {
          supervisor_->log(SHMSCHED_LOG_WARN,
                           "etcd: revision " + std::to_string(last + 1) +
                               " was compacted (compaction at " +
                               std::to_string(resp.compact_revision()) +
                               ") while the watch was away: reading the current state instead");
          end = End::kCompacted;
        } else {
          why = "etcd cancelled the watch: " + resp.cancel_reason();
        }
        ctx->TryCancel();
        break;
      }
      for (const auto& ev : resp.events()) {
        const auto p = keys_.parse(ev.kv().key());
        const bool put = ev.type() == mvccpb::Event::PUT;
        if (p.kind == Keys::Parsed::kOwner && put) {
          // An owner put under one of this transport's retention leases is its own, putting the
          // keys of a finished execution under the retention with their values: nobody's claim,
          // completion or failure.
          if (ev.kv().lease() == 0 || !writer_.retention_lease_granted(ev.kv().lease())) {
            owner(p.id, ev.kv().value());
          }
        } else if (p.kind == Keys::Parsed::kRegistration) {
          // A put of the value the worker is registered with changes nothing.
          bool known = false;
          if (put) {
            std::lock_guard lock(mu_);
            const auto it = workers_.find(p.id);
            known = it != workers_.end() && it->second == ev.kv().value();
          }
          if (put && !known) {
            registered(p.id, ev.kv().value());
          } else if (!put) {
            gone(p.id);
          }
        }
        last = std::max(last, ev.kv().mod_revision());
      }
    }
  }
  const grpc::Status status = stream->Finish();
  {
    std::lock_guard lock(mu_);
    stream_ = nullptr;
  }
  if (!running_) return End::kStopped;
  if (end == End::kCompacted) return end;
  connection_.failed(stubs.index, status);
  if (Clock::now() >= next_failure_log_) {
    next_failure_log_ = Clock::now() + std::chrono::seconds(5);
    supervisor_->log(SHMSCHED_LOG_WARN,
                     "etcd: the watch on " + connection_.address(stubs.index) + " ended (" +
                         (why.empty() ? describe(status) : why) + "): resuming from revision " +
                         std::to_string(last + 1) + " on the next endpoint that answers");
  }
  return End::kBroken;
}

void StateWatcher::owner(const std::string& id, const std::string& value, bool quiet) {
  if (value == kUnclaimed || value.empty()) return;
  if (starts_with(value, kCompleted)) {
    const std::string worker = value.substr(kCompleted.size());
    send(ops::complete(id, worker), "the completion of " + id + " by " + worker, quiet);
  } else if (starts_with(value, kFailed)) {
    const std::string worker = value.substr(kFailed.size());
    send(ops::fail(id, worker), "the failure of " + id + " by " + worker, quiet);
  } else {
    send(ops::claim(value, id), "the claim of " + id + " by " + value, quiet);
  }
}

void StateWatcher::registered(const std::string& worker, const std::string& value, bool quiet) {
  std::vector<std::string> capabilities;
  std::uint32_t capacity = 1;
  std::string error;
  if (worker == kUnclaimed || starts_with(worker, kCompleted) || starts_with(worker, kFailed)) {
    // Its claim would read as no claim (a second claimant wins too) or as the completion or
    // failure by another worker.
    supervisor_->log(SHMSCHED_LOG_WARN,
                     "etcd: ignored the registration " + keys_.registration(worker) +
                         ": a worker id that reads as an owner value (unclaimed, completed:<w>, "
                         "failed:<w>) cannot claim through tasks/<id>/owner: choose another id");
    return;
  }
  if (!parse_registration(value, capabilities, capacity, error)) {
    supervisor_->log(SHMSCHED_LOG_WARN, "etcd: ignored the registration " +
                                            keys_.registration(worker) + ": " + error +
                                            " (expected msgpack {capabilities: [str], "
                                            "capacity: int})");
    return;
  }
  send(ops::register_worker(worker, capabilities, capacity), "the registration of " + worker,
       quiet);
  std::lock_guard lock(mu_);
  workers_[worker] = value;
}

void StateWatcher::gone(const std::string& worker) {
  {
    std::lock_guard lock(mu_);
    if (!workers_.erase(worker)) return;
  }
  send(ops::unregister_worker(worker), "the end of worker " + worker + " (registration deleted)");
}

// The registration's lease is the worker's liveness in etcd; the supervisor counts heartbeats.
void StateWatcher::beat() {
  while (running_) {
    pause(options_.worker_heartbeat);
    std::vector<std::pair<std::string, std::string>> workers;
    {
      std::lock_guard lock(mu_);
      workers.assign(workers_.begin(), workers_.end());
    }
    std::set<std::string> forgotten;
    {
      std::lock_guard lock(forgotten_->mu);
      forgotten.swap(forgotten_->workers);
    }
    for (const auto& [w, value] : workers) {
      if (!running_) return;
      if (forgotten.count(w)) {
        supervisor_->log(SHMSCHED_LOG_INFO, "etcd: registering worker " + w +
                                                " again: the supervisor did not know it, and its "
                                                "registration is still in etcd");
        registered(w, value);
        continue;
      }
      supervisor_->log(SHMSCHED_LOG_DEBUG, "etcd: handing over the heartbeat of " + w);
      supervisor_->hand_over(ops::heartbeat(w), "the heartbeat of " + w, running_, /*quiet=*/true,
                             [f = forgotten_, w = w](const std::string& error) {
                               if (error != "not_found") return;
                               std::lock_guard lock(f->mu);
                               f->workers.insert(w);
                             });
    }
  }
}

}  // namespace shmsched::etcd
