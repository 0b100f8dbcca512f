#include "api.h"

#include <functional>
#include <optional>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "discovery/instance.h"
#include "instance_writer.h"
#include "store_backend.h"
#include "store_ops.h"

namespace discoveryd {
namespace {

using nlohmann::json;

constexpr int kUpdateAttempts = 5;

std::string LeaseHex(int64_t lease) { return absl::StrFormat("%x", lease); }

// The instance stored at `key` (`<prefix><type>/<id>`, built from validated names), under the
// watcher's rules: it decodes, and its type/instanceId are the ones the key names (a value
// naming another instance is somebody's garbage, never served or rewritten as this one).
absl::StatusOr<discovery::Instance> DecodeStored(const std::string& key, const std::string& value) {
  auto in = discovery::DecodeInstance(value);
  if (!in.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("stored value is not a valid instance: ", in.status().message()));
  }
  if (!absl::EndsWith(key, absl::StrCat("/", in->type, "/", in->instance_id))) {
    return absl::FailedPreconditionError(
        "stored value is not a valid instance: type/instanceId in the value do not match the key");
  }
  return in;
}

// Read-modify-write of one instance under its current lease, retried when another writer
// got in between. kNotFound when the key (or its lease) is gone.
absl::StatusOr<discovery::Instance> Update(
    discovery::InstanceWriter& writer, const std::string& key,
    const std::function<absl::Status(discovery::Instance*)>& mutate) {
  for (int attempt = 0; attempt < kUpdateAttempts; ++attempt) {
    auto kv = writer.Read(key);
    if (!kv.ok()) return kv.status();
    if (!kv->has_value()) return absl::NotFoundError(absl::StrCat("no instance at ", key));
    const discovery::InstanceWriter::Current& cur = **kv;
    auto in = DecodeStored(key, cur.value);
    if (!in.ok()) return in.status();
    if (absl::Status s = mutate(&*in); !s.ok()) return s;
    in->updated_at = absl::Now();
    in->lease_id = cur.lease_id;
    absl::StatusOr<std::string> value = EncodeStorable(*in);
    if (!value.ok()) return value.status();
    auto r = writer.PutIfUnchanged(key, *value, cur.lease_id, cur.mod_revision);
    if (!r.ok()) return r.status();
    if (r->written) return *std::move(in);
  }
  return absl::AbortedError(absl::StrCat("instance at ", key, " kept changing; retry"));
}

// True when `stored` (the value at `key`) is `in` as a client would send it again: every
// field equal except the ones the gateway fills in (startedAt, updatedAt, leaseId).
bool SameRegistration(const discovery::Instance& in, const std::string& key,
                      const std::string& stored) {
  auto theirs = DecodeStored(key, stored);
  if (!theirs.ok()) return false;
  json a = discovery::InstanceToJson(in);
  json b = discovery::InstanceToJson(*theirs);
  for (const char* f : {"startedAt", "updatedAt", "leaseId"}) {
    a.erase(f);
    b.erase(f);
  }
  return a == b;
}

}  // namespace

InstanceApi::InstanceApi(std::shared_ptr<discovery::Connection> connection, StoreOps* ops,
                         discovery::Watcher* watcher, TcpHealthChecker* checker, Options options)
    : connection_(std::move(connection)),
      ops_(ops),
      writer_(connection_->backend()->NewInstanceWriter(absl::ZeroDuration())),
      watcher_(watcher),
      checker_(checker),
      options_(std::move(options)) {
  ids_feed_ = watcher_->Subscribe(
      {}, [this](const discovery::ChangeEvent& ev) { ids_.Apply(ev); }, /*initial=*/true);
}

InstanceApi::~InstanceApi() = default;

absl::StatusOr<std::string> InstanceApi::KeyFor(const InstanceRef& ref) const {
  const std::string& id = ref.id;
  std::string type = ref.type;
  if (type.empty()) {
    // Convenience: the type from the cache (O(1), id_index.h). ?type= goes to the store directly.
    std::vector<std::string> types = ids_.TypesOf(id);
    if (types.empty()) {
      return absl::NotFoundError(
          absl::StrCat("instance ", id, " not found (pass ?type=T to look it up in the store)"));
    }
    if (types.size() > 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("instance id ", id, " is registered under several types (",
                       absl::StrJoin(types, ", "), "): pass ?type=T"));
    }
    type = std::move(types.front());
  }
  if (absl::Status s = discovery::ValidateName("type", type); !s.ok()) return s;
  return absl::StrCat(options_.prefix, type, "/", id);
}

HttpResponse InstanceApi::Register(const RegisterCall& call) {
  discovery::Instance in = call.instance;
  absl::StatusOr<StoreOps::Granted> lease = ops_->Grant(call.ttl_seconds);
  if (!lease.ok()) return StatusResponse(lease.status());
  const int64_t own = lease->id;
  in.lease_id = own;
  std::string key = absl::StrCat(options_.prefix, in.type, "/", in.instance_id);
  auto revoke_own = [&] { (void)ops_->Revoke(own); };
  auto created = [&](int64_t lease_id, int64_t ttl, int64_t revision, int status) {
    return JsonResponse(status, {{"instanceId", in.instance_id},
                                 {"type", in.type},
                                 {"key", key},
                                 {"leaseId", LeaseHex(lease_id)},
                                 {"ttlSeconds", ttl},
                                 {"revision", revision}});
  };

  // Expected mod revision 0: the key is absent.
  auto r = writer_->PutIfUnchanged(key, discovery::EncodeInstance(in), own, 0);
  if (!r.ok()) {
    // Unknown outcome: take our lease (and with it a key it may have written) back; the
    // client retries on the 503.
    revoke_own();
    return StatusResponse(r.status());
  }
  if (r->written) return created(own, lease->ttl_seconds, r->revision, 201);

  if (r->current.has_value()) {
    const discovery::InstanceWriter::Current& kv = *r->current;
    // The client retried this Txn after its first attempt was applied: our own write.
    if (kv.lease_id == own) return created(own, lease->ttl_seconds, kv.mod_revision, 201);
    // A retried POST (the client never saw the first answer): the same instance is registered
    // under the lease of the first attempt. Answer with that registration, not 409.
    if (kv.lease_id != 0 && SameRegistration(in, key, kv.value)) {
      absl::StatusOr<int64_t> ttl = ops_->KeepAliveOnce(kv.lease_id);
      if (ttl.ok()) {
        revoke_own();
        return created(kv.lease_id, *ttl, r->store_revision, 200);
      }
    }
  }
  revoke_own();
  return StatusResponse(absl::AlreadyExistsError(absl::StrCat(
      "instance ", in.instance_id, " of type ", in.type,
      " is registered already (with other fields; a retried POST with the same body gets the "
      "existing registration)")));
}

HttpResponse InstanceApi::Heartbeat(const HeartbeatCall& call) {
  const std::string& id = call.ref.id;
  const Changes& changes = call.changes;
  absl::StatusOr<std::string> key = KeyFor(call.ref);
  if (!key.ok()) return StatusResponse(key.status());

  auto kv = writer_->Read(*key);
  if (!kv.ok()) return StatusResponse(kv.status());
  if (!kv->has_value()) {
    return StatusResponse(
        absl::NotFoundError(absl::StrCat("instance ", id, " not found (expired or deregistered)")));
  }
  int64_t lease = (*kv)->lease_id;
  if (lease == 0) {
    return StatusResponse(absl::FailedPreconditionError(
        absl::StrCat("instance ", id, " is not attached to a lease")));
  }
  absl::StatusOr<int64_t> ttl = ops_->KeepAliveOnce(lease);
  if (!ttl.ok()) {
    if (absl::IsNotFound(ttl.status())) {
      return StatusResponse(absl::NotFoundError(
          absl::StrCat("lease ", LeaseHex(lease), " of instance ", id, " expired")));
    }
    return StatusResponse(ttl.status());
  }
  json out = {{"ttlSeconds", *ttl}, {"leaseId", LeaseHex(lease)}};
  if (!changes.empty()) {
    auto updated =
        Update(*writer_, *key, [&](discovery::Instance* in) { return ApplyChanges(changes, in); });
    if (!updated.ok()) return StatusResponse(updated.status());
    out["instance"] = discovery::InstanceToJson(*updated);
  }
  return JsonResponse(200, out);
}

HttpResponse InstanceApi::List(const ListCall& call) {
  const discovery::Filter& filter = call.filter;
  const bool health_check = call.health_check;
  const std::string& port_name = call.port_name;

  discovery::SnapshotPtr snap = watcher_->snapshot();
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
  return JsonResponse(200, {{"revision", snap->revision()}, {"instances", std::move(list)}});
}

HttpResponse InstanceApi::Get(const GetCall& call) {
  const std::string& id = call.ref.id;
  absl::StatusOr<std::string> key = KeyFor(call.ref);
  if (!key.ok()) return StatusResponse(key.status());
  auto kv = writer_->Read(*key);
  if (!kv.ok()) return StatusResponse(kv.status());
  if (!kv->has_value())
    return StatusResponse(absl::NotFoundError(absl::StrCat("instance ", id, " not found")));
  auto in = DecodeStored(*key, (*kv)->value);
  if (!in.ok()) return StatusResponse(in.status());
  in->lease_id = (*kv)->lease_id;
  return JsonResponse(200, discovery::InstanceToJson(*in));
}

HttpResponse InstanceApi::Patch(const PatchCall& call) {
  absl::StatusOr<std::string> key = KeyFor(call.ref);
  if (!key.ok()) return StatusResponse(key.status());
  auto updated = Update(*writer_, *key,
                        [&](discovery::Instance* in) { return ApplyChanges(call.changes, in); });
  if (!updated.ok()) return StatusResponse(updated.status());
  return JsonResponse(200, discovery::InstanceToJson(*updated));
}

HttpResponse InstanceApi::Delete(const DeleteCall& call) {
  const std::string& id = call.ref.id;
  absl::StatusOr<std::string> key = KeyFor(call.ref);
  if (!key.ok()) return StatusResponse(key.status());
  // Guarded by the named lease (?leaseId= / If-Match) when there is one.
  auto r = writer_->Delete(*key, {.lease = call.lease_id});
  if (!r.ok()) return StatusResponse(r.status());
  if (!r->deleted) {
    if (!r->current.has_value()) {
      return StatusResponse(absl::NotFoundError(absl::StrCat("instance ", id, " not found")));
    }
    return ErrorResponse(
        412, "precondition_failed",
        absl::StrCat("instance ", id, " is registered with lease ", LeaseHex(r->current->lease_id),
                     ", not ", LeaseHex(call.lease_id), "; nothing deleted"));
  }
  int64_t lease = r->lease_id;
  bool revoked = false;
  // Revoke only when nothing else lives on the lease (a registrar may share one lease
  // between the instances of a process).
  if (lease != 0) revoked = ops_->RevokeIfUnused(lease);
  return JsonResponse(200, {{"instanceId", id},
                            {"deleted", true},
                            {"leaseId", LeaseHex(lease)},
                            {"leaseRevoked", revoked},
                            {"revision", r->store_revision}});
}

}  // namespace discoveryd
