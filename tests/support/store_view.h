// StoreView: the suites that run once per store (etcd, Redis; issue 17) start the store here,
// make Connections to it, read its truth and do behind the library's back what an operator or a
// failure would. The code under test (Registrar, Watcher) never sees the view.
//
//   truth        etcd: Range of /services/ ; Redis: HGETALL {sd}:inst (README "Redis backend")
//   lease of key etcd: the key's lease     ; Redis: HGET {sd}:owner
//   lease alive  etcd: LeaseTimeToLive     ; Redis: ZSCORE {sd}:dl
//   writes count etcd: the key's version   ; Redis: put records of the key in {sd}:log
//   raw write    etcd: Put                 ; Redis: the guarded-write script (logged, as the
//                                            watcher must see it), on the given lease or on a
//                                            long lease of the view's own (Redis has no keys
//                                            without a lease)
//   revoke/grant the backend's own LeaseHolder over a direct Connection (etcdctl lease revoke
//                and the Redis revoke script do the same thing: the lease and its keys go)
//   lose data    etcd: WipeAndRestartAll   ; Redis: restart without persistence (new epoch)
//   freeze       SIGSTOP / SIGCONT of the (first) server process
//
// Redis removes expired leases only when a watcher's reaper runs (registrars never reap), so a
// Redis view keeps one Watcher of its own, as a deployment has gateways watching: expiry
// happens also in tests that have no watcher.
#ifndef DISCOVERY_TESTS_SUPPORT_STORE_VIEW_H_
#define DISCOVERY_TESTS_SUPPORT_STORE_VIEW_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "discovery/redis.h"
#include "discovery/watcher.h"
#include "etcd/client.h"
#include "etcd_harness.h"
#include "nlohmann/json.hpp"
#include "redis/client.h"
#include "redis/scripts.h"
#include "redis_harness.h"
#include "store_backend.h"

namespace discovery::testing {

enum class StoreKind { kEtcd, kRedis };

inline std::string StoreName(const ::testing::TestParamInfo<StoreKind>& info) {
  return info.param == StoreKind::kEtcd ? "Etcd" : "Redis";
}
inline void PrintTo(StoreKind kind, std::ostream* os) {
  *os << (kind == StoreKind::kEtcd ? "etcd" : "redis");
}

class StoreView {
 public:
  // A one-member etcd (or `members`) / a redis-server without persistence.
  static absl::StatusOr<std::unique_ptr<StoreView>> Start(StoreKind kind, int members = 1);
  virtual ~StoreView() = default;

  StoreKind kind() const { return kind_; }
  bool redis() const { return kind_ == StoreKind::kRedis; }
  // The etcd cluster (null on Redis) / the redis-server (null on etcd).
  virtual EtcdCluster* etcd() { return nullptr; }
  virtual RedisServer* redis_server() { return nullptr; }

  // A new direct Connection to the store.
  virtual std::shared_ptr<Connection> Connect() = 0;
  // The environment that points example_game_server (ConnectFromEnv) at the store.
  virtual std::vector<std::pair<std::string, std::string>> ChildEnv() const = 0;

  // key -> value of every key under /services/.
  virtual std::map<std::string, std::string> All() = 0;
  // The value at `key`; nullopt when missing (or on an error, which the test reports).
  virtual std::optional<std::string> Get(const std::string& key) = 0;
  // The lease of `key`; 0 when the key is missing (or has none); -1 on an error.
  virtual int64_t LeaseOf(const std::string& key) = 0;
  // True while `lease` exists in the store.
  virtual bool LeaseExists(int64_t lease) = 0;
  // How many times `key` was written since it was created (1 after the first put).
  virtual int64_t Versions(const std::string& key) = 0;
  // Writes `value` at `key` whatever is there (an operator, a foreign writer) on `lease`
  // (0: etcd no lease, Redis a long lease of the view's own).
  virtual absl::Status Put(const std::string& key, const std::string& value, int64_t lease = 0) = 0;
  // The store loses all its data and comes back.
  virtual absl::Status LoseAllData() = 0;
  virtual absl::Status Freeze() = 0;
  virtual absl::Status Thaw() = 0;

  // A lease nobody keeps alive / a lease revoked behind its holder's back.
  absl::StatusOr<int64_t> Grant(absl::Duration ttl) { return holder_->Grant(ttl); }
  absl::Status Revoke(int64_t lease) { return holder_->Revoke(lease); }

  bool Has(const std::string& key) { return Get(key).has_value(); }
  // The stored value as JSON; null when missing.
  nlohmann::json StoredJson(const std::string& key) {
    auto v = Get(key);
    return v ? nlohmann::json::parse(*v, nullptr, false) : nlohmann::json();
  }

 protected:
  explicit StoreView(StoreKind kind) : kind_(kind) {}
  // Called by Start once Connect() works.
  absl::Status Init() {
    truth_ = Connect();
    if (truth_ == nullptr) return absl::InternalError("no connection to the store");
    holder_ = truth_->backend()->NewLeaseHolder();
    return absl::OkStatus();
  }

  const StoreKind kind_;
  std::shared_ptr<Connection> truth_;
  std::unique_ptr<LeaseHolder> holder_;
};

class EtcdStoreView : public StoreView {
 public:
  explicit EtcdStoreView(std::unique_ptr<EtcdCluster> cluster)
      : StoreView(StoreKind::kEtcd), cluster_(std::move(cluster)) {}
  absl::Status Init() { return StoreView::Init(); }

  EtcdCluster* etcd() override { return cluster_.get(); }
  std::shared_ptr<Connection> Connect() override {
    EtcdOptions o;
    o.endpoints = cluster_->ClientEndpoints();
    o.call_timeout = TimeScale(absl::Seconds(3));
    auto conn = Connection::Create(o);
    EXPECT_TRUE(conn.ok()) << conn.status();
    return conn.ok() ? *conn : nullptr;
  }
  std::vector<std::pair<std::string, std::string>> ChildEnv() const override {
    return {{"ETCD_ENDPOINTS", cluster_->EndpointsCsv()}};
  }
  std::map<std::string, std::string> All() override {
    ::etcdserverpb::RangeRequest rr;
    rr.set_key("/services/");
    rr.set_range_end("/services0");
    auto r = truth_->client()->Range(rr);
    EXPECT_TRUE(r.ok()) << r.status();
    std::map<std::string, std::string> out;
    if (!r.ok()) return out;
    for (const auto& kv : r->kvs()) out[kv.key()] = kv.value();
    return out;
  }
  std::optional<std::string> Get(const std::string& key) override {
    auto kv = One(key);
    return kv ? std::optional<std::string>(kv->value()) : std::nullopt;
  }
  int64_t LeaseOf(const std::string& key) override {
    ::etcdserverpb::RangeRequest rr;
    rr.set_key(key);
    auto r = truth_->client()->Range(rr);
    if (!r.ok()) return -1;
    return r->kvs_size() == 0 ? 0 : r->kvs(0).lease();
  }
  bool LeaseExists(int64_t lease) override {
    ::etcdserverpb::LeaseTimeToLiveRequest t;
    t.set_id(lease);
    auto ttl = truth_->client()->LeaseTimeToLive(t);
    EXPECT_TRUE(ttl.ok()) << ttl.status();
    return ttl.ok() && ttl->ttl() != -1;
  }
  int64_t Versions(const std::string& key) override {
    auto kv = One(key);
    return kv ? kv->version() : 0;
  }
  absl::Status Put(const std::string& key, const std::string& value, int64_t lease) override {
    ::etcdserverpb::PutRequest p;
    p.set_key(key);
    p.set_value(value);
    p.set_lease(lease);
    return truth_->client()->Put(p).status();
  }
  absl::Status LoseAllData() override { return cluster_->WipeAndRestartAll(); }
  absl::Status Freeze() override { return cluster_->Stop(0); }
  absl::Status Thaw() override { return cluster_->Cont(0); }

 private:
  std::optional<::mvccpb::KeyValue> One(const std::string& key) {
    ::etcdserverpb::RangeRequest rr;
    rr.set_key(key);
    auto r = truth_->client()->Range(rr);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || r->kvs_size() == 0) return std::nullopt;
    return r->kvs(0);
  }
  std::unique_ptr<EtcdCluster> cluster_;
};

class RedisStoreView : public StoreView {
 public:
  explicit RedisStoreView(std::unique_ptr<RedisServer> server)
      : StoreView(StoreKind::kRedis),
        server_(std::move(server)),
        keys_(redis::Keys("sd")),
        client_(ClientOptionsFor(server_->Url())) {}
  absl::Status Init() {
    if (auto s = StoreView::Init(); !s.ok()) return s;
    auto w = Watcher::Create({.connection = Connect()});
    if (!w.ok()) return w.status();
    reaper_ = *std::move(w);
    return reaper_->WaitForSync(TimeScale(absl::Seconds(10)));
  }

  RedisServer* redis_server() override { return server_.get(); }
  std::shared_ptr<Connection> Connect() override {
    RedisOptions o;
    o.url = server_->Url();
    o.call_timeout = TimeScale(absl::Seconds(2));
    auto conn = ConnectRedis(o);
    EXPECT_TRUE(conn.ok()) << conn.status();
    return conn.ok() ? *conn : nullptr;
  }
  std::vector<std::pair<std::string, std::string>> ChildEnv() const override {
    return {{"DISCOVERY_STORE", server_->Url()}};
  }
  std::map<std::string, std::string> All() override {
    std::map<std::string, std::string> out;
    auto r = Command({"HGETALL", Inst()});
    if (!r.ok()) return out;
    for (size_t i = 0; i + 1 < r->elements.size(); i += 2) {
      out[r->elements[i].str] = r->elements[i + 1].str;
    }
    return out;
  }
  std::optional<std::string> Get(const std::string& key) override {
    auto r = Command({"HGET", Inst(), key});
    if (!r.ok() || r->nil()) return std::nullopt;
    return r->str;
  }
  int64_t LeaseOf(const std::string& key) override {
    auto r = Command({"HGET", keys_[3], key});  // {sd}:owner
    if (!r.ok()) return -1;
    return r->nil() ? 0 : r->AsInt();
  }
  bool LeaseExists(int64_t lease) override {
    auto r = Command({"ZSCORE", keys_[4], absl::StrCat(lease)});  // {sd}:dl
    return r.ok() && !r->nil();
  }
  int64_t Versions(const std::string& key) override {
    // XRANGE {sd}:log: entries [id, [op, put|del, key, k, value, v, n, nonce]].
    auto r = Command({"XRANGE", keys_[6], "-", "+"});
    if (!r.ok()) return 0;
    int64_t n = 0;
    for (const redis::Reply& e : r->elements) {
      if (e.elements.size() < 2) continue;
      std::map<std::string, std::string> f;
      const auto& kv = e.elements[1].elements;
      for (size_t i = 0; i + 1 < kv.size(); i += 2) f[kv[i].str] = kv[i + 1].str;
      if (f["key"] != key) continue;
      n = f["op"] == "put" ? n + 1 : 0;  // a delete ends the key's life
    }
    return n;
  }
  absl::Status Put(const std::string& key, const std::string& value, int64_t lease) override {
    if (lease == 0) {
      if (own_lease_ == 0) {
        auto l = Grant(absl::Hours(1));
        if (!l.ok()) return l.status();
        own_lease_ = *l;
      }
      lease = own_lease_;
    }
    auto writer = truth_->backend()->NewInstanceWriter(absl::ZeroDuration());
    int64_t expected = 0;
    if (auto m = Command({"HGET", keys_[2], key}); m.ok() && !m->nil()) expected = m->AsInt();
    for (int attempt = 0; attempt < 5; ++attempt) {
      auto w = writer->PutIfUnchanged(key, value, lease, expected);
      if (!w.ok()) return w.status();
      if (w->written) return absl::OkStatus();
      expected = w->current ? w->current->mod_revision : 0;
    }
    return absl::AbortedError(absl::StrCat(key, " kept changing"));
  }
  absl::Status LoseAllData() override {
    own_lease_ = 0;
    return server_->Restart();  // no persistence: empty, a new epoch
  }
  absl::Status Freeze() override { return server_->Pause(); }
  absl::Status Thaw() override { return server_->Resume(); }

 private:
  static redis::ClientOptions ClientOptionsFor(const std::string& url) {
    redis::ClientOptions o;
    o.url = *redis::ParseUrl(url);
    return o;
  }
  const std::string& Inst() const { return keys_[1]; }
  absl::StatusOr<redis::Reply> Command(const std::vector<std::string>& argv) {
    auto r = client_.Command(argv);
    EXPECT_TRUE(r.ok()) << argv[0] << ": " << r.status();
    return r;
  }

  std::unique_ptr<RedisServer> server_;
  std::vector<std::string> keys_;
  redis::Client client_;
  std::unique_ptr<Watcher> reaper_;
  int64_t own_lease_ = 0;
};

inline absl::StatusOr<std::unique_ptr<StoreView>> StoreView::Start(StoreKind kind, int members) {
  if (kind == StoreKind::kEtcd) {
    auto c = EtcdCluster::Start({.members = members});
    if (!c.ok()) return c.status();
    auto view = std::make_unique<EtcdStoreView>(*std::move(c));
    if (auto s = view->Init(); !s.ok()) return s;
    return view;
  }
  auto r = RedisServer::Start({});
  if (!r.ok()) return r.status();
  auto view = std::make_unique<RedisStoreView>(*std::move(r));
  if (auto s = view->Init(); !s.ok()) return s;
  return view;
}

}  // namespace discovery::testing

#endif  // DISCOVERY_TESTS_SUPPORT_STORE_VIEW_H_
