#include "store_flag.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace discoveryd {

absl::Status ApplyStoreUrl(const StoreSources& sources, discovery::EtcdOptions* etcd) {
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
    return absl::UnimplementedError(
        "--store redis://: discoveryd does not run on Redis yet (its SSE epochs, REST reads and "
        "writes and the gateway-mode lease API use the etcd client directly); run discoveryd "
        "on etcd, and let processes reach Redis directly (DISCOVERY_STORE, discoveryctl "
        "--store)");
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--store \"", store, "\": expected etcd://host:port (redis:// is refused)"));
}

}  // namespace discoveryd
