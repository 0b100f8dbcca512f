#include "metrics.h"

#include <array>
#include <map>
#include <string_view>
#include <utility>

#include "discovery/instance.h"
#include "prometheus/metric_family.h"
#include "prometheus/text_serializer.h"

namespace discoveryd {
namespace {

prometheus::MetricFamily Scalar(std::string name, std::string help, prometheus::MetricType type,
                                double value) {
  prometheus::MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(std::move(m));
  return f;
}

}  // namespace

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {
  requests_ = &prometheus::BuildCounter()
                   .Name("discovery_http_requests_total")
                   .Help("HTTP requests served by discoveryd, by method, route and status code")
                   .Register(*registry_);
  durations_ = &prometheus::BuildHistogram()
                    .Name("discovery_http_request_duration_seconds")
                    .Help(
                        "Time from a parsed request to its response being handed to the "
                        "socket, by method and route")
                    .Register(*registry_);
}

std::string Metrics::MethodLabel(std::string_view method) {
  static constexpr std::array<std::string_view, 7> kMethods = {"GET",   "HEAD",   "POST",   "PUT",
                                                               "PATCH", "DELETE", "OPTIONS"};
  for (std::string_view m : kMethods) {
    if (method == m) return std::string(m);
  }
  return "other";
}

std::string Metrics::RouteLabel(std::string_view route) {
  // The templates of router.cc's Match(); a route added there shows up as "other" until it
  // is listed here too.
  static constexpr std::array<std::string_view, 7> kRoutes = {"/",
                                                              "/metrics",
                                                              "/healthz",
                                                              "/sd/v1/subscribe",
                                                              "/sd/v1/instances",
                                                              "/sd/v1/instances/{id}",
                                                              "/sd/v1/instances/{id}/heartbeat"};
  for (std::string_view r : kRoutes) {
    if (route == r) return std::string(r);
  }
  return "other";
}

std::string Metrics::CodeLabel(int code) {
  return code >= 100 && code <= 599 ? std::to_string(code) : "other";
}

void Metrics::ObserveRequest(const std::string& method, const std::string& route, int code,
                             absl::Duration duration) {
  std::string m = MethodLabel(method);
  std::string r = RouteLabel(route);
  requests_->Add({{"method", m}, {"route", r}, {"code", CodeLabel(code)}}).Increment();
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  durations_->Add({{"method", m}, {"route", r}}, kBuckets).Observe(absl::ToDoubleSeconds(duration));
}

void Metrics::SetConnectionStats(std::function<HttpServer::Stats()> source) {
  connection_stats_ = std::move(source);
}

std::string Metrics::Render(const discovery::Watcher& watcher, const SseFigures& sse) const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();

  discovery::SnapshotPtr snap = watcher.snapshot();
  prometheus::MetricFamily instances;
  instances.name = "discovery_instances";
  instances.help = "Instances in the gateway's watch cache, by type and status";
  instances.type = prometheus::MetricType::Gauge;
  constexpr std::array kStatuses = {
      discovery::InstanceStatus::kInitializing, discovery::InstanceStatus::kReady,
      discovery::InstanceStatus::kShuttingDown, discovery::InstanceStatus::kError};
  for (const std::string& type : snap->Types()) {
    std::map<discovery::InstanceStatus, int> counts;
    for (const discovery::InstancePtr& in : snap->OfType(type)) ++counts[in->status];
    for (discovery::InstanceStatus status : kStatuses) {
      prometheus::ClientMetric m;
      m.label = {{"status", std::string(discovery::ToString(status))}, {"type", type}};
      m.gauge.value = counts[status];
      instances.metric.push_back(std::move(m));
    }
  }
  families.push_back(std::move(instances));

  discovery::WatcherStats stats = watcher.stats();
  families.push_back(Scalar("discovery_watch_events_total",
                            "etcd watch events applied to the cache",
                            prometheus::MetricType::Counter, static_cast<double>(stats.events)));
  families.push_back(Scalar("discovery_resyncs_total",
                            "Full re-reads of the prefix (compaction, cluster change, rewind)",
                            prometheus::MetricType::Counter, static_cast<double>(stats.resyncs)));
  families.push_back(Scalar("discovery_history_resets_total",
                            "Resyncs that replaced the cache because etcd's history was replaced "
                            "(revision went back: wipe or snapshot restore; new cluster id)",
                            prometheus::MetricType::Counter,
                            static_cast<double>(stats.history_resets)));
  families.push_back(Scalar("discovery_resync_backoffs_total",
                            "Resyncs delayed by the resync rate limit (jittered backoff, 30 s cap)",
                            prometheus::MetricType::Counter,
                            static_cast<double>(stats.resync_backoffs)));
  families.push_back(Scalar("discovery_watch_lag_seconds",
                            "Age of the oldest etcd watch response received and not yet applied "
                            "to the cache (0 when caught up)",
                            prometheus::MetricType::Gauge, absl::ToDoubleSeconds(stats.watch_lag)));
  families.push_back(Scalar("discovery_watch_invalid_values_total",
                            "Values under the prefix skipped as not valid instances",
                            prometheus::MetricType::Counter,
                            static_cast<double>(stats.invalid_values)));
  families.push_back(Scalar("discovery_sse_subscribers", "Open /sd/v1/subscribe streams",
                            prometheus::MetricType::Gauge, static_cast<double>(sse.subscribers)));
  families.push_back(Scalar("discovery_sse_held_subscribers",
                            "SSE clients held until the cache is synced and the epoch agreed",
                            prometheus::MetricType::Gauge, static_cast<double>(sse.held)));
  families.push_back(Scalar("discovery_sse_resets_total",
                            "`reset` events sent to SSE subscribers (history or epoch replaced)",
                            prometheus::MetricType::Counter,
                            static_cast<double>(sse.epoch_changes)));
  families.push_back(Scalar(
      "discovery_sse_epoch_failures_total",
      "Failed store steps of the SSE epoch record, polls included (each retried with backoff)",
      prometheus::MetricType::Counter, static_cast<double>(sse.epoch_failures)));
  families.push_back(Scalar("discovery_sse_match_checks_total",
                            "Subscribers visited to route events (indexed: only matching ones)",
                            prometheus::MetricType::Counter,
                            static_cast<double>(sse.match_checks)));
  families.push_back(Scalar("discovery_sse_frames_encoded_total",
                            "SSE event frames serialised (once per event, shared by clients)",
                            prometheus::MetricType::Counter,
                            static_cast<double>(sse.frames_encoded)));
  families.push_back(Scalar("discovery_sse_frames_sent_total",
                            "SSE event frames queued to subscribers (shared buffers, no copy)",
                            prometheus::MetricType::Counter, static_cast<double>(sse.frames_sent)));
  families.push_back(Scalar("discovery_sse_inits_encoded_total",
                            "SSE init bursts encoded (once per snapshot and filter, shared)",
                            prometheus::MetricType::Counter,
                            static_cast<double>(sse.inits_encoded)));
  families.push_back(Scalar("discovery_sse_inits_cached_bytes",
                            "SSE init bursts kept for the next attach (dropped 1 s after the last)",
                            prometheus::MetricType::Gauge,
                            static_cast<double>(sse.inits_cached_bytes)));
  families.push_back(Scalar("discovery_sse_attach_retries_total",
                            "SSE attaches whose snapshot did not fit the ring and was retaken",
                            prometheus::MetricType::Counter,
                            static_cast<double>(sse.attach_retries)));
  families.push_back(
      Scalar("discovery_sse_max_subscribers", "--max-subscribers (0: no cap but --max-connections)",
             prometheus::MetricType::Gauge, static_cast<double>(sse.max_subscribers)));
  families.push_back(Scalar("discovery_sse_refused_total",
                            "Subscribes answered 503 over --max-subscribers",
                            prometheus::MetricType::Counter, static_cast<double>(sse.refused)));
  families.push_back(Scalar("discovery_sse_ring_events", "Events held for Last-Event-ID resume",
                            prometheus::MetricType::Gauge, static_cast<double>(sse.ring_events)));
  families.push_back(Scalar("discovery_sse_ring_capacity", "Bound of the resume ring (events)",
                            prometheus::MetricType::Gauge, static_cast<double>(sse.ring_capacity)));
  families.push_back(Scalar("discovery_cache_synced", "1 once the watch cache has synced",
                            prometheus::MetricType::Gauge, stats.synced ? 1 : 0));
  families.push_back(Scalar("discovery_cache_revision", "etcd revision of the watch cache",
                            prometheus::MetricType::Gauge, static_cast<double>(stats.revision)));
  if (connection_stats_) {
    HttpServer::Stats c = connection_stats_();
    families.push_back(
        Scalar("discovery_http_open_connections", "Open HTTP connections (SSE streams included)",
               prometheus::MetricType::Gauge, static_cast<double>(c.open_connections)));
    families.push_back(Scalar("discovery_http_connections_rejected_total",
                              "Connections refused (503 or closed) over --max-connections",
                              prometheus::MetricType::Counter,
                              static_cast<double>(c.rejected_connections)));
    families.push_back(Scalar("discovery_http_accept_pauses_total",
                              "Pauses of accepting after accept() failed (EMFILE, ENFILE, ...)",
                              prometheus::MetricType::Counter,
                              static_cast<double>(c.accept_pauses)));
    families.push_back(Scalar("discovery_sse_slow_clients_closed_total",
                              "SSE streams closed for falling more than --sse-max-backlog behind",
                              prometheus::MetricType::Counter,
                              static_cast<double>(c.slow_streams_closed)));
    families.push_back(Scalar("discovery_sse_writes_total",
                              "Socket writes to SSE streams (a burst of queued frames is one)",
                              prometheus::MetricType::Counter,
                              static_cast<double>(c.stream_writes)));
    families.push_back(Scalar("discovery_http_tls_handshake_failures_total",
                              "TLS handshakes that failed or timed out (https only)",
                              prometheus::MetricType::Counter,
                              static_cast<double>(c.tls_handshake_failures)));
  }
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace discoveryd
