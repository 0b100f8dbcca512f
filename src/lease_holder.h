// The lease-holder seam under the Registration API: grant a lease, keep it alive (with
// at-risk / recovered / lost events), forget it, revoke it. Implemented on etcd today
// (EtcdLeaseHolder: Client::GrantOwnLease + the one LeaseKeepAlive stream of LeaseKeeper);
// gateway heartbeats and Redis deadline refreshes are planned implementations.
//
// Thread-safety: thread-safe. Listeners run on a library thread and must not block.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace discovery {
namespace etcd {
class Client;
}

class LeaseHolder {
 public:
  enum class EventType { kAlive, kAtRisk, kLost };
  struct Event {
    EventType type;
    int64_t lease_id;
  };
  using Listener = std::function<void(const Event&)>;
  using GrantCallback = std::function<void(absl::StatusOr<int64_t>)>;

  virtual ~LeaseHolder() = default;
  // A new lease of `ttl` (whole seconds); its id.
  virtual absl::StatusOr<int64_t> Grant(absl::Duration ttl) = 0;
  // The same without blocking; `done` runs on a library thread, never inline.
  virtual void GrantAsync(absl::Duration ttl, GrantCallback done) = 0;
  // Keeps `lease` alive every `interval` until Forget or kLost (returns at once).
  virtual void KeepAlive(int64_t lease, absl::Duration ttl, absl::Duration interval,
                         Listener listener) = 0;
  // Stops keeping `lease` alive; its listener is not called after this returns.
  virtual void Forget(int64_t lease) = 0;
  // Ends the lease now (its keys go with it). kNotFound when it is gone already.
  virtual absl::Status Revoke(int64_t lease) = 0;
  virtual void RevokeAsync(int64_t lease, std::function<void(absl::Status)> done) = 0;
};

std::unique_ptr<LeaseHolder> NewEtcdLeaseHolder(std::shared_ptr<etcd::Client> client);

}  // namespace discovery
