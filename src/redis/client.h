// A small RAII wrapper over hiredis (Debian's 0.14: blocking API, no TLS, no Sentinel/Cluster):
// one connection with connect/command timeouts, AUTH [user] password, SELECT db, replies as
// typed values, EVALSHA with a reload on NOSCRIPT, and a reconnect on the next call after an
// I/O error that waits for util::Backoff (jittered, capped) so a dead Redis is not hammered.
// Sentinel (done here, hiredis 0.14 has none): with a redis+sentinel:// URL every connect asks
// the sentinels in turn for the master (SENTINEL get-master-addr-by-name), connects to it and
// verifies it with ROLE (must say master); a READONLY reply (we reached a demoted master)
// drops the connection, so the next call asks the sentinels again.
// Redis Cluster: a MOVED reply makes the client connect to the named node from then on and
// retry the command there once (every key of a namespace is in one slot, so one owner).
// Errors are absl::Status: kUnavailable (cannot connect / I/O / timeout: retry), kInternal
// (Redis answered an error reply), kInvalidArgument (bad URL).
//
// Thread-safety: a Client serialises its calls with a mutex (one command at a time on the one
// socket); use one Client per thread that blocks (XREAD BLOCK).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "util/logging.h"

struct redisContext;

namespace discovery::redis {

// redis://[user:pass@]host:port[/db]   (user may be empty: redis://:pass@host:port)
// redis+sentinel://[user:pass@]host:port[,host:port...]/<master-name>[/db]  (port 26379 by
// default; user:pass are the master's, the sentinels' own password is ClientOptions')
struct Url {
  std::string host;  // (sentinel: empty, found by asking the sentinels)
  int port = 6379;
  std::string user;
  std::string password;
  int db = 0;
  std::vector<std::pair<std::string, int>> sentinels;  // non-empty: Sentinel mode
  std::string master_name;
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
  std::string sentinel_user;  // AUTH for the sentinels (empty: none)
  std::string sentinel_password;
};

// Process-wide counters of the Sentinel/Cluster client (GetSentinelCounters()).
struct SentinelCounters {
  uint64_t lookups = 0;          // SENTINEL get-master-addr-by-name asked
  uint64_t lookup_failures = 0;  // every sentinel failed or none knew the master
  uint64_t not_master = 0;       // the address named did not say ROLE master (failover running)
  uint64_t readonly = 0;         // READONLY replies: connection dropped, sentinels asked again
  uint64_t master_changes = 0;   // a connect found another master address than the last one
  uint64_t moved = 0;            // Redis Cluster MOVED replies followed to the slot's owner
};
SentinelCounters GetSentinelCounters();

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

  // Successful connects after the first (thread-safe).
  uint64_t reconnects() const { return reconnects_.load(); }
  // host:port of the server of the current connection ("" when none).
  std::string address() const;

 private:
  absl::Status EnsureConnected();  // mu_ held
  // Sentinel mode: the master's address from the first sentinel that knows it.
  absl::StatusOr<std::pair<std::string, int>> AskSentinels();
  absl::Status Connect(const std::string& host, int port);  // mu_ held, ctx_ null
  absl::StatusOr<Reply> CommandLocked(const std::vector<std::string>& argv, absl::Duration timeout);
  void Drop();  // mu_ held

  const ClientOptions options_;
  mutable std::mutex mu_;
  redisContext* ctx_ = nullptr;
  std::string host_;  // of ctx_
  int port_ = 0;
  size_t next_sentinel_ = 0;   // the one that answered last is asked first
  std::string redirect_host_;  // Cluster: the slot owner named by the last MOVED
  int redirect_port_ = 0;
  bool redirected_ = false;  // the last CommandLocked was answered MOVED or READONLY
  util::Backoff backoff_{absl::Milliseconds(100), absl::Seconds(5)};
  absl::Time next_attempt_ = absl::InfinitePast();
  absl::Status last_error_;
  std::atomic<uint64_t> reconnects_{0};
  bool connected_once_ = false;
};

}  // namespace discovery::redis
