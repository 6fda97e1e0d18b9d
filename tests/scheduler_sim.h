// A seeded simulation of the scheduler (core/scheduler.h), in the way FoundationDB's simulator
// and TigerBeetle's VOPR test their state machines: a workload generated from a seed drives the
// scheduler and a model of everything around it (the queue's segment, transports that
// acknowledge late, out of order or not at all, clients, the clock, supervisor crashes), and
// invariants are checked after every step. A failing seed replays exactly, and shrinks to a
// short trace of workload events.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "shmsched/core/scheduler.h"

namespace shmsched::sim {

using namespace shmsched::core;

// One workload event; the numbers are resolved against the state at the time (an index into
// the known ids, the pending deliveries, ...), so any subsequence of events is a valid workload.
struct Step {
  enum Kind : std::uint8_t {
    kSubmit,           // a producer submits through the queue (ingress, shared memory)
    kSubmitTransport,  // a submit arrives through a transport
    kCancel,
    kComplete,
    kFail,
    kDeliver,  // a transport reports one pending delivery (ok or not)
    kTime,     // time passes
    kReload,
    kSwapTransport,  // a transport instance is replaced (retire, later gone)
    kRetireDone,     // a retiring instance is gone
    kCrash,          // the supervisor dies and a new one recovers from the segment
    kStatus,
    kWallJump,  // the wall clock jumps (NTP), the monotonic one does not
    kRegister,  // a worker registers (or registers again, or from another process)
    kHeartbeat,
    kUnregister,
    kProcessExit,  // the process behind a session dies: its workers are gone
    kClaim,        // a worker claims an execution (often one pushed to another: a steal)
    kBlocker,
    kShmClaim,  // a local worker claims through the segment's claim word
    kKinds,
  };
  Kind kind = kTime;
  std::uint32_t a = 0;  // the event's numbers (meaning depends on the kind)
  std::uint32_t b = 0;
  std::uint32_t c = 0;
};

std::string describe(const Step& s);

// Generates the workload of a seed.
std::vector<Step> generate(std::uint64_t seed, std::size_t steps);

struct SimResult {
  bool ok = true;
  std::size_t failed_at = 0;  // index of the step after which an invariant broke
  std::string failure;        // which invariant, and how
  std::uint64_t dispatches = 0;
  std::uint64_t finished = 0;
};

// Runs a workload against a fresh scheduler and model; stops at the first broken invariant.
SimResult run(const std::vector<Step>& steps);

// The shortest subsequence of `steps` it could find that still fails (delta debugging).
std::vector<Step> shrink(std::vector<Step> steps);

}  // namespace shmsched::sim
