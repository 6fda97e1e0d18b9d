// libFuzzer target for the ingress request decoder (outside input from any local process).
// Any input must yield a request or a DecodeError; never a crash, a hang or a sanitizer report.
// Replies built for the decoded request are exercised too.
#include <cstddef>
#include <cstdint>
#include <span>
#include <variant>

#include "shmsched/ipc/protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace shmsched::ipc::protocol;
  const auto result =
      decode_request(std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size));
  if (const auto* err = std::get_if<DecodeError>(&result)) {
    (void)error_reply("invalid", err->message);
    return 0;
  }
  const auto& req = std::get<Request>(result);
  if (const auto* s = std::get_if<SubmitOp>(&req)) {
    (void)MapBuilder()
        .str("user_id", s->user_id)
        .bin("payload", s->payload)
        .strings("required_capabilities", s->required_capabilities)
        .string_map("metadata", s->metadata)
        .finish();
  }
  return 0;
}
