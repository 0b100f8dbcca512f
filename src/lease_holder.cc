#include "lease_holder.h"

#include "etcd/client.h"
#include "etcd/lease_keeper.h"

namespace discovery {
namespace {

namespace pb = ::etcdserverpb;

class EtcdLeaseHolder : public LeaseHolder {
 public:
  explicit EtcdLeaseHolder(std::shared_ptr<etcd::Client> client) : client_(std::move(client)) {}

  absl::StatusOr<int64_t> Grant(absl::Duration ttl) override {
    auto granted = client_->GrantOwnLease(absl::ToInt64Seconds(ttl));
    if (!granted.ok()) return granted.status();
    return granted->id();
  }

  void GrantAsync(absl::Duration ttl, GrantCallback done) override {
    client_->GrantOwnLeaseAsync(absl::ToInt64Seconds(ttl),
                                [done = std::move(done)](absl::StatusOr<pb::LeaseGrantResponse> r) {
                                  if (!r.ok()) return done(r.status());
                                  done(r->id());
                                });
  }

  void KeepAlive(int64_t lease, absl::Duration ttl, absl::Duration interval,
                 Listener listener) override {
    client_->keeper().Add(lease, ttl, interval,
                          [listener = std::move(listener)](const etcd::LeaseKeeper::Event& ev) {
                            EventType type = EventType::kAlive;
                            switch (ev.type) {
                              case etcd::LeaseKeeper::EventType::kAlive:
                                type = EventType::kAlive;
                                break;
                              case etcd::LeaseKeeper::EventType::kAtRisk:
                                type = EventType::kAtRisk;
                                break;
                              case etcd::LeaseKeeper::EventType::kLost:
                                type = EventType::kLost;
                                break;
                            }
                            listener(Event{type, ev.lease_id});
                          });
  }

  void Forget(int64_t lease) override { client_->keeper().Remove(lease); }

  absl::Status Revoke(int64_t lease) override {
    pb::LeaseRevokeRequest revoke;
    revoke.set_id(lease);
    return client_->LeaseRevoke(revoke).status();
  }

  void RevokeAsync(int64_t lease, std::function<void(absl::Status)> done) override {
    pb::LeaseRevokeRequest revoke;
    revoke.set_id(lease);
    client_->LeaseRevokeAsync(
        revoke,
        [done = std::move(done)](absl::StatusOr<pb::LeaseRevokeResponse> r) { done(r.status()); });
  }

 private:
  std::shared_ptr<etcd::Client> client_;
};

}  // namespace

std::unique_ptr<LeaseHolder> NewEtcdLeaseHolder(std::shared_ptr<etcd::Client> client) {
  return std::make_unique<EtcdLeaseHolder>(std::move(client));
}

}  // namespace discovery
