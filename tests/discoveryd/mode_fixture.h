// The two ways a Registrar or Watcher reaches instance state, for suites that run once per
// mode: direct (a gRPC Connection to etcd) and gateway (discovery::ConnectGateway through a
// discoveryd process spawned by gateway_fixture.h). etcd stays the truth in both: the fixture
// always holds a direct Connection to compare with.
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

namespace discovery::testing {

enum class Mode { kDirect, kGateway };

inline std::string ModeName(const ::testing::TestParamInfo<Mode>& info) {
  return info.param == Mode::kDirect ? "Direct" : "Gateway";
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
  std::map<std::string, std::string> want;
  for (auto& [k, v] : EtcdState(direct)) {
    auto in = DecodeInstance(v);
    if (in.ok()) want["/services/" + in->type + "/" + in->instance_id] = EncodeInstance(*in);
  }
  std::map<std::string, std::string> have;
  for (const auto& in : w.snapshot()->All()) {
    have["/services/" + in->type + "/" + in->instance_id] = EncodeInstance(*in);
  }
  if (want == have) return true;
  if (diff != nullptr) {
    *diff = absl::StrCat("etcd has ", want.size(), ", cache has ", have.size());
    for (const auto& [k, v] : want) {
      auto it = have.find(k);
      if (it == have.end()) {
        absl::StrAppend(diff, "; missing ", k);
      } else if (it->second != v) {
        absl::StrAppend(diff, "; differs ", k);
      }
    }
    for (const auto& [k, v] : have) {
      if (want.count(k) == 0) absl::StrAppend(diff, "; ghost ", k);
    }
  }
  return false;
}

// The events of one subscription, and their replay: applying them in order from empty must
// give the cache (nothing lost, nothing added twice, no change of an unknown instance).
struct EventRecorder {
  std::mutex mu;
  std::vector<ChangeEvent> events;
  std::function<void(const ChangeEvent&)> Callback() {
    return [this](const ChangeEvent& ev) {
      std::lock_guard<std::mutex> lock(mu);
      events.push_back(ev);
    };
  }
  std::vector<ChangeEvent> Take() {
    std::lock_guard<std::mutex> lock(mu);
    return events;
  }
  // "<type>/<id>" -> value after replaying every event; `errors` collects what went wrong.
  std::map<std::string, std::string> Replay(std::vector<std::string>* errors) {
    std::map<std::string, std::string> out;
    for (const ChangeEvent& ev : Take()) {
      const std::string key = ev.instance->type + "/" + ev.instance->instance_id;
      if (ev.type == ChangeType::kAdded && out.count(key) != 0) {
        errors->push_back("added twice: " + key);
      } else if (ev.type != ChangeType::kAdded && out.count(key) == 0) {
        errors->push_back("change of unknown: " + key);
      }
      if (ev.type == ChangeType::kRemoved) {
        out.erase(key);
      } else {
        out[key] = EncodeInstance(*ev.instance);
      }
    }
    return out;
  }
};

inline std::map<std::string, std::string> CacheByKey(const Watcher& w) {
  std::map<std::string, std::string> out;
  for (const auto& in : w.snapshot()->All()) {
    out[in->type + "/" + in->instance_id] = EncodeInstance(*in);
  }
  return out;
}

// DiscoverydTest (one etcd member) plus, in gateway mode, one discoveryd in front of it.
class ModeTest : public DiscoverydTest, public ::testing::WithParamInterface<Mode> {
 protected:
  void SetUp() override {
    DiscoverydTest::SetUp();
    if (HasFatalFailure()) return;
    direct_ = DirectConnection(*cluster_);
    ASSERT_NE(direct_, nullptr);
    if (gateway()) {
      gw_ = StartGateway();
      ASSERT_GT(gw_.port, 0);
    }
  }
  bool gateway() const { return GetParam() == Mode::kGateway; }

  // A new Connection in this test's mode.
  std::shared_ptr<Connection> Conn() {
    return gateway() ? GatewayConnection({GatewayUrl(gw_)}) : DirectConnection(*cluster_);
  }
  // example_game_server in this test's mode (--gateway URL, or ETCD_ENDPOINTS), its ids on
  // stdout.
  std::unique_ptr<ChildProcess> SpawnGameServer(std::vector<std::string> args) {
    std::vector<std::string> argv = {EXAMPLE_GAME_SERVER};
    std::vector<std::pair<std::string, std::string>> env;
    if (gateway()) {
      argv.insert(argv.end(), {"--gateway", GatewayUrl(gw_)});
    } else {
      env.emplace_back("ETCD_ENDPOINTS", cluster_->EndpointsCsv());
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
  // The lease of `key` in etcd; 0 when the key is missing (or has none); -1 on an error.
  int64_t LeaseOf(const std::string& key) {
    ::etcdserverpb::RangeRequest rr;
    rr.set_key(key);
    auto r = direct_->client()->Range(rr);
    if (!r.ok()) return -1;
    return r->kvs_size() == 0 ? 0 : r->kvs(0).lease();
  }
  bool InEtcd(const std::string& key) {
    ::etcdserverpb::RangeRequest rr;
    rr.set_key(key);
    auto r = direct_->client()->Range(rr);
    return r.ok() && r->kvs_size() > 0;
  }
  // The stored value of `key` as JSON (null when missing), read directly.
  json StoredJson(const std::string& key) {
    ::etcdserverpb::RangeRequest rr;
    rr.set_key(key);
    auto r = direct_->client()->Range(rr);
    if (!r.ok() || r->kvs_size() == 0) return json();
    return json::parse(r->kvs(0).value(), nullptr, false);
  }

  std::shared_ptr<Connection> direct_;
  GatewayProc gw_;
};

}  // namespace discovery::testing

#endif  // DISCOVERY_TESTS_DISCOVERYD_MODE_FIXTURE_H_
