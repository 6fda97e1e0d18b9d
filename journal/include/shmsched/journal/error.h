// Errors of the journal as values: a code the caller can act on and a message for people that
// names the file, the cause and the fix. The writer's errors are sticky (see writer.h).
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace shmsched::journal {

enum class Errc {
  kOk = 0,
  kQueueFull,        // too many records appended and not yet taken by the writer thread
  kTooLarge,         // a payload above max_record_bytes
  kInvalidArgument,  // a record type reserved for the journal itself, ...
  kNoSpace,          // ENOSPC / EDQUOT: the journal's filesystem is full
  kReadOnly,         // EROFS: the journal's filesystem is mounted read-only
  kPermission,       // EACCES / EPERM on the directory or a file
  kIo,               // EIO or any other failed system call
  kLocked,           // another writer (or a repairing recovery) holds the directory
  kCorrupt,          // a damaged record or file that is not a torn tail (see docs/journal.md)
  kClosed,           // the writer is being destroyed
  kTimeout,          // wait_durable() gave up
};

// "ok", "queue_full", "no_space", ... (for stats and logs).
const char* errc_name(Errc code);

// Success (code kOk, empty message) or a failure with its message.
struct Error {
  Errc code = Errc::kOk;
  std::string message;

  bool ok() const { return code == Errc::kOk; }
  explicit operator bool() const { return !ok(); }  // true when it is an error
};

using Status = Error;

// A value or the Error that prevented it. value() on an error is a programming error (it throws
// std::logic_error carrying the message, so it never passes silently).
template <class T>
class Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit on purpose
  Result(Error error) : v_(std::move(error)) {}  // NOLINT
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }  // true when it holds a value
  T& value();
  const T& value() const;
  T& operator*() { return value(); }
  const T& operator*() const { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const;

 private:
  std::variant<T, Error> v_;
};

namespace detail {
[[noreturn]] void throw_bad_result_access(const Error& error);
}  // namespace detail

template <class T>
T& Result<T>::value() {
  if (!ok()) detail::throw_bad_result_access(std::get<1>(v_));
  return std::get<0>(v_);
}

template <class T>
const T& Result<T>::value() const {
  if (!ok()) detail::throw_bad_result_access(std::get<1>(v_));
  return std::get<0>(v_);
}

template <class T>
const Error& Result<T>::error() const {
  static const Error kNone{};
  return ok() ? kNone : std::get<1>(v_);
}

}  // namespace shmsched::journal
