#include "gateway.h"

#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <optional>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "api.h"
#include "auth.h"
#include "dashboard_html.h"
#include "discovery/watcher.h"
#include "etcd/client.h"
#include "health_check.h"
#include "http_server.h"
#include "metrics.h"
#include "sse.h"
#include "util/logging.h"

namespace discoveryd {
namespace {

enum class RouteKind {
  kNone,
  kDashboard,
  kMetrics,
  kHealthz,
  kInstances,
  kInstance,
  kHeartbeat,
  kSubscribe
};

struct RouteMatch {
  RouteKind kind = RouteKind::kNone;
  std::string name = "other";  // route template, the metrics label
  std::string id;
  std::vector<std::string> methods;
};

RouteMatch Match(const std::string& raw_path) {
  std::string path = raw_path;
  if (path.size() > 1 && path.back() == '/') path.pop_back();
  RouteMatch m;
  if (path == "/" || path == "/index.html") {
    m = {RouteKind::kDashboard, "/", "", {"GET"}};
  } else if (path == "/metrics") {
    m = {RouteKind::kMetrics, "/metrics", "", {"GET"}};
  } else if (path == "/healthz") {
    m = {RouteKind::kHealthz, "/healthz", "", {"GET"}};
  } else if (path == "/sd/v1/subscribe") {
    m = {RouteKind::kSubscribe, "/sd/v1/subscribe", "", {"GET"}};
  } else if (path == "/sd/v1/instances") {
    m = {RouteKind::kInstances, "/sd/v1/instances", "", {"GET", "POST"}};
  } else if (absl::StartsWith(path, "/sd/v1/instances/")) {
    std::vector<std::string> parts =
        absl::StrSplit(path.substr(std::string("/sd/v1/instances/").size()), '/');
    if (parts.size() == 1 && !parts[0].empty()) {
      m = {RouteKind::kInstance, "/sd/v1/instances/{id}", parts[0], {"GET", "PATCH", "DELETE"}};
    } else if (parts.size() == 2 && !parts[0].empty() && parts[1] == "heartbeat") {
      m = {RouteKind::kHeartbeat, "/sd/v1/instances/{id}/heartbeat", parts[0], {"POST"}};
    }
  }
  return m;
}

bool IsWrite(const std::string& method) { return method != "GET" && method != "HEAD"; }

}  // namespace

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

struct Gateway::Impl {
  GatewayOptions options;
  std::shared_ptr<spdlog::logger> logger;
  TokenStore tokens;
  std::shared_ptr<discovery::Connection> connection;
  std::unique_ptr<discovery::Watcher> watcher;
  std::unique_ptr<TcpHealthChecker> checker;
  std::unique_ptr<InstanceApi> api;
  std::unique_ptr<EventHub> hub;
  Metrics metrics;
  std::optional<boost::asio::thread_pool> workers;
  std::unique_ptr<HttpServer> server;
  std::string url;
  bool stopped = false;

  absl::Mutex ping_mu;
  absl::Time ping_at ABSL_GUARDED_BY(ping_mu) = absl::InfinitePast();
  absl::Status ping_status ABSL_GUARDED_BY(ping_mu) = absl::UnavailableError("not checked yet");

  void Handle(HttpRequest req, std::shared_ptr<Exchange> ex);
  void Finish(const std::shared_ptr<Exchange>& ex, const HttpRequest& req, const RouteMatch& m,
              absl::Time start, HttpResponse response);
  void Subscribe(const HttpRequest& req, const RouteMatch& m, absl::Time start,
                 const std::shared_ptr<Exchange>& ex);
  HttpResponse Healthz();
  absl::Status CachedPing();
};

void Gateway::Impl::Finish(const std::shared_ptr<Exchange>& ex, const HttpRequest& req,
                           const RouteMatch& m, absl::Time start, HttpResponse response) {
  absl::Duration took = absl::Now() - start;
  metrics.ObserveRequest(req.method, m.name, response.status, took);
  SPDLOG_LOGGER_DEBUG(logger, "{} {} {} -> {} ({} ms)", req.remote, req.method, req.target,
                      response.status, absl::ToDoubleMilliseconds(took));
  ex->Reply(std::move(response));
}

void Gateway::Impl::Handle(HttpRequest req, std::shared_ptr<Exchange> ex) {
  absl::Time start = absl::Now();
  RouteMatch m = Match(req.path);
  if (m.kind == RouteKind::kNone) {
    return Finish(ex, req, m, start,
                  ErrorResponse(404, "not_found", absl::StrCat("no route for ", req.path)));
  }
  if (std::find(m.methods.begin(), m.methods.end(), req.method) == m.methods.end()) {
    HttpResponse r =
        ErrorResponse(405, "method_not_allowed",
                      absl::StrCat(req.method, " is not allowed on ", m.name,
                                   " (allowed: ", absl::StrJoin(m.methods, ", "), ")"));
    r.headers.emplace_back("Allow", absl::StrJoin(m.methods, ", "));
    return Finish(ex, req, m, start, std::move(r));
  }
  bool is_api = m.kind == RouteKind::kInstances || m.kind == RouteKind::kInstance ||
                m.kind == RouteKind::kHeartbeat || m.kind == RouteKind::kSubscribe;
  bool guarded = is_api || (options.protect_dashboard &&
                            (m.kind == RouteKind::kDashboard || m.kind == RouteKind::kMetrics));
  if (guarded && tokens.enabled()) {
    std::string token = req.Header("x-api-token");
    // Browsers cannot set headers on EventSource or page loads: accept ?token= on GETs.
    if (token.empty() && req.method == "GET") token = req.Query("token");
    Access access = tokens.Check(token);
    if (access == Access::kNone) {
      return Finish(
          ex, req, m, start,
          ErrorResponse(401, "unauthenticated",
                        token.empty() ? "missing X-API-Token header" : "invalid X-API-Token"));
    }
    if (IsWrite(req.method) && access != Access::kReadWrite) {
      return Finish(ex, req, m, start,
                    ErrorResponse(403, "permission_denied",
                                  "this token is read-only; writes need a rw token"));
    }
  }
  switch (m.kind) {
    case RouteKind::kDashboard: {
      HttpResponse r;
      r.content_type = "text/html; charset=utf-8";
      r.body = std::string(kDashboardHtml);
      r.headers = {{"Cache-Control", "no-cache"},
                   {"Content-Security-Policy",
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                    "connect-src 'self'; img-src 'self' data:"}};
      return Finish(ex, req, m, start, std::move(r));
    }
    case RouteKind::kSubscribe:
      return Subscribe(req, m, start, ex);
    case RouteKind::kMetrics: {
      HttpResponse r;
      r.content_type = "text/plain; version=0.0.4; charset=utf-8";
      r.body = metrics.Render(*watcher, hub->subscribers());
      return Finish(ex, req, m, start, std::move(r));
    }
    default:
      break;
  }
  // Discovery without an active health check is a read of the watcher's snapshot: answer it
  // on the io thread (two thread hops per request cost more than the read itself).
  if (m.kind == RouteKind::kInstances && req.method == "GET" &&
      req.Query("healthCheck") != "true") {
    return Finish(ex, req, m, start, api->List(req));
  }
  // Everything else may block on etcd: run it on the worker pool.
  boost::asio::post(*workers, [this, req = std::move(req), m = std::move(m), start, ex]() {
    HttpResponse r;
    switch (m.kind) {
      case RouteKind::kHealthz:
        r = Healthz();
        break;
      case RouteKind::kInstances:
        r = req.method == "POST" ? api->Register(req) : api->List(req);
        break;
      case RouteKind::kInstance:
        if (req.method == "GET") {
          r = api->Get(req, m.id);
        } else if (req.method == "PATCH") {
          r = api->Patch(req, m.id);
        } else {
          r = api->Delete(req, m.id);
        }
        break;
      case RouteKind::kHeartbeat:
        r = api->Heartbeat(req, m.id);
        break;
      default:
        r = ErrorResponse(500, "internal", "unrouted request");
    }
    Finish(ex, req, m, start, std::move(r));
  });
}

void Gateway::Impl::Subscribe(const HttpRequest& req, const RouteMatch& m, absl::Time start,
                              const std::shared_ptr<Exchange>& ex) {
  StreamFilter filter;
  filter.type = req.Query("type");
  filter.group = req.Query("group");
  for (const auto& [what, value] : {std::pair{"type", filter.type}, {"group", filter.group}}) {
    if (value.empty()) continue;
    if (absl::Status s = discovery::ValidateName(what, value); !s.ok()) {
      return Finish(ex, req, m, start, StatusResponse(s));
    }
  }
  int64_t last_event_id = -1;
  std::string last = req.Header("last-event-id");
  if (last.empty()) last = req.Query("lastEventId");
  if (!last.empty() && (!absl::SimpleAtoi(last, &last_event_id) || last_event_id < 0)) {
    last_event_id = -1;  // not one of our ids: start over
  }
  metrics.ObserveRequest(req.method, m.name, 200, absl::Now() - start);
  uint64_t id = hub->NextId();
  EventHub* hub_ptr = hub.get();
  std::shared_ptr<EventStream> stream =
      ex->StartEventStream({}, [hub_ptr, id] { hub_ptr->Detach(id); });
  SPDLOG_LOGGER_DEBUG(logger, "{} subscribed (type={} group={} last-event-id={})", req.remote,
                      filter.type, filter.group, last_event_id);
  hub->Attach(id, std::move(stream), std::move(filter), last_event_id);
}

absl::Status Gateway::Impl::CachedPing() {
  absl::MutexLock lock(&ping_mu);
  if (absl::Now() - ping_at < absl::Seconds(1)) return ping_status;
  auto r = connection->client()->MemberStatus(-1, absl::Seconds(1));
  ping_status = r.status();
  ping_at = absl::Now();
  return ping_status;
}

HttpResponse Gateway::Impl::Healthz() {
  bool synced = watcher->synced();
  absl::Status ping = CachedPing();
  nlohmann::json j = {{"synced", synced}, {"revision", watcher->revision()}};
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
  absl::StatusOr<TokenStore> tokens = TokenStore::Load(options.api_token_file, options.api_token);
  if (!tokens.ok()) return tokens.status();
  impl->tokens = *std::move(tokens);
  if (options.protect_dashboard && !impl->tokens.enabled()) {
    SPDLOG_LOGGER_WARN(impl->logger, "--protect-dashboard without any API token: nothing to check");
  }
  if (options.etcd.logger == nullptr) options.etcd.logger = options.logger;
  auto conn = discovery::Connection::Create(options.etcd);
  if (!conn.ok()) return conn.status();
  impl->connection = *std::move(conn);
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
  impl->api =
      std::make_unique<InstanceApi>(impl->connection, impl->watcher.get(), impl->checker.get(),
                                    InstanceApi::Options{.prefix = options.prefix});
  impl->hub = std::make_unique<EventHub>(impl->watcher.get(), EventHub::Options{});
  impl->hub->Start();
  impl->workers.emplace(static_cast<size_t>(std::max(1, options.worker_threads)));

  HttpServer::Options so;
  so.host = host;
  so.port = port;
  so.io_threads = options.io_threads;
  so.read_timeout = options.read_timeout;
  so.stream_keepalive = options.sse_keepalive;
  so.logger = options.logger;
  Impl* raw = impl.get();
  so.on_protocol_error = [raw](const std::string& method, int status) {
    raw->metrics.ObserveRequest(method.empty() ? "UNKNOWN" : method, "other", status,
                                absl::ZeroDuration());
  };
  auto server = HttpServer::Create(so, [raw](HttpRequest req, std::shared_ptr<Exchange> ex) {
    raw->Handle(std::move(req), std::move(ex));
  });
  if (!server.ok()) {
    impl->hub->Stop();
    return server.status();
  }
  impl->server = *std::move(server);
  std::string shown = host.find(':') != std::string::npos ? absl::StrCat("[", host, "]") : host;
  impl->url = absl::StrCat("http://", shown, ":", impl->server->port(), "/");
  impl->options = std::move(options);
  impl->server->Start();
  SPDLOG_LOGGER_INFO(impl->logger, "discoveryd serving {} (etcd {}, prefix {}, {} API token(s){})",
                     impl->url, absl::StrJoin(impl->options.etcd.endpoints, ","),
                     impl->options.prefix, impl->tokens.size(),
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
  impl_->server->Stop();  // closes streams: each detaches from the hub
  impl_->hub->Stop();
  impl_->workers->join();  // pending API calls finish (their replies go nowhere)
  impl_->server.reset();
  impl_->watcher.reset();
  SPDLOG_LOGGER_INFO(impl_->logger, "discoveryd stopped");
}

}  // namespace discoveryd
