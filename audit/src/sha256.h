// The link of the hash chain: SHA-256(previous hash || body), through OpenSSL's EVP interface.
#pragma once

#include <cstddef>
#include <span>

#include "shmsched/audit/format.h"

namespace shmsched::audit::detail {

// Thread-safe: each thread keeps its own digest context.
Hash chain_hash(const Hash& previous, std::span<const std::byte> body);

}  // namespace shmsched::audit::detail
