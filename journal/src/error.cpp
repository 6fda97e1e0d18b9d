// Names of the error codes, and the failure of Result::value() on an error.
#include "shmsched/journal/error.h"

#include <stdexcept>

namespace shmsched::journal {

const char* errc_name(Errc code) {
  switch (code) {
    case Errc::kOk:
      return "ok";
    case Errc::kQueueFull:
      return "queue_full";
    case Errc::kTooLarge:
      return "too_large";
    case Errc::kInvalidArgument:
      return "invalid_argument";
    case Errc::kNoSpace:
      return "no_space";
    case Errc::kReadOnly:
      return "read_only";
    case Errc::kPermission:
      return "permission";
    case Errc::kIo:
      return "io";
    case Errc::kLocked:
      return "locked";
    case Errc::kCorrupt:
      return "corrupt";
    case Errc::kClosed:
      return "closed";
    case Errc::kTimeout:
      return "timeout";
  }
  return "unknown";
}

namespace detail {
void throw_bad_result_access(const Error& error) {
  throw std::logic_error("journal: value() of a failed result: " + error.message);
}
}  // namespace detail

}  // namespace shmsched::journal
