#include "dispatch_writer.h"

#include <algorithm>
#include <set>

namespace shmsched::etcd {
namespace {

using etcdserverpb::Compare;
using etcdserverpb::TxnRequest;
using Clock = std::chrono::steady_clock;

// etcd refuses a transaction of more than 128 operations (--max-txn-ops) or 1.5 MiB
// (--max-request-bytes); stay below both with room for the nested transactions' own budget.
constexpr int kMaxOuterOps = 100;
constexpr std::size_t kMaxTxnBytes = 1 << 20;

// etcd refused the request for its size (--max-request-bytes: "request is too large"; above
// gRPC's own limit: RESOURCE_EXHAUSTED) or its number of operations (--max-txn-ops).
bool too_large(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ||
         s.error_message().find("request is too large") != std::string::npos ||
         s.error_message().find("too many operations") != std::string::npos;
}

bool final_event(const std::string& type, const MessageFields& f) {
  return type == "ExecutionCompleted" || type == "ExecutionCancelled" ||
         type == "ExecutionExpired" || (type == "ExecutionFailed" && !f.will_retry);
}

void put(etcdserverpb::RequestOp* op, const std::string& key, const std::string& value,
         std::int64_t lease = 0) {
  auto* p = op->mutable_request_put();
  p->set_key(key);
  p->set_value(value);
  if (lease) p->set_lease(lease);
}

// If `key` exists, keep its value and put it under `lease` (etcd then deletes it with the lease).
void attach_if_present(etcdserverpb::RequestOp* op, const std::string& key, std::int64_t lease) {
  auto* nested = op->mutable_request_txn();
  auto* c = nested->add_compare();
  c->set_key(key);
  c->set_target(Compare::CREATE);
  c->set_result(Compare::GREATER);
  c->set_create_revision(0);
  auto* p = nested->add_success()->mutable_request_put();
  p->set_key(key);
  p->set_ignore_value(true);
  p->set_lease(lease);
}

// An execution's final event (`event_key` empty: none) and its other keys put under `lease`, as
// one operation of the batch's transaction: a nested transaction (no compare: it always takes
// its success branch) that puts the event once, and a transaction in it that puts the keys all
// again when every one exists (the usual case) and otherwise each one that exists. One
// operation, not one per key: etcd takes 128 operations per transaction (nested ones count
// against what the outer transaction leaves), and each transaction costs etcd a commit. The
// event's body is in it once: etcd counts the whole request, both branches, against its
// --max-request-bytes.
void finish(etcdserverpb::RequestOp* op, const std::string& event_key, const std::string& body,
            const std::vector<std::string>& keys, std::int64_t lease) {
  auto* always = op->mutable_request_txn();
  if (!event_key.empty()) put(always->add_success(), event_key, body, lease);
  auto* nested = always->add_success()->mutable_request_txn();
  for (const auto& key : keys) {
    auto* c = nested->add_compare();
    c->set_key(key);
    c->set_target(Compare::CREATE);
    c->set_result(Compare::GREATER);
    c->set_create_revision(0);
    auto* p = nested->add_success()->mutable_request_put();
    p->set_key(key);
    p->set_ignore_value(true);
    p->set_lease(lease);
    attach_if_present(nested->add_failure(), key, lease);
  }
}

}  // namespace

struct DispatchWriter::Batch {
  std::unique_ptr<grpc::ClientContext> context;
  std::size_t endpoint = 0;
  TxnRequest request;
  etcdserverpb::TxnResponse response;
  std::vector<Item> items;
};

DispatchWriter::DispatchWriter(const Options& options, const Keys& keys, Connection& connection,
                               const shmsched_host& host, std::shared_ptr<Supervisor> supervisor)
    : options_(options),
      keys_(keys),
      connection_(connection),
      host_(host),
      supervisor_(std::move(supervisor)) {}

DispatchWriter::~DispatchWriter() {
  stop();
}

void DispatchWriter::start() {
  thread_ = std::thread([this] { run(); });
}

std::size_t DispatchWriter::take(const shmsched_message* msgs, const std::uint64_t* tokens,
                                 std::size_t n, int* refusal) {
  *refusal = SHMSCHED_OK;
  std::vector<std::size_t> unwritten;  // events not written at all: delivered at once
  std::size_t taken = 0;
  {
    std::lock_guard lock(mu_);
    for (; taken < n; ++taken) {
      const shmsched_message& m = msgs[taken];
      if (!m.is_command && !options_.write_events) {
        unwritten.push_back(taken);
        // No events/ key, but an execution's final event still puts its keys under the
        // retention lease: without it they would stay in etcd for ever.
        const std::string_view type = m.type ? m.type : "";
        if (m.key && *m.key && queue_.size() < options_.max_queued &&
            (type == "ExecutionCompleted" || type == "ExecutionCancelled" ||
             type == "ExecutionExpired" || type == "ExecutionFailed")) {
          Item item;
          item.type = type;
          item.id = m.key;
          item.internal = true;
          item.fields = read_fields(m.body, m.body_len);
          if (final_event(item.type, item.fields)) queue_.push_back(std::move(item));
        }
        continue;
      }
      if (queue_.size() >= options_.max_queued) {
        *refusal = SHMSCHED_ERR_BUSY;
        break;
      }
      Item item;
      item.type = m.type ? m.type : "";
      item.id = m.key ? m.key : "";
      item.body.assign(reinterpret_cast<const char*>(m.body), m.body_len);
      item.command = m.is_command != 0;
      item.token = tokens[taken];
      item.fields = read_fields(m.body, m.body_len);
      queue_.push_back(std::move(item));
    }
  }
  wake_.notify_one();
  for (std::size_t i : unwritten) host_.delivery(host_.host_ctx, tokens[i], 1, nullptr);
  return taken;
}

void DispatchWriter::retain(const std::string& execution_id, const std::string& worker_id) {
  Item item;
  item.type = "ExecutionCompleted";  // any final type: only the keys are put under the lease
  item.id = execution_id;
  item.internal = true;
  item.fields.worker_id = worker_id;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    queue_.push_back(std::move(item));
  }
  wake_.notify_one();
}

void DispatchWriter::run() {
  std::unique_lock lock(mu_);
  for (;;) {
    wake_.wait(lock, [&] {
      return stopping_ || (!queue_.empty() && in_flight_.size() < options_.max_in_flight);
    });
    if (stopping_) return;
    // After a failure, wait a little before the next attempt (etcd down: no busy loop).
    if (failures_backoff_.count() > 0) {
      wake_.wait_for(lock, failures_backoff_, [&] { return stopping_; });
      if (stopping_) return;
      if (queue_.empty()) continue;
    }
    // Only the next batch's events need the lease (the queue may be long).
    const auto horizon =
        queue_.begin() + static_cast<std::ptrdiff_t>(std::min(queue_.size(), options_.batch_size));
    const bool events =
        std::any_of(queue_.begin(), horizon, [](const Item& i) { return !i.command; });
    if (events && (lease_ == 0 || Clock::now() >= lease_until_)) {
      lock.unlock();
      std::string error;
      const std::int64_t lease = retention_lease(error);
      lock.lock();
      if (lease == 0) {
        if (Clock::now() >= next_failure_log_) {
          next_failure_log_ = Clock::now() + std::chrono::seconds(5);
          supervisor_->log(SHMSCHED_LOG_WARN, "etcd: cannot grant the retention lease (" + error +
                                                  "): writes wait until etcd answers (" +
                                                  std::to_string(queue_.size()) + " queued)");
        }
        failures_backoff_ = std::clamp(failures_backoff_ * 2, std::chrono::milliseconds(100),
                                       std::chrono::milliseconds(2000));
        continue;
      }
    }
    auto batch = std::make_unique<Batch>();
    if (!build(lock, *batch)) continue;
    lock.unlock();
    send(std::move(batch));
    lock.lock();
  }
}

bool DispatchWriter::build(std::unique_lock<std::mutex>&, Batch& batch) {
  std::set<std::string> keys;  // etcd refuses a transaction that writes one key twice
  std::size_t bytes = 0;
  int ops = 0;
  while (!queue_.empty() && batch.items.size() < options_.batch_size) {
    Item& item = queue_.front();
    if (item.solo && !batch.items.empty()) break;
    if (!item.pushed_worker) {
      const auto it = pushed_to_.find(item.id);
      item.pushed_worker = it != pushed_to_.end() ? it->second : std::string();
    }
    std::vector<std::string> writes;
    std::vector<std::string> retained;
    std::string old_inbox;
    if (item.command) {
      const bool push = item.type == "TaskPush";
      writes.push_back(push ? keys_.inbox(item.fields.worker_id, item.id) : keys_.command(item.id));
      writes.push_back(keys_.owner(item.id));
      writes.push_back(keys_.dispatched(item.id));
      if (const std::string& before = *item.pushed_worker;
          !before.empty() && (!push || before != item.fields.worker_id)) {
        old_inbox = keys_.inbox(before, item.id);  // an earlier push of it, elsewhere
        writes.push_back(old_inbox);
      }
    } else {
      if (!item.internal) writes.push_back(keys_.event(item.id.empty() ? "-" : item.id, item.type));
      if (final_event(item.type, item.fields) && !item.id.empty()) {
        std::set<std::string> workers;
        if (!item.fields.worker_id.empty()) workers.insert(item.fields.worker_id);
        if (!item.pushed_worker->empty()) workers.insert(*item.pushed_worker);
        retained = {keys_.command(item.id), keys_.owner(item.id), keys_.dispatched(item.id)};
        for (const auto& w : workers) retained.push_back(keys_.inbox(w, item.id));
        writes.insert(writes.end(), retained.begin(), retained.end());
      }
    }
    const int item_ops = 1;  // a command, an event, or a final event with its keys (finish)
    const bool clash = std::any_of(writes.begin(), writes.end(),
                                   [&](const std::string& k) { return keys.count(k) > 0; });
    if (!batch.items.empty() &&
        (clash || ops + item_ops > kMaxOuterOps || bytes + item.body.size() > kMaxTxnBytes)) {
      break;  // the next transaction takes it
    }
    keys.insert(writes.begin(), writes.end());
    ops += item_ops;
    bytes += item.body.size();

    if (item.command) {
      const bool push = item.type == "TaskPush";
      std::string mark = std::to_string(item.fields.attempt);
      if (push) mark += ":" + item.fields.worker_id;
      // Written unless tasks/<id>/dispatched already names this attempt (and worker) of a run
      // that has not finished: the keys of a finished run are under the retention lease, and an
      // id used again meanwhile (by a supervisor that no longer remembers that run) is a new run
      // whose dispatch must be written.
      auto* nested = batch.request.add_success()->mutable_request_txn();
      auto* c = nested->add_compare();
      c->set_key(keys_.dispatched(item.id));
      c->set_target(Compare::VALUE);
      c->set_result(Compare::EQUAL);
      c->set_value(mark);
      auto* unleased = nested->add_compare();
      unleased->set_key(keys_.dispatched(item.id));
      unleased->set_target(Compare::LEASE);
      unleased->set_result(Compare::EQUAL);
      unleased->set_lease(0);
      put(nested->add_failure(), writes[0], item.body);
      // The owner goes back to unclaimed for a new attempt (or a new run) only. A push offered
      // again for the same attempt (nobody claimed it in time, as far as the supervisor knew)
      // keeps a claim a worker made in etcd meanwhile: etcd's claim has one winner per attempt.
      // Same attempt: dispatched (as it was before this transaction) is "<attempt>" or
      // "<attempt>:<worker>", i.e. from "<attempt>:" to "<attempt>;", and not under the lease.
      // (A command is never offered again for its attempt under another mark: no check.)
      if (push) {
        const std::string attempt = std::to_string(item.fields.attempt);
        auto* same_push = nested->add_failure()->mutable_request_txn();
        for (const auto& [result, value] : {std::pair{Compare::GREATER, attempt + ":"},
                                            std::pair{Compare::LESS, attempt + ";"}}) {
          auto* bound = same_push->add_compare();
          bound->set_key(keys_.dispatched(item.id));
          bound->set_target(Compare::VALUE);
          bound->set_result(result);
          bound->set_value(value);
        }
        *same_push->add_compare() = *unleased;
        auto* same_command = same_push->add_failure()->mutable_request_txn();
        auto* equal = same_command->add_compare();
        equal->set_key(keys_.dispatched(item.id));
        equal->set_target(Compare::VALUE);
        equal->set_result(Compare::EQUAL);
        equal->set_value(attempt);
        *same_command->add_compare() = *unleased;
        put(same_command->add_failure(), keys_.owner(item.id), "unclaimed");
      } else {
        put(nested->add_failure(), keys_.owner(item.id), "unclaimed");
      }
      put(nested->add_failure(), keys_.dispatched(item.id), mark);
      if (!old_inbox.empty()) {
        nested->add_failure()->mutable_request_delete_range()->set_key(old_inbox);
      }
      if (push) {
        pushed_to_[item.id] = item.fields.worker_id;
      } else {
        pushed_to_.erase(item.id);
      }
    } else {
      const std::string event =
          item.internal ? std::string() : keys_.event(item.id.empty() ? "-" : item.id, item.type);
      if (retained.empty()) {
        if (!event.empty()) put(batch.request.add_success(), event, item.body, lease_);
      } else {
        finish(batch.request.add_success(), event, item.body, retained, lease_);
        pushed_to_.erase(item.id);
      }
    }
    const bool solo = item.solo;
    batch.items.push_back(std::move(item));
    queue_.pop_front();
    if (solo) break;
  }
  return !batch.items.empty();
}

void DispatchWriter::send(std::unique_ptr<Batch> batch) {
  const auto stubs = connection_.current();
  batch->endpoint = stubs.index;
  batch->context = connection_.context();
  Batch* b = batch.get();
  {
    std::lock_guard lock(mu_);
    in_flight_.emplace(b, std::move(batch));
  }
  stubs.kv->async()->Txn(b->context.get(), &b->request, &b->response,
                         [this, b](grpc::Status status) { answered(b, status); });
}

void DispatchWriter::answered(Batch* b, const grpc::Status& status) {
  // The batch stays in flight until every outcome is reported: stop() waits for that, and the
  // ABI allows no callback after stop() returned (the host frees what its callbacks use).
  Batch* batch = b;
  bool stopping = false;
  {
    std::lock_guard lock(mu_);
    stopping = stopping_;
  }
  if (status.ok()) {
    {
      std::lock_guard lock(mu_);
      failures_backoff_ = std::chrono::milliseconds(0);
    }
    for (const auto& item : batch->items) deliver(item, true, "");
  } else if (too_large(status) && !stopping) {
    // Refused for its size, not for etcd being away: a batch is written again one message per
    // transaction; a message too large alone never will be.
    std::vector<Item> unwritable;
    {
      std::lock_guard lock(mu_);
      if (batch->items.size() > 1) {
        for (auto it = batch->items.rbegin(); it != batch->items.rend(); ++it) {
          it->solo = true;
          queue_.push_front(std::move(*it));
        }
      } else {
        unwritable = std::move(batch->items);
      }
    }
    if (!unwritable.empty()) {
      const std::string why = "etcd refused to write it (" + describe(status) +
                              "): it is larger than etcd takes in one request (etcd's "
                              "--max-request-bytes, 1.5 MiB by default)";
      for (const auto& item : unwritable) {
        if (item.command) {
          // Published again it would be refused again, and hold the supervisor's dispatch back
          // each time: the execution fails (before the delivery's failure arrives).
          supervisor_->log(SHMSCHED_LOG_ERROR, "etcd: failing execution " + item.id + ": its " +
                                                   item.type + " (" +
                                                   std::to_string(item.body.size()) +
                                                   " bytes) cannot be written: " + why);
          supervisor_->hand_over(ops::undeliverable(item.id, item.fields.attempt, why),
                                 "the failure of " + item.id + " (too large for etcd)", running_);
        } else if (!item.internal) {
          supervisor_->log(SHMSCHED_LOG_WARN,
                           "etcd: dropped the " + item.type + " event of " + item.id + " (" +
                               std::to_string(item.body.size()) + " bytes): " + why);
        }
        deliver(item, false, why);
      }
    }
  } else {
    const bool retry = connection_.failed(batch->endpoint, status);
    const bool lease_gone = status.error_message().find("lease not found") != std::string::npos;
    const std::string why = "etcd did not apply the transaction (" + describe(status) + ")";
    std::vector<Item> again;
    for (auto& item : batch->items) {
      // Commands go back to the supervisor (it publishes them again, with backoff); events are
      // only logged there, so they are written again from here.
      if (!item.command && !stopping && (retry || lease_gone)) {
        again.push_back(std::move(item));
      } else {
        deliver(item, false, why);
      }
    }
    std::size_t queued = 0;
    std::vector<Item> given_back;
    {
      std::lock_guard lock(mu_);
      if (lease_gone) lease_ = 0;
      // Written again after what is queued: events never hold commands up.
      queue_.insert(queue_.end(), std::make_move_iterator(again.begin()),
                    std::make_move_iterator(again.end()));
      if (retry) {
        // etcd is away: the queued commands go back to the supervisor too, which publishes
        // them again with its backoff (here they would only wait, and be published twice).
        for (auto it = queue_.begin(); it != queue_.end();) {
          if (it->command) {
            given_back.push_back(std::move(*it));
            it = queue_.erase(it);
          } else {
            ++it;
          }
        }
      }
      failures_backoff_ = std::clamp(failures_backoff_ * 2, std::chrono::milliseconds(100),
                                     std::chrono::milliseconds(2000));
      queued = queue_.size();
    }
    for (const auto& item : given_back) deliver(item, false, why);
    if (Clock::now() >= next_failure_log_) {
      next_failure_log_ = Clock::now() + std::chrono::seconds(5);
      supervisor_->log(
          SHMSCHED_LOG_WARN,
          why + " on " + connection_.address(batch->endpoint) + ": " +
              std::to_string(batch->items.size()) +
              " message(s) not written; the supervisor publishes the commands again (" +
              std::to_string(queued) + " queued here)" +
              (retry ? "" : ". etcd refused the request itself: see its message"));
    }
  }
  // Nothing of this object is touched once the batch is gone: stop() may return then.
  std::lock_guard lock(mu_);
  in_flight_.erase(b);
  settled_.notify_all();
  wake_.notify_one();
}

void DispatchWriter::deliver(const Item& item, bool ok, const std::string& error) {
  if (item.internal) return;
  host_.delivery(host_.host_ctx, item.token, ok ? 1 : 0, ok ? nullptr : error.c_str());
}

std::int64_t DispatchWriter::retention_lease(std::string& error) {
  etcdserverpb::LeaseGrantRequest req;
  req.set_ttl(options_.retention.count());
  etcdserverpb::LeaseGrantResponse resp;
  const auto stubs = connection_.current();
  auto ctx = connection_.context();
  const grpc::Status s = stubs.lease->LeaseGrant(ctx.get(), req, &resp);
  if (!s.ok() || !resp.error().empty()) {
    if (!s.ok()) connection_.failed(stubs.index, s);
    error = s.ok() ? resp.error() : describe(s);
    return 0;
  }
  {
    std::lock_guard lock(leases_mu_);
    granted_leases_.push_back(resp.id());
    if (granted_leases_.size() > 1024) granted_leases_.pop_front();
  }
  std::lock_guard lock(mu_);
  lease_ = resp.id();
  // One lease serves the finished executions of a tenth of the retention: their keys go between
  // 90% and 100% of it after they finished.
  lease_until_ = Clock::now() + std::max<std::chrono::milliseconds>(std::chrono::seconds(1),
                                                                    options_.retention / 10);
  return lease_;
}

std::size_t DispatchWriter::flush(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  settled_.wait_for(lock, timeout, [&] { return queue_.empty() && in_flight_.empty(); });
  std::size_t left = queue_.size();
  for (const auto& [b, batch] : in_flight_) left += batch->items.size();
  return left;
}

void DispatchWriter::stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
    running_ = false;
    for (auto& [b, batch] : in_flight_) batch->context->TryCancel();
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::deque<Item> left;
  {
    std::unique_lock lock(mu_);
    // A batch sent just before the thread saw stopping_ may still be in flight.
    for (auto& [b, batch] : in_flight_) batch->context->TryCancel();
    settled_.wait(lock, [&] { return in_flight_.empty(); });
    left.swap(queue_);
  }
  for (const auto& item : left)
    deliver(item, false, "the etcd transport stopped before writing it");
}

bool DispatchWriter::retention_lease_granted(std::int64_t lease) const {
  std::lock_guard lock(leases_mu_);
  return std::find(granted_leases_.rbegin(), granted_leases_.rend(), lease) !=
         granted_leases_.rend();
}

}  // namespace shmsched::etcd
