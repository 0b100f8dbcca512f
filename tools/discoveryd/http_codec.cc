#include "http_codec.h"

#include <algorithm>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/status.hpp>
#include <cstdint>
#include <limits>
#include <string_view>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace discoveryd {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;

bool IsHttpParseError(const boost::system::error_code& ec) {
  return &ec.category() == &http::make_error_code(http::error::bad_target).category();
}

}  // namespace

void NewRequestParser(std::optional<RequestParser>* parser, const ParserLimits& limits) {
  parser->emplace();
  (*parser)->body_limit(limits.max_body_bytes);
  (*parser)->header_limit(static_cast<uint32_t>(
      std::min<size_t>(limits.max_header_bytes, std::numeric_limits<uint32_t>::max())));
}

bool WantsContinue(const RequestParser& parser) {
  const auto& msg = parser.get();
  auto expect = msg.find(http::field::expect);
  return expect != msg.end() && beast::iequals(expect->value(), "100-continue");
}

std::optional<HttpResponse> ReadErrorResponse(const boost::system::error_code& ec,
                                              const ParserLimits& limits) {
  std::optional<HttpResponse> r;
  if (ec == http::error::body_limit) {
    r = ErrorResponse(413, "payload_too_large",
                      absl::StrCat("request body exceeds ", limits.max_body_bytes, " bytes"));
  } else if (ec == http::error::header_limit) {
    r = ErrorResponse(431, "header_too_large", "request headers too large");
  } else if (IsHttpParseError(ec) && ec != http::error::end_of_stream &&
             ec != http::error::partial_message) {
    r = ErrorResponse(400, "bad_request", absl::StrCat("malformed HTTP request: ", ec.message()));
  }
  // Otherwise EOF, reset, timeout of a slow or idle client: just close.
  if (r.has_value()) r->close = true;
  return r;
}

HttpRequest ToHttpRequest(BeastRequest&& message, std::string remote) {
  HttpRequest req;
  req.method = std::string(message.method_string());
  req.target = std::string(message.target());
  SplitTarget(req.target, &req);
  for (const auto& field : message) {
    req.headers[absl::AsciiStrToLower(std::string(field.name_string()))] =
        std::string(field.value());
  }
  req.body = std::move(message.body());
  req.remote = std::move(remote);
  return req;
}

BeastResponse ToBeastResponse(HttpResponse r, bool keep_alive) {
  BeastResponse res;
  res.result(static_cast<unsigned>(r.status));
  res.version(11);
  res.set(http::field::server, "discoveryd");
  if (!r.content_type.empty()) res.set(http::field::content_type, r.content_type);
  for (const auto& [k, v] : r.headers) res.set(k, v);
  res.body() = std::move(r.body);
  res.keep_alive(keep_alive);
  res.prepare_payload();
  return res;
}

std::string SharedBodyHead(const HttpResponse& r, bool keep_alive) {
  const size_t length = r.shared_body != nullptr ? r.shared_body->size() : 0;
  const auto reason = http::obsolete_reason(http::int_to_status(static_cast<unsigned>(r.status)));
  std::string head =
      absl::StrCat("HTTP/1.1 ", r.status, " ", absl::string_view(reason.data(), reason.size()),
                   "\r\nServer: discoveryd\r\n");
  if (!r.content_type.empty()) absl::StrAppend(&head, "Content-Type: ", r.content_type, "\r\n");
  for (const auto& [k, v] : r.headers) absl::StrAppend(&head, k, ": ", v, "\r\n");
  absl::StrAppend(&head, "Content-Length: ", length, "\r\n",
                  keep_alive ? "" : "Connection: close\r\n", "\r\n");
  return head;
}

}  // namespace discoveryd
