// Gateway mode (issue 16, label etcd): the unchanged Registrar and Watcher over
// discovery::ConnectGateway, against discoveryd processes in front of a real etcd. etcd is the
// truth every test compares with (etcdctl / a direct Connection).
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <atomic>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "discovery/gateway_client.h"
#include "discovery/registrar.h"
#include "discovery/watcher.h"
#include "etcd/client.h"
#include "gateway_fixture.h"
#include "util/sync.h"

namespace discovery::testing {
namespace {

namespace pb = ::etcdserverpb;

Instance World(const std::string& id) { return WorldInstance(id); }

class GatewayModeTest : public DiscoverydTest {
 protected:
  std::string Url(const GatewayProc& gw) { return absl::StrCat("http://127.0.0.1:", gw.port); }

  std::shared_ptr<Connection> Gateway(std::vector<std::string> urls, std::string token = "") {
    GatewayClientOptions o;
    o.urls = std::move(urls);
    o.api_token = std::move(token);
    o.call_timeout = absl::Seconds(2);
    auto conn = ConnectGateway(o);
    EXPECT_TRUE(conn.ok()) << conn.status();
    return conn.ok() ? *conn : nullptr;
  }
  std::shared_ptr<Connection> Direct() {
    EtcdOptions o;
    o.endpoints = cluster_->ClientEndpoints();
    auto conn = Connection::Create(o);
    EXPECT_TRUE(conn.ok()) << conn.status();
    return conn.ok() ? *conn : nullptr;
  }
  // etcd's truth: "<type>/<id>" -> value, for every key under /services/ (the epoch key of
  // discoveryd lives elsewhere).
  std::set<std::string> EtcdIds(Connection& direct) {
    pb::RangeRequest req;
    req.set_key("/services/");
    req.set_range_end("/services0");
    req.set_keys_only(true);
    auto r = direct.client()->Range(req);
    EXPECT_TRUE(r.ok()) << r.status();
    std::set<std::string> out;
    if (!r.ok()) return out;
    for (const auto& kv : r->kvs()) out.insert(kv.key().substr(std::string("/services/").size()));
    return out;
  }
  static std::set<std::string> CacheIds(const Watcher& w) {
    std::set<std::string> out;
    for (const InstancePtr& in : w.snapshot()->All()) {
      out.insert(absl::StrCat(in->type, "/", in->instance_id));
    }
    return out;
  }
  std::unique_ptr<Watcher> WatchVia(std::shared_ptr<Connection> conn) {
    WatcherOptions wo;
    wo.connection = std::move(conn);
    auto w = Watcher::Create(std::move(wo));
    EXPECT_TRUE(w.ok()) << w.status();
    return w.ok() ? *std::move(w) : nullptr;
  }
};

// Registered through the gateway, kept alive by batch heartbeats past several TTLs, removed at
// once by Close.
TEST_F(GatewayModeTest, RegistrarHeartbeatsKeepItAliveAndCloseRemovesIt) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  auto conn = Gateway({Url(gw)});
  ASSERT_NE(conn, nullptr);
  auto registrar = Registrar::Create({.connection = conn});
  ASSERT_TRUE(registrar.ok()) << registrar.status();
  auto reg = (*registrar)->Register(World("gw-a"), {.ttl = absl::Seconds(2)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  const std::string key = "/services/world/gw-a";
  ASSERT_TRUE(KeyExists(key));
  // Four TTLs: without heartbeats the key would be gone after one.
  EXPECT_FALSE(
      WaitUntil([&] { return !KeyExists(key); }, absl::Seconds(8), absl::Milliseconds(250)))
      << "the registration expired although its process heartbeats through the gateway";
  Response metrics = Must(Http(gw.port, "GET", "/metrics"));
  EXPECT_TRUE(absl::StrContains(metrics.body, "discovery_gateway_leases_kept 1")) << metrics.body;
  ASSERT_TRUE(reg->Close().ok());
  EXPECT_TRUE(WaitUntil([&] { return !KeyExists(key); }, absl::Seconds(3))) << Keys();
}

// The lease revoked behind the registrar's back (etcdctl): the gateway answers it "gone", the
// registrar re-registers the same id with a new lease.
TEST_F(GatewayModeTest, LeaseRevokedBehindItsBackIsReRegisteredWithTheSameId) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  std::atomic<int> re_registered{0};
  auto registrar = Registrar::Create(
      {.connection = Gateway({Url(gw)}), .on_event = [&](const RegistrationEvent& e) {
         if (e.type == RegistrationEventType::kReRegistered) re_registered.fetch_add(1);
       }});
  ASSERT_TRUE(registrar.ok()) << registrar.status();
  auto reg = (*registrar)->Register(World("gw-b"), {.ttl = absl::Seconds(3)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  const int64_t old_lease = reg->lease_id();
  ASSERT_TRUE(cluster_->Etcdctl({"lease", "revoke", absl::StrFormat("%x", old_lease)}).ok());
  ASSERT_TRUE(WaitUntil([&] { return re_registered.load() > 0; }, absl::Seconds(10)))
      << "no re-registration after the lease was revoked";
  EXPECT_TRUE(WaitUntil([&] { return KeyExists("/services/world/gw-b"); }, absl::Seconds(3)));
  EXPECT_NE(reg->lease_id(), old_lease);
  EXPECT_EQ(Value("/services/world/gw-b").value("instanceId", ""), "gw-b");
}

// A read-only token can watch, not register: kPermissionDenied, clearly.
TEST_F(GatewayModeTest, ReadOnlyTokenWatchesButCannotRegister) {
  const std::string file = absl::StrCat(::testing::TempDir(), "/gw_tokens_", getpid());
  {
    std::ofstream out(file);
    out << "rw-token rw\nro-token ro\n";
  }
  GatewayProc gw = StartGateway({"--api-token-file", file});
  ASSERT_GT(gw.port, 0);
  auto ro = Gateway({Url(gw)}, "ro-token");
  auto registrar = Registrar::Create({.connection = ro});
  ASSERT_TRUE(registrar.ok()) << registrar.status();
  auto reg = (*registrar)->Register(World("gw-ro"), {.ttl = absl::Seconds(3)});
  ASSERT_FALSE(reg.ok());
  EXPECT_EQ(reg.status().code(), absl::StatusCode::kPermissionDenied) << reg.status();
  auto watcher = WatchVia(ro);
  ASSERT_NE(watcher, nullptr);
  EXPECT_TRUE(watcher->WaitForSync(absl::Seconds(5)).ok());
  // WatcherOptions::type maps to ?type=; another prefix is refused with a clear reason.
  WatcherOptions typed;
  typed.connection = ro;
  typed.type = "world";
  auto tw = Watcher::Create(std::move(typed));
  ASSERT_TRUE(tw.ok()) << tw.status();
  EXPECT_TRUE((*tw)->WaitForSync(absl::Seconds(5)).ok());
  WatcherOptions other;
  other.connection = ro;
  other.prefix = "/other/";
  auto ow = Watcher::Create(std::move(other));
  ASSERT_TRUE(ow.ok()) << ow.status();
  absl::Status refused = (*ow)->WaitForSync(absl::Seconds(1));
  EXPECT_TRUE(absl::StrContains(refused.message(), "is not the gateway's")) << refused;
  auto none = Gateway({Url(gw)});
  auto denied = (*Registrar::Create({.connection = none}))->Register(World("gw-none"));
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kUnauthenticated) << denied.status();
}

// A watcher over the gateway equals etcd after random ops from several registrars, direct and
// gateway mode mixed (register, status change, close, lease revoked behind their back).
TEST_F(GatewayModeTest, WatcherCacheEqualsEtcdAfterMixedRandomOps) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  auto direct = Direct();
  ASSERT_NE(direct, nullptr);
  auto watcher = WatchVia(Gateway({Url(gw)}));
  ASSERT_NE(watcher, nullptr);
  ASSERT_TRUE(watcher->WaitForSync(absl::Seconds(5)).ok());
  std::vector<std::unique_ptr<Registrar>> registrars;
  for (int i = 0; i < 4; ++i) {
    auto r = Registrar::Create({.connection = i % 2 == 0 ? Gateway({Url(gw)}) : direct});
    ASSERT_TRUE(r.ok()) << r.status();
    registrars.push_back(*std::move(r));
  }
  std::mt19937 rng(16);
  std::map<std::string, Registration> live;
  for (int op = 0; op < 60; ++op) {
    int which = static_cast<int>(rng() % 4);
    if (live.size() < 3 || which == 0) {
      std::string id = absl::StrCat("r", op);
      auto reg =
          registrars[rng() % registrars.size()]->Register(World(id), {.ttl = absl::Seconds(5)});
      ASSERT_TRUE(reg.ok()) << reg.status();
      live.emplace(id, *std::move(reg));
      continue;
    }
    auto it = std::next(live.begin(), static_cast<long>(rng() % live.size()));
    if (which == 1) {
      absl::Status s = it->second.SetStatus(InstanceStatus::kReady, absl::StrCat("cs", op));
      // Right after a revoke below, the registrar may be re-registering (same in direct mode).
      EXPECT_TRUE(s.ok() || s.code() == absl::StatusCode::kFailedPrecondition) << s;
    } else if (which == 2) {
      EXPECT_TRUE(it->second.Close().ok());
      live.erase(it);
    } else {
      pb::LeaseRevokeRequest rv;
      rv.set_id(it->second.lease_id());
      (void)direct->client()->LeaseRevoke(rv);  // re-registered by its registrar
    }
  }
  std::set<std::string> want;
  EXPECT_TRUE(WaitUntil(
      [&] {
        want = EtcdIds(*direct);
        return CacheIds(*watcher) == want && want.size() == live.size();
      },
      absl::Seconds(15)))
      << "cache " << CacheIds(*watcher).size() << " etcd " << want.size() << " live "
      << live.size();
  // Values too: the custom-state changes went through.
  for (const auto& [id, reg] : live) {
    InstancePtr in = watcher->snapshot()->Find("world", id);
    ASSERT_NE(in, nullptr) << id;
    EXPECT_EQ(in->custom_state, reg.instance().custom_state) << id;
  }
}

// One of two discoveryd killed and restarted: registrations through the gateway survive (the
// other one answers the heartbeats), the watcher fails over and converges with etcd.
TEST_F(GatewayModeTest, DiscoverydKilledAndRestartedWatcherConvergesRegistrationSurvives) {
  GatewayProc a = StartGateway();
  GatewayProc b = StartGateway();
  ASSERT_GT(a.port, 0);
  ASSERT_GT(b.port, 0);
  auto direct = Direct();
  auto conn = Gateway({Url(a), Url(b)});
  auto watcher = WatchVia(conn);
  ASSERT_NE(watcher, nullptr);
  ASSERT_TRUE(watcher->WaitForSync(absl::Seconds(5)).ok());
  auto registrar = Registrar::Create({.connection = conn});
  ASSERT_TRUE(registrar.ok());
  auto reg = (*registrar)->Register(World("gw-k"), {.ttl = absl::Seconds(2)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  const int64_t lease = reg->lease_id();
  ASSERT_TRUE(a.proc->Kill().ok());
  // Changes while `a` is down: the watcher must see them through `b`.
  auto other = (*Registrar::Create({.connection = direct}))->Register(World("direct-1"));
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_TRUE(WaitUntil([&] { return CacheIds(*watcher) == EtcdIds(*direct); }, absl::Seconds(10)));
  // Three TTLs on `b` alone: still the same registration.
  EXPECT_FALSE(WaitUntil([&] { return !KeyExists("/services/world/gw-k"); }, absl::Seconds(6),
                         absl::Milliseconds(250)));
  EXPECT_EQ(reg->lease_id(), lease);
  GatewayProc a2 = StartGateway({}, {}, absl::StrCat("127.0.0.1:", a.port));
  ASSERT_EQ(a2.port, a.port);
  ASSERT_TRUE(b.proc->Kill().ok());
  ASSERT_TRUE(other->Close().ok());
  EXPECT_TRUE(WaitUntil([&] { return CacheIds(*watcher) == EtcdIds(*direct); }, absl::Seconds(10)))
      << "cache " << CacheIds(*watcher).size() << " etcd " << EtcdIds(*direct).size();
  EXPECT_FALSE(WaitUntil([&] { return !KeyExists("/services/world/gw-k"); }, absl::Seconds(5),
                         absl::Milliseconds(250)));
  EXPECT_EQ(reg->lease_id(), lease);
}

// The value of a counter or gauge line in discoveryd's /metrics (-1 when absent).
double Metric(int port, const std::string& name) {
  Response r = Must(Http(port, "GET", "/metrics"));
  for (absl::string_view line : absl::StrSplit(r.body, '\n')) {
    if (absl::StartsWith(line, name + " ")) {
      double v = 0;
      if (absl::SimpleAtod(line.substr(name.size() + 1), &v)) return v;
    }
  }
  return -1;
}

// Heartbeats are batched: 200 registrations of one process cost ONE heartbeat call per
// interval (TTL/3), not one per registration; each carries all 200 leases.
TEST_F(GatewayModeTest, OneBatchHeartbeatPerIntervalForAllRegistrations) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  auto registrar = Registrar::Create({.connection = Gateway({Url(gw)})});
  ASSERT_TRUE(registrar.ok());
  std::vector<Instance> many;
  for (int i = 0; i < 200; ++i) many.push_back(World(absl::StrCat("b", i)));
  const absl::Time reg_start = absl::Now();
  auto regs = (*registrar)->RegisterMany(many, {.ttl = absl::Seconds(3)});
  const absl::Duration reg_took = absl::Now() - reg_start;
  for (const auto& r : regs) ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(WaitUntil([&] { return Metric(gw.port, "discovery_gateway_leases_kept") == 200; },
                        absl::Seconds(5)));
  const double calls0 = Metric(gw.port, "discovery_gateway_heartbeat_calls_total");
  const double leases0 = Metric(gw.port, "discovery_gateway_heartbeat_leases_total");
  struct rusage ru0, ru1;
  getrusage(RUSAGE_SELF, &ru0);
  const absl::Time t0 = absl::Now();
  // Six heartbeat calls: batched, they take about six intervals (1 s each); one call per
  // registration would reach six at once.
  EXPECT_TRUE(WaitUntil(
      [&] { return Metric(gw.port, "discovery_gateway_heartbeat_calls_total") - calls0 >= 6; },
      absl::Seconds(15), absl::Milliseconds(100)));
  getrusage(RUSAGE_SELF, &ru1);
  const double secs = absl::ToDoubleSeconds(absl::Now() - t0);
  const double calls = Metric(gw.port, "discovery_gateway_heartbeat_calls_total") - calls0;
  const double leases = Metric(gw.port, "discovery_gateway_heartbeat_leases_total") - leases0;
  auto cpu = [](const struct rusage& r) {
    return r.ru_utime.tv_sec + r.ru_stime.tv_sec + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
  };
  std::cout << "200 gateway registrations: registered in " << absl::FormatDuration(reg_took) << "; "
            << calls << " heartbeat calls carrying " << leases << " leases in " << secs
            << " s; test process CPU " << (cpu(ru1) - cpu(ru0)) / secs * 100 << " % of a core\n";
  EXPECT_GE(secs, 4.5) << "heartbeats are not batched per interval";
  EXPECT_GE(leases, 200 * calls - 1);
  (*registrar)->ShutdownAll();
}

// A gateway-mode client that stops heartbeating (killed) loses its registration within 2x TTL:
// discoveryd stops refreshing a lease nobody heartbeats, even when no other heartbeat arrives.
TEST_F(GatewayModeTest, SilentClientsLeaseRunsOutWithinTwoTtls) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  Response granted = Must(Http(gw.port, "POST", "/sd/v1/leases", R"({"ttlSeconds":2})"));
  ASSERT_EQ(granted.status, 201) << granted.body;
  const std::string lease = granted.Json()["leaseId"].get<std::string>();
  json put = {{"key", "/services/world/silent"},
              {"value", EncodeInstance(World("silent"))},
              {"leaseId", lease}};
  Response written = Must(Http(gw.port, "POST", "/sd/v1/writes/put-if-absent", put.dump()));
  ASSERT_EQ(written.status, 200) << written.body;
  json hb = {{"leases", {lease}}};
  Response beat = Must(Http(gw.port, "POST", "/sd/v1/heartbeat", hb.dump()));
  ASSERT_EQ(beat.status, 200) << beat.body;
  EXPECT_TRUE(beat.Json()["gone"].empty()) << beat.body;
  const absl::Time silent_since = absl::Now();
  EXPECT_TRUE(WaitUntil([&] { return !KeyExists("/services/world/silent"); }, absl::Seconds(8),
                        absl::Milliseconds(250)))
      << "discoveryd keeps a lease alive that nobody heartbeats";
  EXPECT_LT(absl::Now() - silent_since, absl::Seconds(4) + absl::Seconds(2));
  beat = Must(Http(gw.port, "POST", "/sd/v1/heartbeat", hb.dump()));
  EXPECT_EQ(beat.Json()["gone"], json::array({lease})) << beat.body;
  // Bad input: a clear 400, not a crash.
  EXPECT_EQ(Must(Http(gw.port, "POST", "/sd/v1/heartbeat", R"({"leases":["xyz"]})")).status, 400);
  EXPECT_EQ(Must(Http(gw.port, "POST", "/sd/v1/writes/put-if-absent",
                      R"({"key":"/other/world/x","value":"{}","leaseId":"1"})"))
                .status,
            400);
}

// etcd wiped behind discoveryd: the gateway sends `reset` (another history), the watcher's cache
// is replaced without ghosts, and the gateway-mode registration comes back (lease gone ->
// re-registered with the same id).
TEST_F(GatewayModeTest, EtcdWipedBehindDiscoverydEveryoneConverges) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  auto conn = Gateway({Url(gw)});
  auto watcher = WatchVia(conn);
  ASSERT_NE(watcher, nullptr);
  ASSERT_TRUE(watcher->WaitForSync(absl::Seconds(5)).ok());
  auto registrar = Registrar::Create({.connection = conn});
  ASSERT_TRUE(registrar.ok());
  auto reg = (*registrar)->Register(World("gw-w"), {.ttl = absl::Seconds(2)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  ASSERT_TRUE(
      cluster_->Etcdctl({"put", "/services/world/ghost", EncodeInstance(World("ghost"))}).ok());
  ASSERT_TRUE(WaitUntil([&] { return CacheIds(*watcher).size() == 2; }, absl::Seconds(5)));
  const uint64_t resets_before = watcher->stats().history_resets;
  ASSERT_TRUE(cluster_->WipeAndRestartAll().ok());
  auto direct = Direct();
  EXPECT_TRUE(WaitUntil(
      [&] {
        std::set<std::string> want = EtcdIds(*direct);
        return want == std::set<std::string>{"world/gw-w"} && CacheIds(*watcher) == want;
      },
      absl::Seconds(20)))
      << "cache " << CacheIds(*watcher).size() << " etcd " << EtcdIds(*direct).size();
  EXPECT_GT(watcher->stats().history_resets, resets_before);
}

}  // namespace
}  // namespace discovery::testing
