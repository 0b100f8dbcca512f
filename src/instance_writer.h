// The writer seam for instance records: the three writes every component makes to
// `<prefix><type>/<instanceId>` (register = put-if-absent on a lease; update = a write guarded
// by the mod revision last seen; delete, optionally guarded by lease / mod revision).
// Implemented on etcd today (EtcdInstanceWriter); the gateway and Redis stores will implement
// the same calls. Used by the Registrar, discoveryd's REST handlers (tools/discoveryd/api.cc)
// and discoveryctl (tools/discoveryctl/store.cc). Leases are not the writer's business: the
// callers grant, refresh and revoke them.
//
// Thread-safety: thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace discovery {
namespace etcd {
class Client;
}

class InstanceWriter {
 public:
  // What the store holds at the key when a guarded write did not apply.
  struct Current {
    std::string value;
    int64_t lease_id = 0;
    int64_t mod_revision = 0;
  };
  struct WriteResult {
    bool written = false;
    int64_t revision = 0;            // when written: the key's new mod revision
    std::optional<Current> current;  // when not written: the key as it is (nullopt: absent)
    int64_t store_revision = 0;      // the store's revision when the write was decided
  };
  // Conditions of a Delete; 0 = not checked.
  struct DeleteGuard {
    int64_t lease = 0;         // the key must be attached to this lease
    int64_t mod_revision = 0;  // the key's mod revision must be this one
  };
  struct DeleteResult {
    bool deleted = false;            // false: the key was absent or a guard did not hold
    int64_t lease_id = 0;            // when deleted: the lease the key was attached to
    std::optional<Current> current;  // when a guard did not hold: the key as it is
    int64_t store_revision = 0;      // the store's revision after the call
  };
  using PutCallback = std::function<void(absl::StatusOr<int64_t>)>;

  virtual ~InstanceWriter() = default;
  // Puts `value` at `key` under `lease` only when the key does not exist. The key's revision
  // when written (also when a retried write finds its own first attempt); 0 when the key
  // exists with another lease.
  virtual absl::StatusOr<int64_t> PutIfAbsent(const std::string& key, const std::string& value,
                                              int64_t lease) = 0;
  // The same without blocking; `done` runs on a library thread (see etcd::Client's async calls).
  virtual void PutIfAbsentAsync(const std::string& key, const std::string& value, int64_t lease,
                                PutCallback done) = 0;
  // Puts `value` under `lease` only when the key's mod revision is `expected` (0: the key is
  // absent). kNotFound when the lease is gone.
  virtual absl::StatusOr<WriteResult> PutIfUnchanged(const std::string& key,
                                                     const std::string& value, int64_t lease,
                                                     int64_t expected) = 0;
  // Deletes the key when every condition of `guard` holds. Not deleted with `current` unset:
  // the key is absent.
  virtual absl::StatusOr<DeleteResult> Delete(const std::string& key, DeleteGuard guard) = 0;
  // The key as it is now (nullopt: absent): what an update reads before PutIfUnchanged. The
  // default asks Delete with a mod revision no key reaches (it never deletes, it answers the
  // key); etcd (Range) and Redis (a read script) override it with a plain read.
  virtual absl::StatusOr<std::optional<Current>> Read(const std::string& key);
};

// `timeout` bounds every call (zero: the client's call timeout).
std::unique_ptr<InstanceWriter> NewEtcdInstanceWriter(
    std::shared_ptr<etcd::Client> client, absl::Duration timeout = absl::ZeroDuration());

}  // namespace discovery
