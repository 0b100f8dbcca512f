// discoveryd's StoreOps on etcd (store_ops.h): the etcd client's lease calls, one pipelined
// LeaseKeepAlive stream per first-sight batch, and the epoch record at an etcd key.
#include <thread>

#include "absl/strings/str_cat.h"
#include "etcd/client.h"
#include "etcd/watch_hub.h"
#include "lease_holder.h"
#include "store_backend.h"
#include "store_ops.h"
#include "util/clock.h"

namespace discoveryd {
namespace {

namespace pb = ::etcdserverpb;
namespace util = discovery::util;
using discovery::etcd::Client;

// First sight of many leases at once: ONE LeaseKeepAlive stream, every id written back to back
// while a second thread reads the answers (etcd answers each in order), so adopting 2,000 leases
// costs one round trip, not 2,000.
absl::Status KeepAliveMany(Client& client, const std::vector<int64_t>& ids, absl::Duration timeout,
                           std::unordered_map<int64_t, int64_t>* ttls) {
  int index = 0;
  std::shared_ptr<discovery::etcd::Stubs> stubs = client.CurrentStubs(&index);
  if (stubs == nullptr) return absl::UnavailableError("no etcd endpoint");
  grpc::ClientContext ctx;
  client.PrepareContext(&ctx, util::MonoNow() + timeout);
  auto stream = stubs->lease->LeaseKeepAlive(&ctx);
  size_t answered = 0;
  std::thread reader([&] {
    pb::LeaseKeepAliveResponse r;
    while (answered < ids.size() && stream->Read(&r)) {
      (*ttls)[r.id()] = r.ttl();
      ++answered;
    }
  });
  for (int64_t id : ids) {
    pb::LeaseKeepAliveRequest req;
    req.set_id(id);
    if (!stream->Write(req)) break;
  }
  stream->WritesDone();
  reader.join();
  ctx.TryCancel();
  grpc::Status st = stream->Finish();
  if (answered >= ids.size()) return absl::OkStatus();
  if (st.ok() || st.error_code() == grpc::StatusCode::CANCELLED) {
    client.MarkFailed(index);
    return absl::UnavailableError(
        absl::StrCat("etcd answered ", answered, " of ", ids.size(), " first-sight keepalives"));
  }
  if (st.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
    (void)client.RefreshToken(index);  // the client's next heartbeat (its backoff) retries
  } else {
    client.MarkFailed(index);
  }
  return absl::UnavailableError(absl::StrCat("etcd keepalive stream: ", st.error_message()));
}

class EtcdEpochStore final : public EpochStore {
 public:
  EtcdEpochStore(std::shared_ptr<Client> client, std::string key)
      : client_(std::move(client)), key_(std::move(key)) {}

  const std::string& name() const override { return key_; }

  absl::StatusOr<Record> Read(absl::Duration timeout) override {
    pb::RangeRequest req;
    req.set_key(key_);
    auto resp = client_->Range(req, timeout);
    if (!resp.ok()) return resp.status();
    Record r;
    r.store_revision = resp->header().revision();
    if (resp->kvs_size() > 0) {
      r.exists = true;
      r.mod_revision = resp->kvs(0).mod_revision();
      r.value = resp->kvs(0).value();
    }
    return r;
  }

  absl::StatusOr<bool> Write(const Record& seen, const std::string& value, absl::Duration timeout,
                             int64_t* store_revision) override {
    pb::TxnRequest txn;
    auto* cmp = txn.add_compare();
    cmp->set_key(key_);
    cmp->set_result(pb::Compare::EQUAL);
    if (seen.exists) {
      cmp->set_target(pb::Compare::MOD);
      cmp->set_mod_revision(seen.mod_revision);
    } else {
      cmp->set_target(pb::Compare::CREATE);
      cmp->set_create_revision(0);
    }
    auto* put = txn.add_success()->mutable_request_put();
    put->set_key(key_);
    put->set_value(value);
    auto resp = client_->Txn(txn, timeout);
    if (!resp.ok()) return resp.status();
    *store_revision = resp->header().revision();
    return resp->succeeded();
  }

  uint64_t Watch(int64_t from_revision, Listener listener) override {
    discovery::etcd::WatchHub::Spec spec;
    spec.key = key_;
    spec.start_revision = from_revision;
    discovery::etcd::WatchHub::Listener l;
    l.on_events = [on_value = listener.on_value](const pb::WatchResponse& resp) {
      for (const auto& ev : resp.events()) {
        if (ev.type() == mvccpb::Event::PUT) on_value(ev.kv().value());
      }
    };
    l.on_broken = std::move(listener.on_broken);
    return client_->watch_hub().Add(std::move(spec), std::move(l));
  }

  void Unwatch(uint64_t id) override { client_->watch_hub().Remove(id); }

 private:
  std::shared_ptr<Client> client_;
  std::string key_;
};

class EtcdStoreOps final : public StoreOps {
 public:
  explicit EtcdStoreOps(std::shared_ptr<Client> client)
      : client_(std::move(client)), holder_(discovery::NewEtcdLeaseHolder(client_)) {}

  absl::StatusOr<Granted> Grant(int64_t ttl_seconds) override {
    auto granted = client_->GrantOwnLease(ttl_seconds);
    if (!granted.ok()) return granted.status();
    return Granted{granted->id(), granted->ttl()};
  }
  absl::StatusOr<int64_t> KeepAliveOnce(int64_t lease) override {
    return client_->LeaseKeepAliveOnce(lease);
  }
  absl::Status RefreshMany(const std::vector<int64_t>& ids, absl::Duration timeout,
                           std::unordered_map<int64_t, int64_t>* ttls) override {
    return KeepAliveMany(*client_, ids, timeout, ttls);
  }
  absl::Status Revoke(int64_t lease) override { return holder_->Revoke(lease); }
  bool RevokeIfUnused(int64_t lease) override {
    pb::LeaseTimeToLiveRequest ttl;
    ttl.set_id(lease);
    ttl.set_keys(true);
    auto t = client_->LeaseTimeToLive(ttl);
    if (!t.ok() || t->ttl() <= 0 || t->keys_size() > 0) return false;
    return holder_->Revoke(lease).ok();
  }
  discovery::LeaseHolder& holder() override { return *holder_; }
  std::unique_ptr<EpochStore> NewEpochStore(const std::string& key) override {
    return std::make_unique<EtcdEpochStore>(client_, key);
  }

 private:
  std::shared_ptr<Client> client_;
  std::unique_ptr<discovery::LeaseHolder> holder_;
};

}  // namespace

std::unique_ptr<StoreOps> NewEtcdStoreOps(const std::shared_ptr<discovery::Connection>& conn) {
  return std::make_unique<EtcdStoreOps>(conn->client());
}

absl::StatusOr<std::unique_ptr<StoreOps>> NewStoreOps(
    const std::shared_ptr<discovery::Connection>& conn) {
  if (conn->client() != nullptr) return NewEtcdStoreOps(conn);
  if (conn->backend()->kind() == "redis") return NewRedisStoreOps(conn);
  return absl::UnimplementedError(absl::StrCat("discoveryd does not run on a ",
                                               std::string(conn->backend()->kind()), " store"));
}

}  // namespace discoveryd
