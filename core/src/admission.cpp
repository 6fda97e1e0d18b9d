#include "shmsched/core/admission.h"

namespace shmsched {

std::string_view admission_name(Admission a) {
  switch (a) {
    case Admission::kAccepted:
      return "accepted";
    case Admission::kQueueFull:
      return "queue_full";
    case Admission::kUserLimit:
      return "user_limit";
    case Admission::kDuplicate:
      return "duplicate";
    case Admission::kPayloadTooLarge:
      return "payload_too_large";
    case Admission::kInvalid:
      return "invalid";
    case Admission::kUnauthorized:
      return "unauthorized";
  }
  return "invalid";
}

}  // namespace shmsched
