// Gateway mode at scale (issue 16, label etcd): one process holding 10,000 leases through one
// discoveryd. The leases are granted directly in etcd (10,000 registrations would not fit the
// test's time) and handed to the gateway backend's lease holder, the seam the Registrar uses.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "discovery/gateway_client.h"
#include "etcd/client.h"
#include "gateway_fixture.h"
#include "lease_holder.h"
#include "store_backend.h"
#include "util/clock.h"

namespace discovery::testing {
namespace {

namespace pb = ::etcdserverpb;

// The value of an untyped Prometheus sample `name` in `text` (-1 when absent).
double Metric(const std::string& text, const std::string& name) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, name + " ")) continue;
    double v = -1;
    if (absl::SimpleAtod(line.substr(name.size() + 1), &v)) return v;
  }
  return -1;
}

class GatewayScaleTest : public DiscoverydTest {
 protected:
  std::shared_ptr<Connection> Direct() {
    EtcdOptions o;
    o.endpoints = cluster_->ClientEndpoints();
    auto conn = Connection::Create(o);
    EXPECT_TRUE(conn.ok()) << conn.status();
    return conn.ok() ? *conn : nullptr;
  }
  // `n` leases of `ttl` granted in etcd, a window of async grants at a time.
  std::vector<int64_t> GrantMany(Connection& direct, int n, int64_t ttl) {
    std::vector<int64_t> ids(n, 0);
    std::atomic<int> done{0}, failed{0};
    constexpr int kWindow = 256;
    for (int i = 0; i < n; ++i) {
      EXPECT_TRUE(WaitUntil([&] { return i - done.load() < kWindow; }, absl::Seconds(20)));
      pb::LeaseGrantRequest req;
      req.set_ttl(ttl);
      direct.client()->LeaseGrantAsync(req, [&, i](absl::StatusOr<pb::LeaseGrantResponse> r) {
        if (r.ok()) {
          ids[i] = r->id();
        } else {
          failed.fetch_add(1);
        }
        done.fetch_add(1);
      });
    }
    EXPECT_TRUE(WaitUntil([&] { return done.load() == n; }, absl::Seconds(30)));
    EXPECT_EQ(failed.load(), 0);
    return ids;
  }
};

// 10,000 leases of one process heartbeat through one discoveryd for more than a TTL: none goes
// at risk or is lost, etcd shows them refreshed, and discoveryd counts a few chunked calls per
// interval (not one per lease, not none). Before the fix the single 10,000-id batch (~190 KB)
// exceeded discoveryd's 64 KiB body limit and every lease went at risk.
TEST_F(GatewayScaleTest, TenThousandLeasesStayAliveOverOneGateway) {
  constexpr int kLeases = 10000;
  constexpr int64_t kTtl = 6;
  const absl::Duration interval = absl::Seconds(2);
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  auto direct = Direct();
  ASSERT_NE(direct, nullptr);
  GatewayClientOptions o;
  o.urls = {absl::StrCat("http://127.0.0.1:", gw.port)};
  o.call_timeout = absl::Seconds(2);
  auto conn = ConnectGateway(o);
  ASSERT_TRUE(conn.ok()) << conn.status();

  std::vector<int64_t> ids = GrantMany(*direct, kLeases, kTtl);
  std::unique_ptr<LeaseHolder> holder = (*conn)->backend()->NewLeaseHolder();
  std::atomic<int> at_risk{0}, lost{0};
  const absl::Time start = util::MonoNow();
  for (int64_t id : ids) {
    holder->KeepAlive(id, absl::Seconds(kTtl), interval, [&](const LeaseHolder::Event& e) {
      if (e.type == LeaseHolder::EventType::kAtRisk) at_risk.fetch_add(1);
      if (e.type == LeaseHolder::EventType::kLost) lost.fetch_add(1);
    });
  }
  // More than a TTL and at least 3 intervals: a lease not refreshed would be gone by now.
  EXPECT_FALSE(WaitUntil([&] { return at_risk.load() > 0 || lost.load() > 0; },
                         absl::Seconds(kTtl) + interval, absl::Milliseconds(100)));
  const absl::Duration elapsed = util::MonoNow() - start;
  EXPECT_EQ(at_risk.load(), 0);
  EXPECT_EQ(lost.load(), 0);

  // A sample across the id range: alive in etcd, refreshed within the last interval or so.
  int checked = 0;
  for (size_t i = 0; i < ids.size(); i += ids.size() / 25) {
    pb::LeaseTimeToLiveRequest t;
    t.set_id(ids[i]);
    auto ttl = direct->client()->LeaseTimeToLive(t);
    ASSERT_TRUE(ttl.ok()) << ttl.status();
    EXPECT_GE(ttl->ttl(), kTtl - 4) << absl::StrFormat("lease %x not refreshed", ids[i]);
    ++checked;
  }
  EXPECT_GE(checked, 25);

  Response m = Must(Http(gw.port, "GET", "/metrics"));
  EXPECT_EQ(Metric(m.body, "discovery_gateway_leases_kept"), kLeases);
  // One round per interval, 1,000 ids a call: 10 calls a round (+ retries of a slow first one).
  const double calls = Metric(m.body, "discovery_gateway_heartbeat_calls_total");
  const double rounds = absl::ToDoubleSeconds(elapsed) / absl::ToDoubleSeconds(interval);
  EXPECT_GE(calls, 10 * 3) << "elapsed " << elapsed;
  EXPECT_LE(calls, 10 * (rounds + 3)) << "elapsed " << elapsed;
  holder.reset();
}

// A batch over discoveryd's limit is a clear 413 naming the limit (the client stays under it).
TEST_F(GatewayScaleTest, OversizedHeartbeatBatchIs413WithTheLimit) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  json ids = json::array();
  for (int i = 1; i <= 2001; ++i) ids.push_back(absl::StrFormat("%x", i));
  Response r = Must(Http(gw.port, "POST", "/sd/v1/heartbeat", json{{"leases", ids}}.dump()));
  EXPECT_EQ(r.status, 413) << r.body.substr(0, 200);
  EXPECT_TRUE(absl::StrContains(r.body, "at most 2000")) << r.body.substr(0, 200);
}

}  // namespace
}  // namespace discovery::testing
