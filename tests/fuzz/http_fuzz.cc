// libFuzzer target for discoveryd's HTTP request handling, without sockets or etcd: the input
// is what a client sends on one connection (one or more pipelined HTTP/1.1 requests). The bytes
// go through the server's own code path (tools/discoveryd/http_codec.h: the parser with the
// server's header/body limits, the answers to unreadable requests, the HttpRequest conversion;
// router.h: routing, token check, validation of every endpoint), each request once with no
// tokens configured and once with tokens and --protect-dashboard. Beyond "no crash, no hang,
// no leak", every outcome is checked:
//   * nothing throws;
//   * every response has a status in 100..599, header values without CR/LF, survives the trip
//     through Beast's serializer and a response parser unchanged, and when it is
//     application/json its body is valid UTF-8 JSON; errors are exactly
//     {"error":{"code":"<snake_case>","message":"..."}}, a 405 names the allowed methods;
//   * a validated call only carries valid names, and a registration (or the result of a PATCH
//     or heartbeat applied to a stored instance) encodes to a value the registry's readers
//     (DecodeInstance) accept and read back unchanged;
//   * with tokens, nothing but a 401 gets through without a valid token, and no write gets
//     through without the rw token.
#include <boost/asio/buffer.hpp>
#include <boost/beast/http.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <variant>

#include "discovery/instance.h"
#include "http_codec.h"
#include "nlohmann/json.hpp"
#include "router.h"

namespace {

namespace http = boost::beast::http;
using discoveryd::Action;
using discoveryd::HttpRequest;
using discoveryd::HttpResponse;
using nlohmann::json;

constexpr int kMaxRequestsPerInput = 16;
constexpr std::string_view kRwToken = "s3cr3t-ops";
constexpr std::string_view kRoToken = "viewer-7f2a";

[[noreturn]] void Fail(std::string_view what, std::string_view detail) {
  std::fprintf(stderr, "http_fuzz invariant violated: %.*s\n%.*s\n", static_cast<int>(what.size()),
               what.data(), static_cast<int>(detail.size()), detail.data());
  std::abort();
}

void Check(bool ok, std::string_view what, std::string_view detail = "") {
  if (!ok) Fail(what, detail);
}

// Strict UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF).
bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;
    for (size_t k = 1; k <= n; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000)) return false;
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

bool IsValidName(const std::string& s) { return discovery::ValidateName("x", s).ok(); }

bool HasCrLf(std::string_view s) {
  return s.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos;
}

bool IsSnakeCase(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || c == '_')) return false;
  }
  return true;
}

std::string Describe(const HttpRequest& req) {
  return req.method + " " + req.target + " (body " + std::to_string(req.body.size()) + " bytes)";
}

void CheckResponse(const HttpResponse& r, bool keep_alive, const std::string& context) {
  std::string where = context + " -> " + std::to_string(r.status) + " " + r.body.substr(0, 300);
  Check(r.status >= 100 && r.status <= 599, "status outside 100..599", where);
  Check(!HasCrLf(r.content_type), "CR/LF in Content-Type", where);
  for (const auto& [k, v] : r.headers) {
    Check(!k.empty() && !HasCrLf(k) && k.find(':') == std::string::npos && !HasCrLf(v),
          "header name or value would split the response", where);
  }
  bool is_json = r.content_type == "application/json";
  json j;
  if (is_json) {
    Check(IsValidUtf8(r.body), "application/json body is not valid UTF-8", where);
    j = json::parse(r.body, nullptr, false);
    Check(!j.is_discarded(), "application/json body is not JSON", where);
  }
  if (r.status >= 400) {
    Check(is_json, "error response is not application/json", where);
    Check(j.is_object() && j.size() == 1 && j.contains("error"), "error body is not {\"error\":..}",
          where);
    const json& e = j["error"];
    Check(e.is_object() && e.size() == 2 && e.contains("code") && e.contains("message") &&
              e["code"].is_string() && e["message"].is_string(),
          "error object is not {\"code\",\"message\"}", where);
    Check(IsSnakeCase(e["code"].get<std::string>()), "error code is not snake_case", where);
  }
  if (r.status == 405) {
    bool allow = false;
    for (const auto& [k, v] : r.headers) allow = allow || (k == "Allow" && !v.empty());
    Check(allow, "405 without Allow", where);
  }
  // What goes on the wire parses back to the same response.
  std::ostringstream wire;
  wire << discoveryd::ToBeastResponse(r, keep_alive);
  std::string bytes = wire.str();
  http::response_parser<http::string_body> parser;
  parser.eager(true);
  parser.body_limit(std::numeric_limits<uint64_t>::max());
  parser.header_limit(1 << 20);
  boost::system::error_code ec;
  parser.put(boost::asio::buffer(bytes), ec);
  Check(!ec && parser.is_done(), "serialised response does not parse back", where + "\n" + bytes);
  const auto& msg = parser.get();
  Check(static_cast<int>(msg.result_int()) == r.status, "status changed on the wire", where);
  Check(msg.body() == r.body, "body changed on the wire", where);
  Check(msg.keep_alive() == keep_alive, "keep-alive changed on the wire", where);
  if (!r.content_type.empty()) {
    Check(msg[http::field::content_type] == r.content_type, "Content-Type changed on the wire",
          where);
  }
}

// `in` as the registry would store it after the gateway wrote it: readers must accept it and
// read it back unchanged.
void CheckStorable(discovery::Instance in, const std::string& where) {
  in.lease_id = std::numeric_limits<int64_t>::max();  // the widest lease id
  std::string value = discovery::EncodeInstance(in);
  Check(value.size() <= discovery::kMaxInstanceBytes, "stored value over kMaxInstanceBytes", where);
  auto back = discovery::DecodeInstance(value);
  Check(back.ok(), "readers reject the stored value",
        where + "\n" + std::string(back.status().message()) + "\n" + value.substr(0, 500));
  Check(discovery::EncodeInstance(*back) == value, "stored value does not round-trip", where);
}

// A stored instance a PATCH or heartbeat could apply to.
discovery::Instance StoredInstance() {
  auto in = discovery::DecodeInstance(
      R"({"instanceId":"01M8A87TXN335DSRWFM1M34GW2","type":"world","group":"kr-1",)"
      R"("hostname":"game-01","privateIp":"127.0.0.1","ports":{"game":8001},)"
      R"("status":"initializing","meta":{"map":"forest"},"performance":{"load":0.5},)"
      R"("startedAt":"2026-11-25T21:01:59.592Z","updatedAt":"2026-11-25T21:01:59.592Z"})");
  if (!in.ok()) Fail("fixture", std::string(in.status().message()));
  return *in;
}

void CheckChanges(const discoveryd::Changes& changes, const std::string& where) {
  static const discovery::Instance base = StoredInstance();
  discovery::Instance in = base;
  if (!discoveryd::ApplyChanges(changes, &in).ok()) return;
  // What InstanceApi's Update writes: only values within the limit (EncodeStorable).
  in.lease_id = std::numeric_limits<int64_t>::max();
  auto value = discoveryd::EncodeStorable(in);
  if (!value.ok()) return;
  auto back = discovery::DecodeInstance(*value);
  Check(back.ok(), "readers reject a patched value",
        where + "\n" + std::string(back.status().message()) + "\n" + value->substr(0, 500));
  Check(discovery::EncodeInstance(*back) == *value, "patched value does not round-trip", where);
}

void CheckRef(const discoveryd::InstanceRef& ref, const std::string& where) {
  Check(IsValidName(ref.id), "call with an invalid instance id", where);
  Check(ref.type.empty() || IsValidName(ref.type), "call with an invalid type", where);
}

bool IsWriteCall(const discoveryd::Call& call) {
  return std::holds_alternative<discoveryd::RegisterCall>(call) ||
         std::holds_alternative<discoveryd::PatchCall>(call) ||
         std::holds_alternative<discoveryd::DeleteCall>(call) ||
         std::holds_alternative<discoveryd::HeartbeatCall>(call);
}

void CheckAction(const Action& a, const HttpRequest& req, bool guarded, bool keep_alive) {
  const std::string where = Describe(req) + " [" + a.route + (guarded ? ", tokens]" : "]");
  static const char* const kRoutes[] = {"other",
                                        "/",
                                        "/metrics",
                                        "/healthz",
                                        "/sd/v1/subscribe",
                                        "/sd/v1/instances",
                                        "/sd/v1/instances/{id}",
                                        "/sd/v1/instances/{id}/heartbeat"};
  bool known = false;
  for (const char* r : kRoutes) known = known || a.route == r;
  Check(known, "metrics label is not a route template", where);

  std::string token = req.Header("x-api-token");
  if (token.empty() && req.method == "GET") token = req.Query("token");
  const bool valid_token = token == kRwToken || token == kRoToken;
  if (const auto* r = std::get_if<HttpResponse>(&a.call)) {
    CheckResponse(*r, keep_alive && !r->close, where);
    if (!guarded) Check(r->status != 401 && r->status != 403, "auth error without tokens", where);
    // The only immediate 200 is the dashboard, protected with --protect-dashboard.
    if (guarded && r->status < 400) Check(valid_token, "dashboard without a valid token", where);
    return;
  }
  // A call made it past authentication.
  if (guarded && a.route != "/healthz") {
    Check(valid_token, "call without a valid token", where);
    if (IsWriteCall(a.call)) Check(token == kRwToken, "write without the rw token", where);
  }
  if (const auto* c = std::get_if<discoveryd::ListCall>(&a.call)) {
    Check(req.method == "GET", "list on a write", where);
    Check(c->filter.type.empty() || IsValidName(c->filter.type), "list: invalid type", where);
    Check(c->filter.group.empty() || IsValidName(c->filter.group), "list: invalid group", where);
  } else if (const auto* c = std::get_if<discoveryd::RegisterCall>(&a.call)) {
    Check(req.method == "POST", "register without POST", where);
    Check(c->ttl_seconds >= 1 && c->ttl_seconds <= 300, "register: ttl out of range", where);
    Check(!c->instance.instance_id.empty(), "register: no instanceId", where);
    Check(discovery::ValidateInstance(c->instance).ok(), "register: invalid instance", where);
    Check(c->instance.started_at != absl::InfinitePast() &&
              c->instance.updated_at != absl::InfinitePast(),
          "register: timestamps unset", where);
    CheckStorable(c->instance, where);
  } else if (const auto* c = std::get_if<discoveryd::GetCall>(&a.call)) {
    CheckRef(c->ref, where);
  } else if (const auto* c = std::get_if<discoveryd::DeleteCall>(&a.call)) {
    CheckRef(c->ref, where);
    Check(c->lease_id >= 0, "delete: negative leaseId", where);
  } else if (const auto* c = std::get_if<discoveryd::PatchCall>(&a.call)) {
    CheckRef(c->ref, where);
    CheckChanges(c->changes, where);
  } else if (const auto* c = std::get_if<discoveryd::HeartbeatCall>(&a.call)) {
    CheckRef(c->ref, where);
    Check(!c->changes.meta.has_value(), "heartbeat with meta", where);
    CheckChanges(c->changes, where);
  } else if (const auto* c = std::get_if<discoveryd::SubscribeCall>(&a.call)) {
    Check(c->type.empty() || IsValidName(c->type), "subscribe: invalid type", where);
    Check(c->group.empty() || IsValidName(c->group), "subscribe: invalid group", where);
    Check(c->last_event_id >= -1, "subscribe: bad last event id", where);
  } else {
    Check(req.method == "GET", "metrics/healthz without GET", where);
  }
}

// Feeds the client's bytes to `parser` the way Beast's read algorithms do (every byte the
// client sent is available at once; after the last one the client half-closes) until the
// header (`header_only`) or the whole message is parsed.
boost::system::error_code Feed(discoveryd::RequestParser& parser, std::string_view* in,
                               bool header_only) {
  for (;;) {
    if (header_only ? parser.is_header_done() : parser.is_done()) return {};
    boost::system::error_code ec;
    if (in->empty()) {  // end of stream
      if (!parser.got_some()) return http::error::end_of_stream;
      parser.put_eof(ec);
      if (!ec && !(header_only ? parser.is_header_done() : parser.is_done())) {
        ec = http::error::partial_message;
      }
      return ec;
    }
    size_t used = parser.put(boost::asio::buffer(in->data(), in->size()), ec);
    in->remove_prefix(used);
    if (ec == http::error::need_more) {
      if (used == 0) *in = {};  // nothing more will come: what is left is an unfinished message
      continue;
    }
    if (ec) return ec;
  }
}

struct Routers {
  Routers()
      : open(discoveryd::RequestRouter::Options{}),
        guarded(discoveryd::RequestRouter::Options{.tokens = Tokens(), .protect_dashboard = true}) {
  }
  static discoveryd::TokenStore Tokens() {
    auto t = discoveryd::TokenStore::Parse(
        std::string(kRwToken) + " rw\n" + std::string(kRoToken) + " ro\n", "fuzz");
    if (!t.ok()) Fail("fixture", std::string(t.status().message()));
    return *std::move(t);
  }
  discoveryd::RequestRouter open;
  discoveryd::RequestRouter guarded;
};

void Run(std::string_view in) {
  static const Routers* routers = new Routers();
  // The gateway runs the server with the default limits.
  const discoveryd::ParserLimits limits{};
  for (int n = 0; n < kMaxRequestsPerInput; ++n) {
    std::optional<discoveryd::RequestParser> parser;
    discoveryd::NewRequestParser(&parser, limits);
    boost::system::error_code ec = Feed(*parser, &in, /*header_only=*/true);
    // The server answers "100 Continue" here, then reads the body.
    if (!ec) (void)discoveryd::WantsContinue(*parser);
    if (!ec) ec = Feed(*parser, &in, /*header_only=*/false);
    if (ec) {
      std::optional<HttpResponse> r = discoveryd::ReadErrorResponse(ec, limits);
      if (r.has_value()) {
        Check(r->close, "protocol error keeps the connection");
        CheckResponse(*r, false, "read error " + ec.message());
      }
      return;  // the connection is closed either way
    }
    discoveryd::BeastRequest msg = parser->release();
    bool keep_alive = msg.keep_alive();
    HttpRequest req = discoveryd::ToHttpRequest(std::move(msg), "fuzz");
    for (const auto& [name, value] : req.headers) {
      Check(name.find_first_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ") == std::string::npos,
            "header name not lower-cased", name);
    }
    Check(req.body.size() <= limits.max_body_bytes, "body over the limit reached the handler");
    CheckAction(routers->open.Route(req), req, false, keep_alive);
    CheckAction(routers->guarded.Route(req), req, true, keep_alive);
    if (!keep_alive) return;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    Run(std::string_view(reinterpret_cast<const char*>(data), size));
  } catch (const std::exception& e) {
    Fail("exception escaped the request handling", e.what());
  } catch (...) {
    Fail("exception escaped the request handling", "(not a std::exception)");
  }
  return 0;
}
