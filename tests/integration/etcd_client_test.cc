// The internal etcd client against a real etcd: KV, Txn, leases, watch, failover, auth and
// an unreachable endpoint list.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <vector>

#include "etcd/client.h"
#include "etcd/lease_keeper.h"
#include "etcd/watch_hub.h"
#include "etcd_harness.h"
#include "harness_util.h"
#include "util/clock.h"

namespace discovery {
namespace {

using testing::EtcdCluster;
using testing::WaitUntil;
namespace pb = ::etcdserverpb;

std::shared_ptr<etcd::Client> MakeClient(const std::vector<std::string>& endpoints,
                                         absl::Duration timeout = absl::Seconds(5)) {
  EtcdOptions o;
  o.endpoints = endpoints;
  o.call_timeout = testing::TimeScale(timeout);
  auto c = etcd::Client::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

absl::Status Put(etcd::Client& c, const std::string& k, const std::string& v, int64_t lease = 0) {
  pb::PutRequest req;
  req.set_key(k);
  req.set_value(v);
  req.set_lease(lease);
  return c.Put(req).status();
}

absl::StatusOr<std::string> Get(etcd::Client& c, const std::string& k) {
  pb::RangeRequest req;
  req.set_key(k);
  auto r = c.Range(req);
  if (!r.ok()) return r.status();
  if (r->kvs_size() == 0) return absl::NotFoundError(k);
  return r->kvs(0).value();
}

class EtcdClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto c = EtcdCluster::Start({});
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
    client_ = MakeClient(cluster_->ClientEndpoints());
  }
  std::unique_ptr<EtcdCluster> cluster_;
  std::shared_ptr<etcd::Client> client_;
};

TEST_F(EtcdClientTest, PutGetDeleteAndTxn) {
  ASSERT_TRUE(Put(*client_, "/t/a", "1").ok());
  EXPECT_EQ(*Get(*client_, "/t/a"), "1");
  // etcdctl sees what we wrote.
  auto out = cluster_->Etcdctl({"get", "/t/a", "--print-value-only"});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "1\n");

  pb::TxnRequest txn;
  auto* cmp = txn.add_compare();
  cmp->set_key("/t/a");
  cmp->set_target(pb::Compare::VALUE);
  cmp->set_result(pb::Compare::EQUAL);
  cmp->set_value("1");
  auto* put = txn.add_success()->mutable_request_put();
  put->set_key("/t/a");
  put->set_value("2");
  auto r = client_->Txn(txn);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->succeeded());
  EXPECT_EQ(*Get(*client_, "/t/a"), "2");
  r = client_->Txn(txn);  // compare now fails
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->succeeded());

  pb::DeleteRangeRequest del;
  del.set_key("/t/a");
  auto d = client_->DeleteRange(del);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->deleted(), 1);
  EXPECT_TRUE(absl::IsNotFound(Get(*client_, "/t/a").status()));
}

TEST_F(EtcdClientTest, LeaseKeepAliveExpiryAndRevoke) {
  pb::LeaseGrantRequest g;
  g.set_ttl(2);
  auto kept = client_->LeaseGrant(g);
  auto dropped = client_->LeaseGrant(g);
  ASSERT_TRUE(kept.ok() && dropped.ok());
  ASSERT_TRUE(Put(*client_, "/t/kept", "x", kept->id()).ok());
  ASSERT_TRUE(Put(*client_, "/t/dropped", "x", dropped->id()).ok());

  std::atomic<int> lost{0};
  client_->keeper().Add(kept->id(), absl::Seconds(2), absl::Milliseconds(500),
                        [&](const etcd::LeaseKeeper::Event& e) {
                          if (e.type == etcd::LeaseKeeper::EventType::kLost) lost++;
                        });
  // Add is asynchronous (posted to the loop): the stream opens right after.
  EXPECT_TRUE(WaitUntil([&] { return client_->keeper().open_streams() == 1; }, absl::Seconds(2)));
  // The unkept key expires after its TTL; the kept one stays.
  EXPECT_TRUE(WaitUntil([&] { return absl::IsNotFound(Get(*client_, "/t/dropped").status()); },
                        absl::Seconds(5)));
  absl::Time until = absl::Now() + absl::Seconds(3);
  while (absl::Now() < until) {
    ASSERT_TRUE(Get(*client_, "/t/kept").ok()) << "kept lease expired";
    absl::SleepFor(absl::Milliseconds(250));
  }
  pb::LeaseTimeToLiveRequest ttl;
  ttl.set_id(kept->id());
  auto t = client_->LeaseTimeToLive(ttl);
  ASSERT_TRUE(t.ok());
  EXPECT_GT(t->ttl(), 0);

  // Revoke: key gone at once, keeper reports the loss.
  pb::LeaseRevokeRequest rv;
  rv.set_id(kept->id());
  ASSERT_TRUE(client_->LeaseRevoke(rv).ok());
  EXPECT_TRUE(absl::IsNotFound(Get(*client_, "/t/kept").status()));
  EXPECT_TRUE(WaitUntil([&] { return lost.load() == 1; }, absl::Seconds(3)));
  // Revoking again: kNotFound.
  EXPECT_TRUE(absl::IsNotFound(client_->LeaseRevoke(rv).status()));
  // Keepalive once on a gone lease: kNotFound.
  EXPECT_TRUE(absl::IsNotFound(client_->LeaseKeepAliveOnce(kept->id()).status()));
}

TEST_F(EtcdClientTest, WatchDeliversPutsAndDeletesInOrderAndResumes) {
  ASSERT_TRUE(Put(*client_, "/w/seed", "0").ok());
  pb::RangeRequest rr;
  rr.set_key("/w/seed");
  int64_t start = client_->Range(rr)->header().revision() + 1;

  std::mutex mu;
  std::vector<std::pair<int64_t, std::string>> seen;  // revision, "PUT k=v" / "DEL k"
  etcd::WatchHub::Spec spec;
  spec.key = "/w/";
  spec.range_end = "/w0";
  spec.start_revision = start;
  etcd::WatchHub::Listener l;
  l.on_events = [&](const pb::WatchResponse& r) {
    std::lock_guard<std::mutex> lock(mu);
    for (const auto& ev : r.events()) {
      seen.emplace_back(ev.kv().mod_revision(), ev.type() == mvccpb::Event::PUT
                                                    ? ev.kv().key() + "=" + ev.kv().value()
                                                    : "DEL " + ev.kv().key());
    }
  };
  client_->watch_hub().Add(spec, l);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(Put(*client_, "/w/k", std::to_string(i)).ok());
  // Break the stream mid-way: the watch resumes from the next revision.
  client_->watch_hub().BreakStreamForTest();
  for (int i = 20; i < 40; ++i) ASSERT_TRUE(Put(*client_, "/w/k", std::to_string(i)).ok());
  pb::DeleteRangeRequest del;
  del.set_key("/w/k");
  ASSERT_TRUE(client_->DeleteRange(del).ok());
  ASSERT_TRUE(WaitUntil(
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        return seen.size() >= 41;
      },
      absl::Seconds(10)));
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(seen.size(), 41u) << "duplicates after resume";
  for (int i = 0; i < 40; ++i) {
    EXPECT_EQ(seen[i].second, "/w/k=" + std::to_string(i));
    if (i > 0) {
      EXPECT_EQ(seen[i].first, seen[i - 1].first + 1);
    }
  }
  EXPECT_EQ(seen[40].second, "DEL /w/k");
}

TEST_F(EtcdClientTest, WatchFromCompactedRevisionReportsOutOfRange) {
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Put(*client_, "/c/k", std::to_string(i)).ok());
  pb::RangeRequest rr;
  rr.set_key("/c/k");
  int64_t rev = client_->Range(rr)->header().revision();
  pb::CompactionRequest cr;
  cr.set_revision(rev);
  cr.set_physical(true);
  ASSERT_TRUE(client_->Compact(cr).ok());
  std::mutex mu;
  absl::Status broken;
  bool done = false;
  etcd::WatchHub::Listener l;
  l.on_broken = [&](const absl::Status& s) {
    std::lock_guard<std::mutex> lock(mu);
    broken = s;
    done = true;
  };
  client_->watch_hub().Add({"/c/", "/c0", 2, 0, false}, l);
  ASSERT_TRUE(WaitUntil(
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        return done;
      },
      absl::Seconds(5)));
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_TRUE(absl::IsOutOfRange(broken)) << broken;
}

// etcd drops a connection that pings while it has no call open (GOAWAY "too_many_pings"
// after three such pings). With pings every second the old setting (pings without calls) had
// the idle client's connection dropped within ~4 s; now an idle connection stays up.
TEST_F(EtcdClientTest, IdleClientIsNotDroppedForPinging) {
  EtcdOptions o;
  o.endpoints = cluster_->ClientEndpoints();
  o.keepalive_time = absl::Seconds(1);
  auto c = etcd::Client::Create(o);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(Put(**c, "/t/idle", "1").ok());  // connected, then nothing open
  int index = 0;
  std::shared_ptr<grpc::Channel> channel = (*c)->CurrentStubs(&index)->channel;
  ASSERT_EQ(channel->GetState(false), GRPC_CHANNEL_READY);
  // Six pings' worth of idleness: the connection must stay READY throughout.
  const absl::Time until = util::MonoNow() + absl::Seconds(6);
  while (util::MonoNow() < until) {
    ASSERT_EQ(channel->GetState(false), GRPC_CHANNEL_READY)
        << "etcd dropped the idle connection (pings without a call open)";
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(*Get(**c, "/t/idle"), "1");
}

TEST(EtcdClientUnreachable, ReturnsUnavailableWithinDeadline) {
  int p1 = testing::PickFreePort(), p2 = testing::PickFreePort();
  auto c = MakeClient({"http://127.0.0.1:" + std::to_string(p1), "127.0.0.1:" + std::to_string(p2)},
                      absl::Seconds(1));
  absl::Time start = absl::Now();
  pb::RangeRequest rr;
  rr.set_key("/x");
  auto r = c->Range(rr);
  absl::Duration took = absl::Now() - start;
  EXPECT_TRUE(absl::IsUnavailable(r.status())) << r.status();
  EXPECT_LT(took, testing::TimeScale(absl::Seconds(1)) + absl::Milliseconds(500));
}

TEST(EtcdClientOptions, RejectsBadEndpoints) {
  EtcdOptions o;
  o.endpoints = {"ftp://127.0.0.1:2379"};
  EXPECT_TRUE(absl::IsInvalidArgument(etcd::Client::Create(o).status()));
  o.endpoints = {"http://127.0.0.1"};
  EXPECT_TRUE(absl::IsInvalidArgument(etcd::Client::Create(o).status()));
  o.endpoints = {};
  EXPECT_TRUE(absl::IsInvalidArgument(etcd::Client::Create(o).status()));
  o.endpoints = {"https://127.0.0.1:2379"};
  o.ca_file = "/nonexistent/ca.pem";
  EXPECT_TRUE(absl::IsInvalidArgument(etcd::Client::Create(o).status()));
  EXPECT_EQ(SplitEndpoints(" a:1, ,b:2 "), (std::vector<std::string>{"a:1", "b:2"}));
}

TEST(EtcdClientCluster, FailsOverWhenItsMemberDies) {
  auto cl = EtcdCluster::Start({.members = 3});
  ASSERT_TRUE(cl.ok()) << cl.status();
  auto& cluster = **cl;
  auto client = MakeClient(cluster.ClientEndpoints());
  ASSERT_TRUE(Put(*client, "/f/a", "1").ok());
  int current = 0;
  client->CurrentStubs(&current);
  ASSERT_TRUE(cluster.Kill(current).ok());
  absl::Time start = absl::Now();
  absl::Status s;
  // Calls succeed on another member within 2 s.
  bool ok = WaitUntil(
      [&] {
        s = Put(*client, "/f/a", "2");
        return s.ok();
      },
      absl::Seconds(2), absl::Milliseconds(1));
  EXPECT_TRUE(ok) << s;
  EXPECT_LT(absl::Now() - start, testing::TimeScale(absl::Seconds(2)));
  EXPECT_EQ(*Get(*client, "/f/a"), "2");
}

TEST(EtcdClientAuth, RightPasswordWorksWrongPasswordIsRefused) {
  auto cl = EtcdCluster::Start({});
  ASSERT_TRUE(cl.ok()) << cl.status();
  auto& cluster = **cl;
  // A role restricted to /services/ and a user holding it, then auth on.
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"role", "add", "svc"},
           {"role", "grant-permission", "svc", "readwrite", "/services/", "--prefix=true"},
           {"user", "add", "svc:secret"},
           {"user", "grant-role", "svc", "svc"}}) {
    auto r = cluster.Etcdctl(args);
    ASSERT_TRUE(r.ok()) << r.status();
  }
  ASSERT_TRUE(cluster.EnableAuth("rootpw").ok());

  EtcdOptions o;
  o.endpoints = cluster.ClientEndpoints();
  o.user = "svc";
  o.password = "secret";
  auto good = etcd::Client::Create(o);
  ASSERT_TRUE(good.ok());
  EXPECT_TRUE(Put(**good, "/services/x/1", "v").ok());
  EXPECT_EQ(*Get(**good, "/services/x/1"), "v");
  // Outside its prefix: permission denied, not a hang.
  absl::Status denied = Put(**good, "/other", "v");
  EXPECT_TRUE(absl::IsPermissionDenied(denied)) << denied;
  // Lease stream with auth works too.
  pb::LeaseGrantRequest g;
  g.set_ttl(5);
  auto lease = (*good)->LeaseGrant(g);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_GT(*(*good)->LeaseKeepAliveOnce(lease->id()), 0);

  o.password = "wrong";
  auto bad = etcd::Client::Create(o);
  ASSERT_TRUE(bad.ok());
  absl::Time start = absl::Now();
  absl::Status s = Put(**bad, "/services/x/2", "v");
  EXPECT_TRUE(absl::IsUnauthenticated(s) || absl::IsPermissionDenied(s)) << s;
  EXPECT_LT(absl::Now() - start, testing::TimeScale(absl::Seconds(5)));
  EXPECT_FALSE((*bad)
                   ->Range([] {
                     pb::RangeRequest r;
                     r.set_key("/services/x/1");
                     return r;
                   }())
                   .ok());
}

}  // namespace
}  // namespace discovery
