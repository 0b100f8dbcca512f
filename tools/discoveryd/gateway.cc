#include "gateway.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <exception>
#include <optional>
#include <thread>
#include <utility>
#include <variant>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "api.h"
#include "auth.h"
#include "discover_http.h"
#include "discovery/redis.h"
#include "discovery/watcher.h"
#include "health_check.h"
#include "http_server.h"
#include "lease_api.h"
#include "metrics.h"
#include "router.h"
#include "sse.h"
#include "store_backend.h"
#include "store_ops.h"
#include "util/clock.h"
#include "util/logging.h"
#include "util/sync.h"

namespace discoveryd {

namespace util = discovery::util;

absl::Status ParseListen(const std::string& listen, std::string* host, int* port) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--listen wants HOST:PORT, got \"", listen, "\""));
  }
  std::string h = listen.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  int p = 0;
  if (!absl::SimpleAtoi(listen.substr(colon + 1), &p) || p < 0 || p > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--listen port must be 0..65535, got \"", listen.substr(colon + 1), "\""));
  }
  *host = h;
  *port = p;
  return absl::OkStatus();
}

// A store URL without its password (for the log).
static std::string RedactedUrl(const std::string& url) {
  size_t at = url.rfind('@');
  size_t scheme = url.find("://");
  if (at == std::string::npos || scheme == std::string::npos || at < scheme) return url;
  return absl::StrCat(url.substr(0, scheme + 3), "***", url.substr(at));
}

struct Gateway::Impl {
  GatewayOptions options;
  std::shared_ptr<spdlog::logger> logger;
  std::optional<RequestRouter> router;  // routing, auth and validation (no I/O)
  std::shared_ptr<discovery::Connection> connection;
  std::unique_ptr<StoreOps> ops;  // leases and the epoch record on etcd or Redis (store_ops.h)
  std::unique_ptr<discovery::Watcher> watcher;
  std::unique_ptr<TcpHealthChecker> checker;
  std::unique_ptr<InstanceApi> api;
  std::unique_ptr<EventHub> hub;
  std::unique_ptr<LeaseApi> lease_api;         // gateway-mode clients' leases and writes (issue 16)
  std::unique_ptr<DiscoverEndpoint> discover;  // discover: cache, ETag, gzip, blocking queries
  Metrics metrics;
  std::optional<boost::asio::thread_pool> workers;
  std::unique_ptr<HttpServer> server;
  std::string url;
  bool stopped = false;
  std::atomic<size_t> sse_open{0};  // streams counted against max_subscribers
  std::atomic<uint64_t> sse_refused{0};

  util::Mutex ping_mu;
  absl::Time ping_at ABSL_GUARDED_BY(ping_mu) = absl::InfinitePast();
  absl::Status ping_status ABSL_GUARDED_BY(ping_mu) = absl::UnavailableError("not checked yet");
  bool ping_in_flight ABSL_GUARDED_BY(ping_mu) = false;

  void Handle(HttpRequest req, std::shared_ptr<Exchange> ex);
  // The response to `call`: an immediate response as is, a validated call run against etcd or
  // the watcher on the calling thread.
  HttpResponse Execute(Call call);
  void Finish(const std::shared_ptr<Exchange>& ex, const HttpRequest& req, const std::string& route,
              absl::Time start, HttpResponse response);
  void Subscribe(const HttpRequest& req, const std::string& route, const SubscribeCall& call,
                 absl::Time start, const std::shared_ptr<Exchange>& ex);
  HttpResponse Healthz();
  absl::Status CachedPing();
};

void Gateway::Impl::Finish(const std::shared_ptr<Exchange>& ex, const HttpRequest& req,
                           const std::string& route, absl::Time start, HttpResponse response) {
  absl::Duration took = discovery::util::MonoNow() - start;
  metrics.ObserveRequest(req.method, route, response.status, took);
  SPDLOG_LOGGER_DEBUG(logger, "{} {} {} -> {} ({} ms)", req.remote, req.method, req.target,
                      response.status, absl::ToDoubleMilliseconds(took));
  ex->Reply(std::move(response));
}

// 503 {"error":{"code":"unavailable",...}} with Retry-After: 1.
static HttpResponse NotSyncedResponse() {
  HttpResponse r = ErrorResponse(503, "unavailable", "watch cache not synced yet");
  r.headers.emplace_back("Retry-After", "1");
  return r;
}

// Calls answered from the watch cache: discover and get, and any call that finds an id's type
// there (no ?type=): before the first sync a heartbeat must not hear "not found" (and
// re-register) because the cache is still empty.
static bool ReadsWatchCache(const Call& call) {
  if (std::holds_alternative<ListCall>(call) || std::holds_alternative<GetCall>(call)) return true;
  if (const auto* c = std::get_if<PatchCall>(&call)) return c->ref.type.empty();
  if (const auto* c = std::get_if<DeleteCall>(&call)) return c->ref.type.empty();
  if (const auto* c = std::get_if<HeartbeatCall>(&call)) return c->ref.type.empty();
  return false;
}

HttpResponse Gateway::Impl::Execute(Call call) {
  // A throw must not take the io thread or a worker (and the process) down.
  try {
    if (auto* c = std::get_if<HttpResponse>(&call)) return std::move(*c);
    if (std::holds_alternative<MetricsCall>(call)) {
      HttpResponse r;
      r.content_type = "text/plain; version=0.0.4; charset=utf-8";
      EventHub::Stats h = hub->stats();
      r.body = metrics.Render(*watcher, SseFigures{.subscribers = hub->subscribers(),
                                                   .held = h.held,
                                                   .epoch_changes = h.epoch_changes,
                                                   .epoch_failures = h.keeper.failures,
                                                   .match_checks = h.match_checks,
                                                   .frames_encoded = h.frames_encoded,
                                                   .frames_sent = h.frames_sent,
                                                   .inits_encoded = h.inits_encoded,
                                                   .inits_cached_bytes = h.inits_cached_bytes,
                                                   .attach_retries = h.attach_retries,
                                                   .refused = sse_refused.load(),
                                                   .max_subscribers = options.max_subscribers,
                                                   .ring_events = h.ring_events,
                                                   .ring_capacity = options.sse_ring_events});
      r.body += lease_api->RenderMetrics();
      r.body += discover->RenderMetrics();
      return r;
    }
    if (std::holds_alternative<HealthzCall>(call)) return Healthz();
    // Never an unsynced cache as truth: an empty list before the first sync would drain
    // every game server behind a load balancer that trusts it.
    if (ReadsWatchCache(call) && !watcher->synced()) return NotSyncedResponse();
    if (const auto* c = std::get_if<ListCall>(&call)) return api->List(*c);
    if (const auto* c = std::get_if<RegisterCall>(&call)) return api->Register(*c);
    if (const auto* c = std::get_if<GetCall>(&call)) return api->Get(*c);
    if (const auto* c = std::get_if<PatchCall>(&call)) return api->Patch(*c);
    if (const auto* c = std::get_if<DeleteCall>(&call)) return api->Delete(*c);
    if (const auto* c = std::get_if<HeartbeatCall>(&call)) return api->Heartbeat(*c);
    return ErrorResponse(500, "internal", "unrouted request");
  } catch (const std::exception& e) {
    SPDLOG_LOGGER_ERROR(logger, "request failed: {}", e.what());
    return ErrorResponse(500, "internal", "internal error");
  }
}

void Gateway::Impl::Handle(HttpRequest req, std::shared_ptr<Exchange> ex) {
  absl::Time start = discovery::util::MonoNow();
  if (std::string route; LeaseApi::Matches(req.path, &route)) {
    boost::asio::post(*workers,
                      [this, req = std::move(req), route, start, ex = std::move(ex)]() mutable {
                        Finish(ex, req, route, start, lease_api->Serve(req));
                      });
    return;
  }
  Action action;
  try {
    action = router->Route(req);
  } catch (const std::exception& e) {
    SPDLOG_LOGGER_ERROR(logger, "{} {}: {}", req.method, req.target, e.what());
    action.call = ErrorResponse(500, "internal", "internal error");
  }
  if (const auto* c = std::get_if<SubscribeCall>(&action.call)) {
    return Subscribe(req, action.route, *c, start, ex);
  }
  // Discovery without an active health check: from the per-snapshot cache on the io thread
  // when the answer is encoded already, else built on a worker (or a blocking query waits).
  if (auto* list = std::get_if<ListCall>(&action.call); list != nullptr && !list->health_check) {
    if (!watcher->synced()) return Finish(ex, req, action.route, start, NotSyncedResponse());
    DiscoverEndpoint::Request dr{.call = std::move(*list),
                                 .gzip = AcceptsGzip(req.Header("accept-encoding")),
                                 .if_none_match = req.Header("if-none-match")};
    auto done = [this, ex, method = req.method, target = req.target, remote = req.remote,
                 route = action.route, start](HttpResponse r) {
      HttpRequest shown;
      shown.method = method;
      shown.target = target;
      shown.remote = remote;
      Finish(ex, shown, route, start, std::move(r));
    };
    return discover->Handle(std::move(dr), std::move(done));
  }
  // Answers at once and /metrics: on the io thread (two thread hops per request cost more
  // than the work itself).
  if (std::holds_alternative<HttpResponse>(action.call) ||
      std::holds_alternative<MetricsCall>(action.call)) {
    return Finish(ex, req, action.route, start, Execute(std::move(action.call)));
  }
  // Everything else may block on etcd (or dial instances): run it on the worker pool.
  boost::asio::post(*workers, [this, req = std::move(req), action = std::move(action), start,
                               ex = std::move(ex)]() mutable {
    Finish(ex, req, action.route, start, Execute(std::move(action.call)));
  });
}

void Gateway::Impl::Subscribe(const HttpRequest& req, const std::string& route,
                              const SubscribeCall& call, absl::Time start,
                              const std::shared_ptr<Exchange>& ex) {
  // The cap is a reservation (exact under concurrent attaches), released when the stream ends.
  const size_t cap = options.max_subscribers;
  if (cap > 0 && sse_open.fetch_add(1) >= cap) {
    sse_open.fetch_sub(1);
    uint64_t n = sse_refused.fetch_add(1) + 1;
    if (n == 1 || n % 1000 == 0) {
      SPDLOG_LOGGER_WARN(logger,
                         "{} SSE subscribers open (--max-subscribers): refusing more ({} "
                         "so far)",
                         cap, n);
    }
    HttpResponse r =
        ErrorResponse(503, "unavailable", absl::StrCat("subscriber limit reached (", cap, ")"));
    r.headers.emplace_back("Retry-After", "5");
    return Finish(ex, req, route, start, std::move(r));
  }
  metrics.ObserveRequest(req.method, route, 200, discovery::util::MonoNow() - start);
  uint64_t id = hub->NextId();
  EventHub* hub_ptr = hub.get();
  std::atomic<size_t>* open = cap > 0 ? &sse_open : nullptr;
  std::shared_ptr<EventStream> stream = ex->StartEventStream({}, [hub_ptr, id, open] {
    hub_ptr->Detach(id);
    if (open != nullptr) open->fetch_sub(1);
  });
  SPDLOG_LOGGER_DEBUG(logger, "{} subscribed (type={} group={} last-event-id={}.{})", req.remote,
                      call.type, call.group, call.last_event_epoch, call.last_event_id);
  hub->Attach(id, std::move(stream), StreamFilter{call.type, call.group}, call.last_event_epoch,
              call.last_event_id);
}

absl::Status Gateway::Impl::CachedPing() {
  {
    util::MutexLock lock(&ping_mu);
    // Fresh enough, or another request is asking etcd right now: answer from the cache
    // instead of queueing workers behind a slow probe during an outage.
    if (discovery::util::MonoNow() - ping_at < absl::Seconds(1) || ping_in_flight)
      return ping_status;
    ping_in_flight = true;
  }
  // A quorum read, not Maintenance.Status: a member that is up but has lost quorum answers
  // Status, yet cannot serve a single write or linearizable read (ChaosTest.QuorumLost...).
  // 3 s lets the client try every member (1 s each) before calling etcd unavailable.
  absl::Status s = connection->Ping(absl::Seconds(3));
  util::MutexLock lock(&ping_mu);
  ping_status = s;
  ping_at = discovery::util::MonoNow();
  ping_in_flight = false;
  return s;
}

HttpResponse Gateway::Impl::Healthz() {
  bool synced = watcher->synced();
  absl::Status ping = CachedPing();
  nlohmann::json j = {
      {"synced", synced}, {"revision", watcher->revision()}, {"epoch", hub->stats().epoch}};
  if (synced && ping.ok()) {
    j["status"] = "ok";
    return JsonResponse(200, j);
  }
  j["status"] = "unavailable";
  j["error"] = {{"code", "unavailable"},
                {"message", !ping.ok() ? std::string(ping.message())
                                       : std::string("watch cache not synced yet")}};
  return JsonResponse(503, j);
}

absl::StatusOr<std::unique_ptr<Gateway>> Gateway::Create(GatewayOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->logger = discovery::util::ComponentLogger(options.logger, "discoveryd");
  if (options.prefix.empty() || options.prefix.back() != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("prefix must end with '/', got \"", options.prefix, "\""));
  }
  std::string host;
  int port = 0;
  if (absl::Status s = ParseListen(options.listen, &host, &port); !s.ok()) return s;
  if (absl::Status s = HttpServer::CheckTls(options.tls); !s.ok()) return s;
  absl::StatusOr<TokenStore> tokens = TokenStore::Load(options.api_token_file, options.api_token);
  if (!tokens.ok()) return tokens.status();
  impl->router.emplace(RequestRouter::Options{.tokens = *std::move(tokens),
                                              .protect_dashboard = options.protect_dashboard});
  const TokenStore& token_store = impl->router->options().tokens;
  if (options.protect_dashboard && !token_store.enabled()) {
    SPDLOG_LOGGER_WARN(impl->logger, "--protect-dashboard without any API token: nothing to check");
  }
  if (options.etcd.logger == nullptr) options.etcd.logger = options.logger;
  auto conn = options.redis.has_value() ? discovery::ConnectRedis(*options.redis)
                                        : discovery::Connection::Create(options.etcd);
  if (!conn.ok()) return conn.status();
  impl->connection = *std::move(conn);
  auto ops = NewStoreOps(impl->connection);
  if (!ops.ok()) return ops.status();
  impl->ops = *std::move(ops);
  discovery::WatcherOptions wo;
  wo.connection = impl->connection;
  wo.prefix = options.prefix;
  wo.logger = options.logger;
  auto watcher = discovery::Watcher::Create(std::move(wo));
  if (!watcher.ok()) return watcher.status();
  impl->watcher = *std::move(watcher);
  if (absl::Status s = impl->watcher->WaitForSync(options.initial_sync_wait); !s.ok()) {
    SPDLOG_LOGGER_WARN(impl->logger, "{}; serving anyway (/healthz says 503 until synced)",
                       std::string(s.message()));
  }
  impl->checker = std::make_unique<TcpHealthChecker>(TcpHealthChecker::Options{});
  impl->api = std::make_unique<InstanceApi>(impl->connection, impl->ops.get(), impl->watcher.get(),
                                            impl->checker.get(),
                                            InstanceApi::Options{.prefix = options.prefix});
  impl->hub = std::make_unique<EventHub>(
      impl->watcher.get(), impl->ops->NewEpochStore(EpochKey(options.prefix)),
      EventHub::Options{.ring_capacity = std::max<size_t>(1, options.sse_ring_events),
                        .prefix = options.prefix,
                        .logger = options.logger});
  impl->hub->Start();
  impl->lease_api = std::make_unique<LeaseApi>(
      impl->connection, impl->ops.get(), &impl->router->options().tokens,
      LeaseApi::Options{.prefix = options.prefix, .max_ttl_seconds = 300}, impl->logger);
  impl->workers.emplace(static_cast<size_t>(std::max(1, options.worker_threads)));
  {
    EventHub* hub = impl->hub.get();
    boost::asio::thread_pool* workers = &*impl->workers;
    impl->discover = std::make_unique<DiscoverEndpoint>(
        impl->watcher.get(), [hub] { return hub->epoch(); },
        [workers](std::function<void()> work) { boost::asio::post(*workers, std::move(work)); },
        DiscoverEndpoint::Options{.max_entries = options.discover_cache_entries,
                                  .max_bytes = options.discover_cache_bytes,
                                  .max_waiting = options.max_blocking_queries});
    impl->discover->Start();
  }

  HttpServer::Options so;
  so.host = host;
  so.port = port;
  so.io_threads = options.io_threads > 0
                      ? options.io_threads
                      : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  so.read_timeout = options.read_timeout;
  so.stream_keepalive = options.sse_keepalive;
  so.max_stream_backlog_bytes = options.sse_max_backlog_bytes;
  so.max_connections = options.max_connections;
  so.logger = options.logger;
  so.tls = options.tls;
  Impl* raw = impl.get();
  so.on_protocol_error = [raw](const std::string& method, int status) {
    raw->metrics.ObserveRequest(method.empty() ? "UNKNOWN" : method, "other", status,
                                absl::ZeroDuration());
  };
  auto server = HttpServer::Create(so, [raw](HttpRequest req, std::shared_ptr<Exchange> ex) {
    raw->Handle(std::move(req), std::move(ex));
  });
  if (!server.ok()) {
    impl->discover->Stop();
    impl->hub->Stop();
    return server.status();
  }
  impl->server = *std::move(server);
  impl->metrics.SetConnectionStats([raw] { return raw->server->stats(); });
  std::string shown = host.find(':') != std::string::npos ? absl::StrCat("[", host, "]") : host;
  impl->url = absl::StrCat(impl->server->tls() ? "https://" : "http://", shown, ":",
                           impl->server->port(), "/");
  impl->options = std::move(options);
  impl->server->Start();
  SPDLOG_LOGGER_INFO(
      impl->logger,
      "discoveryd serving {} ({}; {} {}, prefix {}, max {} connections, {} API "
      "token(s){})",
      impl->url,
      !impl->server->tls()                       ? "plain http"
      : impl->options.tls.client_ca_file.empty() ? "https"
                                                 : "https, client certificates required",
      impl->connection->backend()->kind(),
      impl->options.redis.has_value() ? RedactedUrl(impl->options.redis->url)
                                      : absl::StrJoin(impl->options.etcd.endpoints, ","),
      impl->options.prefix, impl->server->stats().max_connections, token_store.size(),
      impl->options.protect_dashboard ? ", dashboard protected" : "");
  return std::unique_ptr<Gateway>(new Gateway(std::move(impl)));
}

Gateway::Gateway(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Gateway::~Gateway() { Stop(); }

std::string Gateway::url() const { return impl_->url; }
int Gateway::port() const { return impl_->server->port(); }

void Gateway::Stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->server->Stop();    // closes streams: each detaches from the hub
  impl_->discover->Stop();  // answers the blocking queries still waiting (nowhere now)
  impl_->hub->Stop();
  impl_->workers->join();  // pending API calls finish (their replies go nowhere)
  impl_->server.reset();
  impl_->api.reset();  // its subscription (the id index's feed) goes before the watcher
  impl_->watcher.reset();
  SPDLOG_LOGGER_INFO(impl_->logger, "discoveryd stopped");
}

}  // namespace discoveryd
