// File: discovery/gateway_client.h
//
// Gateway mode: the same Registrar and Watcher, through discoveryd's HTTP API instead of a
// direct etcd connection, for processes that cannot (or should not) reach etcd. The choice is
// the Connection handed to RegistrarOptions / WatcherOptions; nothing else changes.
//
//   direct:   auto conn = discovery::Connection::Create(discovery::EtcdOptions::FromEnv());
//   gateway:  auto conn = discovery::ConnectGateway(discovery::GatewayClientOptions::FromEnv());
//   auto registrar = discovery::Registrar::Create({.connection = *conn, ...});
//   auto watcher = discovery::Watcher::Create({.connection = *conn, ...});
//
// Transport: HTTP/1.1 keep-alive connections per gateway URL (one in the steady state), the
// token in X-API-Token, failover between the URLs. https:// URLs (discoveryd --tls-cert)
// verify the gateway's certificate against `ca_file` (the system store when empty) and the
// URL's host name; `cert_file`/`key_file` are the client certificate when discoveryd asks for
// one (--tls-client-ca). A failed verification is kUnavailable "...: TLS handshake:
// certificate verify failed ..." naming the URL, and the next URL is tried. Leases: one batch POST
// /sd/v1/heartbeat per interval for every lease of the process (discoveryd forwards it on its own
// LeaseKeepAlive stream); a lease the gateway reports gone is lost (the registrar re-registers).
// Watch: one SSE stream (GET /sd/v1/subscribe) resumed with Last-Event-ID; a `reset` or another
// epoch replaces the cache (only the differences are emitted); a stream silent for longer than
// `stream_silence_timeout` is replaced. The prefix is discoveryd's (--prefix): a Watcher or
// Registrar with another prefix gets kInvalidArgument. A read-only token can watch; registering
// with it fails with kPermissionDenied.
//
// Thread-safety: ConnectGateway is thread-safe; the Connection is as in etcd.h.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "discovery/etcd.h"

namespace discovery {

struct GatewayClientOptions {
  // "http://host:port" or "https://host:port" of every discoveryd of the fleet (any of them
  // answers any call).
  std::vector<std::string> urls = {"http://127.0.0.1:8080"};
  std::string api_token{};  // sent as X-API-Token; empty: none
  // TLS for https:// URLs (PEM files): the CA the gateways' certificates are checked against
  // (empty: the system's trust store), and the client certificate + key for mTLS (both or
  // neither).
  std::string ca_file{};
  std::string cert_file{};
  std::string key_file{};
  // Deadline of every REST call, across all failover attempts.
  absl::Duration call_timeout = absl::Seconds(5);
  // discoveryd's --prefix: the only prefix a Registrar or Watcher over this connection may use.
  std::string prefix = "/services/";
  // An SSE stream with no byte (event or keep-alive comment) for this long is replaced: 2x
  // discoveryd's default --sse-keepalive (15 s).
  absl::Duration stream_silence_timeout = absl::Seconds(30);
  // Logger for the "discovery.gateway" component; a default named logger when null.
  std::shared_ptr<spdlog::logger> logger{};

  // Reads DISCOVERY_GATEWAY (comma separated URLs), DISCOVERY_API_TOKEN and
  // DISCOVERY_GATEWAY_CA / _CERT / _KEY. Unset variables keep the defaults above.
  static GatewayClientOptions FromEnv();
};

// A Connection whose store is reached through discoveryd. kInvalidArgument for an empty or
// malformed URL list, or (https://) TLS files that are unreadable or invalid. Connects lazily.
absl::StatusOr<std::shared_ptr<Connection>> ConnectGateway(const GatewayClientOptions& options);

}  // namespace discovery
