// Framing and the frame cursor (see frame.h).
#include "frame.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "sha256.h"

namespace shmsched::audit::detail {

namespace {

constexpr std::size_t kReadChunk = 256 << 10;

std::uint32_t load_le32(const std::byte* p) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | std::to_integer<std::uint32_t>(p[i]);
  return v;
}

}  // namespace

std::size_t begin_frame(std::vector<std::byte>& out) {
  const std::size_t start = out.size();
  out.resize(start + kLengthBytes);
  return start;
}

Hash end_frame(std::vector<std::byte>& out, std::size_t start, const Hash& previous) {
  const std::size_t len = out.size() - start - kLengthBytes;
  for (std::size_t i = 0; i < kLengthBytes; ++i)
    out[start + i] = static_cast<std::byte>((len >> (8 * i)) & 0xff);
  const Hash h = chain_hash(previous, std::span(out).subspan(start + kLengthBytes, len));
  const auto* hb = reinterpret_cast<const std::byte*>(h.data());
  out.insert(out.end(), hb, hb + h.size());
  return h;
}

FrameCursor::FrameCursor(const std::string& path, std::uint64_t offset)
    : path_(path), buf_start_(offset), pos_(offset) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw AuditError("audit: cannot open " + path + ": " + std::strerror(errno));
}

FrameCursor::~FrameCursor() {
  if (fd_ >= 0) ::close(fd_);
}

std::uint64_t FrameCursor::file_size() const {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) throw AuditError("audit: cannot stat " + path_);
  return static_cast<std::uint64_t>(st.st_size);
}

bool FrameCursor::fill(std::uint64_t end) {
  if (end <= buf_start_ + buf_.size()) return true;
  if (pos_ > buf_start_) {  // drop what has been consumed
    const auto consumed = static_cast<std::ptrdiff_t>(pos_ - buf_start_);
    buf_.erase(buf_.begin(), buf_.begin() + std::min<std::ptrdiff_t>(consumed, buf_.size()));
    buf_start_ = pos_;
  }
  const std::uint64_t want = std::max<std::uint64_t>(end - (buf_start_ + buf_.size()), kReadChunk);
  std::size_t have = buf_.size();
  buf_.resize(have + want);
  while (have < buf_.size()) {
    const ssize_t n =
        ::pread(fd_, buf_.data() + have, buf_.size() - have, static_cast<off_t>(buf_start_ + have));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      buf_.resize(have);
      throw AuditError("audit: cannot read " + path_ + ": " + std::strerror(errno));
    }
    if (n == 0) break;
    have += static_cast<std::size_t>(n);
  }
  buf_.resize(have);
  return end <= buf_start_ + buf_.size();
}

void FrameCursor::forget_unconsumed() {
  if (pos_ >= buf_start_ && pos_ - buf_start_ < buf_.size()) buf_.resize(pos_ - buf_start_);
}

FrameStatus FrameCursor::next(Frame& out) {
  if (!fill(pos_ + kLengthBytes)) {
    const bool at_end = buf_start_ + buf_.size() <= pos_;
    forget_unconsumed();
    return at_end ? FrameStatus::kEnd : FrameStatus::kIncomplete;
  }
  const std::byte* p = buf_.data() + (pos_ - buf_start_);
  const std::uint32_t len = load_le32(p);
  if (len == 0 || len > kMaxBodyBytes) return FrameStatus::kBadLength;
  if (!fill(pos_ + kFrameOverhead + len)) {
    forget_unconsumed();
    return FrameStatus::kIncomplete;
  }
  p = buf_.data() + (pos_ - buf_start_);  // fill may have moved the buffer
  out.offset = pos_;
  out.body = std::span<const std::byte>(p + kLengthBytes, len);
  std::memcpy(out.stored.data(), p + kLengthBytes + len, kHashBytes);
  pos_ += kFrameOverhead + len;
  return FrameStatus::kFrame;
}

std::uint32_t FrameCursor::declared_length() {
  if (!fill(pos_ + kLengthBytes)) return 0;
  return load_le32(buf_.data() + (pos_ - buf_start_));
}

bool FrameCursor::rest_is_zero() {
  const std::uint64_t size = file_size();
  for (std::uint64_t at = pos_; at < size;) {
    const std::uint64_t end = std::min<std::uint64_t>(size, at + kReadChunk);
    std::vector<std::byte> chunk(end - at);
    const ssize_t n = ::pread(fd_, chunk.data(), chunk.size(), static_cast<off_t>(at));
    if (n <= 0) return n == 0;
    for (ssize_t i = 0; i < n; ++i)
      if (chunk[static_cast<std::size_t>(i)] != std::byte{0}) return false;
    at += static_cast<std::uint64_t>(n);
  }
  return true;
}

}  // namespace shmsched::audit::detail
