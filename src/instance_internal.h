// Internal: what the instance codec (instance_codec.cc) and the rest of instance.cc share.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "discovery/instance.h"

namespace discovery::instance_internal {

inline constexpr int kMaxNameLength = 64;
inline constexpr int kMinPort = 1;
inline constexpr int kMaxPort = 65535;
inline constexpr int kMinWeight = 0;
inline constexpr int kMaxWeight = 10000;

// Debian's abseil is built with its own absl::string_view (not std::string_view).
inline absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// A printable, bounded rendering of a user-supplied string for error messages.
inline std::string Quote(std::string_view s) {
  constexpr size_t kMaxShown = 80;
  std::string out = "\"";
  if (s.size() > kMaxShown) {
    absl::StrAppend(&out, absl::CHexEscape(AV(s.substr(0, kMaxShown))), "...");
  } else {
    absl::StrAppend(&out, absl::CHexEscape(AV(s)));
  }
  out += '"';
  return out;
}

// ---- the decoder's shared helpers (instance_codec.cc) ----

bool IsKnownField(std::string_view key);
// Dumps compactly; invalid UTF-8 is replaced instead of throwing.
std::string Dump(const nlohmann::json& j);
std::string FormatTimestamp(absl::Time t);
bool IsUnsetTime(absl::Time t);
std::string FormatLeaseId(int64_t id);
// The encoder's general path (nlohmann values dumped field by field): EncodeInstance gives the
// same bytes without building a value per field (instance_encode.cc).
std::string EncodeInstanceGeneral(const Instance& instance);

// The known top-level fields in the order EncodeInstance writes them.
inline constexpr std::array<std::string_view, 19> kKnownFields = {
    "instanceId", "type",        "group",     "hostname",  "publicIp", "privateIp", "ports",
    "status",     "customState", "version",   "region",    "zone",     "weight",    "meta",
    "systemInfo", "performance", "startedAt", "updatedAt", "leaseId"};
// A timestamp in the shape FormatTimestamp writes, read without absl::ParseTime (whose format
// interpreter was ~10 % of a decode): YYYY-MM-DDTHH:MM:SS, then optionally '.' and 1..9
// digits, then 'Z', every field in range (no second 60, no 30 February). False for anything
// else, which absl::ParseTime(RFC3339_full) then decides; where this gives a time, that gives
// the same one (instance_fast_paths_test checks both on every day of 400 years and on
// near misses).
bool ParseTimestampFast(std::string_view s, absl::Time* out);
// Reads an integral JSON number (integers, or floats with an integral value) in [lo, hi].
bool GetIntInRange(const nlohmann::json& j, int64_t lo, int64_t hi, int64_t* out);
// Parses 1..16 hex digits (either case, optional 0x prefix) as the bit pattern of an int64.
bool ParseLeaseHex(std::string_view s, int64_t* out);

// The decoder's two paths (DecodeInstance runs them after its size and nesting checks): the
// fast one (instance_decode_fast.cc) gives the instance or nullopt when the text is anything
// but a plainly valid instance; the general one (a document tree) gives the instance or the
// precise error. Where the fast one gives an instance the general one gives the same.
std::optional<Instance> DecodeInstanceFast(std::string_view json);
// The fast path into `*out` (a default-constructed Instance; partly filled when it fails).
bool DecodeInstanceFastInto(std::string_view json, Instance* out);
absl::StatusOr<Instance> DecodeInstanceGeneral(std::string_view json);
// DecodeInstance into `*out` (a default-constructed Instance; unspecified on error): the
// watcher decodes straight into the storage of the shared instance it publishes, instead of
// moving a decoded Instance (a dozen strings and maps) through optional, StatusOr and
// make_shared.
absl::Status DecodeInstanceInto(std::string_view json, size_t max_bytes, Instance* out);

}  // namespace discovery::instance_internal
