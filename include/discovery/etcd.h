// File: discovery/etcd.h
//
// How to reach etcd, and a shared connection to it. A `Connection` owns one gRPC channel per
// endpoint, fails over between them, and runs ONE LeaseKeepAlive stream and ONE Watch stream
// for everything that uses it. Registrars and watchers created from the same `Connection`
// share those streams; create one per process.
//
//   discovery::EtcdOptions etcd = discovery::EtcdOptions::FromEnv();  // ETCD_ENDPOINTS, ...
//   absl::StatusOr<std::shared_ptr<discovery::Connection>> conn =
//       discovery::Connection::Create(etcd);
//   if (!conn.ok()) { /* kInvalidArgument: bad endpoint URL or unreadable TLS file */ }
//
// Thread-safety: `Connection` is thread-safe. It is kept alive by every object created
// from it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace spdlog {
class logger;
}

namespace discovery {

namespace etcd {
class Client;
}
class StoreBackend;

struct EtcdOptions {
  // `http://host:port` or `https://host:port` (TLS). Plain `host:port` means http.
  std::vector<std::string> endpoints = {"http://127.0.0.1:2379"};
  // etcd user/password auth; empty user = no auth. The token is refreshed when it expires.
  std::string user{};
  std::string password{};
  // TLS (used for https:// endpoints): CA bundle, and a client cert/key for mTLS.
  std::string ca_file{};
  std::string cert_file{};
  std::string key_file{};
  // Deadline of every unary call, across all failover attempts.
  absl::Duration call_timeout = absl::Seconds(5);
  // HTTP/2 keepalive: while a call or stream is open (a Watch, the lease keepalive stream), a
  // ping this often finds a member that stopped answering on a quiet connection (no answer
  // within 5 s: the connection is dropped and the streams move). No pings while nothing is
  // open: etcd, like every gRPC-Go server, answers pings on an idle connection with a GOAWAY
  // "too_many_pings" and drops it. Stay at or above etcd's --grpc-keepalive-min-time
  // (default 5 s), or etcd drops busy connections for the same reason.
  absl::Duration keepalive_time = absl::Seconds(10);
  // Logger for the "discovery.etcd" component; a default named logger when null.
  std::shared_ptr<spdlog::logger> logger{};

  // Reads ETCD_ENDPOINTS (comma separated), ETCD_USER, ETCD_PASSWORD, ETCD_CACERT, ETCD_CERT,
  // ETCD_KEY. Unset variables keep the defaults above.
  static EtcdOptions FromEnv();
};

// Splits "a,b , c" into endpoints, dropping empty items.
std::vector<std::string> SplitEndpoints(const std::string& csv);

class Connection {
 public:
  // kInvalidArgument for an empty/invalid endpoint list or unreadable TLS files. Does not
  // contact etcd: an unreachable etcd shows up as kUnavailable on the first call.
  static absl::StatusOr<std::shared_ptr<Connection>> Create(const EtcdOptions& options);
  ~Connection();

  // Proves that etcd can serve this client right now: a linearizable read (which needs a
  // leader and a quorum, like `etcdctl endpoint health`). A member that is up but has lost
  // quorum does not count. OK also when the read is refused for lack of permission (etcd
  // checks permissions after the quorum round-trip). kUnavailable / kDeadlineExceeded when
  // no endpoint can serve within `timeout` (zero: the call timeout); kUnauthenticated on
  // bad credentials.
  absl::Status Ping(absl::Duration timeout = absl::ZeroDuration());

  // Number of LeaseKeepAlive / Watch gRPC streams currently open (0 or 1 each).
  int keepalive_streams() const;
  int watch_streams() const;
  // Counters since Create: LeaseKeepAlive streams given up because a keepalive went unanswered;
  // keepalive bursts put off because the previous one was still being written (an overloaded
  // host); Watch streams opened to replace one that ended (broke, stalled, refused for auth).
  int64_t keepalive_stalls() const;
  int64_t keepalive_deferred_bursts() const;
  int64_t watch_reconnects() const;

  // Internal: the store behind this connection (src/store_backend.h), for the library's own
  // components; and the etcd client when the store is etcd (null otherwise).
  const std::shared_ptr<StoreBackend>& backend() const { return backend_; }
  const std::shared_ptr<etcd::Client>& client() const { return client_; }
  // Internal: wraps another store's backend (Redis, gateway) in the same handle.
  static std::shared_ptr<Connection> FromBackend(std::shared_ptr<StoreBackend> backend);

 private:
  Connection(std::shared_ptr<StoreBackend> backend, std::shared_ptr<etcd::Client> client);
  std::shared_ptr<StoreBackend> backend_;
  std::shared_ptr<etcd::Client> client_;
};

// Connects to whichever store the configuration names, so a process switches transport by
// configuration only: `gateway` (comma separated discoveryd URLs: gateway mode, options from
// GatewayClientOptions::FromEnv), else `store` (`redis://[user:pass@]host:port[/db]`: the Redis
// backend; `etcd://host:port[,host:port]`: etcd), else etcd from EtcdOptions::FromEnv().
// kInvalidArgument when both are set or the store URL has another scheme.
absl::StatusOr<std::shared_ptr<Connection>> ConnectTo(const std::string& gateway,
                                                      const std::string& store);
// ConnectTo(DISCOVERY_GATEWAY, DISCOVERY_STORE).
absl::StatusOr<std::shared_ptr<Connection>> ConnectFromEnv();

}  // namespace discovery
