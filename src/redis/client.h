// A small RAII wrapper over hiredis (Debian's 0.14: blocking API, no TLS, no Sentinel/Cluster):
// one connection with connect/command timeouts, AUTH [user] password, SELECT db, replies as
// typed values, EVALSHA with a reload on NOSCRIPT, and a reconnect on the next call after an
// I/O error that waits for util::Backoff (jittered, capped) so a dead Redis is not hammered.
// Errors are absl::Status: kUnavailable (cannot connect / I/O / timeout: retry), kInternal
// (Redis answered an error reply), kInvalidArgument (bad URL).
//
// Thread-safety: a Client serialises its calls with a mutex (one command at a time on the one
// socket); use one Client per thread that blocks (XREAD BLOCK).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "util/logging.h"

struct redisContext;

namespace discovery::redis {

// redis://[user:pass@]host:port[/db]   (user may be empty: redis://:pass@host:port)
struct Url {
  std::string host;
  int port = 6379;
  std::string user;
  std::string password;
  int db = 0;
};
absl::StatusOr<Url> ParseUrl(absl::string_view url);

struct Reply {
  enum class Type { kNil, kString, kInteger, kArray, kStatus };
  Type type = Type::kNil;
  std::string str;  // kString, kStatus
  int64_t integer = 0;
  std::vector<Reply> elements;

  bool nil() const { return type == Type::kNil; }
  // The integer of a kInteger, or a kString holding a decimal number; 0 otherwise.
  int64_t AsInt() const;
};

struct ClientOptions {
  Url url;
  absl::Duration connect_timeout = absl::Seconds(2);
  absl::Duration call_timeout = absl::Seconds(5);
};

class Client {
 public:
  explicit Client(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // One command; `timeout` (non-zero) overrides the call timeout for it (XREAD BLOCK).
  absl::StatusOr<Reply> Command(const std::vector<std::string>& argv,
                                absl::Duration timeout = absl::ZeroDuration());
  // EVALSHA of `script` (its SHA1 computed once), SCRIPT LOAD + retry on NOSCRIPT.
  absl::StatusOr<Reply> Eval(const std::string& script, const std::vector<std::string>& keys,
                             const std::vector<std::string>& args);

  uint64_t reconnects() const { return reconnects_; }

 private:
  absl::Status EnsureConnected();  // mu_ held
  absl::StatusOr<Reply> CommandLocked(const std::vector<std::string>& argv, absl::Duration timeout);
  void Drop();  // mu_ held

  const ClientOptions options_;
  std::mutex mu_;
  redisContext* ctx_ = nullptr;
  util::Backoff backoff_{absl::Milliseconds(100), absl::Seconds(5)};
  absl::Time next_attempt_ = absl::InfinitePast();
  absl::Status last_error_;
  uint64_t reconnects_ = 0;
  bool connected_once_ = false;
};

}  // namespace discovery::redis
