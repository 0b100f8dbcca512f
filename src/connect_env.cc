// ConnectFromEnv: the one switch between the three transports, by configuration only.
#include <cstdlib>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "discovery/etcd.h"
#include "discovery/gateway_client.h"
#include "discovery/redis.h"

namespace discovery {

absl::StatusOr<std::shared_ptr<Connection>> ConnectTo(const std::string& gateway,
                                                      const std::string& store) {
  if (!gateway.empty() && !store.empty()) {
    return absl::InvalidArgumentError(
        "both a gateway and a store are configured (DISCOVERY_GATEWAY / DISCOVERY_STORE): "
        "choose one");
  }
  if (!gateway.empty()) {
    GatewayClientOptions o = GatewayClientOptions::FromEnv();
    o.urls = SplitEndpoints(gateway);
    return ConnectGateway(o);
  }
  if (absl::StartsWith(store, "redis://") || absl::StartsWith(store, "redis+sentinel://")) {
    RedisOptions o = RedisOptions::FromEnv();
    o.url = store;
    return ConnectRedis(o);
  }
  EtcdOptions o = EtcdOptions::FromEnv();
  if (absl::StartsWith(store, "etcd://")) {
    o.endpoints = SplitEndpoints(absl::StrCat("http://", store.substr(7)));
  } else if (!store.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("store '", store,
                     "': expected redis://host:port[/db], "
                     "redis+sentinel://host:port,.../<master-name>[/db] or etcd://host:port"));
  }
  return Connection::Create(o);
}

absl::StatusOr<std::shared_ptr<Connection>> ConnectFromEnv() {
  auto env = [](const char* name) {
    const char* v = std::getenv(name);
    return v == nullptr ? std::string() : std::string(v);
  };
  return ConnectTo(env("DISCOVERY_GATEWAY"), env("DISCOVERY_STORE"));
}

}  // namespace discovery
