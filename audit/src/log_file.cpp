// Names, listing and the file header (see log_file.h).
#include "log_file.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <system_error>

#include "msgpack_util.h"

namespace shmsched::audit::detail {

namespace {
constexpr std::string_view kPrefix = "audit-";
constexpr std::string_view kSuffix = ".log";
constexpr std::size_t kSeqDigits = 20;
}  // namespace

void encode_header(const FileHeader& h, std::vector<std::byte>& out) {
  ByteSink sink{out};
  msgpack::packer<ByteSink> pk(sink);
  pk.pack_map(5);
  pack_str(pk, "magic");
  pack_str(pk, kMagic);
  pack_str(pk, "version");
  pk.pack_uint32(h.version);
  pack_str(pk, "first_seq");
  pk.pack_uint64(h.first_seq);
  pack_str(pk, "prev_hash");
  pk.pack_bin(static_cast<std::uint32_t>(h.prev_hash.size()));
  pk.pack_bin_body(reinterpret_cast<const char*>(h.prev_hash.data()),
                   static_cast<std::uint32_t>(h.prev_hash.size()));
  pack_str(pk, "created_ns");
  pk.pack_int64(h.created_ns);
}

std::optional<FileHeader> decode_header(std::span<const std::byte> body) {
  const auto oh = unpack_map(body);
  if (!oh) return std::nullopt;
  FileHeader h;
  bool magic = false, version = false, first = false, prev = false;
  for (const auto& kv : oh->get().via.map) {
    const auto key = as_str(kv.key);
    if (!key) return std::nullopt;
    const msgpack::object& v = kv.val;
    if (*key == "magic") {
      magic = as_str(v) == kMagic;
    } else if (*key == "version" && v.type == msgpack::type::POSITIVE_INTEGER) {
      version = v.via.u64 == kFormatVersion;
    } else if (*key == "first_seq" && v.type == msgpack::type::POSITIVE_INTEGER) {
      h.first_seq = v.via.u64;
      first = h.first_seq > 0;
    } else if (*key == "prev_hash" && v.type == msgpack::type::BIN &&
               v.via.bin.size == h.prev_hash.size()) {
      std::copy_n(reinterpret_cast<const std::uint8_t*>(v.via.bin.ptr), h.prev_hash.size(),
                  h.prev_hash.begin());
      prev = true;
    } else if (*key == "created_ns" && v.type == msgpack::type::POSITIVE_INTEGER) {
      h.created_ns = static_cast<std::int64_t>(v.via.u64);
    }
  }
  if (!magic || !version || !first || !prev) return std::nullopt;
  return h;
}

std::string file_name(std::uint64_t first_seq) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "audit-%020llu.log", static_cast<unsigned long long>(first_seq));
  return buf;
}

std::optional<std::uint64_t> parse_file_name(std::string_view name) {
  if (name.size() != kPrefix.size() + kSeqDigits + kSuffix.size() || !name.starts_with(kPrefix) ||
      !name.ends_with(kSuffix)) {
    return std::nullopt;
  }
  const std::string_view digits = name.substr(kPrefix.size(), kSeqDigits);
  std::uint64_t seq = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), seq);
  if (ec != std::errc() || end != digits.data() + digits.size() || seq == 0) return std::nullopt;
  return seq;
}

std::vector<LogFile> list_log_files(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) throw AuditError("audit: cannot read directory " + dir + ": " + ec.message());
  std::vector<LogFile> files;
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (const auto seq = parse_file_name(name)) files.push_back({*seq, name, it->path().string()});
  }
  if (ec) throw AuditError("audit: cannot read directory " + dir + ": " + ec.message());
  std::sort(files.begin(), files.end(),
            [](const LogFile& a, const LogFile& b) { return a.first_seq < b.first_seq; });
  return files;
}

}  // namespace shmsched::audit::detail
