#include "store.h"

#include <algorithm>
#include <map>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common.h"
#include "etcd/client.h"
#include "instance_writer.h"

namespace discoveryctl {
namespace {

namespace pb = ::etcdserverpb;

constexpr int64_t kPageSize = 1000;
constexpr int kSetStatusAttempts = 5;

std::string LeaseHex(int64_t lease) { return absl::StrFormat("%x", lease); }

}  // namespace

absl::StatusOr<StoredInstance> ParseStored(std::string_view prefix, std::string_view key,
                                           std::string_view value) {
  std::string_view rest = key;
  if (rest.substr(0, prefix.size()) != prefix) {
    return absl::InvalidArgumentError("key is not under the prefix");
  }
  rest.remove_prefix(prefix.size());
  size_t slash = rest.find('/');
  if (slash == std::string_view::npos || slash == 0 || slash + 1 == rest.size() ||
      rest.find('/', slash + 1) != std::string_view::npos) {
    return absl::InvalidArgumentError("key is not <prefix><type>/<instanceId>");
  }
  absl::StatusOr<discovery::Instance> in = discovery::DecodeInstance(value);
  if (!in.ok()) return in.status();
  if (in->type != rest.substr(0, slash) || in->instance_id != rest.substr(slash + 1)) {
    return absl::InvalidArgumentError("type/instanceId in the value do not match the key");
  }
  // As the watcher: names no registrar can write (and no command can address) are invalid.
  if (absl::Status s = discovery::ValidateName("type", in->type); !s.ok()) return s;
  if (absl::Status s = discovery::ValidateName("instanceId", in->instance_id); !s.ok()) return s;
  StoredInstance out;
  out.key = std::string(key);
  // DecodeInstance accepted it, so it parses.
  out.raw = nlohmann::json::parse(value.begin(), value.end(), nullptr, false);
  out.instance = *std::move(in);
  return out;
}

EtcdStore::EtcdStore(std::shared_ptr<discovery::Connection> connection, std::string prefix,
                     absl::Duration timeout)
    : connection_(std::move(connection)),
      prefix_(std::move(prefix)),
      timeout_(timeout),
      writer_(discovery::NewEtcdInstanceWriter(connection_->client(), timeout_)) {}

EtcdStore::~EtcdStore() = default;

absl::StatusOr<ListResult> EtcdStore::List(std::string_view type) {
  const std::string start = type.empty() ? prefix_ : absl::StrCat(prefix_, AV(type), "/");
  const std::string end = PrefixEnd(start);
  ListResult result;
  std::string next = start;
  for (;;) {
    pb::RangeRequest req;
    req.set_key(next);
    req.set_range_end(end);
    req.set_limit(kPageSize);
    req.set_revision(result.revision);  // 0 on the first page: latest
    absl::StatusOr<pb::RangeResponse> resp = connection_->client()->Range(req, timeout_);
    if (!resp.ok()) return resp.status();
    if (result.revision == 0) result.revision = resp->header().revision();
    for (const auto& kv : resp->kvs()) {
      absl::StatusOr<StoredInstance> in = ParseStored(prefix_, kv.key(), kv.value());
      if (!in.ok()) {
        result.invalid.push_back({kv.key(), std::string(in.status().message())});
        continue;
      }
      in->lease_id = kv.lease();
      in->mod_revision = kv.mod_revision();
      result.instances.push_back(*std::move(in));
    }
    if (!resp->more() || resp->kvs_size() == 0) break;
    next = resp->kvs(resp->kvs_size() - 1).key();
    next.push_back('\0');  // the next key after the last one read
  }
  std::sort(result.instances.begin(), result.instances.end(),
            [](const StoredInstance& a, const StoredInstance& b) {
              return std::tie(a.instance.type, a.instance.group, a.instance.instance_id) <
                     std::tie(b.instance.type, b.instance.group, b.instance.instance_id);
            });
  return result;
}

absl::Status EtcdStore::FillLeaseTtls(std::vector<StoredInstance>* instances) {
  std::map<int64_t, int64_t> ttls;
  for (StoredInstance& in : *instances) {
    if (in.lease_id == 0) continue;
    auto it = ttls.find(in.lease_id);
    if (it == ttls.end()) {
      pb::LeaseTimeToLiveRequest req;
      req.set_id(in.lease_id);
      absl::StatusOr<pb::LeaseTimeToLiveResponse> resp =
          connection_->client()->LeaseTimeToLive(req, timeout_);
      if (!resp.ok()) return resp.status();
      it = ttls.emplace(in.lease_id, resp->ttl()).first;
    }
    in.ttl_left = it->second;
  }
  return absl::OkStatus();
}

absl::StatusOr<StoredInstance> EtcdStore::Get(std::string_view type, std::string_view id) {
  const std::string key = InstanceKey(prefix_, type, id);
  pb::RangeRequest req;
  req.set_key(key);
  absl::StatusOr<pb::RangeResponse> resp = connection_->client()->Range(req, timeout_);
  if (!resp.ok()) return resp.status();
  if (resp->kvs_size() == 0) return absl::NotFoundError(absl::StrCat(key, " not found"));
  const auto& kv = resp->kvs(0);
  absl::StatusOr<StoredInstance> in = ParseStored(prefix_, kv.key(), kv.value());
  if (!in.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(key, " holds an invalid value: ", in.status().message()));
  }
  in->lease_id = kv.lease();
  in->mod_revision = kv.mod_revision();
  return in;
}

absl::StatusOr<DeleteResult> EtcdStore::Delete(std::string_view type, std::string_view id) {
  const std::string key = InstanceKey(prefix_, type, id);
  auto resp = writer_->Delete(key, {});  // unguarded
  if (!resp.ok()) return resp.status();
  if (!resp->deleted) return absl::NotFoundError(absl::StrCat(key, " not found"));
  DeleteResult result;
  result.lease_id = resp->lease_id;
  if (result.lease_id == 0) return result;

  // A lease shared by several instances (RegistrarOptions opt-in) must outlive this one.
  pb::LeaseTimeToLiveRequest ttl_req;
  ttl_req.set_id(result.lease_id);
  ttl_req.set_keys(true);
  absl::StatusOr<pb::LeaseTimeToLiveResponse> ttl =
      connection_->client()->LeaseTimeToLive(ttl_req, timeout_);
  if (!ttl.ok()) return ttl.status();
  if (ttl->ttl() < 0) return result;  // expired meanwhile
  result.other_keys_on_lease = static_cast<size_t>(ttl->keys_size());
  if (result.other_keys_on_lease > 0) return result;

  pb::LeaseRevokeRequest revoke;
  revoke.set_id(result.lease_id);
  absl::StatusOr<pb::LeaseRevokeResponse> revoked =
      connection_->client()->LeaseRevoke(revoke, timeout_);
  if (!revoked.ok() && !absl::IsNotFound(revoked.status())) return revoked.status();
  result.lease_revoked = revoked.ok();
  return result;
}

absl::StatusOr<SetStatusResult> EtcdStore::SetStatus(std::string_view type, std::string_view id,
                                                     discovery::InstanceStatus status,
                                                     std::optional<std::string> custom_state) {
  for (int attempt = 1;; ++attempt) {
    absl::StatusOr<StoredInstance> current = Get(type, id);
    if (!current.ok()) return current.status();
    discovery::Instance in = current->instance;
    if (!discovery::IsValidTransition(in.status, status)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "status transition ", AV(discovery::ToString(in.status)), " -> ",
          AV(discovery::ToString(status)),
          " is not allowed (initializing -> ready -> shutting_down, any -> error, error -> "
          "ready)"));
    }
    in.status = status;
    if (custom_state.has_value()) in.custom_state = *custom_state;
    in.updated_at = absl::Now();
    if (current->lease_id != 0) in.lease_id = current->lease_id;

    // Keeps the instance's lease (0: none).
    auto resp = writer_->PutIfUnchanged(current->key, discovery::EncodeInstance(in),
                                        current->lease_id, current->mod_revision);
    if (!resp.ok()) {
      if (absl::IsNotFound(resp.status())) {
        return absl::NotFoundError(
            absl::StrCat("lease ", LeaseHex(current->lease_id), " of ", current->key, " expired"));
      }
      return resp.status();
    }
    if (resp->written) return SetStatusResult{current->key, current->instance.status, in};
    if (attempt >= kSetStatusAttempts) {
      return absl::AbortedError(
          absl::StrCat(current->key, " keeps changing; gave up after ", attempt, " attempts"));
    }
  }
}

std::unique_ptr<Store> OpenStore(std::shared_ptr<discovery::Connection> connection,
                                 std::string prefix, absl::Duration timeout) {
  if (connection->client() != nullptr) {
    return std::make_unique<EtcdStore>(std::move(connection), std::move(prefix), timeout);
  }
  return NewBackendStore(std::move(connection), std::move(prefix), timeout);
}

}  // namespace discoveryctl
