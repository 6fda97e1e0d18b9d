// Framing: how bodies sit in a file, and a cursor that reads them back.
//
//   u32 little-endian body length | body (msgpack, 1 .. kMaxBodyBytes) | SHA-256(prev || body)
//
// The cursor reads one file in order and may be asked again after the end: a file that is still
// being appended to shows more frames later, and a frame cut short shows as kIncomplete until its
// last byte is there.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "shmsched/audit/format.h"

namespace shmsched::audit::detail {

inline constexpr std::size_t kLengthBytes = 4;
inline constexpr std::size_t kFrameOverhead = kLengthBytes + kHashBytes;

// Starts a frame at the end of `out` (room for the length); the caller appends the body, then
// seals it with end_frame, which writes the length, appends SHA-256(previous || body) and
// returns that hash (the next frame's `previous`).
std::size_t begin_frame(std::vector<std::byte>& out);
Hash end_frame(std::vector<std::byte>& out, std::size_t start, const Hash& previous);

enum class FrameStatus {
  kFrame,       // a whole frame was read
  kEnd,         // the file ends exactly here
  kIncomplete,  // the file ends inside the frame that starts here
  kBadLength,   // the length here is 0 or above kMaxBodyBytes: damage, not a frame
};

struct Frame {
  std::uint64_t offset = 0;         // of its length field in the file
  std::span<const std::byte> body;  // valid until the cursor's next call
  Hash stored{};                    // the hash written after the body
  std::uint64_t size() const { return kFrameOverhead + body.size(); }
};

class FrameCursor {
 public:
  // Opens `path` for reading at `offset`; throws AuditError.
  explicit FrameCursor(const std::string& path, std::uint64_t offset = 0);
  ~FrameCursor();
  FrameCursor(const FrameCursor&) = delete;
  FrameCursor& operator=(const FrameCursor&) = delete;

  // The frame at offset(), advancing past it; any other status leaves offset() where it is.
  FrameStatus next(Frame& out);

  std::uint64_t offset() const { return pos_; }  // where the next frame starts
  std::uint64_t file_size() const;               // as it is now
  // The length field at offset() (after kIncomplete or kBadLength; 0 if not all 4 bytes are there).
  std::uint32_t declared_length();
  // Whether every byte from offset() to the end of the file is zero (a tail that a crash left
  // allocated but unwritten).
  bool rest_is_zero();

 private:
  bool fill(
      std::uint64_t end);    // bytes up to file offset `end` in buf_; false if the file is shorter
  void forget_unconsumed();  // drop what was read past pos_ (it may be rewritten: a torn tail cut)

  int fd_ = -1;
  std::string path_;
  std::vector<std::byte> buf_;  // file bytes from buf_start_
  std::uint64_t buf_start_ = 0;
  std::uint64_t pos_ = 0;
};

}  // namespace shmsched::audit::detail
