// The writer seam for instance records: the three writes every component makes to
// `<prefix><type>/<instanceId>` (register = put-if-absent on a lease; update = a write guarded
// by the mod revision last seen; delete). Implemented on etcd today (EtcdInstanceWriter); the
// gateway and Redis stores will implement the same calls. Used by the Registrar; discoveryd's
// REST handlers and discoveryctl are to move onto it (see the report of issue 14).
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
};

std::unique_ptr<InstanceWriter> NewEtcdInstanceWriter(std::shared_ptr<etcd::Client> client);

}  // namespace discovery
