#include "api.h"

#include <functional>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "discovery/instance.h"
#include "etcd/client.h"

namespace discoveryd {
namespace {

namespace pb = ::etcdserverpb;
using nlohmann::json;

constexpr int kUpdateAttempts = 5;

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

std::string LeaseHex(int64_t lease) { return absl::StrFormat("%x", lease); }

// The mutable part of a PATCH or heartbeat body, validated before anything touches etcd.
struct Changes {
  std::optional<discovery::InstanceStatus> status;
  std::optional<std::string> custom_state;
  std::optional<json> performance;
  std::optional<std::map<std::string, std::string>> meta;  // "" = remove the key
  bool empty() const { return !status && !custom_state && !performance && !meta; }
};

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

absl::Status Apply(const Changes& c, discovery::Instance* in) {
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

absl::StatusOr<std::optional<mvccpb::KeyValue>> ReadKey(discovery::etcd::Client& client,
                                                        const std::string& key) {
  pb::RangeRequest rr;
  rr.set_key(key);
  auto r = client.Range(rr);
  if (!r.ok()) return r.status();
  if (r->kvs_size() == 0) return std::optional<mvccpb::KeyValue>();
  return std::optional<mvccpb::KeyValue>(r->kvs(0));
}

// Read-modify-write of one instance under its current lease, retried when another writer
// got in between. kNotFound when the key (or its lease) is gone.
absl::StatusOr<discovery::Instance> Update(
    discovery::etcd::Client& client, const std::string& key,
    const std::function<absl::Status(discovery::Instance*)>& mutate) {
  for (int attempt = 0; attempt < kUpdateAttempts; ++attempt) {
    auto kv = ReadKey(client, key);
    if (!kv.ok()) return kv.status();
    if (!kv->has_value()) return absl::NotFoundError(absl::StrCat("no instance at ", key));
    const mvccpb::KeyValue& cur = **kv;
    auto in = discovery::DecodeInstance(cur.value());
    if (!in.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("stored value is not a valid instance: ", in.status().message()));
    }
    if (absl::Status s = mutate(&*in); !s.ok()) return s;
    in->updated_at = absl::Now();
    in->lease_id = cur.lease();
    pb::TxnRequest txn;
    pb::Compare* cmp = txn.add_compare();
    cmp->set_key(key);
    cmp->set_target(pb::Compare::MOD);
    cmp->set_result(pb::Compare::EQUAL);
    cmp->set_mod_revision(cur.mod_revision());
    pb::PutRequest* put = txn.add_success()->mutable_request_put();
    put->set_key(key);
    put->set_value(discovery::EncodeInstance(*in));
    put->set_lease(cur.lease());
    auto r = client.Txn(txn);
    if (!r.ok()) return r.status();
    if (r->succeeded()) return *std::move(in);
  }
  return absl::AbortedError(absl::StrCat("instance at ", key, " kept changing; retry"));
}

}  // namespace

HttpResponse JsonResponse(int status, const json& j) {
  HttpResponse r;
  r.status = status;
  r.body = j.dump(-1, ' ', false, json::error_handler_t::replace);
  return r;
}

HttpResponse StatusResponse(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
      return ErrorResponse(400, "invalid_argument", std::string(s.message()));
    case absl::StatusCode::kNotFound:
      return ErrorResponse(404, "not_found", std::string(s.message()));
    case absl::StatusCode::kAlreadyExists:
      return ErrorResponse(409, "already_exists", std::string(s.message()));
    case absl::StatusCode::kAborted:
      return ErrorResponse(409, "conflict", std::string(s.message()));
    case absl::StatusCode::kFailedPrecondition:
      return ErrorResponse(409, "failed_precondition", std::string(s.message()));
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return ErrorResponse(503, "unavailable", std::string(s.message()));
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
      return ErrorResponse(502, "etcd_auth", std::string(s.message()));
    default:
      return ErrorResponse(500, "internal", std::string(s.message()));
  }
}

InstanceApi::InstanceApi(std::shared_ptr<discovery::Connection> connection,
                         discovery::Watcher* watcher, TcpHealthChecker* checker, Options options)
    : connection_(std::move(connection)),
      watcher_(watcher),
      checker_(checker),
      options_(std::move(options)) {}

absl::StatusOr<std::string> InstanceApi::KeyFor(const HttpRequest& req,
                                                const std::string& id) const {
  if (absl::Status s = discovery::ValidateName("instanceId", id); !s.ok()) return s;
  std::string type = req.Query("type");
  if (type.empty()) {
    // Convenience: find the type in the cache. Pass ?type= to go to etcd directly.
    discovery::SnapshotPtr snap = watcher_->snapshot();
    for (const std::string& t : snap->Types()) {
      if (snap->Find(t, id) != nullptr) {
        type = t;
        break;
      }
    }
    if (type.empty()) {
      return absl::NotFoundError(
          absl::StrCat("instance ", id, " not found (pass ?type=T to look it up in etcd)"));
    }
  }
  if (absl::Status s = discovery::ValidateName("type", type); !s.ok()) return s;
  return absl::StrCat(options_.prefix, type, "/", id);
}

HttpResponse InstanceApi::Register(const HttpRequest& req) {
  HttpResponse error;
  std::optional<json> body = ParseObject(req.body, false, &error);
  if (!body) return error;
  json& j = *body;
  int ttl = options_.default_ttl_seconds;
  if (auto it = j.find("ttlSeconds"); it != j.end()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 1 ||
        it->get<int64_t>() > options_.max_ttl_seconds) {
      return StatusResponse(
          FieldError("ttlSeconds", absl::StrCat("expected integer 1..", options_.max_ttl_seconds)));
    }
    ttl = static_cast<int>(it->get<int64_t>());
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

  discovery::etcd::Client& client = *connection_->client();
  pb::LeaseGrantRequest grant;
  grant.set_ttl(ttl);
  auto lease = client.LeaseGrant(grant);
  if (!lease.ok()) return StatusResponse(lease.status());
  in->lease_id = lease->id();
  std::string key = absl::StrCat(options_.prefix, in->type, "/", in->instance_id);

  pb::TxnRequest txn;
  pb::Compare* cmp = txn.add_compare();
  cmp->set_key(key);
  cmp->set_target(pb::Compare::CREATE);
  cmp->set_result(pb::Compare::EQUAL);
  cmp->set_create_revision(0);
  pb::PutRequest* put = txn.add_success()->mutable_request_put();
  put->set_key(key);
  put->set_value(discovery::EncodeInstance(*in));
  put->set_lease(lease->id());
  auto r = client.Txn(txn);
  if (!r.ok() || !r->succeeded()) {
    pb::LeaseRevokeRequest revoke;
    revoke.set_id(lease->id());
    (void)client.LeaseRevoke(revoke);
    if (!r.ok()) return StatusResponse(r.status());
    return StatusResponse(absl::AlreadyExistsError(absl::StrCat(
        "instance ", in->instance_id, " of type ", in->type, " is registered already")));
  }
  return JsonResponse(201, {{"instanceId", in->instance_id},
                            {"type", in->type},
                            {"key", key},
                            {"leaseId", LeaseHex(lease->id())},
                            {"ttlSeconds", lease->ttl()},
                            {"revision", r->header().revision()}});
}

HttpResponse InstanceApi::Heartbeat(const HttpRequest& req, const std::string& id) {
  HttpResponse error;
  std::optional<json> body = ParseObject(req.body, true, &error);
  if (!body) return error;
  absl::StatusOr<Changes> changes = ParseChanges(*body, false);
  if (!changes.ok()) return StatusResponse(changes.status());
  absl::StatusOr<std::string> key = KeyFor(req, id);
  if (!key.ok()) return StatusResponse(key.status());

  discovery::etcd::Client& client = *connection_->client();
  auto kv = ReadKey(client, *key);
  if (!kv.ok()) return StatusResponse(kv.status());
  if (!kv->has_value()) {
    return StatusResponse(
        absl::NotFoundError(absl::StrCat("instance ", id, " not found (expired or deregistered)")));
  }
  int64_t lease = (*kv)->lease();
  if (lease == 0) {
    return StatusResponse(absl::FailedPreconditionError(
        absl::StrCat("instance ", id, " is not attached to a lease")));
  }
  absl::StatusOr<int64_t> ttl = client.LeaseKeepAliveOnce(lease);
  if (!ttl.ok()) {
    if (absl::IsNotFound(ttl.status())) {
      return StatusResponse(absl::NotFoundError(
          absl::StrCat("lease ", LeaseHex(lease), " of instance ", id, " expired")));
    }
    return StatusResponse(ttl.status());
  }
  json out = {{"ttlSeconds", *ttl}, {"leaseId", LeaseHex(lease)}};
  if (!changes->empty()) {
    auto updated =
        Update(client, *key, [&](discovery::Instance* in) { return Apply(*changes, in); });
    if (!updated.ok()) return StatusResponse(updated.status());
    out["instance"] = discovery::InstanceToJson(*updated);
  }
  return JsonResponse(200, out);
}

HttpResponse InstanceApi::List(const HttpRequest& req) {
  discovery::Filter filter;
  filter.type = req.Query("type");
  filter.group = req.Query("group");
  if (!filter.type.empty()) {
    if (absl::Status s = discovery::ValidateName("type", filter.type); !s.ok()) {
      return StatusResponse(s);
    }
  }
  if (!filter.group.empty()) {
    if (absl::Status s = discovery::ValidateName("group", filter.group); !s.ok()) {
      return StatusResponse(s);
    }
  }
  if (std::string status = req.Query("status"); !status.empty()) {
    auto st = discovery::ParseInstanceStatus(status);
    if (!st.ok()) return StatusResponse(FieldError("status", st.status().message()));
    filter.status = *st;
  }
  std::string hc = req.Query("healthCheck");
  if (!hc.empty() && hc != "true" && hc != "false" && hc != "1" && hc != "0") {
    return StatusResponse(FieldError("healthCheck", "expected true or false"));
  }
  bool health_check = hc == "true" || hc == "1";
  std::string port_name = req.Query("port");

  discovery::SnapshotPtr snap = watcher_->snapshot();
  const std::string cache_key =
      absl::StrCat(filter.type, "\n", filter.group, "\n",
                   filter.status ? std::string(ToString(*filter.status)) : "");
  if (!health_check) {
    std::lock_guard<std::mutex> lock(list_cache_mu_);
    auto it = list_cache_.find(cache_key);
    if (it != list_cache_.end() && it->second.snapshot == snap) return it->second.response;
  }
  std::vector<discovery::InstancePtr> found = snap->Select(filter);
  if (health_check) {
    std::vector<TcpHealthChecker::Target> targets;
    std::vector<bool> checkable;
    for (const discovery::InstancePtr& in : found) {
      int port = 0;
      if (!port_name.empty()) {
        port = in->Port(port_name);
      } else if (!in->ports.empty()) {
        port = in->ports.begin()->second;  // the first port by name
      }
      checkable.push_back(port > 0 && !in->Address().empty());
      targets.emplace_back(in->Address(), port);
    }
    std::vector<bool> up = checker_->Check(targets);
    std::vector<discovery::InstancePtr> healthy;
    for (size_t i = 0; i < found.size(); ++i) {
      if (checkable[i] && up[i]) healthy.push_back(found[i]);
    }
    found = std::move(healthy);
  }
  json list = json::array();
  for (const discovery::InstancePtr& in : found) list.push_back(discovery::InstanceToJson(*in));
  HttpResponse response =
      JsonResponse(200, {{"revision", snap->revision()}, {"instances", std::move(list)}});
  if (!health_check) {
    std::lock_guard<std::mutex> lock(list_cache_mu_);
    if (list_cache_.size() >= 256) list_cache_.clear();  // bounded: arbitrary query strings
    list_cache_[cache_key] = CachedList{snap, response};
  }
  return response;
}

HttpResponse InstanceApi::Get(const HttpRequest& req, const std::string& id) {
  absl::StatusOr<std::string> key = KeyFor(req, id);
  if (!key.ok()) return StatusResponse(key.status());
  auto kv = ReadKey(*connection_->client(), *key);
  if (!kv.ok()) return StatusResponse(kv.status());
  if (!kv->has_value())
    return StatusResponse(absl::NotFoundError(absl::StrCat("instance ", id, " not found")));
  auto in = discovery::DecodeInstance((*kv)->value());
  if (!in.ok()) {
    return StatusResponse(absl::FailedPreconditionError(
        absl::StrCat("stored value is not a valid instance: ", in.status().message())));
  }
  in->lease_id = (*kv)->lease();
  return JsonResponse(200, discovery::InstanceToJson(*in));
}

HttpResponse InstanceApi::Patch(const HttpRequest& req, const std::string& id) {
  HttpResponse error;
  std::optional<json> body = ParseObject(req.body, false, &error);
  if (!body) return error;
  absl::StatusOr<Changes> changes = ParseChanges(*body, true);
  if (!changes.ok()) return StatusResponse(changes.status());
  absl::StatusOr<std::string> key = KeyFor(req, id);
  if (!key.ok()) return StatusResponse(key.status());
  auto updated = Update(*connection_->client(), *key,
                        [&](discovery::Instance* in) { return Apply(*changes, in); });
  if (!updated.ok()) return StatusResponse(updated.status());
  return JsonResponse(200, discovery::InstanceToJson(*updated));
}

HttpResponse InstanceApi::Delete(const HttpRequest& req, const std::string& id) {
  absl::StatusOr<std::string> key = KeyFor(req, id);
  if (!key.ok()) return StatusResponse(key.status());
  discovery::etcd::Client& client = *connection_->client();
  pb::DeleteRangeRequest del;
  del.set_key(*key);
  del.set_prev_kv(true);
  auto r = client.DeleteRange(del);
  if (!r.ok()) return StatusResponse(r.status());
  if (r->deleted() == 0 || r->prev_kvs_size() == 0) {
    return StatusResponse(absl::NotFoundError(absl::StrCat("instance ", id, " not found")));
  }
  int64_t lease = r->prev_kvs(0).lease();
  bool revoked = false;
  if (lease != 0) {
    // Revoke only when nothing else lives on the lease (a registrar may share one lease
    // between the instances of a process).
    pb::LeaseTimeToLiveRequest ttl;
    ttl.set_id(lease);
    ttl.set_keys(true);
    auto t = client.LeaseTimeToLive(ttl);
    if (t.ok() && t->ttl() > 0 && t->keys_size() == 0) {
      pb::LeaseRevokeRequest revoke;
      revoke.set_id(lease);
      revoked = client.LeaseRevoke(revoke).ok();
    }
  }
  return JsonResponse(200, {{"instanceId", id},
                            {"deleted", true},
                            {"leaseRevoked", revoked},
                            {"revision", r->header().revision()}});
}

}  // namespace discoveryd
