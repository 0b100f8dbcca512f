// The etcd StoreBackend (etcd::Client: channels, failover, the one LeaseKeepAlive stream and the
// one Watch stream) and Connection, the public handle over any StoreBackend.
#include "discovery/etcd.h"
#include "etcd/client.h"
#include "etcd/lease_keeper.h"
#include "etcd/watch_hub.h"
#include "store_backend.h"
#include "watch_source_etcd.h"

namespace discovery {
namespace {

class EtcdBackend final : public StoreBackend {
 public:
  explicit EtcdBackend(std::shared_ptr<etcd::Client> client) : client_(std::move(client)) {}

  std::string_view kind() const override { return "etcd"; }
  util::EventLoop& loop() override { return client_->loop(); }
  util::EventLoop& background() override { return client_->background(); }

  std::shared_ptr<WatchSource> NewWatchSource(const SourceOptions& options,
                                              std::shared_ptr<spdlog::logger> logger,
                                              std::weak_ptr<WatchSink> sink) override {
    return NewEtcdWatchSource(client_, options, std::move(logger), std::move(sink));
  }
  std::unique_ptr<LeaseHolder> NewLeaseHolder() override { return NewEtcdLeaseHolder(client_); }
  std::unique_ptr<InstanceWriter> NewInstanceWriter(absl::Duration timeout) override {
    return NewEtcdInstanceWriter(client_, timeout);
  }

  absl::Status Ping(absl::Duration timeout) override {
    etcdserverpb::RangeRequest req;
    req.set_key("health");  // any key: what matters is the linearizable (quorum) round-trip
    req.set_count_only(true);
    absl::Status s = client_->Range(req, timeout).status();
    return s.code() == absl::StatusCode::kPermissionDenied ? absl::OkStatus() : s;
  }

 private:
  std::shared_ptr<etcd::Client> client_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<Connection>> Connection::Create(const EtcdOptions& options) {
  auto client = etcd::Client::Create(options);
  if (!client.ok()) return client.status();
  auto backend = std::make_shared<EtcdBackend>(*client);
  return std::shared_ptr<Connection>(new Connection(std::move(backend), *std::move(client)));
}

std::shared_ptr<Connection> Connection::FromBackend(std::shared_ptr<StoreBackend> backend) {
  return std::shared_ptr<Connection>(new Connection(std::move(backend), nullptr));
}

Connection::Connection(std::shared_ptr<StoreBackend> backend, std::shared_ptr<etcd::Client> client)
    : backend_(std::move(backend)), client_(std::move(client)) {}
Connection::~Connection() = default;

absl::Status Connection::Ping(absl::Duration timeout) { return backend_->Ping(timeout); }

// The stream counters are etcd's; another backend reports its own figures through its own API.
int Connection::keepalive_streams() const { return client_ ? client_->keeper().open_streams() : 0; }
int Connection::watch_streams() const { return client_ ? client_->watch_hub().open_streams() : 0; }
int64_t Connection::keepalive_stalls() const { return client_ ? client_->keeper().stalls() : 0; }
int64_t Connection::keepalive_deferred_bursts() const {
  return client_ ? client_->keeper().deferred_bursts() : 0;
}
int64_t Connection::watch_reconnects() const {
  return client_ ? client_->watch_hub().reconnects() : 0;
}

}  // namespace discovery
