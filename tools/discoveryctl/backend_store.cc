// discoveryctl's Store over any StoreBackend other than etcd (Redis, the discoveryd gateway):
// the same seams the Registrar and the Watcher use, so the tool needs nothing per transport.
//
//   list / get    a Watcher (kPoll delivery, no callbacks): WaitForSync within the timeout, then
//                 its snapshot. Read-only, so a read-only gateway token can list. The watcher
//                 skips invalid values (and counts them), so they are not listed here.
//   set-status    the backend's InstanceWriter: the current value, lease and modification
//                 sequence come from a Delete guarded by a mod revision no key can have (it never
//                 deletes; it answers the key as it is), then PutIfUnchanged on that sequence,
//                 retried when the key changed meanwhile (as the etcd path does).
//   deregister    InstanceWriter::Delete, then LeaseHolder::Revoke unless the watcher's snapshot
//                 shows other keys on the same lease (a shared lease).
//
// A lease's TTL left is not known here (ttl_left stays nullopt, printed "-" / null).
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common.h"
#include "discovery/watcher.h"
#include "instance_writer.h"
#include "lease_holder.h"
#include "store.h"
#include "store_backend.h"

namespace discoveryctl {
namespace {

constexpr int kSetStatusAttempts = 5;
// A mod revision no key reaches: a Delete guarded by it never applies and answers the key.
constexpr int64_t kNoRevision = std::numeric_limits<int64_t>::max();

class BackendStore final : public Store {
 public:
  BackendStore(std::shared_ptr<discovery::Connection> connection, std::string prefix,
               absl::Duration timeout)
      : connection_(std::move(connection)),
        prefix_(std::move(prefix)),
        timeout_(timeout),
        writer_(connection_->backend()->NewInstanceWriter(timeout_)),
        logger_(ToolLogger("error")) {}

  absl::StatusOr<ListResult> List(std::string_view type) override {
    auto watcher = discovery::Watcher::Create({
        .connection = connection_,
        .prefix = prefix_,
        .type = std::string(type),
        .delivery = discovery::Delivery::kPoll,
        // Quiet: its "synced" info line would break the one-stderr-line promise.
        .logger = logger_,
    });
    if (!watcher.ok()) return watcher.status();
    if (absl::Status s = (*watcher)->WaitForSync(timeout_); !s.ok()) {
      // Not synced within the timeout: the store did not answer (or refused the token).
      if (absl::IsPermissionDenied(s) || absl::IsUnauthenticated(s) || absl::IsInvalidArgument(s)) {
        return s;
      }
      return absl::UnavailableError(s.message());
    }
    discovery::SnapshotPtr snap = (*watcher)->snapshot();
    ListResult result;
    result.revision = snap->revision();
    for (const discovery::InstancePtr& in : snap->All()) {
      StoredInstance out;
      out.key = InstanceKey(prefix_, in->type, in->instance_id);
      out.instance = *in;
      out.raw = nlohmann::json::parse(discovery::EncodeInstance(*in), nullptr, false);
      out.lease_id = in->lease_id;
      result.instances.push_back(std::move(out));
    }
    return result;  // All() is in (type, group, instanceId) order already
  }

  absl::Status FillLeaseTtls(std::vector<StoredInstance>*) override {
    return absl::OkStatus();  // unknown on this store: ttl_left stays nullopt
  }

  absl::StatusOr<StoredInstance> Get(std::string_view type, std::string_view id) override {
    absl::StatusOr<ListResult> list = List(type);
    if (!list.ok()) return list.status();
    for (StoredInstance& in : list->instances) {
      if (in.instance.instance_id == id) return std::move(in);
    }
    return absl::NotFoundError(absl::StrCat(InstanceKey(prefix_, type, id), " not found"));
  }

  absl::StatusOr<DeleteResult> Delete(std::string_view type, std::string_view id) override {
    const std::string key = InstanceKey(prefix_, type, id);
    auto resp = writer_->Delete(key, {});  // unguarded
    if (!resp.ok()) return resp.status();
    if (!resp->deleted) return absl::NotFoundError(absl::StrCat(key, " not found"));
    DeleteResult result;
    result.lease_id = resp->lease_id;
    if (result.lease_id == 0) return result;

    // A lease shared by several instances (RegistrarOptions opt-in) must outlive this one.
    absl::StatusOr<ListResult> all = List("");
    if (!all.ok()) return all.status();
    for (const StoredInstance& in : all->instances) {
      if (in.lease_id == result.lease_id && in.key != key) ++result.other_keys_on_lease;
    }
    if (result.other_keys_on_lease > 0) return result;
    absl::Status revoked = connection_->backend()->NewLeaseHolder()->Revoke(result.lease_id);
    if (!revoked.ok() && !absl::IsNotFound(revoked)) return revoked;
    result.lease_revoked = revoked.ok();
    return result;
  }

  absl::StatusOr<SetStatusResult> SetStatus(std::string_view type, std::string_view id,
                                            discovery::InstanceStatus status,
                                            std::optional<std::string> custom_state) override {
    const std::string key = InstanceKey(prefix_, type, id);
    auto probe = writer_->Delete(key, {.mod_revision = kNoRevision});
    if (!probe.ok()) return probe.status();
    if (probe->deleted) return absl::InternalError(absl::StrCat(key, ": probe deleted the key"));
    std::optional<discovery::InstanceWriter::Current> current = probe->current;
    for (int attempt = 1;; ++attempt) {
      if (!current.has_value()) return absl::NotFoundError(absl::StrCat(key, " not found"));
      absl::StatusOr<StoredInstance> stored = ParseStored(prefix_, key, current->value);
      if (!stored.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(key, " holds an invalid value: ", stored.status().message()));
      }
      discovery::Instance in = stored->instance;
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
      auto resp = writer_->PutIfUnchanged(key, discovery::EncodeInstance(in), current->lease_id,
                                          current->mod_revision);
      if (!resp.ok()) {
        if (absl::IsNotFound(resp.status())) {
          return absl::NotFoundError(
              absl::StrFormat("lease %x of %s expired", current->lease_id, AV(key)));
        }
        return resp.status();
      }
      if (resp->written) return SetStatusResult{key, stored->instance.status, in};
      if (attempt >= kSetStatusAttempts) {
        return absl::AbortedError(
            absl::StrCat(key, " keeps changing; gave up after ", attempt, " attempts"));
      }
      current = resp->current;
    }
  }

 private:
  std::shared_ptr<discovery::Connection> connection_;
  std::string prefix_;
  absl::Duration timeout_;
  std::unique_ptr<discovery::InstanceWriter> writer_;
  std::shared_ptr<spdlog::logger> logger_;
};

}  // namespace

std::unique_ptr<Store> NewBackendStore(std::shared_ptr<discovery::Connection> connection,
                                       std::string prefix, absl::Duration timeout) {
  return std::make_unique<BackendStore>(std::move(connection), std::move(prefix), timeout);
}

}  // namespace discoveryctl
