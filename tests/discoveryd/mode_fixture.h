// The ways a Registrar or Watcher reaches instance state, for suites that run once per mode:
// direct (a gRPC Connection to etcd), gateway (discovery::ConnectGateway through a discoveryd
// process spawned by gateway_fixture.h, etcd behind it) and Redis (discovery::ConnectRedis).
// The store is the truth in every mode, read directly (tests/support/store_view.h). The
// etcd-only helpers below (DirectConnection, EtcdState, CacheEqualsEtcd) serve the gateway
// chaos suite.
#ifndef DISCOVERY_TESTS_DISCOVERYD_MODE_FIXTURE_H_
#define DISCOVERY_TESTS_DISCOVERYD_MODE_FIXTURE_H_

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "discovery/gateway_client.h"
#include "discovery/registrar.h"
#include "discovery/watcher.h"
#include "etcd/client.h"
#include "gateway_fixture.h"
#include "store_view.h"
#include "watch_truth.h"

namespace discovery::testing {

enum class Mode { kDirect, kGateway, kRedis };

inline std::string ModeName(const ::testing::TestParamInfo<Mode>& info) {
  switch (info.param) {
    case Mode::kDirect:
      return "Direct";
    case Mode::kGateway:
      return "Gateway";
    case Mode::kRedis:
      break;
  }
  return "Redis";
}

inline void PrintTo(Mode mode, std::ostream* os) {
  *os << ModeName(::testing::TestParamInfo<Mode>(mode, 0));
}

inline std::string GatewayUrl(const GatewayProc& gw) {
  return absl::StrCat("http://127.0.0.1:", gw.port);
}

// A gateway-mode Connection to `urls` (failover in that order).
inline std::shared_ptr<Connection> GatewayConnection(std::vector<std::string> urls) {
  GatewayClientOptions o;
  o.urls = std::move(urls);
  o.call_timeout = TimeScale(absl::Seconds(2));
  auto conn = ConnectGateway(o);
  EXPECT_TRUE(conn.ok()) << conn.status();
  return conn.ok() ? *conn : nullptr;
}

inline std::shared_ptr<Connection> DirectConnection(const EtcdCluster& cluster) {
  EtcdOptions o;
  o.endpoints = cluster.ClientEndpoints();
  o.call_timeout = TimeScale(absl::Seconds(3));
  auto conn = Connection::Create(o);
  EXPECT_TRUE(conn.ok()) << conn.status();
  return conn.ok() ? *conn : nullptr;
}

// etcd's truth through a direct Connection: key -> value of every key under /services/ (the
// epoch key of discoveryd, /services.epoch, is outside the range).
inline std::map<std::string, std::string> EtcdState(Connection& direct) {
  ::etcdserverpb::RangeRequest rr;
  rr.set_key("/services/");
  rr.set_range_end("/services0");
  auto r = direct.client()->Range(rr);
  EXPECT_TRUE(r.ok()) << r.status();
  std::map<std::string, std::string> out;
  if (!r.ok()) return out;
  for (const auto& kv : r->kvs()) out[kv.key()] = kv.value();
  return out;
}

// True when the watcher's cache holds exactly etcd's valid instances, values included.
inline bool CacheEqualsEtcd(Connection& direct, const Watcher& w, std::string* diff = nullptr) {
  return CacheEquals(ValidInstances(EtcdState(direct)), w, diff);
}

// One test per mode: Direct (etcd), Gateway (a discoveryd in front of etcd) and Redis (the
// Redis backend, issue 17). store_ is the truth of every mode (store_view.h: etcd Range or
// Redis HGETALL, raw writes, revokes behind the registrar's back).
class ModeTest : public ::testing::Test, public ::testing::WithParamInterface<Mode> {
 protected:
  void SetUp() override {
    auto s = StoreView::Start(redis() ? StoreKind::kRedis : StoreKind::kEtcd);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
    if (gateway()) {
      gw_ = SpawnGateway(store_->etcd()->EndpointsCsv());
      ASSERT_GT(gw_.port, 0);
    }
  }
  bool gateway() const { return GetParam() == Mode::kGateway; }
  bool redis() const { return GetParam() == Mode::kRedis; }

  // A new Connection in this test's mode.
  std::shared_ptr<Connection> Conn() {
    return gateway() ? GatewayConnection({GatewayUrl(gw_)}) : store_->Connect();
  }
  // example_game_server in this test's mode (--gateway URL, or the store's ETCD_ENDPOINTS /
  // DISCOVERY_STORE), its ids on stdout.
  std::unique_ptr<ChildProcess> SpawnGameServer(std::vector<std::string> args) {
    std::vector<std::string> argv = {EXAMPLE_GAME_SERVER};
    std::vector<std::pair<std::string, std::string>> env;
    if (gateway()) {
      argv.insert(argv.end(), {"--gateway", GatewayUrl(gw_)});
    } else {
      env = store_->ChildEnv();
    }
    argv.insert(argv.end(), args.begin(), args.end());
    auto child = ChildProcess::Spawn({.argv = argv,
                                      .env = env,
                                      .unset_env_prefixes = {"ETCD_", "DISCOVERY_"},
                                      .stdout_to_pipe = true});
    EXPECT_TRUE(child.ok()) << child.status();
    return child.ok() ? *std::move(child) : nullptr;
  }
  std::unique_ptr<Watcher> NewWatcher(WatcherOptions o = {}) {
    if (o.connection == nullptr) o.connection = Conn();
    auto w = Watcher::Create(std::move(o));
    EXPECT_TRUE(w.ok()) << w.status();
    if (!w.ok()) return nullptr;
    EXPECT_TRUE((*w)->WaitForSync(TimeScale(absl::Seconds(5))).ok());
    return *std::move(w);
  }
  // The lease of `key` in the store; 0 when the key is missing; -1 on an error.
  int64_t LeaseOf(const std::string& key) { return store_->LeaseOf(key); }
  bool InStore(const std::string& key) { return store_->Has(key); }
  // The stored value of `key` as JSON (null when missing), read directly.
  json StoredJson(const std::string& key) { return store_->StoredJson(key); }

  std::unique_ptr<StoreView> store_;
  GatewayProc gw_;
};

}  // namespace discovery::testing

#endif  // DISCOVERY_TESTS_DISCOVERYD_MODE_FIXTURE_H_
