#include "auth.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace discoveryd {
namespace {

// 1 when equal, 0 otherwise; the time depends only on the lengths.
unsigned ConstantTimeEquals(std::string_view a, std::string_view b) {
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  size_t n = b.size();
  for (size_t i = 0; i < n; ++i) {
    unsigned char x = a.empty() ? 0 : static_cast<unsigned char>(a[i % a.size()]);
    diff |= static_cast<unsigned>(x ^ static_cast<unsigned char>(b[i]));
  }
  return diff == 0 ? 1u : 0u;
}

}  // namespace

absl::StatusOr<TokenStore> TokenStore::Parse(absl::string_view text, absl::string_view source) {
  TokenStore store;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    std::vector<absl::string_view> parts =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    Access access = Access::kReadWrite;
    if (parts.size() == 2) {
      if (parts[1] == "ro") {
        access = Access::kReadOnly;
      } else if (parts[1] != "rw") {
        return absl::InvalidArgumentError(absl::StrCat(
            source, ":", line_no, ": access must be rw or ro, got \"", parts[1], "\""));
      }
    } else if (parts.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ":", line_no, ": expected TOKEN [rw|ro]"));
    }
    store.Add(std::string(parts[0]), access);
  }
  return store;
}

absl::StatusOr<TokenStore> TokenStore::Load(const std::string& file, const std::string& env_token) {
  TokenStore store;
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read token file ", file));
    std::stringstream ss;
    ss << in.rdbuf();
    absl::StatusOr<TokenStore> parsed = Parse(ss.str(), file);
    if (!parsed.ok()) return parsed.status();
    store = *std::move(parsed);
    if (!store.enabled()) {
      return absl::InvalidArgumentError(absl::StrCat("token file ", file, " holds no token"));
    }
  }
  std::string env(absl::StripAsciiWhitespace(env_token));
  if (!env.empty()) store.Add(std::move(env), Access::kReadWrite);
  return store;
}

Access TokenStore::Check(std::string_view presented) const {
  Access best = Access::kNone;
  for (const Token& t : tokens_) {
    unsigned eq = ConstantTimeEquals(presented, t.value);
    if (eq != 0 && (best == Access::kNone || t.access == Access::kReadWrite)) best = t.access;
  }
  if (presented.empty()) return Access::kNone;
  return best;
}

}  // namespace discoveryd
