// File: tools/discoveryd/store_flag.h
//
// discoveryd's --store URL (env DISCOVERY_STORE), the alternative to --endpoints that the
// library's ConnectTo and discoveryctl take:
//   etcd://host:port[,host:port]   etcd, exactly as --endpoints http://host:port[,...]
//   redis://[user:pass@]host:port[/db]          Redis (the library's Redis backend, namespace
//   redis+sentinel://host:port[,...]/master[/db]  "sd"): discover, REST reads and writes, SSE
//                                  with its epochs, dashboard, metrics, /healthz and the
//                                  gateway-mode lease API, exactly as on etcd (store_ops.h)
// No I/O (the Redis URL is parsed, not dialled). Thread-compatible.
#pragma once

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "discovery/etcd.h"
#include "discovery/redis.h"

namespace discoveryd {

// Where the store URL and the etcd endpoints came from: the command line wins over the
// environment, as for every flag.
struct StoreSources {
  std::string store_flag{};     // --store
  std::string store_env{};      // DISCOVERY_STORE
  bool endpoints_flag = false;  // --endpoints given
  bool endpoints_env = false;   // ETCD_ENDPOINTS set
};

// Applies the store URL that wins to `etcd` (etcd://) or `redis` (redis://, set only then);
// nothing when there is none (or --endpoints wins over DISCOVERY_STORE). kInvalidArgument when
// --store and --endpoints are both on the command line, or (neither there) DISCOVERY_STORE and
// ETCD_ENDPOINTS are both set, for another scheme or a malformed Redis URL.
absl::Status ApplyStoreUrl(const StoreSources& sources, discovery::EtcdOptions* etcd,
                           std::optional<discovery::RedisOptions>* redis);

}  // namespace discoveryd
