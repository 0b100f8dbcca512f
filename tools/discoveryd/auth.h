// File: tools/discoveryd/auth.h
//
// API tokens for discoveryd's X-API-Token header. A token file holds one token per line,
// optionally followed by its access level (`rw`, the default, or `ro`); blank lines and lines
// starting with '#' are ignored:
//
//   # ops team
//   s3cr3t-admin rw
//   dashboard-viewer ro
//
//   auto tokens = TokenStore::Load("/etc/discoveryd/tokens", std::getenv("DISCOVERY_API_TOKEN"));
//   if (tokens->enabled() && tokens->Check(header) == Access::kNone) { /* 401 */ }
//
// Thread-safety: immutable after Load(); Check() may be called from any thread.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace discoveryd {

enum class Access { kNone, kReadOnly, kReadWrite };

class TokenStore {
 public:
  // Reads `file` (when not empty) and adds `env_token` (when not empty) as a rw token.
  // kInvalidArgument for an unreadable file or a line with an unknown access level.
  static absl::StatusOr<TokenStore> Load(const std::string& file, const std::string& env_token);
  // Parses the file format above (`source` names it in errors).
  static absl::StatusOr<TokenStore> Parse(absl::string_view text, absl::string_view source);

  // True when at least one token is configured (then every API call needs one).
  bool enabled() const { return !tokens_.empty(); }
  size_t size() const { return tokens_.size(); }
  // The access `presented` grants. Compares against every token in constant time with respect
  // to the tokens' contents (no early exit).
  Access Check(std::string_view presented) const;

  void Add(std::string token, Access access) { tokens_.push_back({std::move(token), access}); }

 private:
  struct Token {
    std::string value;
    Access access;
  };
  std::vector<Token> tokens_;
};

}  // namespace discoveryd
