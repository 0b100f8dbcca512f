// File: tools/discoveryd/health_check.h
//
// The optional active health check of `GET /sd/v1/instances?healthCheck=true`: a TCP connect
// to each instance's address and port, all targets in parallel with one short timeout, and a
// short-lived cache of the results so a busy gateway does not connect to every game server on
// every discover call.
//
//   TcpHealthChecker checker({.timeout = absl::Milliseconds(300), .cache_ttl = absl::Seconds(2)});
//   std::vector<bool> up = checker.Check({{"10.0.0.5", 8001}, {"game-02", 8001}});
//
// Thread-safety: thread-safe. Check() blocks up to `timeout` (plus name resolution).
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "util/sync.h"

namespace discoveryd {

class TcpHealthChecker {
 public:
  struct Options {
    absl::Duration timeout = absl::Milliseconds(300);
    absl::Duration cache_ttl = absl::Seconds(2);
  };
  explicit TcpHealthChecker(Options options) : options_(options) {}

  using Target = std::pair<std::string, int>;  // host or IP, port
  // One result per target: true when a TCP connection was accepted within the timeout.
  std::vector<bool> Check(const std::vector<Target>& targets);

 private:
  struct Cached {
    bool up = false;
    absl::Time expires;
  };
  Options options_;
  discovery::util::Mutex mu_;
  std::map<Target, Cached> cache_ ABSL_GUARDED_BY(mu_);
};

}  // namespace discoveryd
