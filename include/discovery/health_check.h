// File: discovery/health_check.h
//
// Optional active health checks at discover time (off unless you use them): TCP connect,
// HTTP GET, or the standard gRPC health service (grpc.health.v1.Health/Check). Results are
// cached for a short time so a busy gateway does not probe an instance per request. A failing
// instance is skipped by the caller, never deleted from etcd.
//
//   discovery::HealthChecker checker({.kind = discovery::HealthCheckKind::kTcp,
//                                     .port_name = "game"});
//   std::vector<discovery::InstancePtr> healthy =
//   checker.Filter(snapshot->OfType("world").ToVector());
//
// Thread-safety: thread-safe. Checks block the caller up to `timeout` per uncached instance
// (Filter probes uncached instances in parallel, so a call blocks about one timeout).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "discovery/instance.h"

namespace discovery {

enum class HealthCheckKind { kTcp, kHttp, kGrpc };

struct HealthCheckOptions {
  HealthCheckKind kind = HealthCheckKind::kTcp;
  // Port of the instance to probe (Instance::ports); the first port when absent.
  std::string port_name = {};
  std::string http_path = "/health";  // kHttp: 2xx/3xx is healthy
  std::string grpc_service = {};      // kGrpc: service name in HealthCheckRequest
  absl::Duration timeout = absl::Milliseconds(500);
  absl::Duration cache_ttl = absl::Seconds(2);
};

class HealthChecker {
 public:
  explicit HealthChecker(HealthCheckOptions options);
  ~HealthChecker();

  // Cached verdict for `instance` (probes when absent or older than cache_ttl).
  bool IsHealthy(const Instance& instance);
  // The healthy subset, same order.
  std::vector<InstancePtr> Filter(const std::vector<InstancePtr>& instances);
  // Probes now, ignoring the cache.
  bool Probe(const Instance& instance) const;

 private:
  struct Verdict {
    bool healthy;
    absl::Time at;
  };
  HealthCheckOptions options_;
  std::mutex mu_;  // a std::mutex so ThreadSanitizer sees it (Debian's abseil is uninstrumented)
  std::map<std::string, Verdict> cache_;  // guarded by mu_; by "host:port"
};

}  // namespace discovery
