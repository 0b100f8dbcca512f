// discoveryctl: the instance records under the prefix. `Store` is what the commands need; two
// implementations:
//   EtcdStore     reads with the internal etcd client (Range, LeaseTimeToLive; LeaseRevoke) and
//                 writes through the library's instance writer seam (src/instance_writer.h:
//                 PutIfUnchanged, Delete).
//   BackendStore  (backend_store.cc) works over any StoreBackend (Redis, the discoveryd gateway):
//                 reads from a Watcher's snapshot, writes through the backend's InstanceWriter,
//                 revokes through its LeaseHolder. What only etcd knows (a lease's TTL left, a
//                 key's etcd mod revision, values the watcher skipped) stays unknown there:
//                 ttl_left nullopt (printed "-"), invalid values not listed.
// OpenStore picks one by the connection's backend. Every call is bounded by the timeout given
// at construction.
//
// A value is a valid instance when it decodes (discovery::DecodeInstance) and its `type` and
// `instanceId` match its key `<prefix><type>/<instanceId>` — the same rule the Watcher applies.
//
// Thread-compatible: one Store per command invocation.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "discovery/etcd.h"
#include "discovery/instance.h"
#include "nlohmann/json.hpp"

namespace discovery {
class InstanceWriter;
}

namespace discoveryctl {

struct StoredInstance {
  std::string key{};
  nlohmann::json raw = nlohmann::json::object();  // the stored JSON object, verbatim
  discovery::Instance instance{};                 // decoded
  int64_t lease_id = 0;                           // the key's lease in etcd; 0 = none
  int64_t mod_revision = 0;
  // Seconds left on the lease; nullopt = not looked up or no lease; -1 = lease expired.
  std::optional<int64_t> ttl_left{};
};

struct InvalidValue {
  std::string key{};
  std::string reason{};
};

struct ListResult {
  int64_t revision = 0;
  std::vector<StoredInstance> instances{};  // sorted by (type, group, instanceId)
  std::vector<InvalidValue> invalid{};      // in key order
};

struct DeleteResult {
  int64_t lease_id = 0;  // the lease the key was attached to (0 = none)
  bool lease_revoked = false;
  // Keys still attached to the lease (a shared lease): then it is not revoked.
  size_t other_keys_on_lease = 0;
};

struct SetStatusResult {
  std::string key{};
  discovery::InstanceStatus previous{};
  discovery::Instance written{};  // as written (status, customState, updatedAt, leaseId)
};

// Parses one key/value; kInvalidArgument with the reason when it is not a valid instance.
absl::StatusOr<StoredInstance> ParseStored(std::string_view prefix, std::string_view key,
                                           std::string_view value);

class Store {
 public:
  virtual ~Store() = default;

  // Every value under the prefix (under `<prefix><type>/` when `type` is not empty), read in
  // pages at one revision. Invalid values are returned in `invalid`, not as an error.
  virtual absl::StatusOr<ListResult> List(std::string_view type) = 0;

  // Looks up the lease TTL of every instance (one LeaseTimeToLive per distinct lease).
  virtual absl::Status FillLeaseTtls(std::vector<StoredInstance>* instances) = 0;

  // kNotFound when the key is absent; kInvalidArgument when its value is not valid.
  virtual absl::StatusOr<StoredInstance> Get(std::string_view type, std::string_view id) = 0;

  // Deletes the key, then revokes its lease unless other keys still use it.
  // kNotFound when the key is absent.
  virtual absl::StatusOr<DeleteResult> Delete(std::string_view type, std::string_view id) = 0;

  // Rewrites the value with `status` (and `custom_state` when given) and a new updatedAt,
  // under the key's own lease, guarded by its mod revision (retried when it changed meanwhile).
  // kInvalidArgument for a transition IsValidTransition refuses; kNotFound when the key (or
  // its lease) is gone.
  virtual absl::StatusOr<SetStatusResult> SetStatus(std::string_view type, std::string_view id,
                                                    discovery::InstanceStatus status,
                                                    std::optional<std::string> custom_state) = 0;
};

// The Store on etcd (see the top of this file).
class EtcdStore final : public Store {
 public:
  EtcdStore(std::shared_ptr<discovery::Connection> connection, std::string prefix,
            absl::Duration timeout);
  ~EtcdStore() override;

  absl::StatusOr<ListResult> List(std::string_view type) override;
  absl::Status FillLeaseTtls(std::vector<StoredInstance>* instances) override;
  absl::StatusOr<StoredInstance> Get(std::string_view type, std::string_view id) override;
  absl::StatusOr<DeleteResult> Delete(std::string_view type, std::string_view id) override;
  absl::StatusOr<SetStatusResult> SetStatus(std::string_view type, std::string_view id,
                                            discovery::InstanceStatus status,
                                            std::optional<std::string> custom_state) override;

 private:
  std::shared_ptr<discovery::Connection> connection_;
  std::string prefix_;
  absl::Duration timeout_;
  std::unique_ptr<discovery::InstanceWriter> writer_;  // on connection_'s client, timeout_
};

// The Store over any other backend (see the top of this file).
std::unique_ptr<Store> NewBackendStore(std::shared_ptr<discovery::Connection> connection,
                                       std::string prefix, absl::Duration timeout);

// EtcdStore when the connection is to etcd, NewBackendStore otherwise.
std::unique_ptr<Store> OpenStore(std::shared_ptr<discovery::Connection> connection,
                                 std::string prefix, absl::Duration timeout);

}  // namespace discoveryctl
