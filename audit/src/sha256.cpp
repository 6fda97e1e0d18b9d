// SHA-256 with EVP. The digest is fetched once (OpenSSL 3 otherwise looks it up on every init)
// and each thread reuses one context, so a link costs the hashing and nothing else.
#include "sha256.h"

#include <openssl/evp.h>

#include <memory>

namespace shmsched::audit {

namespace {

struct MdFree {
  void operator()(EVP_MD* md) const {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    EVP_MD_free(md);
#else
    (void)md;
#endif
  }
};
struct CtxFree {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

const EVP_MD* sha256() {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
  static const std::unique_ptr<EVP_MD, MdFree> md(EVP_MD_fetch(nullptr, "SHA256", nullptr));
  if (!md) throw AuditError("audit: OpenSSL has no SHA-256");
  return md.get();
#else
  return EVP_sha256();
#endif
}

}  // namespace

Hash detail::chain_hash(const Hash& previous, std::span<const std::byte> body) {
  thread_local const std::unique_ptr<EVP_MD_CTX, CtxFree> ctx(EVP_MD_CTX_new());
  Hash out{};
  unsigned int n = 0;
  if (!ctx || EVP_DigestInit_ex(ctx.get(), sha256(), nullptr) != 1 ||
      EVP_DigestUpdate(ctx.get(), previous.data(), previous.size()) != 1 ||
      EVP_DigestUpdate(ctx.get(), body.data(), body.size()) != 1 ||
      EVP_DigestFinal_ex(ctx.get(), out.data(), &n) != 1 || n != out.size()) {
    throw AuditError("audit: SHA-256 failed in OpenSSL");
  }
  return out;
}

std::string to_hex(const Hash& hash) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s;
  s.reserve(hash.size() * 2);
  for (const std::uint8_t b : hash) {
    s.push_back(kDigits[b >> 4]);
    s.push_back(kDigits[b & 15]);
  }
  return s;
}

}  // namespace shmsched::audit
