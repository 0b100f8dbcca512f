#include "discovery/health_check.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <future>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "util/clock.h"
#include "util/grpc_deadline.h"

namespace discovery {
namespace {

// Connects to host:port within `timeout`; returns the socket or -1.
int ConnectWithin(const std::string& host, int port, absl::Duration timeout) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0) return -1;
  int fd = -1;
  for (addrinfo* ai = res; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      rc = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout))) == 1 ? 0 : -1;
      int err = 0;
      socklen_t len = sizeof(err);
      if (rc == 0 && (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0)) rc = -1;
    }
    if (rc != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  return fd;
}

bool HttpCheck(int fd, const std::string& host, const std::string& path, absl::Time deadline) {
  std::string req = absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: ", host,
                                 "\r\nConnection: close\r\nUser-Agent: discovery-health\r\n\r\n");
  size_t sent = 0;
  while (sent < req.size()) {
    pollfd p{fd, POLLOUT, 0};
    int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - util::MonoNow()));
    if (ms <= 0 || poll(&p, 1, ms) != 1) return false;
    ssize_t n = send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  std::string head;
  while (head.find("\r\n") == std::string::npos && head.size() < 1024) {
    pollfd p{fd, POLLIN, 0};
    int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - util::MonoNow()));
    if (ms <= 0 || poll(&p, 1, ms) != 1) return false;
    char buf[256];
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    head.append(buf, static_cast<size_t>(n));
  }
  // "HTTP/1.x NNN ..."
  if (head.size() < 12 || head.compare(0, 5, "HTTP/") != 0) return false;
  char klass = head[9];
  return klass == '2' || klass == '3';
}

}  // namespace

HealthChecker::HealthChecker(HealthCheckOptions options) : options_(std::move(options)) {}
HealthChecker::~HealthChecker() = default;

bool HealthChecker::Probe(const Instance& in) const {
  int port = options_.port_name.empty() ? 0 : in.Port(options_.port_name);
  if (port == 0 && options_.port_name.empty() && !in.ports.empty()) port = in.ports.begin()->second;
  const std::string& host = in.Address();
  if (port == 0 || host.empty()) return false;
  absl::Time deadline = util::MonoNow() + options_.timeout;
  if (options_.kind == HealthCheckKind::kGrpc) {
    auto channel =
        grpc::CreateChannel(absl::StrCat(host, ":", port), grpc::InsecureChannelCredentials());
    auto stub = grpc::health::v1::Health::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(util::GrpcDeadline(deadline));
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(options_.grpc_service);
    grpc::health::v1::HealthCheckResponse resp;
    grpc::Status s = stub->Check(&ctx, req, &resp);
    return s.ok() && resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  }
  int fd = ConnectWithin(host, port, options_.timeout);
  if (fd < 0) return false;
  bool ok =
      options_.kind == HealthCheckKind::kTcp || HttpCheck(fd, host, options_.http_path, deadline);
  close(fd);
  return ok;
}

bool HealthChecker::IsHealthy(const Instance& in) {
  std::string key =
      absl::StrCat(in.Address(), ":", in.Port(options_.port_name), "/", in.instance_id);
  absl::Time now = util::MonoNow();
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find(key);
    if (it != cache_.end() && now - it->second.at < options_.cache_ttl) return it->second.healthy;
  }
  bool healthy = Probe(in);
  std::lock_guard<std::mutex> lock(mu_);
  cache_[key] = Verdict{healthy, util::MonoNow()};
  if (cache_.size() > 100000) cache_.clear();  // bound memory on churny fleets
  return healthy;
}

std::vector<InstancePtr> HealthChecker::Filter(const std::vector<InstancePtr>& instances) {
  // Cached verdicts first; uncached instances are probed in parallel batches of 32 so one
  // call costs about one timeout per 32 unknown instances, with a bounded thread count.
  constexpr size_t kParallel = 32;
  std::vector<char> healthy(instances.size(), 0);
  std::vector<size_t> unknown;
  absl::Time now = util::MonoNow();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < instances.size(); ++i) {
      const Instance& in = *instances[i];
      auto it = cache_.find(
          absl::StrCat(in.Address(), ":", in.Port(options_.port_name), "/", in.instance_id));
      if (it != cache_.end() && now - it->second.at < options_.cache_ttl) {
        healthy[i] = it->second.healthy;
      } else {
        unknown.push_back(i);
      }
    }
  }
  for (size_t b = 0; b < unknown.size(); b += kParallel) {
    std::vector<std::future<bool>> verdicts;
    size_t end = std::min(unknown.size(), b + kParallel);
    for (size_t k = b; k < end; ++k) {
      const InstancePtr& in = instances[unknown[k]];
      verdicts.push_back(std::async(std::launch::async, [this, in] { return IsHealthy(*in); }));
    }
    for (size_t k = b; k < end; ++k) healthy[unknown[k]] = verdicts[k - b].get();
  }
  std::vector<InstancePtr> out;
  for (size_t i = 0; i < instances.size(); ++i) {
    if (healthy[i]) out.push_back(instances[i]);
  }
  return out;
}

}  // namespace discovery
