// The shared etcd streams (WatchHub, LeaseKeeper) with user/password auth on a real etcd:
// what etcd 3.4 answers for stale simple tokens, watches and keepalives that outlive the token
// TTL, a member restart that forgets every token, and a watch RBAC really denies.
#include <gtest/gtest.h>

#include <atomic>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "etcd/client.h"
#include "etcd/lease_keeper.h"
#include "etcd/watch_hub.h"
#include "etcd_harness.h"
#include "harness_util.h"
#include "stream_test_util.h"

namespace discovery {
namespace {

using stream_test::MakeClient;
using stream_test::PrefixSpec;
using stream_test::Put;
using stream_test::Recorder;
using testing::EtcdCluster;
using testing::WaitUntil;
namespace pb = ::etcdserverpb;

constexpr char kRootPw[] = "rootpw";

// For what is measured in time itself (a token TTL running out): waits until `d` has passed.
void LetTimePass(absl::Duration d) {
  const absl::Time until = util::MonoNow() + d;
  WaitUntil([&] { return util::MonoNow() >= until; }, d + absl::Seconds(1), absl::Milliseconds(50));
}

std::unique_ptr<EtcdCluster> StartWithAuth(std::vector<std::string> extra_args = {}) {
  auto c = EtcdCluster::Start({.extra_args = std::move(extra_args)});
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return nullptr;
  absl::Status s = (*c)->EnableAuthWithUser(kRootPw, "svc", "secret", {"/services/"});
  EXPECT_TRUE(s.ok()) << s;
  return *std::move(c);
}

// One create on a new raw Watch stream carrying `token`; the first answer.
pb::WatchResponse CreateOnNewStream(etcd::Stubs& stubs, const std::string& token) {
  grpc::ClientContext ctx;
  if (!token.empty()) ctx.AddMetadata("token", token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto rw = stubs.watch->Watch(&ctx);
  pb::WatchRequest req;
  req.mutable_create_request()->set_key("/services/");
  req.mutable_create_request()->set_range_end("/services0");
  pb::WatchResponse resp;
  EXPECT_TRUE(rw->Write(req) && rw->Read(&resp));
  ctx.TryCancel();
  rw->Finish();
  return resp;
}

// Keepalive on a new raw stream carrying `token`: the TTL etcd answers, or the stream error.
absl::StatusOr<int64_t> KeepAliveOnNewStream(etcd::Stubs& stubs, const std::string& token,
                                             int64_t lease) {
  grpc::ClientContext ctx;
  if (!token.empty()) ctx.AddMetadata("token", token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto rw = stubs.lease->LeaseKeepAlive(&ctx);
  pb::LeaseKeepAliveRequest req;
  req.set_id(lease);
  pb::LeaseKeepAliveResponse resp;
  if (!rw->Write(req) || !rw->Read(&resp)) return etcd::FromGrpc(rw->Finish(), "keepalive");
  ctx.TryCancel();
  rw->Finish();
  return resp.ttl();
}

// Pins down what the hub and keeper are built on (etcd 3.4.x, Debian 12): a create sent with
// an expired simple token is refused *in band* (created + canceled, cancel_reason), on an old
// or a new stream alike, while LeaseKeepAlive does not look at the token at all.
TEST(EtcdAuthAnswers, ExpiredTokenCancelsWatchCreateButNotKeepAlive) {
  auto cluster = StartWithAuth({"--auth-token-ttl", "2"});
  ASSERT_NE(cluster, nullptr);
  auto svc = MakeClient(cluster->ClientEndpoints(), "svc", "secret");
  ASSERT_NE(svc, nullptr);
  pb::LeaseGrantRequest g;
  g.set_ttl(30);
  auto lease = svc->LeaseGrant(g);  // fetches svc's token
  ASSERT_TRUE(lease.ok()) << lease.status();
  auto stubs = svc->CurrentStubs(nullptr);
  auto token = cluster->SimpleToken(0, "svc", "secret");
  ASSERT_TRUE(token.ok()) << token.status();

  pb::WatchResponse fresh = CreateOnNewStream(*stubs, *token);
  EXPECT_TRUE(fresh.created());
  EXPECT_FALSE(fresh.canceled()) << fresh.ShortDebugString();
  // RBAC: outside svc's prefix.
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("token", *token);
    auto rw = stubs->watch->Watch(&ctx);
    pb::WatchRequest req;
    req.mutable_create_request()->set_key("/other/");
    pb::WatchResponse denied;
    ASSERT_TRUE(rw->Write(req) && rw->Read(&denied));
    EXPECT_TRUE(denied.canceled());
    EXPECT_EQ(denied.cancel_reason(),
              "rpc error: code = PermissionDenied desc = etcdserver: permission denied");
    ctx.TryCancel();
    rw->Finish();
  }
  LetTimePass(absl::Seconds(4));  // TTL 2 s, checked every second by etcd
  pb::WatchResponse stale = CreateOnNewStream(*stubs, *token);
  EXPECT_TRUE(stale.created());
  EXPECT_TRUE(stale.canceled());
  EXPECT_EQ(stale.watch_id(), -1);
  EXPECT_EQ(stale.cancel_reason(),
            "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token");
  EXPECT_TRUE(etcd::IsAuthRefusal(grpc::StatusCode::OK, stale.cancel_reason()));
  pb::WatchResponse none = CreateOnNewStream(*stubs, "");
  EXPECT_TRUE(none.canceled());
  EXPECT_EQ(none.cancel_reason(),
            "rpc error: code = InvalidArgument desc = etcdserver: user name is empty");
  // Keepalive: answered with any token or none.
  EXPECT_EQ(*KeepAliveOnNewStream(*stubs, *token, lease->id()), 30);
  EXPECT_EQ(*KeepAliveOnNewStream(*stubs, "", lease->id()), 30);
}

// (a) A watch and a keepalive outlive the token TTL many times over. The client's only other
// use of its token is what the hub does, so the token expires; a network blip and a late Add
// then force creates that carry the expired token.
TEST(AuthStreams, WatchAndKeepAliveOutliveTokenTtlWithoutReconnectLoop) {
  Recorder first, late;  // outlive the client, whose hub calls them
  std::atomic<int> lost{0};
  auto cluster = StartWithAuth({"--auth-token-ttl", "2"});
  ASSERT_NE(cluster, nullptr);
  auto writer = MakeClient(cluster->ClientEndpoints(), "root", kRootPw);
  auto svc = MakeClient(cluster->ClientEndpoints(), "svc", "secret");
  ASSERT_NE(svc, nullptr);
  auto rev = stream_test::Revision(*svc);
  ASSERT_TRUE(rev.ok()) << rev.status();

  pb::LeaseGrantRequest g;
  g.set_ttl(3);
  auto lease = svc->LeaseGrant(g);
  ASSERT_TRUE(lease.ok()) << lease.status();
  svc->keeper().Add(lease->id(), absl::Seconds(3), absl::Seconds(1),
                    [&](const etcd::LeaseKeeper::Event& e) {
                      if (e.type == etcd::LeaseKeeper::EventType::kLost) lost.fetch_add(1);
                    });
  svc->watch_hub().Add(PrefixSpec("/services/", *rev + 1), first.Listener());

  const absl::Time start = util::MonoNow();
  int puts = 0;
  auto put_and_see = [&](Recorder& r, size_t expected) {
    ++puts;
    auto p = Put(*writer, "/services/a/" + std::to_string(puts), std::to_string(puts));
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_TRUE(r.WaitForCount(expected, absl::Seconds(10)))
        << "put " << puts
        << " not delivered; broken: " << (r.broken().empty() ? "no" : r.broken()[0].ToString());
  };
  put_and_see(first, 1);
  LetTimePass(absl::Seconds(4));  // svc's token has expired
  svc->watch_hub().BreakStreamForTest();
  put_and_see(first, 2);
  LetTimePass(absl::Seconds(4));  // the token fetched for the new stream has expired too
  auto rev2 = stream_test::Revision(*writer);
  ASSERT_TRUE(rev2.ok());
  svc->watch_hub().Add(PrefixSpec("/services/", *rev2 + 1), late.Listener());
  put_and_see(first, 3);
  EXPECT_TRUE(late.WaitForCount(1, absl::Seconds(10)));
  LetTimePass(absl::Seconds(2));
  put_and_see(first, 4);
  EXPECT_GE(util::MonoNow() - start, absl::Seconds(6 * 1.5));  // > 3 TTLs

  EXPECT_TRUE(first.broken().empty()) << first.broken()[0];
  EXPECT_TRUE(late.broken().empty()) << late.broken()[0];
  stream_test::ExpectIncreasing(first.revisions());
  EXPECT_EQ(first.count(), 4u);
  // Lease: kept alive throughout (its TTL is 3 s) on one stream.
  EXPECT_EQ(lost.load(), 0);
  pb::LeaseTimeToLiveRequest ttl;
  ttl.set_id(lease->id());
  auto left = writer->LeaseTimeToLive(ttl);
  ASSERT_TRUE(left.ok()) << left.status();
  EXPECT_GT(left->ttl(), 0);
  std::cout << "measured: watch reconnects " << svc->watch_hub().reconnects() << ", auth refusals "
            << svc->watch_hub().auth_refusals() << ", token refreshes " << svc->token_refreshes()
            << ", keepalive reconnects " << svc->keeper().reconnects() << " over "
            << absl::FormatDuration(util::MonoNow() - start) << "\n";
  EXPECT_EQ(svc->keeper().reconnects(), 0);
  // No loop. The broken stream reconnects with a fresh token at once (a stream that ended
  // with an error always does: the member may come back wiped); the late Add on the stream
  // whose token expired is refused once (stale token), then re-created on a fresh stream.
  EXPECT_GE(svc->watch_hub().auth_refusals(), 1);
  EXPECT_LE(svc->watch_hub().reconnects(), 5);
  EXPECT_LE(svc->token_refreshes(), 6);
  svc->keeper().Remove(lease->id());
}

// (b) A member restart forgets every simple token (after a persisted write and a graceful
// restart, as systemd does it). The watch resumes with no lost and no duplicate event.
TEST(AuthStreams, WatchResumesAfterMemberRestartWithNoLostEvent) {
  Recorder r;
  auto cluster = StartWithAuth();
  ASSERT_NE(cluster, nullptr);
  auto writer = MakeClient(cluster->ClientEndpoints(), "root", kRootPw);
  auto svc = MakeClient(cluster->ClientEndpoints(), "svc", "secret");
  auto rev = stream_test::Revision(*svc);
  ASSERT_TRUE(rev.ok()) << rev.status();
  svc->watch_hub().Add(PrefixSpec("/services/", *rev + 1), r.Listener());
  for (int i = 0; i < 5; ++i)
    ASSERT_TRUE(Put(*writer, "/services/b/" + std::to_string(i), "x").ok());
  ASSERT_TRUE(r.WaitForCount(5, absl::Seconds(5)));
  const int64_t refreshes = svc->token_refreshes();
  ASSERT_TRUE(cluster->GracefulRestart(0).ok());
  for (int i = 5; i < 10; ++i) {
    absl::StatusOr<int64_t> p;
    ASSERT_TRUE(WaitUntil(
        [&] {
          p = Put(*writer, "/services/b/" + std::to_string(i), "x");
          return p.ok();
        },
        absl::Seconds(10)))
        << p.status();
  }
  EXPECT_TRUE(r.WaitForCount(10, absl::Seconds(15)))
      << "seen " << r.count()
      << "; broken: " << (r.broken().empty() ? "no" : r.broken()[0].ToString());
  EXPECT_TRUE(r.broken().empty());
  std::vector<std::string> seen = r.seen();
  ASSERT_EQ(seen.size(), 10u);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(seen[i], "/services/b/" + std::to_string(i) + "=x");
  stream_test::ExpectIncreasing(r.revisions());
  std::cout << "measured: watch reconnects " << svc->watch_hub().reconnects() << ", auth refusals "
            << svc->watch_hub().auth_refusals() << ", token refreshes " << svc->token_refreshes()
            << "\n";
  EXPECT_GT(svc->token_refreshes(), refreshes);  // the hub fetched a new token
  EXPECT_LE(svc->watch_hub().reconnects(), 8);
}

// RBAC really says no: on_broken(kPermissionDenied) at once when the token is fresh, and an
// owner that re-adds the watch from on_broken at once cannot make the hub spin: every refusal
// on an older token costs a new stream, and those reconnects back off. A permitted watch on
// the same hub keeps delivering meanwhile.
TEST(AuthStreams, DeniedWatchIsPermissionDeniedAndReAddingItDoesNotSpin) {
  Recorder allowed;
  std::mutex mu;
  std::vector<absl::Status> denials;
  std::atomic<bool> readd{true};
  auto cluster = StartWithAuth();
  ASSERT_NE(cluster, nullptr);
  auto writer = MakeClient(cluster->ClientEndpoints(), "root", kRootPw);
  auto svc = MakeClient(cluster->ClientEndpoints(), "svc", "secret");
  auto rev = stream_test::Revision(*svc);
  ASSERT_TRUE(rev.ok()) << rev.status();
  svc->watch_hub().Add(PrefixSpec("/services/", *rev + 1), allowed.Listener());
  ASSERT_TRUE(Put(*writer, "/services/c/0", "x").ok());
  ASSERT_TRUE(allowed.WaitForCount(1, absl::Seconds(5)));

  etcd::WatchHub& hub = svc->watch_hub();
  std::function<void()> add_denied = [&] {
    etcd::WatchHub::Listener l;
    l.on_broken = [&](const absl::Status& why) {
      {
        std::lock_guard<std::mutex> lock(mu);
        denials.push_back(why);
      }
      if (readd.load()) add_denied();  // the worst owner: re-adds at once, on the loop thread
    };
    hub.Add(PrefixSpec("/other/", *rev + 1), l);
  };
  auto count = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return denials.size();
  };
  const absl::Time start = util::MonoNow();
  add_denied();
  ASSERT_TRUE(WaitUntil([&] { return count() >= 1; }, absl::Seconds(5)));
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_TRUE(absl::IsPermissionDenied(denials[0])) << denials[0];
  }
  LetTimePass(start + absl::Seconds(4) - util::MonoNow());
  ASSERT_TRUE(Put(*writer, "/services/c/1", "x").ok());
  EXPECT_TRUE(allowed.WaitForCount(2, absl::Seconds(10)));
  readd.store(false);
  const size_t n = count();
  std::cout << "measured: " << n << " denials, watch reconnects " << hub.reconnects()
            << ", token refreshes " << svc->token_refreshes() << " in "
            << absl::FormatDuration(util::MonoNow() - start) << "\n";
  // Backoff 100 ms doubling (jittered): at most ~6 rounds in 4 s; a spin would be thousands.
  EXPECT_GE(n, 2u);
  EXPECT_LE(n, 8u);
  EXPECT_LE(hub.reconnects(), 8);
  EXPECT_LE(svc->token_refreshes(), 10);
  EXPECT_TRUE(allowed.broken().empty());
  stream_test::ExpectIncreasing(allowed.revisions());
  svc.reset();  // before add_denied, which its hub may still call
}

}  // namespace
}  // namespace discovery
