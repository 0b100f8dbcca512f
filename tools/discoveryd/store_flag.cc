#include "store_flag.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "discovery/redis.h"
#include "redis/client.h"

namespace discoveryd {

absl::Status ApplyStoreUrl(const StoreSources& sources, discovery::EtcdOptions* etcd,
                           std::optional<discovery::RedisOptions>* redis) {
  constexpr const char* kAlternatives =
      "--endpoints (ETCD_ENDPOINTS) and --store (DISCOVERY_STORE) are alternatives: give one";
  std::string store = sources.store_flag;
  if (!store.empty() && sources.endpoints_flag) {
    return absl::InvalidArgumentError(absl::StrCat(kAlternatives, " (both on the command line)"));
  }
  if (store.empty() && !sources.endpoints_flag) {
    store = sources.store_env;  // the command line wins over the environment
    if (!store.empty() && sources.endpoints_env) {
      return absl::InvalidArgumentError(absl::StrCat(kAlternatives, " (both in the environment)"));
    }
  }
  if (store.empty()) return absl::OkStatus();
  if (absl::StartsWith(store, "etcd://")) {
    etcd->endpoints = discovery::SplitEndpoints(store.substr(7));
    for (std::string& e : etcd->endpoints) e = absl::StrCat("http://", e);
    if (etcd->endpoints.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--store \"", store, "\": no etcd endpoint"));
    }
    return absl::OkStatus();
  }
  if (absl::StartsWith(store, "redis://") || absl::StartsWith(store, "redis+sentinel://")) {
    discovery::RedisOptions options;  // namespace and timeouts: the library's defaults
    options.url = store;
    // The URL is checked here (a usage error, exit 2), the store is reached only later.
    if (auto url = discovery::redis::ParseUrl(store); !url.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--store \"", store, "\": ", url.status().message()));
    }
    *redis = std::move(options);
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "--store \"", store,
      "\": expected etcd://host:port, redis://host:port[/db] or redis+sentinel://..."));
}

}  // namespace discoveryd
