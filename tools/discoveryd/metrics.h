// File: tools/discoveryd/metrics.h
//
// discoveryd's Prometheus metrics, rendered in the text exposition format by prometheus-cpp's
// core library (served by our own HTTP server, not prometheus-cpp's civetweb exposer):
//
//   discovery_http_requests_total{method,route,code}   counter
//   discovery_http_request_duration_seconds{method,route} histogram
//   discovery_instances{type,status}                   gauge, from the watcher cache
//   discovery_watch_events_total, discovery_resyncs_total, discovery_watch_invalid_values_total
//   discovery_sse_subscribers                          gauge
//   discovery_cache_synced, discovery_cache_revision   gauges
//
// Thread-safety: thread-safe.
#pragma once

#include <memory>
#include <string>

#include "absl/time/time.h"
#include "discovery/watcher.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace discoveryd {

class Metrics {
 public:
  Metrics();

  // `route` is the route template ("/sd/v1/instances/{id}"), never the raw path, so label
  // cardinality stays bounded.
  void ObserveRequest(const std::string& method, const std::string& route, int code,
                      absl::Duration duration);

  // The whole exposition: request metrics plus the gauges read from `watcher` now.
  std::string Render(const discovery::Watcher& watcher, size_t sse_subscribers) const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Histogram>* durations_;
};

}  // namespace discoveryd
