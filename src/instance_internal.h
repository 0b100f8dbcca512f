// Internal: what the instance codec (instance_codec.cc) and the rest of instance.cc share.
#pragma once

#include <string>
#include <string_view>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

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

}  // namespace discovery::instance_internal
