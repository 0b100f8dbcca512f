// File: tools/discoveryd/gateway.h
//
// discoveryd wired together: one store Connection (etcd or Redis), one Watcher over the whole
// prefix, the SSE hub on top of it, the REST API, metrics, and the HTTP server. Every request goes
// through RequestRouter (router.h: routing, auth, validation, no I/O); the gateway runs the
// validated calls it returns, on the io thread when they only read memory, else on a worker pool.
// `main.cc` only fills GatewayOptions from flags and environment.
//
//   GatewayOptions o;
//   o.listen = "127.0.0.1:0";
//   o.etcd = discovery::EtcdOptions::FromEnv();
//   auto gw = Gateway::Create(o);     // listens and serves at once
//   std::cout << (*gw)->url();        // http://127.0.0.1:40123/
//   (*gw)->Stop();
//
// Routes (all JSON; errors are {"error":{"code","message"}}):
//   GET /  dashboard          GET /metrics  Prometheus      GET /healthz
//   POST /sd/v1/instances     GET /sd/v1/instances?type=&group=&status=&healthCheck=&port=
//                               &waitIndex=&wait=  (discover_http.h: ETag/304, gzip, blocking)
//   GET|PATCH|DELETE /sd/v1/instances/{id}?type=T
//   POST /sd/v1/instances/{id}/heartbeat?type=T
//   GET /sd/v1/subscribe?type=&group=   (Server-Sent Events; Last-Event-ID resumes)
//
// Thread-safety: Create/Stop from one thread; everything else is internal.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "discovery/etcd.h"
#include "discovery/redis.h"
#include "http_server.h"

namespace spdlog {
class logger;
}

namespace discoveryd {

struct GatewayOptions {
  std::string listen = "127.0.0.1:8080";  // HOST:PORT; port 0 picks a free one
  discovery::EtcdOptions etcd{};
  // Set: the store is Redis (--store redis://...), `etcd` is not used.
  std::optional<discovery::RedisOptions> redis{};
  std::string prefix = "/services/";
  std::string api_token_file{};    // TOKEN [rw|ro] per line
  std::string api_token{};         // one more rw token (DISCOVERY_API_TOKEN)
  bool protect_dashboard = false;  // tokens also guard /, /metrics
  int io_threads = 0;              // 0 = the core count (std::thread::hardware_concurrency)
  int worker_threads = 4;          // blocking etcd calls of the REST API
  absl::Duration read_timeout = absl::Seconds(10);
  absl::Duration sse_keepalive = absl::Seconds(15);
  // An SSE client with more than this many bytes queued (not yet taken by its socket) is too
  // slow: its stream is closed (it may reconnect with Last-Event-ID) instead of growing the
  // gateway's memory without bound.
  size_t sse_max_backlog_bytes = 1024 * 1024;
  // HTTP connections open at once (SSE streams included); past it a connection gets a 503
  // and is closed. 0 = from the fd limit (HttpServer's DefaultMaxConnections()).
  size_t max_connections = 0;
  // SSE streams open at once; past it /sd/v1/subscribe answers 503 + Retry-After (counted in
  // discovery_sse_refused_total). 0 = no cap of its own (only max_connections).
  size_t max_subscribers = 0;
  size_t sse_ring_events = 8192;  // events kept for Last-Event-ID resume (and attach handover)
  // Discover filters whose encoded answer is cached (LRU past it), and blocking discover
  // queries (?waitIndex=) waiting at once (past it 503 + Retry-After: 1).
  size_t discover_cache_entries = 1024;
  size_t discover_cache_bytes = size_t{256} << 20;
  size_t max_blocking_queries = 4096;
  absl::Duration initial_sync_wait = absl::Seconds(3);
  // https when cert_file is set (--tls-cert/--tls-key, both or neither; --tls-client-ca for
  // mTLS). Checked before anything else starts.
  HttpServer::Tls tls{};
  std::shared_ptr<spdlog::logger> logger{};  // "discoveryd"
};

// Splits "host:port" / "[v6]:port". kInvalidArgument otherwise.
absl::Status ParseListen(const std::string& listen, std::string* host, int* port);

class Gateway {
 public:
  // Loads tokens, connects (lazily) to etcd, starts the watcher, waits up to
  // `initial_sync_wait` for its first sync (an unreachable etcd is not fatal: /healthz says
  // 503 until it syncs), then listens and serves. kInvalidArgument for bad options or token
  // file, kUnavailable when the listen address is taken.
  static absl::StatusOr<std::unique_ptr<Gateway>> Create(GatewayOptions options);
  ~Gateway();

  // "http://host:port/" with the real port.
  std::string url() const;
  int port() const;
  // Stops serving: closes every connection and stream, then the watcher. Idempotent.
  void Stop();

  struct Impl;

 private:
  explicit Gateway(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace discoveryd
