#include "store_flag.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace discoveryd {

absl::Status ApplyStoreUrl(const std::string& store, bool endpoints_given,
                           discovery::EtcdOptions* etcd) {
  if (store.empty()) return absl::OkStatus();
  if (endpoints_given) {
    return absl::InvalidArgumentError(
        "--endpoints (ETCD_ENDPOINTS) and --store (DISCOVERY_STORE) are alternatives: give one");
  }
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
