// libFuzzer target for the instance JSON decoder: whatever a hostile writer puts under the
// prefix, DecodeInstance must return (never crash, hang or overflow the stack), and what it
// accepts must survive an encode/decode round trip unchanged. The codec's fast and general paths
// must agree: where the fast decoder (src/instance_decode_fast.cc) decodes, the general one
// decodes the same instance, and the fast encoder (src/instance_encode.cc) writes the same bytes
// as the general one.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "discovery/instance.h"
#include "instance_internal.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  if (auto fast = discovery::instance_internal::DecodeInstanceFast(input)) {
    // (Accepted by the fast path means nested within the limit: the general path may recurse.)
    auto general = discovery::instance_internal::DecodeInstanceGeneral(input);
    if (!general.ok()) std::abort();  // the fast path accepted what is not an instance
    if (discovery::EncodeInstance(*fast) != discovery::EncodeInstance(*general)) std::abort();
  }
  auto decoded = discovery::DecodeInstance(input);
  if (!decoded.ok()) return 0;
  std::string once = discovery::EncodeInstance(*decoded);
  if (once != discovery::instance_internal::EncodeInstanceGeneral(*decoded)) std::abort();
  auto again = discovery::DecodeInstance(once, once.size() + 1);
  if (!again.ok()) std::abort();  // we produced something we cannot read back
  if (discovery::EncodeInstance(*again) != once) std::abort();  // round trip not stable
  (void)discovery::ValidateInstance(*decoded);
  return 0;
}
