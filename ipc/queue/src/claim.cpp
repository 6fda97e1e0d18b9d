// Claims of taken executions (claim_word.h): by a local worker through the segment, and by the
// supervisor for workers on the ingress. Both are the same compare-and-swap on one word.
#include "claim_word.h"
#include "crash_point.h"
#include "queue_internals.h"
#include "shmsched/core/stable_hash.h"
#include "shmsched/ipc/queue.h"
#include "slot_fields.h"
#include "slot_text.h"

namespace shmsched::ipc {

using namespace detail;

std::string_view claim_outcome_name(ClaimOutcome o) {
  switch (o) {
    case ClaimOutcome::kWon:
      return "won";
    case ClaimOutcome::kLost:
      return "lost";
    case ClaimOutcome::kNotCurrent:
      return "not_current";
    case ClaimOutcome::kNotFound:
      return "not_found";
    case ClaimOutcome::kUnavailable:
      return "unavailable";
  }
  return "?";
}

namespace {

// The compare-and-swap on the word of slot `s`, generation `gen`; `worker` 0 only reads.
ClaimResult claim_in(Slot& s, std::uint32_t gen, std::uint32_t attempt, std::uint32_t worker) {
  auto word = claim_word(s);
  std::uint64_t w = word.load(std::memory_order_acquire);
  for (;;) {
    if (!claim_is_for(w, gen, attempt)) return {ClaimOutcome::kNotCurrent, 0, 0};
    if (claim_owner(w) != 0 || worker == 0) {
      const std::uint32_t owner = claim_owner(w);
      return {owner == worker && owner != 0 ? ClaimOutcome::kWon : ClaimOutcome::kLost, owner,
              attempt};
    }
    CRASH_POINT("claim: the compare-and-swap");
    if (word.compare_exchange_weak(w, w | worker, std::memory_order_acq_rel,
                                   std::memory_order_acquire)) {
      return {ClaimOutcome::kWon, worker, attempt};
    }
  }
}

}  // namespace

ClaimResult Producer::claim(std::string_view execution_id, std::uint32_t attempt,
                            std::uint32_t worker) {
  if (worker == 0 || execution_id.empty() || execution_id.size() > kMaxIdBytes) {
    return {ClaimOutcome::kNotFound, 0, 0};
  }
  const SegmentView& v = *view_;
  Bracket bracket(*this);
  if (!bracket) return {ClaimOutcome::kUnavailable, 0, 0};
  const auto index = DedupIndex{&v}.find(stable_hash(execution_id), execution_id);
  if (!index) return {ClaimOutcome::kNotFound, 0, 0};
  CRASH_POINT("claim: look up the slot");
  Slot& s = v.slot(*index);
  const std::uint64_t c = s.ctrl.load(std::memory_order_acquire);
  if (ctrl_state(c) != SlotState::kActive) return {ClaimOutcome::kNotFound, 0, 0};
  // The slot may have been released and reused between the look-up and the load above: the
  // generation claimed must be one that holds this id (after the load, a reuse changes the
  // generation and the word's compare-and-swap fails).
  if (s.id_hash.load(std::memory_order_acquire) != stable_hash(execution_id) ||
      !text_equals(s.id_words, load_field(s.id_len), execution_id) ||
      s.ctrl.load(std::memory_order_acquire) != c) {
    return {ClaimOutcome::kNotFound, 0, 0};
  }
  return claim_in(s, ctrl_gen(c), attempt, worker);
}

void Consumer::open_claims(ActiveRef ref, std::uint32_t attempt) {
  if (ref.slot >= view_->geo->slot_count) return;
  Slot& s = view_->slot(ref.slot);
  auto word = claim_word(s);
  if (claim_is_for(word.load(std::memory_order_acquire), ref.generation, attempt)) return;
  CRASH_POINT("open claims of an attempt");
  // Only this process changes the word other than by a claim, and a claim needs it open at this
  // attempt: a plain store cannot lose one.
  word.store(claim_open(ref.generation, attempt), std::memory_order_release);
}

ClaimResult Consumer::close_claims(ActiveRef ref, std::uint32_t attempt) {
  if (ref.slot >= view_->geo->slot_count) return {ClaimOutcome::kNotFound, 0, 0};
  Slot& s = view_->slot(ref.slot);
  auto word = claim_word(s);
  std::uint64_t w = word.load(std::memory_order_acquire);
  for (;;) {
    if (!claim_is_for(w, ref.generation, attempt)) return {ClaimOutcome::kNotCurrent, 0, 0};
    if (claim_owner(w) != 0) return {ClaimOutcome::kLost, claim_owner(w), attempt};
    CRASH_POINT("close claims of an attempt");
    if (word.compare_exchange_weak(w, 0, std::memory_order_acq_rel, std::memory_order_acquire)) {
      return {ClaimOutcome::kLost, 0, attempt};  // closed, nobody owns it
    }
  }
}

ClaimResult Consumer::claim(ActiveRef ref, std::uint32_t attempt, std::uint32_t worker) {
  if (ref.slot >= view_->geo->slot_count) return {ClaimOutcome::kNotFound, 0, 0};
  Slot& s = view_->slot(ref.slot);
  const std::uint64_t c = s.ctrl.load(std::memory_order_acquire);
  if (ctrl_state(c) != SlotState::kActive || ctrl_gen(c) != ref.generation) {
    return {ClaimOutcome::kNotFound, 0, 0};
  }
  return claim_in(s, ref.generation, attempt, worker);
}

}  // namespace shmsched::ipc
