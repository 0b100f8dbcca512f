#include "router.h"

#include <algorithm>
#include <limits>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "dashboard_html.h"

namespace discoveryd {
namespace {

using nlohmann::json;

enum class RouteKind {
  kNone,
  kDashboard,
  kMetrics,
  kHealthz,
  kInstances,
  kInstance,
  kHeartbeat,
  kSubscribe
};

struct RouteMatch {
  RouteKind kind = RouteKind::kNone;
  std::string name = "other";  // route template, the metrics label
  std::string id;
  std::vector<std::string> methods;
};

RouteMatch Match(const std::string& raw_path) {
  std::string path = raw_path;
  if (path.size() > 1 && path.back() == '/') path.pop_back();
  RouteMatch m;
  if (path == "/" || path == "/index.html") {
    m = {RouteKind::kDashboard, "/", "", {"GET"}};
  } else if (path == "/metrics") {
    m = {RouteKind::kMetrics, "/metrics", "", {"GET"}};
  } else if (path == "/healthz") {
    m = {RouteKind::kHealthz, "/healthz", "", {"GET"}};
  } else if (path == "/sd/v1/subscribe") {
    m = {RouteKind::kSubscribe, "/sd/v1/subscribe", "", {"GET"}};
  } else if (path == "/sd/v1/instances") {
    m = {RouteKind::kInstances, "/sd/v1/instances", "", {"GET", "POST"}};
  } else if (absl::StartsWith(path, "/sd/v1/instances/")) {
    std::vector<std::string> parts =
        absl::StrSplit(path.substr(std::string("/sd/v1/instances/").size()), '/');
    if (parts.size() == 1 && !parts[0].empty()) {
      m = {RouteKind::kInstance, "/sd/v1/instances/{id}", parts[0], {"GET", "PATCH", "DELETE"}};
    } else if (parts.size() == 2 && !parts[0].empty() && parts[1] == "heartbeat") {
      m = {RouteKind::kHeartbeat, "/sd/v1/instances/{id}/heartbeat", parts[0], {"POST"}};
    }
  }
  return m;
}

bool IsWrite(const std::string& method) { return method != "GET" && method != "HEAD"; }

HttpResponse BadJson(const std::string& why) {
  return ErrorResponse(400, "invalid_json", absl::StrCat("request body is not valid JSON: ", why));
}

// Parses a JSON object body. `allow_empty`: an empty body is an empty object.
std::optional<json> ParseObject(const std::string& body, bool allow_empty, HttpResponse* error) {
  if (body.find_first_not_of(" \t\r\n") == std::string::npos) {
    if (allow_empty) return json::object();
    *error = BadJson("empty body");
    return std::nullopt;
  }
  if (!discovery::JsonNestingWithin(body, kMaxBodyNesting)) {
    *error = ErrorResponse(
        400, "invalid_json",
        absl::StrCat("request body nests arrays/objects deeper than ", kMaxBodyNesting, " levels"));
    return std::nullopt;
  }
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded()) {
    *error = BadJson("parse error");
    return std::nullopt;
  }
  if (!j.is_object()) {
    *error = BadJson("expected a JSON object");
    return std::nullopt;
  }
  return j;
}

absl::Status FieldError(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("field \"", field, "\": ", problem));
}

absl::StatusOr<Changes> ParseChanges(const json& body, bool allow_meta) {
  Changes c;
  for (const auto& [key, value] : body.items()) {
    if (key == "status") {
      if (!value.is_string()) return FieldError("status", "expected string");
      auto st = discovery::ParseInstanceStatus(value.get<std::string>());
      if (!st.ok()) return FieldError("status", st.status().message());
      c.status = *st;
    } else if (key == "customState") {
      if (!value.is_string()) return FieldError("customState", "expected string");
      c.custom_state = value.get<std::string>();
    } else if (key == "performance") {
      if (!value.is_object()) return FieldError("performance", "expected object");
      c.performance = value;
    } else if (key == "meta" && allow_meta) {
      if (!value.is_object()) return FieldError("meta", "expected object");
      std::map<std::string, std::string> meta;
      for (const auto& [mk, mv] : value.items()) {
        if (mv.is_null()) {
          meta[mk] = "";
        } else if (mv.is_string()) {
          meta[mk] = mv.get<std::string>();
        } else {
          return FieldError(absl::StrCat("meta.", mk), "expected string or null");
        }
      }
      c.meta = std::move(meta);
    } else {
      return FieldError(key, allow_meta
                                 ? "unknown field (allowed: status, customState, performance, meta)"
                                 : "unknown field (allowed: status, customState, performance)");
    }
  }
  return c;
}

// The id from the path and ?type= (validated; an empty type is looked up later).
absl::StatusOr<InstanceRef> ParseRef(const HttpRequest& req, const std::string& id) {
  if (absl::Status s = discovery::ValidateName("instanceId", id); !s.ok()) return s;
  InstanceRef ref{id, req.Query("type")};
  if (!ref.type.empty()) {
    if (absl::Status s = discovery::ValidateName("type", ref.type); !s.ok()) return s;
  }
  return ref;
}

HttpResponse DashboardResponse() {
  HttpResponse r;
  r.content_type = "text/html; charset=utf-8";
  r.body = std::string(kDashboardHtml);
  r.headers = {{"Cache-Control", "no-cache"},
               {"Content-Security-Policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                "connect-src 'self'; img-src 'self' data:"}};
  return r;
}

Call List(const HttpRequest& req) {
  ListCall c;
  c.filter.type = req.Query("type");
  c.filter.group = req.Query("group");
  if (!c.filter.type.empty()) {
    if (absl::Status s = discovery::ValidateName("type", c.filter.type); !s.ok()) {
      return StatusResponse(s);
    }
  }
  if (!c.filter.group.empty()) {
    if (absl::Status s = discovery::ValidateName("group", c.filter.group); !s.ok()) {
      return StatusResponse(s);
    }
  }
  if (std::string status = req.Query("status"); !status.empty()) {
    auto st = discovery::ParseInstanceStatus(status);
    if (!st.ok()) return StatusResponse(FieldError("status", st.status().message()));
    c.filter.status = *st;
  }
  std::string hc = req.Query("healthCheck");
  if (!hc.empty() && hc != "true" && hc != "false" && hc != "1" && hc != "0") {
    return StatusResponse(FieldError("healthCheck", "expected true or false"));
  }
  c.health_check = hc == "true" || hc == "1";
  c.port_name = req.Query("port");
  if (req.HasQuery("waitIndex")) {
    if (!absl::SimpleAtoi(req.Query("waitIndex"), &c.wait_index) || c.wait_index < 0) {
      return StatusResponse(
          FieldError("waitIndex", "expected a revision (X-Discovery-Index of an earlier answer)"));
    }
    if (c.health_check) {
      return StatusResponse(FieldError("waitIndex", "cannot be combined with healthCheck"));
    }
  }
  if (req.HasQuery("wait")) {
    const std::string w = req.Query("wait");
    int64_t seconds = 0;
    absl::Duration d;
    if (absl::SimpleAtoi(w, &seconds) && seconds >= 0 && seconds <= 86400) {
      d = absl::Seconds(seconds);
    } else if (!absl::ParseDuration(w, &d) || d < absl::ZeroDuration() ||
               d == absl::InfiniteDuration()) {
      return StatusResponse(FieldError("wait", "expected a duration such as 30s or 5m"));
    }
    c.wait = std::min(d, absl::Minutes(5));  // the documented maximum
  }
  return c;
}

Call Register(const HttpRequest& req, const RequestRouter::Options& options) {
  HttpResponse error;
  std::optional<json> body = ParseObject(req.body, false, &error);
  if (!body) return error;
  json& j = *body;
  RegisterCall c;
  c.ttl_seconds = options.default_ttl_seconds;
  if (auto it = j.find("ttlSeconds"); it != j.end()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 1 ||
        it->get<int64_t>() > options.max_ttl_seconds) {
      return StatusResponse(
          FieldError("ttlSeconds", absl::StrCat("expected integer 1..", options.max_ttl_seconds)));
    }
    c.ttl_seconds = static_cast<int>(it->get<int64_t>());
    j.erase(it);
  }
  j.erase("leaseId");  // the gateway grants the lease
  if (auto it = j.find("instanceId");
      it == j.end() || it->is_null() || (it->is_string() && it->get<std::string>().empty())) {
    j["instanceId"] = discovery::NewUlid();
  }
  absl::StatusOr<discovery::Instance> in = discovery::InstanceFromJson(j);
  if (!in.ok()) return StatusResponse(in.status());
  if (absl::Status s = discovery::ValidateInstance(*in); !s.ok()) return StatusResponse(s);
  absl::Time now = absl::Now();
  if (in->started_at == absl::InfinitePast()) in->started_at = now;
  in->updated_at = now;
  // The stored value gets a lease id: measure it with the widest one.
  in->lease_id = std::numeric_limits<int64_t>::max();
  if (auto encoded = EncodeStorable(*in); !encoded.ok()) return StatusResponse(encoded.status());
  in->lease_id = 0;
  c.instance = *std::move(in);
  return c;
}

Call Subscribe(const HttpRequest& req) {
  SubscribeCall c;
  c.type = req.Query("type");
  c.group = req.Query("group");
  for (const auto& [what, value] : {std::pair{"type", c.type}, {"group", c.group}}) {
    if (value.empty()) continue;
    if (absl::Status s = discovery::ValidateName(what, value); !s.ok()) return StatusResponse(s);
  }
  std::string last = req.Header("last-event-id");
  if (last.empty()) last = req.Query("lastEventId");
  if (!last.empty() && !ParseEventId(last, &c.last_event_epoch, &c.last_event_id)) {
    c.last_event_epoch.clear();  // not one of our ids: start over
    c.last_event_id = -1;
  }
  return c;
}

// PATCH (meta allowed, body required) and heartbeat (no meta, empty body allowed).
template <class CallT>
Call Update(const HttpRequest& req, const std::string& id, bool is_patch) {
  HttpResponse error;
  std::optional<json> body = ParseObject(req.body, !is_patch, &error);
  if (!body) return error;
  absl::StatusOr<Changes> changes = ParseChanges(*body, is_patch);
  if (!changes.ok()) return StatusResponse(changes.status());
  absl::StatusOr<InstanceRef> ref = ParseRef(req, id);
  if (!ref.ok()) return StatusResponse(ref.status());
  return CallT{*std::move(ref), *std::move(changes)};
}

// DELETE: the id, ?type= and the lease the caller means (?leaseId=<hex> and/or
// If-Match: "<hex>"; If-Match: * means any registration).
Call Delete(const HttpRequest& req, const std::string& id) {
  absl::StatusOr<InstanceRef> ref = ParseRef(req, id);
  if (!ref.ok()) return StatusResponse(ref.status());
  DeleteCall c{*std::move(ref)};
  if (std::string q = req.Query("leaseId"); !q.empty() && !ParseLeaseHex(q, &c.lease_id)) {
    return StatusResponse(FieldError("leaseId", "expected the registration's leaseId (hex)"));
  }
  const std::string if_match = req.Header("if-match");
  absl::string_view tag = absl::StripAsciiWhitespace(if_match);
  if (!tag.empty() && tag != "*") {
    int64_t lease = 0;
    if (tag.size() < 2 || tag.front() != '"' || tag.back() != '"' ||
        !ParseLeaseHex(tag.substr(1, tag.size() - 2), &lease)) {
      return ErrorResponse(400, "invalid_argument",
                           "header \"If-Match\": expected one entity tag \"<leaseId>\" (the "
                           "registration's leaseId in hex, in double quotes) or *");
    }
    if (c.lease_id != 0 && c.lease_id != lease) {
      return ErrorResponse(400, "invalid_argument", "?leaseId= and If-Match name different leases");
    }
    c.lease_id = lease;
  }
  return c;
}

template <class CallT>
Call ById(const HttpRequest& req, const std::string& id) {
  absl::StatusOr<InstanceRef> ref = ParseRef(req, id);
  if (!ref.ok()) return StatusResponse(ref.status());
  return CallT{*std::move(ref)};
}

}  // namespace

// A lease id as the API prints it: 1..16 hex digits, not 0.
bool ParseLeaseHex(absl::string_view text, int64_t* lease) {
  if (text.empty() || text.size() > 16) return false;
  uint64_t v = 0;
  for (char ch : text) {
    int d = 0;
    if (ch >= '0' && ch <= '9') {
      d = ch - '0';
    } else if (ch >= 'a' && ch <= 'f') {
      d = ch - 'a' + 10;
    } else if (ch >= 'A' && ch <= 'F') {
      d = ch - 'A' + 10;
    } else {
      return false;
    }
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  if (v == 0 || v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
  *lease = static_cast<int64_t>(v);
  return true;
}

absl::Status ApplyChanges(const Changes& c, discovery::Instance* in) {
  if (c.status && *c.status != in->status) {
    if (!discovery::IsValidTransition(in->status, *c.status)) {
      std::string from(discovery::ToString(in->status));
      std::string to(discovery::ToString(*c.status));
      return FieldError("status", absl::StrCat("transition ", from, " -> ", to, " is not allowed"));
    }
    in->status = *c.status;
  }
  if (c.custom_state) in->custom_state = *c.custom_state;
  if (c.performance) in->performance = *c.performance;
  if (c.meta) {
    for (const auto& [k, v] : *c.meta) {
      if (v.empty()) {
        in->meta.erase(k);
      } else {
        in->meta[k] = v;
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> EncodeStorable(const discovery::Instance& instance) {
  std::string value = discovery::EncodeInstance(instance);
  if (value.size() > discovery::kMaxInstanceBytes) {
    return absl::InvalidArgumentError(absl::StrCat("the instance would be stored as ", value.size(),
                                                   " bytes of JSON; the limit is ",
                                                   discovery::kMaxInstanceBytes));
  }
  return value;
}

Action RequestRouter::Route(const HttpRequest& req) const {
  RouteMatch m = Match(req.path);
  Action a;
  a.route = m.name;
  if (m.kind == RouteKind::kNone) {
    a.call = ErrorResponse(404, "not_found", absl::StrCat("no route for ", req.path));
    return a;
  }
  if (std::find(m.methods.begin(), m.methods.end(), req.method) == m.methods.end()) {
    HttpResponse r =
        ErrorResponse(405, "method_not_allowed",
                      absl::StrCat(req.method, " is not allowed on ", m.name,
                                   " (allowed: ", absl::StrJoin(m.methods, ", "), ")"));
    r.headers.emplace_back("Allow", absl::StrJoin(m.methods, ", "));
    a.call = std::move(r);
    return a;
  }
  bool is_api = m.kind == RouteKind::kInstances || m.kind == RouteKind::kInstance ||
                m.kind == RouteKind::kHeartbeat || m.kind == RouteKind::kSubscribe;
  bool guarded = is_api || (options_.protect_dashboard &&
                            (m.kind == RouteKind::kDashboard || m.kind == RouteKind::kMetrics));
  if (guarded && options_.tokens.enabled()) {
    std::string token = req.Header("x-api-token");
    // Browsers cannot set headers on EventSource or page loads: accept ?token= on GETs.
    if (token.empty() && req.method == "GET") token = req.Query("token");
    Access access = options_.tokens.Check(token);
    if (access == Access::kNone) {
      a.call = ErrorResponse(401, "unauthenticated",
                             token.empty() ? "missing X-API-Token header" : "invalid X-API-Token");
      return a;
    }
    if (IsWrite(req.method) && access != Access::kReadWrite) {
      a.call = ErrorResponse(403, "permission_denied",
                             "this token is read-only; writes need a rw token");
      return a;
    }
  }
  switch (m.kind) {
    case RouteKind::kDashboard:
      a.call = DashboardResponse();
      break;
    case RouteKind::kMetrics:
      a.call = MetricsCall{};
      break;
    case RouteKind::kHealthz:
      a.call = HealthzCall{};
      break;
    case RouteKind::kSubscribe:
      a.call = Subscribe(req);
      break;
    case RouteKind::kInstances:
      a.call = req.method == "POST" ? Register(req, options_) : List(req);
      break;
    case RouteKind::kInstance:
      if (req.method == "GET") {
        a.call = ById<GetCall>(req, m.id);
      } else if (req.method == "PATCH") {
        a.call = Update<PatchCall>(req, m.id, /*is_patch=*/true);
      } else {
        a.call = Delete(req, m.id);
      }
      break;
    case RouteKind::kHeartbeat:
      a.call = Update<HeartbeatCall>(req, m.id, /*is_patch=*/false);
      break;
    case RouteKind::kNone:
      break;
  }
  return a;
}

bool ParseEventId(std::string_view id, std::string* epoch, int64_t* revision) {
  size_t dot = id.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot > 32) return false;
  for (char ch : id.substr(0, dot)) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(ch))) return false;
  }
  std::string_view digits = id.substr(dot + 1);
  if (digits.empty() || digits.size() > 18) return false;
  int64_t rev = 0;
  for (char ch : digits) {
    if (ch < '0' || ch > '9') return false;
    rev = rev * 10 + (ch - '0');
  }
  *epoch = std::string(id.substr(0, dot));
  *revision = rev;
  return true;
}

}  // namespace discoveryd
