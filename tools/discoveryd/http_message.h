// File: tools/discoveryd/http_message.h
//
// discoveryd's view of one HTTP exchange, independent of sockets and of Boost.Beast: the
// request the handler sees (path and query percent-decoded, header names lower-cased) and the
// response it answers with, plus the JSON response helpers every route uses.
//
//   HttpRequest req;
//   SplitTarget("/sd/v1/instances?type=world&group=kr%2D1", &req);  // path, query
//   HttpResponse r = ErrorResponse(404, "not_found", "no route for /x");
//
// Everything here is a plain value or a pure function: thread-compatible, no I/O.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace discoveryd {

// The server's default request limits (HttpServer::Options, ParserLimits).
inline constexpr size_t kDefaultMaxBodyBytes = 64 * 1024;
inline constexpr size_t kDefaultMaxHeaderBytes = 16 * 1024;

using HeaderList = std::vector<std::pair<std::string, std::string>>;
// An immutable body shared by every response that sends it (written without a copy).
using SharedBody = std::shared_ptr<const std::string>;

struct HttpRequest {
  std::string method;                          // as sent, e.g. "GET"
  std::string target;                          // raw request target
  std::string path;                            // percent-decoded path, without the query
  std::map<std::string, std::string> query;    // percent-decoded; the last value wins
  std::map<std::string, std::string> headers;  // lower-case names; the last value wins
  std::string body;
  std::string remote;  // peer address, for logs

  // Header value by lower-case name, empty when absent.
  std::string Header(std::string_view lower_name) const;
  // Query parameter, empty when absent.
  std::string Query(std::string_view name) const;
  bool HasQuery(std::string_view name) const { return query.count(std::string(name)) > 0; }
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body{};
  // When set, the body sent instead of `body` (a cached answer: no copy per response).
  SharedBody shared_body{};
  HeaderList headers{};
  bool close = false;  // close the connection after this response
};

// Percent-decodes `in` ('+' stays '+'; `plus_as_space` turns it into ' ' for queries).
std::string PercentDecode(std::string_view in, bool plus_as_space);
// Fills path and query from target.
void SplitTarget(std::string_view target, HttpRequest* request);
// {"error":{"code":code,"message":message}} with `status`.
HttpResponse ErrorResponse(int status, const std::string& code, const std::string& message);
// The HTTP response for a failed status: {"error":{"code","message"}} with the mapped status
// (kInvalidArgument 400, kNotFound 404, kAlreadyExists / kAborted / kFailedPrecondition 409,
// kUnavailable / kDeadlineExceeded 503, kUnauthenticated / kPermissionDenied 502, others 500).
HttpResponse StatusResponse(const absl::Status& status);
// `j` serialised (invalid UTF-8 replaced) with `status`.
HttpResponse JsonResponse(int status, const nlohmann::json& j);

}  // namespace discoveryd
