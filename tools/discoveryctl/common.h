// discoveryctl: what every command shares — the global flags, the connection to the store, the
// mapping from absl::Status to the tool's exit codes, and the key layout.
//
// Exit codes: 0 ok, 1 usage or invalid argument, 2 not found, 3 etcd unreachable or auth
// failed. Errors are reported as one line on stderr: "discoveryctl: <message>".
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "discovery/etcd.h"

namespace spdlog {
class logger;
}

namespace discoveryctl {

inline constexpr int kExitOk = 0;
inline constexpr int kExitUsage = 1;
inline constexpr int kExitNotFound = 2;
inline constexpr int kExitUnavailable = 3;

// Flags that apply to every command (each also read from the environment).
struct GlobalOptions {
  std::string endpoints = "http://127.0.0.1:2379";  // ETCD_ENDPOINTS, comma separated
  bool endpoints_given = false;                     // chosen explicitly (ResolveTransport)
  // The other transports (each instead of --endpoints): discoveryd URLs, comma separated
  // (DISCOVERY_GATEWAY, token DISCOVERY_API_TOKEN), or a store URL redis://... / etcd://...
  // (DISCOVERY_STORE).
  std::string gateway{};
  std::string api_token{};
  std::string store{};
  std::string prefix = "/services/";  // DISCOVERY_PREFIX
  std::string user{};                 // ETCD_USER
  std::string password{};             // ETCD_PASSWORD
  std::string ca_file{};              // ETCD_CACERT
  std::string cert_file{};            // ETCD_CERT
  std::string key_file{};             // ETCD_KEY
  std::string output{};               // "table" | "json" | "" (command default)
  double timeout_seconds = 5;         // bounds every etcd call

  absl::Duration timeout() const;
};

// Picks the transport: the one given on the command line (`*_flag`, nullopt when absent) wins
// over the environment (ETCD_ENDPOINTS, DISCOVERY_GATEWAY, DISCOVERY_STORE); with none on the
// command line, the one set in the environment; with neither, etcd's default endpoints. Sets
// endpoints / endpoints_given / gateway / store. kInvalidArgument when two are given on the
// command line, or (none there) two are set in the environment.
absl::Status ResolveTransport(const std::optional<std::string>& endpoints_flag,
                              const std::optional<std::string>& gateway_flag,
                              const std::optional<std::string>& store_flag, GlobalOptions* options);

// Checks the global flags (prefix ends with '/', positive timeout, at most one of --endpoints,
// --gateway, --store). kInvalidArgument.
absl::Status ValidateGlobalOptions(const GlobalOptions& options);

// The stderr logger handed to the library ("discoveryctl"). Level from DISCOVERY_LOG_LEVEL,
// else `default_level` ("info", "warn", ...).
std::shared_ptr<spdlog::logger> ToolLogger(std::string_view default_level);

// EtcdOptions from the global flags (call_timeout = --timeout).
discovery::EtcdOptions MakeEtcdOptions(const GlobalOptions& options,
                                       std::shared_ptr<spdlog::logger> logger);

// Debian's abseil has its own absl::string_view; converts for absl::StrCat and friends.
inline absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// The connection the flags name: etcd (--endpoints, the default), discoveryd (--gateway) or
// the store URL (--store redis://... or etcd://...). Validates the global flags first.
absl::StatusOr<std::shared_ptr<discovery::Connection>> ConnectStore(
    const GlobalOptions& options, std::shared_ptr<spdlog::logger> logger);

// How errors name the store: "etcd" / "redis" / "discoveryd gateway", and where it is (the
// endpoints, the gateway URLs, the redis host:port/db: never the password of a redis:// URL).
std::string StoreKind(const GlobalOptions& options);
std::string StoreWhere(const GlobalOptions& options);

// Exit code for a status: see the table at the top of this file.
int ExitCodeFor(const absl::Status& status);

// Prints "discoveryctl: <message>" on stderr and returns ExitCodeFor(status).
int Fail(const absl::Status& status);

// Same, naming the store (StoreKind at StoreWhere) when the status says it is unreachable or
// refused access.
int FailEtcd(const GlobalOptions& options, const absl::Status& status);

// Prints "discoveryctl: <message>" on stderr (warnings that do not change the exit code).
void Warn(absl::string_view message);

// "<prefix><type>/<id>".
std::string InstanceKey(std::string_view prefix, std::string_view type, std::string_view id);

// The smallest key greater than every key starting with `prefix` (etcd range_end).
std::string PrefixEnd(std::string_view prefix);

// Validates a TYPE / instance id given on the command line (kInvalidArgument).
absl::Status ValidateTypeAndId(std::string_view type, std::string_view id);

}  // namespace discoveryctl
