// File: tools/discoveryd/store_flag.h
//
// discoveryd's --store URL (env DISCOVERY_STORE), the alternative to --endpoints that the
// library's ConnectTo and discoveryctl take:
//   etcd://host:port[,host:port]   etcd, exactly as --endpoints http://host:port[,...]
//   redis://...                    refused at start-up (kUnimplemented, with the reason):
//                                  discoveryd still talks to etcd directly in three places —
//                                  the SSE epoch (epoch.cc: etcd cluster id + revision, kept in
//                                  an etcd key), the REST reads and writes (api.cc: Range +
//                                  Txn on the etcd client) and the lease API behind gateway-mode
//                                  clients (lease_api.cc: the etcd LeaseKeepAlive keeper). Run
//                                  it half on Redis and it would serve wrong epochs and 500s, so
//                                  it does not start. Processes reach Redis directly
//                                  (ConnectRedis, DISCOVERY_STORE, discoveryctl --store).
// Pure: no I/O. Thread-compatible.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "discovery/etcd.h"

namespace discoveryd {

// Applies `store` to `etcd`. Empty `store`: nothing. kInvalidArgument when `endpoints_given`
// (--endpoints or ETCD_ENDPOINTS) and `store` are both set, or for another scheme;
// kUnimplemented for redis://.
absl::Status ApplyStoreUrl(const std::string& store, bool endpoints_given,
                           discovery::EtcdOptions* etcd);

}  // namespace discoveryd
