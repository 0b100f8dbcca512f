// File: tools/discoveryd/store_ops.h
//
// What discoveryd needs from its store beyond the library's seams (src/store_backend.h: the
// watch source behind the cache, the InstanceWriter for every record write and read, the
// LeaseHolder that keeps gateway-mode leases alive). Two implementations, picked by the
// connection's backend (NewStoreOps):
//   etcd   store_ops_etcd.cc   LeaseGrant (the TTL etcd grants), one pipelined LeaseKeepAlive
//                              stream per first-sight batch, LeaseTimeToLive(keys) + revoke,
//                              the epoch record at an etcd key (Range, Txn, Watch)
//   redis  store_ops_redis.cc  the Redis backend's Lua scripts (src/redis/scripts.h): one
//                              refresh script call per batch, revoke-if-unused, the epoch
//                              record in {ns}:records (guarded script writes, polled)
//
// EpochStore is the storage of EpochKeeper's record (epoch.h): one small value with a
// modification stamp, written only when the stamp read is still current (0: absent), and a
// change feed. The keeper's agree/replace protocol is the same on both stores.
//
// Thread-safety: thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "discovery/etcd.h"

namespace discovery {
class LeaseHolder;
}

namespace discoveryd {

class EpochStore {
 public:
  struct Record {
    bool exists = false;
    std::string value;
    int64_t mod_revision = 0;    // the record's modification stamp (when it exists)
    int64_t store_revision = 0;  // the store's revision when read
  };
  struct Listener {
    std::function<void(const std::string& value)> on_value;  // a value written (maybe ours)
    // The feed ended (the watch id is void): kFailedPrecondition / kDataLoss when the store's
    // history was replaced (etcd compacted or another cluster; the Redis record vanished).
    std::function<void(const absl::Status& why)> on_broken;
  };
  virtual ~EpochStore() = default;
  virtual const std::string& name() const = 0;  // for logs: the key
  // Failed reads of a polled change feed (Redis), each retried with backoff; 0 for etcd.
  virtual uint64_t feed_failures() const { return 0; }
  virtual absl::StatusOr<Record> Read(absl::Duration timeout) = 0;
  // Writes `value` when the record is still as `seen` (absent when !seen.exists). True when
  // written (`store_revision` set), false on a conflict.
  virtual absl::StatusOr<bool> Write(const Record& seen, const std::string& value,
                                     absl::Duration timeout, int64_t* store_revision) = 0;
  // Changes from `from_revision` on; an id for Unwatch. No listener call after Unwatch returns.
  virtual uint64_t Watch(int64_t from_revision, Listener listener) = 0;
  virtual void Unwatch(uint64_t id) = 0;
};

class StoreOps {
 public:
  struct Granted {
    int64_t id = 0;
    int64_t ttl_seconds = 0;  // as the store granted it
  };
  virtual ~StoreOps() = default;

  virtual absl::StatusOr<Granted> Grant(int64_t ttl_seconds) = 0;
  // Refreshes one lease: its TTL in seconds; kNotFound when it is gone.
  virtual absl::StatusOr<int64_t> KeepAliveOnce(int64_t lease) = 0;
  // Refreshes every lease of `ids` once, in one round trip: id -> TTL seconds (<= 0: gone). An
  // id without an answer is absent and the status says why.
  virtual absl::Status RefreshMany(const std::vector<int64_t>& ids, absl::Duration timeout,
                                   std::unordered_map<int64_t, int64_t>* ttls) = 0;
  // kNotFound when the lease is gone already.
  virtual absl::Status Revoke(int64_t lease) = 0;
  // Revokes `lease` unless keys are still attached to it (a lease shared by the instances of
  // one process); true when revoked.
  virtual bool RevokeIfUnused(int64_t lease) = 0;
  // Keeps gateway-mode leases alive while they are heartbeaten (the backend's LeaseHolder).
  virtual discovery::LeaseHolder& holder() = 0;
  virtual std::unique_ptr<EpochStore> NewEpochStore(const std::string& key) = 0;
};

std::unique_ptr<StoreOps> NewEtcdStoreOps(const std::shared_ptr<discovery::Connection>& conn);
std::unique_ptr<StoreOps> NewRedisStoreOps(const std::shared_ptr<discovery::Connection>& conn);
// By the connection's backend; kUnimplemented for a backend without one (gateway mode).
absl::StatusOr<std::unique_ptr<StoreOps>> NewStoreOps(
    const std::shared_ptr<discovery::Connection>& conn);

}  // namespace discoveryd
