// discoveryd: the HTTP gateway of discovery. REST (/sd/v1/instances), Server-Sent Events
// (/sd/v1/subscribe), a live dashboard (/), Prometheus metrics (/metrics) and /healthz, all
// served from one etcd watch. Stateless: run as many as you like against the same etcd.
//
//   ETCD_ENDPOINTS=http://127.0.0.1:2379 discoveryd --listen 127.0.0.1:8080
//
// This file only parses flags and environment and wires the gateway; see gateway.h.
#include <cstdlib>
#include <iostream>

#include "CLI/CLI.hpp"
#include "discovery/etcd.h"
#include "discovery/registrar.h"
#include "fd_limits.h"
#include "gateway.h"
#include "store_flag.h"
#include "util/logging.h"

namespace {

std::string Env(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}

}  // namespace

int main(int argc, char** argv) {
  discoveryd::GatewayOptions options;
  options.etcd = discovery::EtcdOptions::FromEnv();
  options.listen = Env("DISCOVERY_LISTEN", options.listen);
  options.prefix = Env("DISCOVERY_PREFIX", options.prefix);
  options.api_token = Env("DISCOVERY_API_TOKEN", "");
  std::string endpoints;

  CLI::App app{"discoveryd: HTTP gateway, SSE stream and dashboard for discovery on etcd v3"};
  app.add_option("--listen", options.listen, "HOST:PORT to serve on; port 0 picks a free one")
      ->capture_default_str()
      ->envname("DISCOVERY_LISTEN");
  app.add_option("--endpoints", endpoints,
                 "etcd endpoints, comma separated (env ETCD_ENDPOINTS, default "
                 "http://127.0.0.1:2379)");
  discoveryd::StoreSources store{.store_env = Env("DISCOVERY_STORE", ""),
                                 .endpoints_env = !Env("ETCD_ENDPOINTS", "").empty()};
  app.add_option("--store", store.store_flag,
                 "etcd://host:port instead of --endpoints, or redis://host:port[/db] / "
                 "redis+sentinel://host:port,.../master[/db] (env DISCOVERY_STORE)");
  app.add_option("--prefix", options.prefix, "key prefix (env DISCOVERY_PREFIX)")
      ->capture_default_str();
  app.add_option("--api-token-file", options.api_token_file,
                 "file with one API token per line: TOKEN [rw|ro] (env DISCOVERY_API_TOKEN adds a "
                 "rw token)");
  app.add_flag("--protect-dashboard", options.protect_dashboard,
               "require a token for / and /metrics too (X-API-Token or ?token=)");
  app.add_option("--user", options.etcd.user, "etcd user (env ETCD_USER)");
  app.add_option("--password", options.etcd.password, "etcd password (env ETCD_PASSWORD)");
  app.add_option("--cacert", options.etcd.ca_file,
                 "CA bundle for https endpoints (env ETCD_CACERT)");
  app.add_option("--cert", options.etcd.cert_file, "client certificate for mTLS (env ETCD_CERT)");
  app.add_option("--key", options.etcd.key_file, "client key for mTLS (env ETCD_KEY)");
  app.add_option("--tls-cert", options.tls.cert_file,
                 "PEM certificate chain: serve https instead of http (needs --tls-key)")
      ->envname("DISCOVERY_TLS_CERT");
  app.add_option("--tls-key", options.tls.key_file, "PEM private key of --tls-cert (unencrypted)")
      ->envname("DISCOVERY_TLS_KEY");
  app.add_option("--tls-client-ca", options.tls.client_ca_file,
                 "PEM CA: require client certificates signed by it (mTLS; needs --tls-cert)")
      ->envname("DISCOVERY_TLS_CLIENT_CA");
  double read_timeout_s = absl::ToDoubleSeconds(options.read_timeout);
  app.add_option("--read-timeout", read_timeout_s,
                 "seconds a client may take to send a request (also the keep-alive idle time)")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 3600.0));
  app.add_option("--sse-max-backlog", options.sse_max_backlog_bytes,
                 "bytes an SSE client may fall behind before its stream is closed")
      ->capture_default_str()
      ->check(CLI::Range(size_t{4096}, size_t{1} << 30));
  app.add_option("--max-connections", options.max_connections,
                 "HTTP connections open at once (SSE streams included); past it a connection "
                 "gets a 503 and is closed. 0 = the fd soft limit minus min(128, half of it)")
      ->capture_default_str();
  app.add_option("--max-subscribers", options.max_subscribers,
                 "SSE streams open at once; past it /sd/v1/subscribe answers 503 + Retry-After. "
                 "0 = no cap but --max-connections")
      ->capture_default_str();
  app.add_option("--sse-ring", options.sse_ring_events,
                 "events kept for Last-Event-ID resume and the attach handover")
      ->capture_default_str()
      ->check(CLI::Range(size_t{16}, size_t{1} << 24));
  app.add_option("--max-blocking-queries", options.max_blocking_queries,
                 "blocking discover queries (?waitIndex=) waiting at once; past it 503 + "
                 "Retry-After")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{1} << 20));
  app.add_option("--discover-cache", options.discover_cache_entries,
                 "discover filters whose encoded answer is cached (least recently used dropped)")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{1} << 20));
  size_t discover_cache_mib = options.discover_cache_bytes >> 20;
  app.add_option("--discover-cache-mib", discover_cache_mib,
                 "MiB of encoded discover answers cached (least recently used dropped; one "
                 "larger answer is served, not cached)")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{1} << 20));
  app.add_option("--io-threads", options.io_threads, "HTTP io threads (0 = the core count)")
      ->capture_default_str();
  app.add_option("--workers", options.worker_threads, "threads for blocking etcd calls")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  options.read_timeout = absl::Seconds(read_timeout_s);
  options.discover_cache_bytes = discover_cache_mib << 20;
  if (!endpoints.empty()) options.etcd.endpoints = discovery::SplitEndpoints(endpoints);
  store.endpoints_flag = !endpoints.empty();
  if (absl::Status s = discoveryd::ApplyStoreUrl(store, &options.etcd, &options.redis); !s.ok()) {
    std::cerr << "discoveryd: " << s.message() << "\n";
    return 2;
  }

  // Every connection is a file descriptor (the default --max-connections is sized from it).
  discoveryd::RaiseFdLimit(discovery::util::ComponentLogger(nullptr, "discoveryd"));
  if (absl::Status s = discovery::ShutdownSignal::Install(); !s.ok()) {
    std::cerr << "discoveryd: " << s << "\n";
    return 1;
  }
  auto gateway = discoveryd::Gateway::Create(options);
  if (!gateway.ok()) {
    std::cerr << "discoveryd: " << gateway.status() << "\n";
    return 1;
  }
  while (!discovery::ShutdownSignal::Wait(absl::Seconds(1))) {
  }
  (*gateway)->Stop();
  return 0;
}
