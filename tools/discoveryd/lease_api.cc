#include "lease_api.h"

#include <spdlog/spdlog.h>

#include <limits>
#include <optional>
#include <unordered_map>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "discovery/instance.h"
#include "instance_writer.h"
#include "lease_holder.h"
#include "router.h"
#include "store_backend.h"
#include "store_ops.h"
#include "util/clock.h"
#include "util/event_loop.h"

namespace discoveryd {
namespace {

using nlohmann::json;
namespace util = discovery::util;

constexpr char kLeases[] = "/sd/v1/leases";
constexpr char kHeartbeat[] = "/sd/v1/heartbeat";
constexpr char kWrites[] = "/sd/v1/writes/";

std::string Hex(int64_t v) { return absl::StrFormat("%x", v); }

HttpResponse Invalid(const std::string& message) {
  return ErrorResponse(400, "invalid_argument", message);
}

std::optional<json> ParseBody(const HttpRequest& req, HttpResponse* error) {
  if (!discovery::JsonNestingWithin(req.body, kMaxBodyNesting)) {
    *error = Invalid("request body nests too deep");
    return std::nullopt;
  }
  json j = json::parse(req.body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    *error = ErrorResponse(400, "invalid_json", "request body is not a JSON object");
    return std::nullopt;
  }
  return j;
}

// A lease field: a hex string (or absent when `optional`).
bool LeaseField(const json& j, const char* name, bool optional, int64_t* out, HttpResponse* err) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) {
    if (optional) return true;
    *err = Invalid(absl::StrCat("field \"", name, "\": required (lease id in hex)"));
    return false;
  }
  if (!it->is_string() || !ParseLeaseHex(it->get<std::string>(), out)) {
    *err = Invalid(absl::StrCat("field \"", name, "\": expected a lease id in hex"));
    return false;
  }
  return true;
}

bool IntField(const json& j, const char* name, int64_t* out, HttpResponse* err) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return true;
  if (!it->is_number_integer() || it->get<int64_t>() < 0) {
    *err = Invalid(absl::StrCat("field \"", name, "\": expected a non-negative integer"));
    return false;
  }
  *out = it->get<int64_t>();
  return true;
}

json CurrentJson(const std::optional<discovery::InstanceWriter::Current>& c) {
  if (!c) return nullptr;
  return {{"value", c->value}, {"leaseId", Hex(c->lease_id)}, {"modRevision", c->mod_revision}};
}

}  // namespace

LeaseApi::LeaseApi(std::shared_ptr<discovery::Connection> connection, StoreOps* ops,
                   const TokenStore* tokens, Options options,
                   std::shared_ptr<spdlog::logger> logger)
    : connection_(std::move(connection)),
      ops_(ops),
      tokens_(tokens),
      options_(std::move(options)),
      logger_(std::move(logger)),
      writer_(connection_->backend()->NewInstanceWriter(absl::ZeroDuration())) {
  ArmSweep();
}

void LeaseApi::ArmSweep() {
  util::MutexLock lock(&timer_mu_);
  if (stopping_) return;
  timer_ = connection_->backend()->loop().PostAfter(absl::Seconds(1), [this] {
    Sweep(util::MonoNow());
    ArmSweep();
  });
}

LeaseApi::~LeaseApi() {
  {
    util::MutexLock lock(&timer_mu_);
    stopping_ = true;
    connection_->backend()->loop().Cancel(timer_);
  }
  connection_->backend()->loop().RunSync([] {});  // a sweep running now ends first
  std::vector<int64_t> ids;
  {
    util::MutexLock lock(&mu_);
    for (const auto& [id, t] : tracked_) ids.push_back(id);
    tracked_.clear();
  }
  for (int64_t id : ids) ops_->holder().Forget(id);
}

bool LeaseApi::Matches(const std::string& raw, std::string* route) {
  std::string path = raw;
  if (path.size() > 1 && path.back() == '/') path.pop_back();
  if (path == kLeases || path == kHeartbeat) {
    *route = path;
  } else if (absl::StartsWith(path, absl::StrCat(kLeases, "/"))) {
    *route = "/sd/v1/leases/{id}";
  } else if (absl::StartsWith(path, kWrites)) {
    *route = "/sd/v1/writes/{op}";
  } else {
    return false;
  }
  return true;
}

HttpResponse LeaseApi::Serve(const HttpRequest& req) {
  std::string path = req.path;
  if (path.size() > 1 && path.back() == '/') path.pop_back();
  const bool is_lease = absl::StartsWith(path, absl::StrCat(kLeases, "/"));
  const std::string allowed = is_lease ? "DELETE" : "POST";
  if (req.method != allowed) {
    HttpResponse r = ErrorResponse(
        405, "method_not_allowed",
        absl::StrCat(req.method, " is not allowed on ", path, " (allowed: ", allowed, ")"));
    r.headers.emplace_back("Allow", allowed);
    return r;
  }
  if (tokens_ != nullptr && tokens_->enabled()) {
    std::string token = req.Header("x-api-token");
    Access access = tokens_->Check(token);
    if (access == Access::kNone) {
      return ErrorResponse(401, "unauthenticated",
                           token.empty() ? "missing X-API-Token header" : "invalid X-API-Token");
    }
    if (access != Access::kReadWrite) {
      return ErrorResponse(403, "permission_denied",
                           "this token is read-only; writes need a rw token");
    }
  }
  try {
    if (path == kLeases) return Grant(req);
    if (path == kHeartbeat) return Heartbeat(req);
    if (is_lease) return Revoke(path.substr(std::string(kLeases).size() + 1));
    return Write(path.substr(std::string(kWrites).size()), req);
  } catch (const std::exception& e) {
    SPDLOG_LOGGER_ERROR(logger_, "{} {}: {}", req.method, req.path, e.what());
    return ErrorResponse(500, "internal", "internal error");
  }
}

HttpResponse LeaseApi::Grant(const HttpRequest& req) {
  HttpResponse error;
  std::optional<json> body = ParseBody(req, &error);
  if (!body) return error;
  auto it = body->find("ttlSeconds");
  if (it == body->end() || !it->is_number_integer() || it->get<int64_t>() < 1 ||
      it->get<int64_t>() > options_.max_ttl_seconds) {
    return Invalid(
        absl::StrCat("field \"ttlSeconds\": expected integer 1..", options_.max_ttl_seconds));
  }
  auto granted = ops_->Grant(it->get<int64_t>());
  if (!granted.ok()) return StatusResponse(granted.status());
  return JsonResponse(201, {{"leaseId", Hex(granted->id)}, {"ttlSeconds", granted->ttl_seconds}});
}

HttpResponse LeaseApi::Revoke(const std::string& hex) {
  int64_t lease = 0;
  if (!ParseLeaseHex(hex, &lease)) return Invalid("path: expected /sd/v1/leases/<lease id in hex>");
  Untrack(lease);
  if (absl::Status s = ops_->Revoke(lease); !s.ok()) return StatusResponse(s);
  return JsonResponse(200, json::object());
}

void LeaseApi::Untrack(int64_t lease) {
  bool had = false;
  {
    util::MutexLock lock(&mu_);
    had = tracked_.erase(lease) > 0;
  }
  if (had) ops_->holder().Forget(lease);
}

HttpResponse LeaseApi::Heartbeat(const HttpRequest& req) {
  HttpResponse error;
  std::optional<json> body = ParseBody(req, &error);
  if (!body) return error;
  auto it = body->find("leases");
  if (it == body->end() || !it->is_array()) {
    return Invalid("field \"leases\": expected an array of lease ids (hex)");
  }
  if (it->size() > static_cast<size_t>(options_.max_batch)) {
    return ErrorResponse(
        413, "payload_too_large",
        absl::StrCat("field \"leases\": at most ", options_.max_batch,
                     " lease ids per heartbeat call, got ", it->size(), " (split the batch)"));
  }
  std::vector<int64_t> ids;
  ids.reserve(it->size());
  for (const json& e : *it) {
    int64_t id = 0;
    if (!e.is_string() || !ParseLeaseHex(e.get<std::string>(), &id)) {
      return Invalid("field \"leases\": expected an array of lease ids (hex)");
    }
    ids.push_back(id);
  }
  heartbeat_calls_.fetch_add(1);
  refreshed_.fetch_add(ids.size());
  const absl::Time now = util::MonoNow();
  std::vector<int64_t> unknown;
  json gone = json::array();
  {
    util::MutexLock lock(&mu_);
    for (int64_t id : ids) {
      auto t = tracked_.find(id);
      if (t == tracked_.end()) {
        unknown.push_back(id);
      } else if (t->second.gone) {
        tracked_.erase(t);  // the keeper dropped it already (kLost)
        gone.push_back(Hex(id));
      } else {
        t->second.last_heartbeat = now;
      }
    }
  }
  absl::Status adopt_status;
  if (!unknown.empty()) {
    // First heartbeat here: one refresh proves each lease exists (and tops it up at once, since
    // its last refresh may have come from a discoveryd that is gone), then the keeper's stream.
    // All first sights of the call share one round trip (StoreOps::RefreshMany).
    std::unordered_map<int64_t, int64_t> ttls;
    adopt_status = ops_->RefreshMany(unknown, absl::Seconds(5), &ttls);
    for (int64_t id : unknown) {
      auto a = ttls.find(id);
      if (a == ttls.end()) continue;  // no answer: adopt_status says why
      if (a->second <= 0) {
        gone.push_back(Hex(id));
        continue;
      }
      absl::Duration lease_ttl = absl::Seconds(a->second);
      {
        util::MutexLock lock(&mu_);
        if (!tracked_.emplace(id, Tracked{lease_ttl, now, false}).second) continue;  // duplicate
      }
      adopted_.fetch_add(1);
      ops_->holder().KeepAlive(id, lease_ttl, lease_ttl / 3,
                               [this](const discovery::LeaseHolder::Event& ev) {
                                 if (ev.type != discovery::LeaseHolder::EventType::kLost) return;
                                 util::MutexLock lock(&mu_);
                                 if (auto t = tracked_.find(ev.lease_id); t != tracked_.end()) {
                                   t->second.gone = true;
                                 }
                               });
    }
  }
  if (!adopt_status.ok()) {
    SPDLOG_LOGGER_WARN(logger_, "heartbeat: adopting {} lease(s): {}", unknown.size(),
                       adopt_status.ToString());
    return StatusResponse(adopt_status);
  }
  gone_.fetch_add(gone.size());
  Sweep(now);
  return JsonResponse(200, {{"gone", std::move(gone)}});
}

void LeaseApi::Sweep(absl::Time now) {
  std::vector<int64_t> idle;
  {
    util::MutexLock lock(&mu_);
    if (now - last_sweep_ < absl::Milliseconds(900)) return;
    last_sweep_ = now;
    for (auto t = tracked_.begin(); t != tracked_.end();) {
      if (t->second.gone || now - t->second.last_heartbeat > t->second.ttl) {
        idle.push_back(t->first);
        t = tracked_.erase(t);
      } else {
        ++t;
      }
    }
  }
  idled_.fetch_add(idle.size());
  for (int64_t id : idle) ops_->holder().Forget(id);
  if (!idle.empty()) {
    SPDLOG_LOGGER_DEBUG(logger_, "{} lease(s) without heartbeat for a TTL: no longer kept alive",
                        idle.size());
  }
}

HttpResponse LeaseApi::Write(const std::string& op, const HttpRequest& req) {
  if (op != "put-if-absent" && op != "put-if-unchanged" && op != "delete") {
    return ErrorResponse(
        404, "not_found",
        absl::StrCat("no write \"", op, "\" (put-if-absent, put-if-unchanged, delete)"));
  }
  HttpResponse error;
  std::optional<json> body = ParseBody(req, &error);
  if (!body) return error;
  auto key_it = body->find("key");
  if (key_it == body->end() || !key_it->is_string()) return Invalid("field \"key\": required");
  const std::string key = key_it->get<std::string>();
  if (!absl::StartsWith(key, options_.prefix)) {
    return Invalid(absl::StrCat("field \"key\": must start with this gateway's prefix \"",
                                options_.prefix, "\""));
  }
  std::vector<std::string> parts = absl::StrSplit(key.substr(options_.prefix.size()), '/');
  if (parts.size() != 2) return Invalid("field \"key\": expected <prefix><type>/<instanceId>");
  if (auto s = discovery::ValidateName("type", parts[0]); !s.ok()) return StatusResponse(s);
  if (auto s = discovery::ValidateName("instanceId", parts[1]); !s.ok()) return StatusResponse(s);

  if (op == "delete") {
    discovery::InstanceWriter::DeleteGuard guard;
    if (!LeaseField(*body, "lease", true, &guard.lease, &error) ||
        !IntField(*body, "modRevision", &guard.mod_revision, &error)) {
      return error;
    }
    auto r = writer_->Delete(key, guard);
    if (!r.ok()) return StatusResponse(r.status());
    return JsonResponse(200, {{"deleted", r->deleted},
                              {"leaseId", Hex(r->lease_id)},
                              {"storeRevision", r->store_revision},
                              {"current", CurrentJson(r->current)}});
  }
  int64_t lease = 0;
  int64_t expected = 0;
  auto value_it = body->find("value");
  if (value_it == body->end() || !value_it->is_string())
    return Invalid("field \"value\": required");
  const std::string value = value_it->get<std::string>();
  if (!LeaseField(*body, "leaseId", false, &lease, &error) ||
      !IntField(*body, "expected", &expected, &error)) {
    return error;
  }
  if (value.size() > discovery::kMaxInstanceBytes) {
    return Invalid(
        absl::StrCat("field \"value\": larger than ", discovery::kMaxInstanceBytes, " bytes"));
  }
  auto in = discovery::DecodeInstance(value);
  if (!in.ok()) {
    return Invalid(absl::StrCat("field \"value\": not a valid instance: ", in.status().message()));
  }
  if (in->type != parts[0] || in->instance_id != parts[1]) {
    return Invalid("field \"value\": its type/instanceId do not match the key");
  }
  if (op == "put-if-absent") {
    auto r = writer_->PutIfAbsent(key, value, lease);
    if (!r.ok()) return StatusResponse(r.status());
    return JsonResponse(200, {{"revision", *r}});
  }
  auto r = writer_->PutIfUnchanged(key, value, lease, expected);
  if (!r.ok()) return StatusResponse(r.status());
  return JsonResponse(200, {{"written", r->written},
                            {"revision", r->revision},
                            {"storeRevision", r->store_revision},
                            {"current", CurrentJson(r->current)}});
}

LeaseApi::Stats LeaseApi::stats() {
  Stats s{
      heartbeat_calls_.load(), refreshed_.load(), adopted_.load(), gone_.load(), idled_.load(), 0};
  util::MutexLock lock(&mu_);
  s.tracked = tracked_.size();
  return s;
}

std::string LeaseApi::RenderMetrics() {
  Stats s = stats();
  return absl::StrCat(
      "# HELP discovery_gateway_heartbeat_calls_total Batch heartbeat calls (POST "
      "/sd/v1/heartbeat).\n"
      "# TYPE discovery_gateway_heartbeat_calls_total counter\n"
      "discovery_gateway_heartbeat_calls_total ",
      s.heartbeat_calls, "\n",
      "# HELP discovery_gateway_heartbeat_leases_total Leases named in batch heartbeats.\n"
      "# TYPE discovery_gateway_heartbeat_leases_total counter\n"
      "discovery_gateway_heartbeat_leases_total ",
      s.leases_refreshed, "\n",
      "# HELP discovery_gateway_leases_adopted_total First heartbeats of a lease at this "
      "discoveryd.\n"
      "# TYPE discovery_gateway_leases_adopted_total counter\n"
      "discovery_gateway_leases_adopted_total ",
      s.leases_adopted, "\n",
      "# HELP discovery_gateway_leases_gone_total Leases answered as gone (client re-registers).\n"
      "# TYPE discovery_gateway_leases_gone_total counter\n"
      "discovery_gateway_leases_gone_total ",
      s.leases_gone, "\n",
      "# HELP discovery_gateway_leases_idled_total Leases dropped from the keeper: no heartbeat "
      "for a TTL.\n"
      "# TYPE discovery_gateway_leases_idled_total counter\n"
      "discovery_gateway_leases_idled_total ",
      s.leases_idled, "\n",
      "# HELP discovery_gateway_leases_kept Leases kept alive for gateway-mode clients.\n"
      "# TYPE discovery_gateway_leases_kept gauge\n"
      "discovery_gateway_leases_kept ",
      s.tracked, "\n");
}

}  // namespace discoveryd
