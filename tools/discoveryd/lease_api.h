// File: tools/discoveryd/lease_api.h
//
// What a gateway-mode client (src/gateway/, issue 16) needs from discoveryd beyond the
// instance REST API: the lease-holder seam (src/lease_holder.h) and the writer seam
// (src/instance_writer.h) as HTTP calls, so that a Registrar over the gateway runs the same
// code as over etcd.
//
//   POST   /sd/v1/leases            {"ttlSeconds":N}        -> 201
//   {"leaseId":"<hex>","ttlSeconds":N} DELETE /sd/v1/leases/{hex}                              ->
//   200 {} | 404 when gone POST   /sd/v1/heartbeat         {"leases":["<hex>",..]} -> 200
//   {"gone":["<hex>",..]} POST   /sd/v1/writes/put-if-absent     {"key","value","leaseId"} ->
//   {"revision"} POST   /sd/v1/writes/put-if-unchanged  {"key","value","leaseId","expected"}
//          ->
//          {"written","revision","storeRevision","current":{"value","leaseId","modRevision"}|null}
//          (404 when the lease is gone)
//   POST   /sd/v1/writes/delete     {"key","lease":"<hex>"?,"modRevision":N?}
//          -> {"deleted","leaseId","storeRevision","current":{..}|null}
//
// Store-neutral: leases and their refreshes go through StoreOps (store_ops.h; etcd's lease calls
// or the Redis backend's scripts), keys through the backend's InstanceWriter.
// Heartbeats ride discoveryd's own lease holder (StoreOps::holder(): on etcd the Connection's
// one LeaseKeepAlive stream, on Redis one refresh script call per tick): the first heartbeat of
// a lease at this discoveryd refreshes it once (it proves the lease exists and learns its TTL)
// and hands it to the holder, which refreshes it every TTL/3 from then on; a lease not
// heartbeaten for a TTL is dropped from the holder (its client is gone: the lease runs out at
// most one TTL later). A lease the store reports expired is answered in "gone" (the client
// re-registers). Any discoveryd answers any heartbeat. All first sights of one call share one
// round trip (StoreOps::RefreshMany: one pipelined keepalive stream on etcd, one script call
// on Redis). At most Options::max_batch ids per call: more is 413 with the limit.
//
// Keys must be `<prefix><type>/<instanceId>` with valid names under discoveryd's own prefix, and
// values valid instances naming that key (kInvalidArgument otherwise): the write calls are not
// a raw key-value proxy. Token rules as the other writes: every call here is a POST/DELETE, so a
// read-only token gets 403.
//
// Thread-safety: thread-safe. Serve() blocks on the store: call it off the io threads.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "absl/time/time.h"
#include "auth.h"
#include "discovery/etcd.h"
#include "http_message.h"
#include "util/sync.h"

namespace discovery {
class InstanceWriter;
}
namespace spdlog {
class logger;
}

namespace discoveryd {

class StoreOps;

class LeaseApi {
 public:
  struct Options {
    std::string prefix = "/services/";
    int max_ttl_seconds = 300;
    // Lease ids per heartbeat call (413 above it). 2,000 hex ids are ~40 KB, under the server's
    // default 64 KiB body limit; the client sends at most gateway::kMaxHeartbeatBatch (1,000).
    int max_batch = 2000;
  };
  struct Stats {
    uint64_t heartbeat_calls = 0;
    uint64_t leases_refreshed = 0;  // leases named in heartbeat calls
    uint64_t leases_adopted = 0;    // first heartbeats here (one refresh + the holder's KeepAlive)
    uint64_t leases_gone = 0;       // answered in "gone"
    uint64_t leases_idled = 0;      // dropped from the keeper: no heartbeat for a TTL
    size_t tracked = 0;
  };

  LeaseApi(std::shared_ptr<discovery::Connection> connection, StoreOps* ops,
           const TokenStore* tokens, Options options, std::shared_ptr<spdlog::logger> logger);
  ~LeaseApi();

  // True (and the route template in `route`) for the paths served here.
  static bool Matches(const std::string& path, std::string* route);
  // Authenticates, validates and runs `req` (one of the paths Matches accepts).
  HttpResponse Serve(const HttpRequest& req);
  Stats stats();
  // Prometheus text of stats() (appended to /metrics).
  std::string RenderMetrics();

 private:
  struct Tracked {
    absl::Duration ttl;
    absl::Time last_heartbeat;  // util::MonoNow()
    bool gone = false;          // the keeper reported it lost
  };

  HttpResponse Grant(const HttpRequest& req);
  HttpResponse Revoke(const std::string& hex);
  HttpResponse Heartbeat(const HttpRequest& req);
  HttpResponse Write(const std::string& op, const HttpRequest& req);
  // Drops leases idle for longer than their TTL from the keeper (at most once a second).
  void Sweep(absl::Time now);
  void Untrack(int64_t lease);
  // Sweeps every second on the backend's loop, also when no heartbeat arrives at all.
  void ArmSweep();

  std::shared_ptr<discovery::Connection> connection_;
  StoreOps* ops_;
  const TokenStore* tokens_;
  Options options_;
  std::shared_ptr<spdlog::logger> logger_;
  std::unique_ptr<discovery::InstanceWriter> writer_;

  discovery::util::Mutex mu_;
  std::unordered_map<int64_t, Tracked> tracked_ ABSL_GUARDED_BY(mu_);
  absl::Time last_sweep_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  discovery::util::Mutex timer_mu_;
  bool stopping_ ABSL_GUARDED_BY(timer_mu_) = false;
  uint64_t timer_ ABSL_GUARDED_BY(timer_mu_) = 0;
  std::atomic<uint64_t> heartbeat_calls_{0}, refreshed_{0}, adopted_{0}, gone_{0}, idled_{0};
};

}  // namespace discoveryd
