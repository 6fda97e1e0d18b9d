// Durability (docs/operations.md, "Durability"): the supervisor's journal of executions on disk,
// the queue rebuilt from it after a reboot, and the acknowledgements that wait for it.
//
// What is recorded, all on the loop's thread: an execution when the loop first sees it
// (announced, or taken before it was announced), each dispatch, and its end. A finished
// execution's slot is given back only once its end is on disk, so a supervisor that dies at any
// point never finds in the journal an execution the queue no longer has (and the journal never
// runs one twice without a crash between).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include <spdlog/spdlog.h>

#include "shmsched/ipc/protocol.h"
#include "supervisor.h"

namespace shmsched::daemon {

namespace protocol = ipc::protocol;

namespace {

// Takes what it can from `r` (a listing's record, used once).
JournaledExecution journaled(ipc::ExecutionRecord&& r) {
  JournaledExecution e;
  e.execution_id = std::move(r.execution_id);
  e.user_id = std::move(r.user_id);
  e.priority = r.priority;
  e.enqueued_at_ns = r.enqueued_at_ns;
  e.attempt = r.attempt;
  e.timeout_seconds = r.timeout_seconds;
  e.payload = std::move(r.payload);
  if (!r.required_capabilities.empty() || !r.metadata.empty()) {
    e.extras = ipc::encode_extras(r.required_capabilities, r.metadata);
  }
  e.dispatched = r.state == ipc::ExecutionState::kActive;
  return e;
}

}  // namespace

namespace {

// A file beside the segment (/dev/shm/<segment>.restoring) that says "the segment is being
// filled from the journal": written before the segment is created, removed once the fill is
// complete. A supervisor that dies in between leaves it, and the next one fills again (skipping
// what is there) instead of taking the half-filled segment for the newer truth. It lives where
// the segment lives: it needs to outlive what the segment outlives (a process, a service stop),
// and it goes with it at a reboot; and a full journal disk cannot keep it from being written.
std::string restore_marker(const std::string& segment) {
  return "/dev/shm/" + segment + ".restoring";
}

void write_marker(const std::string& segment) {
  const std::string path = restore_marker(segment);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error("cannot create " + path + ": " + std::strerror(errno));
  ::close(fd);
}

}  // namespace

bool Supervisor::open_journal(std::vector<JournaledExecution>& live) {
  if (config_.journal_dir.empty()) return false;
  ExecutionJournal::Options o;
  o.dir = config_.journal_dir;
  o.salvage = config_.journal_salvage;
  o.snapshot_min_bytes = config_.journal_snapshot_min_bytes;
  o.max_record_bytes = static_cast<std::uint32_t>(std::min<std::uint64_t>(
      config_.queue.max_payload_bytes + config_.queue.max_extras_bytes + 1024,
      journal::kMaxPayloadBytes));
  o.on_error = [](const journal::Error& e) {
    spdlog::error(
        "the journal failed: {}. Submits that ask for durability disk are refused until "
        "shmschedd is restarted with the cause fixed; memory submits go on",
        e.message);
  };
  const auto started = Clock::now();
  journal_ = ExecutionJournal::open(o, live);
  journal_read_ms_ =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count();
  const auto& report = journal_->open_report();
  if (report.torn_bytes > 0 || report.salvaged || !report.incomplete_snapshot_file.empty()) {
    spdlog::warn("journal {}: {}", config_.journal_dir, report.summary());
  }
  std::error_code ec;
  const bool exists = std::filesystem::exists("/dev/shm/" + config_.segment, ec);
  if (!exists && live.size() > config_.queue.max_queue_size) {
    // Said before the segment is created at a size that would then be fixed.
    throw std::runtime_error(
        "the journal " + config_.journal_dir + " holds " + std::to_string(live.size()) +
        " live executions and max_queue_size is " + std::to_string(config_.queue.max_queue_size) +
        ": configure a queue that holds them");
  }
  if (!exists) write_marker(config_.segment);
  segment_created_here_ = !exists;
  return !exists || std::filesystem::exists(restore_marker(config_.segment), ec);
}

void Supervisor::settle_journal(bool restore, std::vector<JournaledExecution>& live) {
  if (!restore) {
    // The entries there now are in the journal once it is settled (the reconcile records those
    // it lacks); submitters of an earlier supervisor may still wait for their marks.
    const auto present = consumer_->occupied();
    reconcile_with_journal(live);
    start_durable_marks(present);
    return;
  }
  try {
    restore_from_journal(live);
  } catch (...) {
    // A segment made by this start for a fill that does not fit (sizes too small for the
    // journal) goes again, so that the start with larger sizes the message asks for can create
    // it; the marker stays (the journal still holds everything).
    if (segment_created_here_) ipc::Segment::remove(config_.segment);
    throw;
  }
  start_durable_marks({});  // a new segment: nobody waits for a mark in it
  std::error_code ec;
  std::filesystem::remove(restore_marker(config_.segment), ec);
  if (ec) {
    spdlog::warn(
        "journal {}: cannot remove {}: {} (the next start fills again, skipping what is there)",
        config_.journal_dir, restore_marker(config_.segment), ec.message());
  }
}

// The segment is new (a reboot emptied /dev/shm, or it was removed): the journal's live
// executions go back in the queue in the order they were accepted, those that had been
// dispatched first. They were announced before, so they are not announced again. One the
// segment has already (a fill cut short before) is skipped.
void Supervisor::restore_from_journal(std::vector<JournaledExecution>& live) {
  if (live.empty()) {
    spdlog::info("journal {}: nothing to restore", config_.journal_dir);
    return;
  }
  const auto started = Clock::now();
  // Accepted once already: the per-user cap does not refuse them now.
  segment_->set_max_executions_per_user(8388608);  // the largest the segment takes
  ipc::Producer producer(segment_);
  // The new segment's pages are mapped in by a thread of their own, ahead of the fill (a
  // million executions touch about a gigabyte: a fault per page costs a quarter of the refill).
  int prefault_error = 0;
  std::thread prefault([&] { prefault_error = segment_->prefault(live.size()); });
  struct Join {
    std::thread& t;
    ~Join() {
      if (t.joinable()) t.join();
    }
  } join{prefault};
  restored_slots_.assign(live.size() + live.size() / 8 + 1024, 0);
  std::size_t dispatched = 0;
  const auto fill = [&](const JournaledExecution& e) {
    ipc::SubmitRequest r;
    r.execution_id = e.execution_id;
    r.user_id = e.user_id;
    r.priority = e.priority;
    r.payload = e.payload;
    r.timeout_seconds = e.timeout_seconds;
    r.attempt = e.attempt;
    r.enqueued_at_ns = e.enqueued_at_ns;
    if (!e.extras.empty() && !ipc::decode_extras(e.extras, r.required_capabilities, r.metadata)) {
      throw std::runtime_error("journal " + config_.journal_dir + ": execution " + e.execution_id +
                               " has capabilities or metadata that do not decode");
    }
    const auto res = producer.submit(r);
    // Announced before the crash: not again (a local client's submissions that land between
    // them meanwhile are announced as usual). A duplicate was put in by a fill cut short.
    if (res.admission == Admission::kDuplicate) {
      restored_duplicates_.insert(e.execution_id);
      return;
    }
    if (!res.accepted()) {
      throw std::runtime_error(
          "cannot restore execution " + e.execution_id + " from the journal " +
          config_.journal_dir + " into the new queue: " + res.message + " (the journal holds " +
          std::to_string(live.size()) +
          " live executions: configure a queue that holds them, e.g. max_queue_size)");
    }
    if (res.slot >= restored_slots_.size()) restored_slots_.resize(res.slot * 2 + 1, 0);
    restored_slots_[res.slot] = restored_tag(res.generation);
    ++restored_pending_;
    if (e.dispatched) ++dispatched;
  };
  // The dispatched ones first (at the head of their priority), each group in journal order.
  for (const auto& e : live) {
    if (e.dispatched) fill(e);
  }
  for (const auto& e : live) {
    if (!e.dispatched) fill(e);
  }
  if (restored_pending_ == 0) restored_slots_ = {};
  prefault.join();
  if (prefault_error != 0) {
    spdlog::debug("the segment's pages were not mapped in ahead of the refill: {}",
                  std::strerror(prefault_error));
  }
  segment_->set_max_executions_per_user(config_.queue.max_executions_per_user);

  spdlog::warn(
      "the queue's segment was new: rebuilt it from the journal {}: {} execution(s), of which {} "
      "had been dispatched and will be dispatched again (journal read in {} ms, queue refilled "
      "in {} ms)",
      config_.journal_dir, live.size(), dispatched, journal_read_ms_,
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count());
}

// Both exist: the segment is the newer truth (it has what the journal was not yet told). An
// execution the journal holds and the segment does not has ended; one the segment holds and
// the journal does not is recorded. Either difference is settled with a snapshot of the segment.
// An id is not enough to say that the journal holds an entry: the id may be that of an earlier
// occupant (x cancelled by a supervisor killed before its record was written, then submitted
// again), or of another queue's entry (a journal directory used with another segment). Such an
// entry counts as both ended and unknown: the start marks what the segment holds durable once
// the journal is settled, and a journal that holds another x would answer for this one.
void Supervisor::reconcile_with_journal(std::vector<JournaledExecution>& live) {
  std::unordered_map<std::string, ipc::ExecutionRecord> in_segment;
  for (auto& r : consumer_->list(std::nullopt, SIZE_MAX, false)) {
    // A slot whose execution has ended (its final event out, only its release left) is not live:
    // the supervisor that ended it may have died before its end was recorded.
    if (r.state == ipc::ExecutionState::kActive &&
        core::phase_of(r.annotation) == core::Phase::kFinished) {
      continue;
    }
    std::string id = r.execution_id;
    in_segment.emplace(std::move(id), std::move(r));
  }
  std::size_t gone = 0, other = 0;
  std::unordered_set<std::string> journaled_ids;
  for (const auto& e : live) {
    journaled_ids.insert(e.execution_id);
    const auto it = in_segment.find(e.execution_id);
    if (it == in_segment.end()) {
      ++gone;
    } else if (const ipc::ExecutionRecord& r = it->second; r.enqueued_at_ns != e.enqueued_at_ns ||
                                                           r.user_id != e.user_id ||
                                                           r.priority != e.priority) {
      ++other;  // the same id, another submission
    }
  }
  std::size_t unknown = 0;
  for (const auto& [id, r] : in_segment) {
    if (!journaled_ids.count(id)) ++unknown;
  }
  if (gone == 0 && unknown == 0 && other == 0) return;
  spdlog::info(
      "journal {}: {} execution(s) it held are no longer in the queue (they ended), {} in the "
      "queue were not in it yet, {} in it under the id of another submission: recording the "
      "queue as it is",
      config_.journal_dir, gone, unknown, other);
  journal_snapshot();
}

void Supervisor::journal_snapshot() {
  const auto started = Clock::now();
  // Slots finished but not yet given back (their end is recorded) are not live any more.
  std::unordered_set<std::string> ending;
  for (const auto& [lsn, ref] : durable_releases_) {
    if (const auto v = consumer_->view(ref)) ending.emplace(v->execution_id);
  }
  auto records = consumer_->list(std::nullopt, SIZE_MAX, true);
  std::erase_if(records, [&](const ipc::ExecutionRecord& r) {
    if (ending.count(r.execution_id)) return true;
    return r.state == ipc::ExecutionState::kActive &&
           core::phase_of(r.annotation) == core::Phase::kFinished;
  });
  // Dispatched first, then the queue; FIFO within each priority, by the ring position (a rank,
  // queue_position, moves while producers go on submitting to higher priorities, and the
  // listing reads one slot after another). The keys are sorted, not the records: moving a
  // million records with their strings stalled the loop.
  struct Key {
    bool queued;
    Priority priority;
    std::uint64_t position;
    std::uint32_t index;
    bool operator<(const Key& o) const {
      return std::tie(queued, priority, position, index) <
             std::tie(o.queued, o.priority, o.position, o.index);
    }
  };
  std::vector<Key> order;
  order.reserve(records.size());
  for (std::uint32_t i = 0; i < records.size(); ++i) {
    const auto& r = records[i];
    order.push_back(Key{r.state != ipc::ExecutionState::kActive, r.priority, r.ring_position, i});
  }
  std::sort(order.begin(), order.end());
  std::vector<journal::SnapshotRecord> out;
  out.reserve(records.size() + records.size() / 4);
  for (const auto& k : order) {
    ExecutionJournal::snapshot_records(journaled(std::move(records[k.index])), out);
  }
  auto lsn = journal_->write_snapshot(out);
  if (!lsn) {
    spdlog::error("journal {}: the snapshot was not written: {}", config_.journal_dir,
                  lsn.error().message);
    return;
  }
  spdlog::info(
      "journal {}: snapshot of {} live execution(s) listed and queued for the disk in {} ms",
      config_.journal_dir, order.size(),
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count());
}

bool Supervisor::restored_announcement(const ipc::ExecutionView& v) {
  if (restored_pending_ > 0 && v.slot < restored_slots_.size() &&
      restored_slots_[v.slot] == restored_tag(v.generation)) {
    restored_slots_[v.slot] = 0;
    if (--restored_pending_ == 0) restored_slots_ = {};  // give the memory back
    return true;
  }
  if (restored_duplicates_.empty()) return false;
  const auto it = restored_duplicates_.find(std::string(v.execution_id));
  if (it == restored_duplicates_.end()) return false;
  restored_duplicates_.erase(it);
  if (restored_duplicates_.empty()) restored_duplicates_ = {};
  return true;
}

void Supervisor::journal_accepted(const ipc::ExecutionView& v) {
  if (!journal_) return;
  auto lsn = journal_->accepted(v);
  if (!lsn) {
    journal_trouble(lsn.error());
    return;
  }
  if (marking_) {
    durable_marks_.push_back(PendingMark{*lsn, v.slot, v.generation});
    arm_durable_work();
  }
}

void Supervisor::start_durable_marks(const std::vector<ipc::ActiveRef>& journaled) {
  // What the journal holds now is made durable first (it may hold records a killed
  // predecessor wrote and never synced), then marked.
  if (const auto s = journal_->wait_durable(journal_->appended(), std::chrono::seconds(10));
      !s.ok()) {
    spdlog::warn(
        "journal {}: not synced at start ({}): shared-memory submits with durability disk go "
        "through the ingress",
        config_.journal_dir, s.message);
    consumer_->set_durable_marks(false);
    return;
  }
  for (const auto& ref : journaled) consumer_->mark_durable(ref.slot, ref.generation);
  marking_ = true;
  consumer_->set_durable_marks(true);  // wakes the waiters of the marks just set
}

void Supervisor::stop_durable_marks() {
  // What is on disk already is marked (a journal that failed later synced it all the same).
  const journal::Lsn durable = journal_->durable();
  while (!durable_marks_.empty() && durable_marks_.front().lsn <= durable) {
    consumer_->mark_durable(durable_marks_.front().slot, durable_marks_.front().generation);
    durable_marks_.pop_front();
  }
  marking_ = false;
  durable_marks_.clear();
  consumer_->set_durable_marks(false);  // wakes the waiters: no mark will come
}

void Supervisor::journal_event(const core::Event& ev) {
  if (!journal_) return;
  journal::Result<journal::Lsn> lsn = journal::Lsn{0};
  switch (ev.type) {
    case core::EventType::kCreatePodCommand:
    case core::EventType::kTaskPush:
      lsn = journal_->dispatched(ev.execution_id, ev.attempt);
      break;
    case core::EventType::kFailed:
      if (ev.will_retry.value_or(false)) return;
      [[fallthrough]];
    case core::EventType::kCompleted:
    case core::EventType::kCancelled:
    case core::EventType::kExpired:
      lsn = journal_->finished(ev.execution_id);
      break;
    default:
      return;
  }
  if (!lsn) journal_trouble(lsn.error());
}

void Supervisor::journal_trouble(const journal::Error& e) {
  // The journal is failed from the first record it could not take (ExecutionJournal::health):
  // disk submits are refused from now on; said once, loudly.
  if (marking_) stop_durable_marks();
  if (journal_failure_logged_) return;
  journal_failure_logged_ = true;
  spdlog::error(
      "journal {}: a record could not be appended ({}): the journal is failed; submits that ask "
      "for durability disk are refused until shmschedd is restarted with the cause fixed; memory "
      "submits go on",
      config_.journal_dir, e.message);
}

// A finished execution's slot goes back once its end is on disk.
void Supervisor::release_after_journal(ipc::ActiveRef ref) {
  if (!journal_ || journal_->durable() >= journal_->appended() || !journal_->health().ok) {
    release(ref);
    return;
  }
  durable_releases_.emplace_back(journal_->appended(), ref);
  arm_durable_work();
}

void Supervisor::arm_durable_work() {
  if (durable_work_armed_ || (durable_releases_.empty() && durable_marks_.empty())) return;
  durable_work_armed_ = true;
  journal_->when_durable(journal_->appended(),
                         [this](const journal::Status&) { inbox_->post(JournalWakeMessage{}); });
}

void Supervisor::on_journal_durable() {
  durable_work_armed_ = false;
  const bool ok = journal_->health().ok;
  // A failed journal makes nothing durable any more: the slots go back (memory durability),
  // and no mark will come.
  if (!ok && marking_) stop_durable_marks();
  const journal::Lsn durable = ok ? journal_->durable() : std::numeric_limits<journal::Lsn>::max();
  std::size_t done = 0;
  while (done < durable_releases_.size() && durable_releases_[done].first <= durable) {
    release(durable_releases_[done].second);
    ++done;
  }
  durable_releases_.erase(durable_releases_.begin(),
                          durable_releases_.begin() + static_cast<std::ptrdiff_t>(done));
  bool marked = false;
  while (!durable_marks_.empty() && durable_marks_.front().lsn <= durable) {
    consumer_->mark_durable(durable_marks_.front().slot, durable_marks_.front().generation);
    durable_marks_.pop_front();
    marked = true;
  }
  if (marked) consumer_->wake_durable_waiters();
  arm_durable_work();
}

std::optional<std::pair<std::string, std::string>> Supervisor::durable_refusal() const {
  if (!journal_) {
    return std::make_pair(
        std::string("invalid"),
        std::string("durability disk needs the journal, and shmschedd runs without one: set "
                    "journal_dir, or submit with durability memory"));
  }
  if (const auto h = journal_->health(); !h.ok) {
    return std::make_pair(std::string("queue_full"),
                          "durability disk is refused: the journal cannot write (" +
                              h.error.message +
                              "); submit with durability memory, or fix the cause and restart "
                              "shmschedd");
  }
  return std::nullopt;
}

void Supervisor::set_default_durability() {
  default_disk_ = config_.durability == "disk";
  segment_->set_default_durability_disk(default_disk_);
}

void Supervisor::send_reply(const ReplyTo& to, const std::vector<std::byte>& body, bool ack) {
  if (to.ingress_token && ingress_) ingress_->reply(to.ingress_token, body);
  if (to.transport) {
    if (to.transport->reply) {
      to.transport->reply(to.transport->op_ctx, reinterpret_cast<const std::uint8_t*>(body.data()),
                          body.size());
    }
    if (ack && to.transport->ack) to.transport->ack(to.transport->op_ctx);
  }
}

// A submit accepted into the queue with durability disk: its answer waits until everything the
// loop has recorded (its accepted record among it, once announced here) is on disk.
void Supervisor::await_durable(DurableWaitMessage& w) {
  if (!journal_) {
    send_reply(w.to, w.body, true);
    return;
  }
  if (!w.ending) announce_all();
  if (const auto h = journal_->health(); !h.ok) {
    DurableDoneMessage d{std::move(w), false, h.error.message};
    durable_done(d);
    return;
  }
  journal_->when_durable(
      journal_->appended(), [this, w = std::move(w)](const journal::Status& s) mutable {
        inbox_->post(DurableDoneMessage{std::move(w), s.ok(), s.ok() ? "" : s.message});
      });
}

void Supervisor::durable_done(DurableDoneMessage& d) {
  // An ending is done whatever the journal says (it failed: memory durability from now on).
  if (d.ok || d.wait.ending) {
    send_reply(d.wait.to, d.wait.body, true);
    return;
  }
  // Whether its record reached the disk is unknown (a write can fail after the record itself
  // was whole on disk): it is neither acknowledged nor cancelled. It stays queued in memory, and
  // the client is told so; a transport's message is not acknowledged, so the next supervisor
  // reads it again (and finds it a duplicate if it is still there).
  const std::string message =
      "execution " + d.wait.execution_id +
      " is queued, but the journal failed before it was on disk (" + d.error +
      "): it survives a process crash, and may not survive a reboot. Do not submit it again "
      "under another id (the same id answers duplicate while it is queued)";
  send_reply(d.wait.to, protocol::error_reply("queue_full", message), false);
  if (d.wait.to.transport) keep_unacknowledged(*d.wait.to.transport);
}

void keep_unacknowledged(const shmsched_inbound_done& done) {
  // Deliberately never acknowledged (the next supervisor reads the message again). The ABI has
  // no way to give the plugin's context back without acknowledging, so it stays allocated until
  // the process exits, reachable from here (not a leak: a decision, bounded by such failures).
  static auto* kept = new std::vector<shmsched_inbound_done>();
  static std::mutex mu;
  std::lock_guard lock(mu);
  kept->push_back(done);
}

}  // namespace shmsched::daemon
