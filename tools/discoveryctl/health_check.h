// discoveryctl: active health checks for third-party registration (`register --check-http` /
// `--check-tcp`), and the hysteresis that turns check results into an instance status.
//
//   auto check = HealthCheck::Http("http://127.0.0.1:8080/healthz");
//   HealthTracker tracker;
//   absl::Status result = (*check)->Run(absl::Seconds(2));
//   if (auto next = tracker.Record(result.ok())) registration.SetStatus(*next);
//
// Checks use blocking POSIX sockets bounded by the timeout (name resolution included only for
// numeric hosts and /etc/hosts names; a DNS lookup may take longer). Thread-compatible.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "discovery/instance.h"

namespace discoveryctl {

struct HttpUrl {
  std::string host{};
  std::string port = "80";
  std::string path = "/";  // path and query
};

// Parses "http://host[:port][/path]" (IPv6 as [::1]). kInvalidArgument otherwise (https is
// not supported).
absl::StatusOr<HttpUrl> ParseHttpUrl(const std::string& url);

// Parses "host:port" (IPv6 as [::1]:port). kInvalidArgument otherwise.
absl::StatusOr<std::pair<std::string, std::string>> ParseHostPort(const std::string& host_port);

class HealthCheck {
 public:
  // GET `url`: passes on a 2xx or 3xx status line.
  static absl::StatusOr<std::unique_ptr<HealthCheck>> Http(const std::string& url);
  // Passes when a TCP connection to `host_port` succeeds.
  static absl::StatusOr<std::unique_ptr<HealthCheck>> Tcp(const std::string& host_port);

  // OK when the check passes within `timeout`; otherwise kUnavailable saying why.
  absl::Status Run(absl::Duration timeout) const;
  // "http://..." or "tcp://host:port", for logs.
  const std::string& description() const { return description_; }

 private:
  HealthCheck() = default;
  bool http_ = false;
  std::string host_;
  std::string port_;
  std::string path_;
  std::string description_;
};

// Hysteresis: the first pass -> ready; 3 failures in a row -> error; from error, 2 passes in a
// row -> ready. Until the first verdict the status stays initializing.
class HealthTracker {
 public:
  static constexpr int kFailuresToError = 3;
  static constexpr int kPassesToRecover = 2;

  // Records one result; returns the new status when it changes.
  std::optional<discovery::InstanceStatus> Record(bool passed);
  discovery::InstanceStatus status() const { return status_; }

 private:
  discovery::InstanceStatus status_ = discovery::InstanceStatus::kInitializing;
  int passes_ = 0;
  int failures_ = 0;
};

}  // namespace discoveryctl
