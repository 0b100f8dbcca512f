#include "common.h"

#include <cstdlib>
#include <iostream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "discovery/gateway_client.h"
#include "discovery/instance.h"
#include "discovery/redis.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace discoveryctl {

absl::Duration GlobalOptions::timeout() const {
  return absl::Milliseconds(static_cast<int64_t>(timeout_seconds * 1000));
}

absl::Status ResolveTransport(const std::optional<std::string>& endpoints_flag,
                              const std::optional<std::string>& gateway_flag,
                              const std::optional<std::string>& store_flag,
                              GlobalOptions* options) {
  constexpr const char* kAlternatives =
      "--endpoints (ETCD_ENDPOINTS), --gateway (DISCOVERY_GATEWAY) and --store "
      "(DISCOVERY_STORE) are alternatives: give one of them";
  auto env = [](const char* name) -> std::optional<std::string> {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') return std::nullopt;
    return std::string(v);
  };
  std::optional<std::string> endpoints = endpoints_flag, gateway = gateway_flag, store = store_flag;
  auto count = [&] { return (endpoints ? 1 : 0) + (gateway ? 1 : 0) + (store ? 1 : 0); };
  if (count() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(kAlternatives, " (two on the command line)"));
  }
  if (count() == 0) {  // the command line wins over the environment
    endpoints = env("ETCD_ENDPOINTS");
    gateway = env("DISCOVERY_GATEWAY");
    store = env("DISCOVERY_STORE");
    if (count() > 1) {
      return absl::InvalidArgumentError(absl::StrCat(kAlternatives, " (two in the environment)"));
    }
  }
  options->endpoints_given = endpoints.has_value();
  if (endpoints) options->endpoints = *endpoints;
  options->gateway = gateway.value_or("");
  options->store = store.value_or("");
  return absl::OkStatus();
}

absl::Status ValidateGlobalOptions(const GlobalOptions& options) {
  if (options.prefix.empty() || options.prefix.back() != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("--prefix \"", options.prefix, "\": must end with '/'"));
  }
  if (!(options.timeout_seconds >= 0.001) || options.timeout_seconds > 3600) {
    return absl::InvalidArgumentError("--timeout: must be between 0.001 and 3600 seconds");
  }
  const int transports = (options.endpoints_given ? 1 : 0) + (options.gateway.empty() ? 0 : 1) +
                         (options.store.empty() ? 0 : 1);
  if (transports > 1) {
    return absl::InvalidArgumentError(
        "--endpoints (ETCD_ENDPOINTS), --gateway (DISCOVERY_GATEWAY) and --store "
        "(DISCOVERY_STORE) are alternatives: give one of them");
  }
  if (!options.gateway.empty()) {
    if (discovery::SplitEndpoints(options.gateway).empty()) {
      return absl::InvalidArgumentError("--gateway: no discoveryd URL given");
    }
    return absl::OkStatus();
  }
  if (!options.store.empty()) {
    if (!absl::StartsWith(options.store, "redis://") &&
        !absl::StartsWith(options.store, "etcd://")) {
      return absl::InvalidArgumentError(
          absl::StrCat("--store \"", options.store,
                       "\": expected redis://[user:pass@]host:port[/db] or etcd://host:port"));
    }
    return absl::OkStatus();
  }
  if (discovery::SplitEndpoints(options.endpoints).empty()) {
    return absl::InvalidArgumentError("--endpoints: no etcd endpoint given");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<discovery::Connection>> ConnectStore(
    const GlobalOptions& options, std::shared_ptr<spdlog::logger> logger) {
  if (absl::Status s = ValidateGlobalOptions(options); !s.ok()) return s;
  if (!options.gateway.empty()) {
    discovery::GatewayClientOptions gw;
    gw.urls = discovery::SplitEndpoints(options.gateway);
    gw.api_token = options.api_token;
    gw.call_timeout = options.timeout();
    gw.prefix = options.prefix;
    gw.logger = std::move(logger);
    return discovery::ConnectGateway(gw);
  }
  if (absl::StartsWith(options.store, "redis://")) {
    discovery::RedisOptions redis;
    redis.url = options.store;
    redis.connect_timeout = options.timeout();
    redis.call_timeout = options.timeout();
    return discovery::ConnectRedis(redis);
  }
  discovery::EtcdOptions etcd = MakeEtcdOptions(options, std::move(logger));
  if (absl::StartsWith(options.store, "etcd://")) {
    etcd.endpoints = discovery::SplitEndpoints(options.store.substr(7));
    for (std::string& e : etcd.endpoints) e = absl::StrCat("http://", e);
  }
  return discovery::Connection::Create(etcd);
}

std::string StoreKind(const GlobalOptions& options) {
  if (!options.gateway.empty()) return "discoveryd gateway";
  if (absl::StartsWith(options.store, "redis://")) return "redis";
  return "etcd";
}

std::string StoreWhere(const GlobalOptions& options) {
  if (!options.gateway.empty()) return options.gateway;
  if (absl::StartsWith(options.store, "redis://")) {
    std::string rest = options.store.substr(8);
    // Never the password of redis://user:pass@host.
    if (size_t at = rest.rfind('@'); at != std::string::npos) rest = rest.substr(at + 1);
    return rest;
  }
  if (absl::StartsWith(options.store, "etcd://")) return options.store;
  return options.endpoints;
}

std::shared_ptr<spdlog::logger> ToolLogger(std::string_view default_level) {
  auto logger = std::make_shared<spdlog::logger>("discoveryctl",
                                                 std::make_shared<spdlog::sinks::stderr_sink_mt>());
  const char* env = std::getenv("DISCOVERY_LOG_LEVEL");
  std::string level = env != nullptr && *env != '\0' ? env : std::string(default_level);
  logger->set_level(spdlog::level::from_str(level));
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  return logger;
}

discovery::EtcdOptions MakeEtcdOptions(const GlobalOptions& options,
                                       std::shared_ptr<spdlog::logger> logger) {
  discovery::EtcdOptions etcd;
  etcd.endpoints = discovery::SplitEndpoints(options.endpoints);
  etcd.user = options.user;
  etcd.password = options.password;
  etcd.ca_file = options.ca_file;
  etcd.cert_file = options.cert_file;
  etcd.key_file = options.key_file;
  etcd.call_timeout = options.timeout();
  etcd.logger = std::move(logger);
  return etcd;
}

int ExitCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return kExitOk;
    case absl::StatusCode::kNotFound:
      return kExitNotFound;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
      return kExitUnavailable;
    default:
      return kExitUsage;
  }
}

int Fail(const absl::Status& status) {
  Warn(status.message());
  return ExitCodeFor(status);
}

int FailEtcd(const GlobalOptions& options, const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return Fail(
          absl::Status(status.code(), absl::StrCat(StoreKind(options), " unreachable at ",
                                                   StoreWhere(options), ": ", status.message())));
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
      return Fail(
          absl::Status(status.code(), absl::StrCat(StoreKind(options), " at ", StoreWhere(options),
                                                   " refused access: ", status.message())));
    default:
      return Fail(status);
  }
}

void Warn(absl::string_view message) { std::cerr << "discoveryctl: " << message << std::endl; }

std::string InstanceKey(std::string_view prefix, std::string_view type, std::string_view id) {
  std::string key;
  key.reserve(prefix.size() + type.size() + id.size() + 1);
  key.append(prefix).append(type).append("/").append(id);
  return key;
}

std::string PrefixEnd(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    unsigned char c = static_cast<unsigned char>(end.back());
    if (c < 0xff) {
      end.back() = static_cast<char>(c + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // the whole keyspace
}

absl::Status ValidateTypeAndId(std::string_view type, std::string_view id) {
  if (absl::Status s = discovery::ValidateName("type", type); !s.ok()) return s;
  return discovery::ValidateName("instance id", id);
}

}  // namespace discoveryctl
