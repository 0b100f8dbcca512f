// Retried writes recognise their own write (label etcd: one real etcd member, a TcpProxy that
// holds etcd's answers while requests still reach it, discoveryd as a child process).
//
//  - A Registrar whose LeaseGrant answer comes back after the attempt deadline fails over and
//    retries: one registration, one lease (no second lease leaked until its TTL).
//  - discoveryd: the same through the gateway; a retried POST with the same body gets the
//    existing registration (201, then 200 with the same leaseId), also when the client gave
//    up on the first POST before etcd's late answer arrived.
//  - DELETE ?leaseId= / If-Match never removes a newer registration of the same id (412).
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "discovery/etcd.h"
#include "discovery/registrar.h"
#include "etcd/client.h"
#include "etcd_harness.h"
#include "gateway_fixture.h"
#include "http_test_client.h"
#include "tcp_proxy.h"

namespace discovery::testing {
namespace {

namespace pb = ::etcdserverpb;

class RetriedWritesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto c = EtcdCluster::Start({.members = 1});
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
    auto p = TcpProxy::Start(cluster_->ClientPort(0));
    ASSERT_TRUE(p.ok()) << p.status();
    proxy_ = *std::move(p);
    EtcdOptions direct;
    direct.endpoints = {cluster_->ClientEndpoint(0)};
    auto conn = Connection::Create(direct);
    ASSERT_TRUE(conn.ok()) << conn.status();
    direct_ = *std::move(conn);
  }

  etcd::Client& etcd() { return *direct_->client(); }

  // Every lease etcd holds (-1 on error).
  int Leases() {
    auto r = etcd().LeaseLeases();
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->leases_size() : -1;
  }
  // The keys under /services/ and their leases.
  std::vector<std::pair<std::string, int64_t>> Keys() {
    pb::RangeRequest rr;
    rr.set_key("/services/");
    rr.set_range_end("/services0");
    auto r = etcd().Range(rr);
    EXPECT_TRUE(r.ok()) << r.status();
    std::vector<std::pair<std::string, int64_t>> out;
    if (r.ok()) {
      for (const auto& kv : r->kvs()) out.emplace_back(kv.key(), kv.lease());
    }
    return out;
  }
  int64_t Ttl(int64_t lease) {
    pb::LeaseTimeToLiveRequest q;
    q.set_id(lease);
    auto r = etcd().LeaseTimeToLive(q);
    return r.ok() ? r->ttl() : -2;
  }
  static int64_t Hex(const json& j) {
    return static_cast<int64_t>(std::stoull(j.value("leaseId", "0"), nullptr, 16));
  }
  // Exactly one key, on `lease`, which is alive, and no other lease in etcd.
  void ExpectOneRegistration(int64_t lease) {
    auto keys = Keys();
    ASSERT_EQ(keys.size(), 1u);
    EXPECT_EQ(keys[0].second, lease);
    EXPECT_GT(Ttl(lease), 0);
    EXPECT_EQ(Leases(), 1) << "a lease leaked";
  }

  std::unique_ptr<EtcdCluster> cluster_;
  std::unique_ptr<TcpProxy> proxy_;
  std::shared_ptr<Connection> direct_;
};

Instance World(const std::string& id) {
  Instance in;
  in.instance_id = id;
  in.type = "world";
  in.group = "kr-1";
  in.hostname = "game-01";
  in.private_ip = "127.0.0.1";
  in.ports["game"] = 8001;
  return in;
}

// The first endpoint is the proxy; its answer to the LeaseGrant is held past the attempt
// deadline (call timeout 4 s over 2 endpoints: 2 s per attempt), so the client retries the
// grant on the direct endpoint although etcd applied the first one.
TEST_F(RetriedWritesTest, RegistrarGrantAnsweredLateRegistersOnceWithOneLease) {
  RegistrarOptions ro;
  ro.etcd.endpoints = {proxy_->endpoint(), cluster_->ClientEndpoint(0)};
  ro.etcd.call_timeout = absl::Seconds(4);
  auto registrar = Registrar::Create(ro);
  ASSERT_TRUE(registrar.ok()) << registrar.status();
  ASSERT_TRUE((*registrar)->connection()->Ping().ok());  // the channel to the proxy is up
  ASSERT_EQ(Leases(), 0);

  proxy_->HoldReplies();
  auto reg = (*registrar)->Register(World("01JCYFZQ7D4NB4MZ5S6Z6NXYK8"));
  ASSERT_TRUE(reg.ok()) << reg.status();
  EXPECT_GT(proxy_->held_bytes(), 0) << "etcd's first answer was not held: nothing retried";
  proxy_->Resume();

  ExpectOneRegistration(reg->lease_id());
  // A second Register of the same id is refused and leaves nothing behind.
  auto again = (*registrar)->Register(World("01JCYFZQ7D4NB4MZ5S6Z6NXYK8"));
  EXPECT_TRUE(absl::IsAlreadyExists(again.status())) << again.status();
  ExpectOneRegistration(reg->lease_id());
  EXPECT_TRUE(reg->Close().ok());
  EXPECT_TRUE(Keys().empty());
  EXPECT_TRUE(WaitUntil([&] { return Leases() == 0; }, absl::Seconds(5)));
}

TEST_F(RetriedWritesTest, DiscoverydPostTwiceWithTheSameBodyGetsTheSameRegistration) {
  GatewayProc gw = SpawnGateway(cluster_->ClientEndpoint(0));
  ASSERT_GT(gw.port, 0);
  const std::string body = WorldBody("01JCYFZQ7D4NB4MZ5S6Z6NXYK9").dump();
  Response first = Must(Http(gw.port, "POST", "/sd/v1/instances", body));
  ASSERT_EQ(first.status, 201) << first.body;
  Response second = Must(Http(gw.port, "POST", "/sd/v1/instances", body));
  ASSERT_EQ(second.status, 200) << second.body;
  EXPECT_EQ(second.Json().value("leaseId", ""), first.Json().value("leaseId", ""));
  EXPECT_GT(second.Json().value("ttlSeconds", 0), 0);
  ExpectOneRegistration(Hex(first.Json()));

  // Another body under the same id is a clash: 409, and the lease granted for it is revoked.
  json other = WorldBody("01JCYFZQ7D4NB4MZ5S6Z6NXYK9", "ready");
  Response clash = Must(Http(gw.port, "POST", "/sd/v1/instances", other.dump()));
  EXPECT_EQ(clash.status, 409) << clash.body;
  ExpectOneRegistration(Hex(first.Json()));
}

// discoveryd reaches etcd through [proxy, direct]: its LeaseGrant answer is held, the client
// fails over and retries. One registration, one lease.
TEST_F(RetriedWritesTest, DiscoverydGrantAnsweredLateRegistersOnceWithOneLease) {
  GatewayProc gw = SpawnGateway(absl::StrCat(proxy_->endpoint(), ",", cluster_->ClientEndpoint(0)));
  ASSERT_GT(gw.port, 0);
  Response warm = Must(Http(gw.port, "GET", "/sd/v1/instances/none?type=world"));
  ASSERT_EQ(warm.status, 404) << warm.body;  // a Range went through the proxy: channel is up
  proxy_->HoldReplies();
  const std::string body = WorldBody("01JCYFZQ7D4NB4MZ5S6Z6NXYKA").dump();
  Response r = Must(Http(gw.port, "POST", "/sd/v1/instances", body, {}, absl::Seconds(15)));
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_GT(proxy_->held_bytes(), 0);
  proxy_->Resume();
  ExpectOneRegistration(Hex(r.Json()));
}

// The HTTP client gives up on its POST (discoveryd's etcd answers are held); etcd applies the
// registration when they arrive; the client's retry with the same body gets that registration.
TEST_F(RetriedWritesTest, DiscoverydPostRetriedAfterTheClientsDeadlineGetsTheFirstWrite) {
  GatewayProc gw = SpawnGateway(proxy_->endpoint());
  ASSERT_GT(gw.port, 0);
  const std::string body = WorldBody("01JCYFZQ7D4NB4MZ5S6Z6NXYKB").dump();
  proxy_->HoldReplies();
  auto lost = Http(gw.port, "POST", "/sd/v1/instances", body, {}, absl::Seconds(1));
  EXPECT_FALSE(lost.ok() && lost->status == 201) << "the first POST was not delayed";
  ASSERT_TRUE(WaitUntil([&] { return proxy_->held_bytes() > 0; }, absl::Seconds(5)));
  proxy_->Resume();
  ASSERT_TRUE(WaitUntil([&] { return Keys().size() == 1; }, absl::Seconds(10)));

  Response retry = Must(Http(gw.port, "POST", "/sd/v1/instances", body));
  ASSERT_EQ(retry.status, 200) << retry.body;
  EXPECT_EQ(Hex(retry.Json()), Keys()[0].second);
  ExpectOneRegistration(Hex(retry.Json()));
}

TEST_F(RetriedWritesTest, DiscoverydDeleteNamingALeaseNeverRemovesANewerRegistration) {
  GatewayProc gw = SpawnGateway(cluster_->ClientEndpoint(0));
  ASSERT_GT(gw.port, 0);
  const std::string id = "01JCYFZQ7D4NB4MZ5S6Z6NXYKC";
  const std::string path = absl::StrCat("/sd/v1/instances/", id, "?type=world");
  Response old_reg = Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody(id).dump()));
  ASSERT_EQ(old_reg.status, 201) << old_reg.body;
  const std::string old_lease = old_reg.Json().value("leaseId", "");

  // Unguarded: 200 with a body, then 404.
  Response del = Must(Http(gw.port, "DELETE", path));
  ASSERT_EQ(del.status, 200) << del.body;
  EXPECT_EQ(del.Json().value("leaseId", ""), old_lease);
  EXPECT_EQ(Must(Http(gw.port, "DELETE", path)).status, 404);
  // Guarded, on a key that is gone: 404 too.
  EXPECT_EQ(Must(Http(gw.port, "DELETE", absl::StrCat(path, "&leaseId=", old_lease))).status, 404);

  // A newer registration of the same id: a retried DELETE naming the old lease leaves it.
  Response new_reg = Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody(id).dump()));
  ASSERT_EQ(new_reg.status, 201) << new_reg.body;
  const std::string new_lease = new_reg.Json().value("leaseId", "");
  Response stale = Must(Http(gw.port, "DELETE", absl::StrCat(path, "&leaseId=", old_lease)));
  EXPECT_EQ(stale.status, 412) << stale.body;
  Response stale2 =
      Must(Http(gw.port, "DELETE", path, "", {{"If-Match", absl::StrCat("\"", old_lease, "\"")}}));
  EXPECT_EQ(stale2.status, 412) << stale2.body;
  ExpectOneRegistration(Hex(new_reg.Json()));

  // Bad guards are 400s.
  EXPECT_EQ(Must(Http(gw.port, "DELETE", absl::StrCat(path, "&leaseId=xyz"))).status, 400);
  EXPECT_EQ(Must(Http(gw.port, "DELETE", path, "", {{"If-Match", "W/\"1\""}})).status, 400);
  EXPECT_EQ(Must(Http(gw.port, "DELETE", absl::StrCat(path, "&leaseId=", new_lease), "",
                      {{"If-Match", absl::StrCat("\"", old_lease, "\"")}}))
                .status,
            400);

  // The right lease deletes it (and revokes the lease).
  Response ok =
      Must(Http(gw.port, "DELETE", path, "", {{"If-Match", absl::StrCat("\"", new_lease, "\"")}}));
  EXPECT_EQ(ok.status, 200) << ok.body;
  EXPECT_TRUE(ok.Json().value("leaseRevoked", false));
  EXPECT_TRUE(Keys().empty());
  EXPECT_TRUE(WaitUntil([&] { return Leases() == 0; }, absl::Seconds(5)));
}

}  // namespace
}  // namespace discovery::testing
