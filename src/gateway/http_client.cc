#include "gateway/http_client.h"

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gateway/transport.h"
#include "nlohmann/json.hpp"
#include "util/clock.h"

namespace discovery::gateway {

namespace beast = boost::beast;
namespace http = beast::http;

absl::StatusOr<Url> ParseUrl(const std::string& text) {
  std::string rest;
  Url u;
  if (absl::StartsWith(text, "http://")) {
    rest = text.substr(7);
  } else if (absl::StartsWith(text, "https://")) {
    rest = text.substr(8);
    u.tls = true;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("gateway URL \"", text, "\": expected http[s]://HOST:PORT[/PATH]"));
  }
  u.text = text;
  size_t slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  if (slash != std::string::npos) u.base_path = rest.substr(slash);
  while (!u.base_path.empty() && u.base_path.back() == '/') u.base_path.pop_back();
  size_t colon = hostport.rfind(':');
  if (hostport.empty() || colon == std::string::npos || colon == 0 ||
      colon + 1 == hostport.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("gateway URL \"", text, "\": expected http[s]://HOST:PORT[/PATH]"));
  }
  u.host = hostport.substr(0, colon);
  if (u.host.size() >= 2 && u.host.front() == '[' && u.host.back() == ']') {
    u.host = u.host.substr(1, u.host.size() - 2);
  }
  u.port = hostport.substr(colon + 1);
  for (char c : u.port) {
    if (c < '0' || c > '9') {
      return absl::InvalidArgumentError(absl::StrCat("gateway URL \"", text, "\": bad port"));
    }
  }
  return u;
}

absl::Status StatusFromHttp(int status, const std::string& body) {
  std::string message = body;
  nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_object() &&
      j["error"].contains("message") && j["error"]["message"].is_string()) {
    message = j["error"]["message"].get<std::string>();
  }
  message = absl::StrCat("gateway answered ", status, ": ", message);
  switch (status) {
    case 400:
      return absl::InvalidArgumentError(message);
    case 401:
      return absl::UnauthenticatedError(message);
    case 403:
      return absl::PermissionDeniedError(message);
    case 404:
      return absl::NotFoundError(message);
    case 409:
    case 412:
      return absl::FailedPreconditionError(message);
    case 502:
    case 503:
    case 504:
      return absl::UnavailableError(message);
    default:
      return absl::UnknownError(message);
  }
}

HttpClient::HttpClient(std::vector<Url> urls, std::string api_token, absl::Duration call_timeout,
                       std::shared_ptr<boost::asio::ssl::context> tls)
    : urls_(std::move(urls)),
      token_(std::move(api_token)),
      timeout_(call_timeout),
      tls_(std::move(tls)) {
  util::MutexLock lock(&mu_);
  idle_.resize(urls_.size());
}

HttpClient::~HttpClient() = default;

absl::StatusOr<HttpResult> HttpClient::Call(const std::string& method, const std::string& path,
                                            const std::string& body, absl::Duration timeout) {
  if (urls_.empty()) return absl::FailedPreconditionError("no gateway URL configured");
  if (timeout <= absl::ZeroDuration()) timeout = timeout_;
  const absl::Time deadline = util::MonoNow() + timeout;
  const size_t start = preferred_.load();
  absl::Status last;
  for (size_t k = 0; k < urls_.size(); ++k) {
    size_t index = (start + k) % urls_.size();
    if (k > 0) failovers_.fetch_add(1);
    // A gateway that accepts but never answers (frozen, overloaded) must not eat the whole
    // deadline: each URL still to try gets an equal share of what is left.
    const absl::Time now = util::MonoNow();
    const absl::Time until = k + 1 < urls_.size() && deadline > now
                                 ? now + (deadline - now) / static_cast<int64_t>(urls_.size() - k)
                                 : deadline;
    auto r = CallOne(index, method, path, body, until);
    if (r.ok() && r->status != 502 && r->status != 503 && r->status != 504) {
      preferred_.store(index);
      return r;
    }
    // The next call starts elsewhere (unless another call already moved on).
    size_t failed = index;
    preferred_.compare_exchange_strong(failed, (index + 1) % urls_.size());
    last = r.ok() ? StatusFromHttp(r->status, r->body) : r.status();
    if (util::MonoNow() >= deadline) break;
  }
  return last;
}

absl::StatusOr<HttpResult> HttpClient::CallOne(size_t index, const std::string& method,
                                               const std::string& path, const std::string& body,
                                               absl::Time deadline) {
  const Url& url = urls_[index];
  std::unique_ptr<GatewayConn> conn;
  {
    util::MutexLock lock(&mu_);
    if (!idle_[index].empty()) {
      conn = std::move(idle_[index].back());
      idle_[index].pop_back();
    }
  }
  // A reused connection the server closed in the meantime fails at once: redial once.
  for (int attempt = 0; attempt < 2; ++attempt) {
    const bool reused = conn != nullptr;
    if (!conn) {
      if (url.tls && tls_ == nullptr) {
        return absl::FailedPreconditionError(
            absl::StrCat("gateway ", url.text, ": https without a TLS context"));
      }
      conn = std::make_unique<GatewayConn>(url.tls ? tls_ : nullptr);
      dials_.fetch_add(1);
      if (absl::Status s = conn->Connect(url, deadline); !s.ok()) return s;
    }
    http::request<http::string_body> req{method == "GET"      ? http::verb::get
                                         : method == "POST"   ? http::verb::post
                                         : method == "PATCH"  ? http::verb::patch
                                         : method == "DELETE" ? http::verb::delete_
                                                              : http::verb::get,
                                         url.base_path + path, 11};
    req.set(http::field::host, url.host + ":" + url.port);
    req.set(http::field::connection, "keep-alive");
    if (!token_.empty()) req.set("X-API-Token", token_);
    if (!body.empty() || method == "POST" || method == "PATCH") {
      req.set(http::field::content_type, "application/json");
      req.body() = body;
      req.prepare_payload();
    }
    beast::error_code ec;
    conn->ExpiresAt(deadline);
    conn->With([&](auto& stream) {
      http::async_write(stream, req, [&ec](beast::error_code e, size_t) { ec = e; });
    });
    conn->Run();
    http::response<http::string_body> res;
    if (!ec) {
      conn->ExpiresAt(deadline);
      conn->With([&](auto& stream) {
        http::async_read(stream, conn->buffer, res, [&ec](beast::error_code e, size_t) { ec = e; });
      });
      conn->Run();
    }
    if (ec) {
      conn.reset();
      if (reused && ec != beast::error::timeout && util::MonoNow() < deadline) continue;
      return absl::UnavailableError(absl::StrCat("gateway ", url.text, ": ", ec.message()));
    }
    HttpResult out{static_cast<int>(res.result_int()), std::move(res.body()), url.text};
    if (res.keep_alive()) {
      util::MutexLock lock(&mu_);
      if (idle_[index].size() < 8) idle_[index].push_back(std::move(conn));
    }
    return out;
  }
  return absl::UnavailableError(absl::StrCat("gateway ", url.text, ": connection lost"));
}

}  // namespace discovery::gateway
