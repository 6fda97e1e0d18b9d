// A named shared-memory segment holding one shmsched queue. The owner (the supervisor) creates
// it from a SegmentConfig; producers and the consumer attach to it by name. Attaching checks
// the magic, the layout version and the sizes, and refuses a segment it cannot use with a
// message that says what is wrong and what to do.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include "shmsched/ipc/segment_config.h"

namespace shmsched::ipc {

class Segment;
namespace detail {
struct SegmentView;
const SegmentView& view_of(const Segment& segment);
}  // namespace detail

// Thrown when a segment cannot be created or attached; the message names the cause and the fix.
class SegmentError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Segment {
 public:
  // Creates a new segment named `name` (a POSIX shm name without the leading '/', for example
  // "shmsched"), laid out for `config`. Throws SegmentError if one already exists.
  static std::shared_ptr<Segment> create(const std::string& name, const SegmentConfig& config);

  // Attaches to an existing segment. Throws SegmentError if there is none, or if it has another
  // layout version or inconsistent sizes.
  static std::shared_ptr<Segment> attach(const std::string& name);

  // Attaches if the segment exists and was laid out for the same sizes as `config`; creates it
  // if it does not exist. Throws SegmentError if it exists with other sizes (say which).
  static std::shared_ptr<Segment> open_or_create(const std::string& name,
                                                 const SegmentConfig& config);

  // Removes the name; processes already attached keep their mapping. False if it did not exist.
  static bool remove(const std::string& name);

  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  const std::string& name() const { return name_; }
  // The sizes the segment was created with (per_user_limit reflects the current setting).
  SegmentConfig config() const;
  std::uint64_t size_bytes() const;
  // Maps in, writable, the memory the first `entries` slots use (and the id index), in one
  // system call instead of a page fault per page: a refill of a new segment from the journal
  // runs it beside the fill. Returns 0, or the errno of madvise(MADV_POPULATE_WRITE) (EINVAL
  // before Linux 5.14: the pages then come one fault at a time, as always).
  int prefault(std::uint64_t entries) const;

  // The per-user cap is a run-time setting of the owner.
  void set_max_executions_per_user(std::uint64_t limit);
  // The supervisor's default durability (docs/protocol.md): true when a submit that names none
  // is acknowledged only once on disk, which only the supervisor can do.
  void set_default_durability_disk(bool disk);
  bool default_durability_disk() const;
  // Durable marks (Consumer::set_durable_marks): on or off, and how many producers wait for one.
  bool durable_marks() const;
  std::uint32_t durable_waiters() const;

 private:
  // The queue's code (and its white-box tests) reach the layout through detail::view_of().
  friend const detail::SegmentView& detail::view_of(const Segment& segment);
  struct Mapping;
  Segment(std::string name, std::unique_ptr<Mapping> mapping);

  std::string name_;
  std::unique_ptr<Mapping> mapping_;
  std::unique_ptr<detail::SegmentView> view_;
};

}  // namespace shmsched::ipc
