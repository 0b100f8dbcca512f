// The Redis store: the same Registrar and Watcher over Redis instead of etcd (issue 17).
//
//   auto opts = discovery::RedisOptions::FromEnv();  // DISCOVERY_STORE=redis://host:6379
//   auto conn = discovery::ConnectRedis(opts);        // then Registrar/Watcher::Create as usual
//
// Data layout, scripts and guarantees: README "Redis backend".
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "discovery/etcd.h"

namespace discovery {

struct RedisOptions {
  // redis://[user:pass@]host:port[/db], or with Sentinel (HA):
  // redis+sentinel://[user:pass@]host:26379,host:26380/<master-name>[/db] - the sentinels are
  // asked in turn for the master, which must answer ROLE master; asked again after a failed
  // connection or a READONLY reply (README "Redis backend").
  std::string url = "redis://127.0.0.1:6379";
  // AUTH for the sentinels themselves (their requirepass / ACL user; empty: none). user:pass
  // in the URL are the master's.
  std::string sentinel_user;
  std::string sentinel_password;
  // Every key carries the hash tag {ns}: one namespace, one hash slot.
  std::string ns = "sd";
  absl::Duration connect_timeout = absl::Seconds(2);
  absl::Duration call_timeout = absl::Seconds(5);
  // Change log length (XADD MAXLEN ~): a watcher further behind resyncs.
  int64_t log_max_len = 100000;
  // Watchers run the reaper this often (registrars do not).
  absl::Duration reaper_period = absl::Milliseconds(500);
  // A reaper that finds no run for longer than this shifts every deadline by the gap
  // (Redis was down or frozen) instead of removing live servers.
  absl::Duration reaper_grace = absl::Seconds(3);

  // `url` from DISCOVERY_STORE when it holds a redis:// or redis+sentinel:// URL; defaults
  // otherwise.
  static RedisOptions FromEnv();
};

// kInvalidArgument for a malformed URL or namespace. Does not contact Redis: an unreachable
// Redis shows up as kUnavailable on the first call (Ping).
absl::StatusOr<std::shared_ptr<Connection>> ConnectRedis(const RedisOptions& options);

}  // namespace discovery
