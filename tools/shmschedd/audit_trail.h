// The supervisor's side of the audit log (shmsched::audit, docs/audit.md): every state change
// the scheduler publishes as an event, and the claims it learns of, become records. The writer
// has its own thread; the loop only hands records over.
#pragma once

#include <memory>
#include <string>

#include "shmsched/audit/writer.h"
#include "shmsched/core/scheduler.h"

namespace shmsched::daemon {

class AuditTrail {
 public:
  // Opens the log (throws audit::AuditError naming the cause) and logs what the open found.
  explicit AuditTrail(audit::AuditWriterOptions options);

  // The record of a published event (a helper's own copy of a blocker is not one).
  void event(const core::Event& event);
  void record(const core::action::Audit& a);
  audit::AuditWriterStats stats() const { return writer_->stats(); }

 private:
  std::unique_ptr<audit::AuditWriter> writer_;
};

}  // namespace shmsched::daemon
