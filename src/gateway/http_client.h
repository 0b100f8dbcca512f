// HTTP/1.1 client of the gateway mode (Boost.Beast): keep-alive connections per gateway URL,
// a deadline per call (util::MonoNow), failover between the URLs like the etcd endpoints, the
// API token in X-API-Token (never in the URL). http:// and https:// (transport.h: the server
// certificate verified against the CA, host name checked; a client certificate for mTLS).
//
// Connections: each URL keeps a small stack of idle keep-alive connections; a call takes one
// (or dials), and gives it back when the answer was read whole. In the steady state (one
// heartbeat per interval, occasional writes) that is one connection per gateway.
//
// Failover: a call that cannot reach a URL (connect/transport error, timeout, 502/503/504)
// moves to the next URL and is tried there, each URL at most once per call and with an equal
// share of the time left (a frozen gateway cannot eat the whole deadline); the URL that
// answered becomes the preferred one, a URL that failed stops being it.
//
// Thread-safety: thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "util/sync.h"

namespace boost::asio::ssl {
class context;
}

namespace discovery::gateway {

class GatewayConn;

struct Url {
  std::string host;
  std::string port;
  std::string base_path;  // without the trailing '/'
  std::string text;       // as given
  bool tls = false;       // https://
};
// Parses "http[s]://host:port[/base]". kInvalidArgument for anything else.
absl::StatusOr<Url> ParseUrl(const std::string& url);

struct HttpResult {
  int status = 0;
  std::string body;
  std::string url;  // the gateway that answered
};

// absl::Status for a non-2xx answer: 400 kInvalidArgument, 401 kUnauthenticated, 403
// kPermissionDenied, 404 kNotFound, 409/412 kFailedPrecondition, 503 kUnavailable, else kUnknown;
// the message is the gateway's error message.
absl::Status StatusFromHttp(int status, const std::string& body);

class HttpClient {
 public:
  // `tls`: the context for https:// URLs (transport.h MakeClientTlsContext); may be null when
  // every URL is http://.
  HttpClient(std::vector<Url> urls, std::string api_token, absl::Duration call_timeout,
             std::shared_ptr<boost::asio::ssl::context> tls = nullptr);
  ~HttpClient();

  // One request; fails over between URLs. Non-2xx answers are returned as results.
  absl::StatusOr<HttpResult> Call(const std::string& method, const std::string& path,
                                  const std::string& body,
                                  absl::Duration timeout = absl::ZeroDuration());
  const std::vector<Url>& urls() const { return urls_; }
  const std::string& api_token() const { return token_; }
  // The URL index calls start with (the last one that answered).
  size_t preferred() const { return preferred_.load(); }
  uint64_t failovers() const { return failovers_.load(); }
  uint64_t dials() const { return dials_.load(); }

 private:
  absl::StatusOr<HttpResult> CallOne(size_t index, const std::string& method,
                                     const std::string& path, const std::string& body,
                                     absl::Time deadline);

  std::vector<Url> urls_;
  std::string token_;
  absl::Duration timeout_;
  std::shared_ptr<boost::asio::ssl::context> tls_;
  std::atomic<size_t> preferred_{0};
  std::atomic<uint64_t> failovers_{0};
  std::atomic<uint64_t> dials_{0};
  util::Mutex mu_;
  std::vector<std::vector<std::unique_ptr<GatewayConn>>> idle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace discovery::gateway
