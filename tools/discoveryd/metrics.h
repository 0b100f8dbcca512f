// File: tools/discoveryd/metrics.h
//
// discoveryd's Prometheus metrics, rendered in the text exposition format by prometheus-cpp's
// core library (served by our own HTTP server, not prometheus-cpp's civetweb exposer):
//
//   discovery_http_requests_total{method,route,code}   counter
//   discovery_http_request_duration_seconds{method,route} histogram
//   discovery_http_open_connections                    gauge   (HttpServer::Stats)
//   discovery_http_connections_rejected_total          counter (over --max-connections)
//   discovery_http_accept_pauses_total                 counter (accept() failed: EMFILE...)
//   discovery_sse_slow_clients_closed_total            counter (over --sse-max-backlog)
//   discovery_instances{type,status}                   gauge, from the watcher cache
//   discovery_watch_events_total, discovery_resyncs_total, discovery_watch_invalid_values_total
//   discovery_watch_lag_seconds                        gauge   (WatcherStats::watch_lag)
//   discovery_sse_subscribers                          gauge
//   discovery_sse_max_subscribers, discovery_sse_refused_total (over --max-subscribers)
//   discovery_sse_ring_events, discovery_sse_ring_capacity  gauges (resume ring, bounded)
//   discovery_sse_match_checks_total, discovery_sse_frames_encoded_total,
//   discovery_sse_frames_sent_total, discovery_sse_writes_total  counters (fan-out work)
//   discovery_cache_synced, discovery_cache_revision   gauges
//
// Label values come from fixed sets, whatever a client sends (anyone who can reach the port
// can make up methods and paths; a label per made-up string would grow /metrics without
// bound): method is one of GET HEAD POST PUT PATCH DELETE OPTIONS or "other"; route is one of
// the router's templates or "other"; code is a status 100..599 or "other". ObserveRequest
// applies this itself, so no caller can bypass it.
//
// Thread-safety: thread-safe (SetConnectionStats: once, before serving).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/time/time.h"
#include "discovery/watcher.h"
#include "http_server.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace discoveryd {

// The SSE hub's figures that /metrics shows (read from EventHub::stats()).
struct SseFigures {
  size_t subscribers = 0;
  size_t held = 0;                // clients waiting for the first sync / an agreed epoch
  uint64_t epoch_changes = 0;     // resets sent to subscribers
  uint64_t epoch_failures = 0;    // failed etcd steps of the epoch key (retried with backoff)
  uint64_t match_checks = 0;      // subscribers visited to route events
  uint64_t frames_encoded = 0;    // event frames serialised (once each)
  uint64_t frames_sent = 0;       // frame deliveries (sharing the encoded buffers)
  uint64_t inits_encoded = 0;     // init bursts encoded (once per snapshot and filter)
  size_t inits_cached_bytes = 0;  // of those, kept for the next attach
  uint64_t attach_retries = 0;    // attaches whose snapshot was retaken
  uint64_t refused = 0;           // subscribes refused over --max-subscribers
  size_t max_subscribers = 0;     // 0 = no cap of its own
  size_t ring_events = 0;         // events held for resume
  size_t ring_capacity = 0;
};

class Metrics {
 public:
  Metrics();

  // `route` should be the route template ("/sd/v1/instances/{id}"); anything else counts as
  // "other" (see the label sets above).
  void ObserveRequest(const std::string& method, const std::string& route, int code,
                      absl::Duration duration);

  // Where Render reads the connection gauges and counters from (the HTTP server).
  void SetConnectionStats(std::function<HttpServer::Stats()> source);

  // The label normalisation of ObserveRequest.
  static std::string MethodLabel(std::string_view method);
  static std::string RouteLabel(std::string_view route);
  static std::string CodeLabel(int code);

  // The whole exposition: request metrics plus the gauges read from `watcher` now.
  std::string Render(const discovery::Watcher& watcher, const SseFigures& sse) const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Histogram>* durations_;
  std::function<HttpServer::Stats()> connection_stats_;
};

}  // namespace discoveryd
