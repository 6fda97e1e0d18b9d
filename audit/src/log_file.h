// The files of an audit directory: their names, their order, and the header that opens each one.
//
// A file is named audit-<first seq, 20 digits>.log, so names sort in chain order. Its first frame
// is a header (magic, version, first_seq, prev_hash, created_ns) whose hash is chained from
// prev_hash: the anchor that lets the files left by retention be verified without those deleted.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shmsched/audit/format.h"

namespace shmsched::audit::detail {

inline constexpr std::string_view kMagic = "shmsched-audit";
inline constexpr std::uint32_t kFormatVersion = 1;

struct FileHeader {
  std::uint32_t version = kFormatVersion;
  std::uint64_t first_seq = 1;  // of the first record in this file
  Hash prev_hash{};             // the chain continues from here (zeros for the very first file)
  std::int64_t created_ns = 0;
};

void encode_header(const FileHeader& header, std::vector<std::byte>& out);
// The header of a body, or nullopt if it is not one (wrong magic, missing field, other version).
std::optional<FileHeader> decode_header(std::span<const std::byte> body);

struct LogFile {
  std::uint64_t first_seq = 0;  // from the name
  std::string name;
  std::string path;
};

std::string file_name(std::uint64_t first_seq);
std::optional<std::uint64_t> parse_file_name(std::string_view name);

// The log files of `dir` in chain order (other names are ignored). Throws AuditError if the
// directory cannot be read.
std::vector<LogFile> list_log_files(const std::string& dir);

}  // namespace shmsched::audit::detail
