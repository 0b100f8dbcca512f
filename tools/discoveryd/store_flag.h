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

// Where the store URL and the etcd endpoints came from: the command line wins over the
// environment, as for every flag.
struct StoreSources {
  std::string store_flag{};     // --store
  std::string store_env{};      // DISCOVERY_STORE
  bool endpoints_flag = false;  // --endpoints given
  bool endpoints_env = false;   // ETCD_ENDPOINTS set
};

// Applies the store URL that wins to `etcd`; nothing when there is none (or --endpoints wins
// over DISCOVERY_STORE). kInvalidArgument when --store and --endpoints are both on the command
// line, or (neither there) DISCOVERY_STORE and ETCD_ENDPOINTS are both set, or for another
// scheme; kUnimplemented for redis://.
absl::Status ApplyStoreUrl(const StoreSources& sources, discovery::EtcdOptions* etcd);

}  // namespace discoveryd
