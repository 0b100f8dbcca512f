// Chaos suite: breaks a real 3-member etcd cluster (and the network to it) under a running
// fleet, then checks that nothing lost the truth. The fleet and the checks: chaos_fixture.h;
// scenarios shared with other tests: chaos_scenarios.cc; the history rewinds (same-identity
// wipe, snapshot restore) and the auth variant: chaos_rewind_test.cc.
//
// After each scenario the test asserts:
//  - every watcher's view and discoveryd's answer equal `etcdctl get --prefix` (ids and status);
//  - no process crashed;
//  - no lease leaked: etcd's LeaseLeases equals the set of leases attached to instance keys;
//  - (where etcd's history survives) each watcher's event log equals etcd's own history of the
//    prefix over the scenario, revision by revision: no event lost, none duplicated, in order;
//  - (where the scenario must not disturb registrations) every key kept its lease and no
//    registrar reported lease_lost / re_registered.
//
// Scenarios (one test each): leader SIGKILLed for a TTL then restarted; a follower, then the
// leader, SIGSTOPped for TTL + 2 s; quorum lost (2 of 3 down) for 2x TTL with discoveryd's
// /healthz 503 meanwhile; the whole cluster wiped and restarted; registrar 3 partitioned
// (black hole for 0.3x TTL: no flap; reset for TTL + 5 s: its instances vanish and come back);
// history compacted while a watcher process is SIGSTOPped and the fleet changes under it.
//
// Label `chaos`; 7-25 s per test. Failures print the component logs' tails.
#include <algorithm>
#include <csignal>
#include <iostream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "chaos_fixture.h"
#include "etcd/client.h"
#include "util/clock.h"

namespace discovery::chaos {
namespace {

// 1. The leader dies (SIGKILL) and comes back later.
TEST_F(ChaosTest, LeaderKilledAndRestarted) { ScenarioLeaderKill(); }

// 2a. A follower freezes (SIGSTOP) for longer than the TTL, then thaws: the clients it
// served must move to another member in time; nothing else may notice.
TEST_F(ChaosTest, FollowerFrozenLongerThanTtl) {
  auto before = ReadTruth();
  ASSERT_TRUE(before.ok()) << before.status();
  const EventCounts counts = CountEvents();
  auto leader = cluster_->LeaderIndex();
  ASSERT_TRUE(leader.ok()) << leader.status();
  const int frozen = (*leader + 1) % 3;
  ASSERT_TRUE(cluster_->Stop(frozen).ok());
  HoldFault(util::MonoNow() + kTtl + absl::Seconds(2), [&] { ExpectAllPresent("member frozen"); });
  ASSERT_TRUE(cluster_->Cont(frozen).ok());
  ASSERT_TRUE(cluster_->WaitHealthy().ok());
  ExpectHealthyFleet("after freeze + thaw");
  ExpectNothingLost("after freeze", *before, counts);
  ExpectEventsMatchHistory("after freeze", before->revision);
}

// 2b. The leader freezes for longer than the TTL. The others elect a new leader, which
// extends every lease, and keepalives continue there. On thaw, etcd releases before 3.4.28 /
// 3.5.11 let the ex-leader's lessor revoke every lease it believes expired by its own stale
// clock (etcd-io/etcd#15247, fixed by etcd-io/etcd#16822): then every instance must be back
// (same id) within a TTL, and the watchers must show exactly etcd's history. With a fixed
// etcd nothing may be lost at all.
TEST_F(ChaosTest, LeaderFrozenLongerThanTtl) {
  auto before = ReadTruth();
  ASSERT_TRUE(before.ok()) << before.status();
  auto status = conn_->client()->MemberStatus();
  ASSERT_TRUE(status.ok()) << status.status();
  const bool stale_leader_revokes = EtcdRevokesFromStaleLeader(status->version());
  auto leader = cluster_->LeaderIndex();
  ASSERT_TRUE(leader.ok()) << leader.status();
  ASSERT_TRUE(cluster_->Stop(*leader).ok());
  absl::Time thaw_at = util::MonoNow() + kTtl + absl::Seconds(2);
  ASSERT_NO_FATAL_FAILURE(WaitForNewLeader(*leader));
  HoldFault(thaw_at, [&] { ExpectAllPresent("leader frozen"); });
  ASSERT_TRUE(cluster_->Cont(*leader).ok());
  absl::Time thawed = util::MonoNow();
  ASSERT_TRUE(cluster_->WaitHealthy().ok());
  if (stale_leader_revokes) {
    EXPECT_TRUE(AllRegistered(kTtl)) << "not back within a TTL of the thaw";
    std::cerr << "etcd " << status->version() << ": thawed ex-leader revoked "
              << AllRegistrarEvents("lease_lost") << " leases; all 200 registered "
              << absl::FormatDuration(util::MonoNow() - thawed) << " after the thaw\n";
  } else {
    ExpectSameLeases("after the leader froze", *before);
    EXPECT_EQ(AllRegistrarEvents("lease_lost"), 0);
  }
  ExpectHealthyFleet("after the leader froze");
  ExpectEventsMatchHistory("after the leader froze", before->revision);
}

// 3. Quorum lost (2 of 3 members down) for 2x TTL, then restored.
TEST_F(ChaosTest, QuorumLostForTwoTtlsThenRestored) { ScenarioQuorumLoss(); }

// 4. The whole cluster restarts with wiped data: a brand-new, empty etcd.
TEST_F(ChaosTest, ClusterWipedAndRestarted) {
  ASSERT_TRUE(cluster_->WipeAndRestartAll().ok());
  absl::Time up = util::MonoNow();
  EXPECT_TRUE(AllRegistered(kTtl + absl::Seconds(2)))
      << "not re-registered within TTL + 2 s of the restart";
  absl::Duration took = util::MonoNow() - up;
  std::cerr << "re-registered 200 instances " << absl::FormatDuration(took)
            << " after the wiped cluster came back\n";
  EXPECT_EQ(AllRegistrarEvents("re_registered"), kInstances);
  ExpectHealthyFleet("after wipe");
}

// 5. One registrar is partitioned from etcd: shorter than the TTL (no flap), then longer
// (its instances vanish, and return after the partition heals).
TEST_F(ChaosTest, PartitionedRegistrarShortThenLong) {
  auto before = ReadTruth();
  ASSERT_TRUE(before.ok()) << before.status();
  const std::string victim = absl::StrCat(kPrefix, "lobby/r", kProxiedRegistrar, "-");

  // Short: a black hole for 30 % of the TTL. A keepalive goes out every TTL/3, so at worst
  // the lease has ~TTL*2/3 left when the partition starts; this leaves ~TTL/3 to reconnect.
  for (auto& p : proxies_) p->Pause();
  HoldFault(util::MonoNow() + kTtl * 0.3, [] {});
  for (auto& p : proxies_) p->Resume();
  // A whole TTL after healing (a lease that was about to be lost would be gone by then),
  // nothing may have flapped.
  HoldFault(util::MonoNow() + kTtl, [&] { ExpectAllPresent("after a short partition"); });
  ExpectSameLeases("after a short partition", *before);
  EXPECT_EQ(RegistrarEvents(kProxiedRegistrar, "lease_lost"), 0);
  for (int w = 0; w < kWatchers; ++w) {
    for (const auto& ev : watchers_[w]->events()) {
      EXPECT_FALSE(ev.type == "removed" && ev.revision > before->revision)
          << "watcher " << w << " saw " << ev.key << " flap";
    }
  }
  ExpectHealthyFleet("after a short partition");

  // Long: connections reset and refused for TTL + 5 s.
  auto mid = ReadTruth();
  ASSERT_TRUE(mid.ok()) << mid.status();
  for (auto& p : proxies_) p->Cut();
  absl::Time heal_at = util::MonoNow() + kTtl + absl::Seconds(5);
  auto victim_count = [&](const View& v) {
    return std::count_if(v.begin(), v.end(),
                         [&](const auto& kv) { return absl::StartsWith(kv.first, victim); });
  };
  EXPECT_TRUE(WaitUntil(
      [&] {
        for (auto& w : watchers_) {
          if (victim_count(w->view()) != 0) return false;
        }
        return true;
      },
      kTtl + absl::Seconds(4)))
      << "the partitioned registrar's instances did not vanish from every watcher";
  HoldFault(heal_at, [] {});
  for (auto& p : proxies_) p->Heal();
  EXPECT_TRUE(AllRegistered(kTtl + absl::Seconds(5)))
      << "the partitioned registrar did not come back";
  EXPECT_EQ(RegistrarEvents(kProxiedRegistrar, "re_registered"), kPerRegistrar);
  for (int r = 0; r < kRegistrars; ++r) {
    if (r != kProxiedRegistrar) {
      EXPECT_EQ(RegistrarEvents(r, "lease_lost"), 0) << r;
    }
  }
  ExpectHealthyFleet("after a long partition");
  ExpectEventsMatchHistory("after the partitions", before->revision);
}

// 6. History is compacted while a watcher is stalled (SIGSTOPped, and cut off from etcd so
// that nothing written meanwhile can sit in its socket buffers) and the fleet changes under
// it: on thaw it must notice that its next revision is gone, resync, and keep no stale
// instance.
TEST_F(ChaosTest, CompactionWhileWatcherStalled) {
  WatchProcess& stalled = *watchers_[kProxiedWatcher];
  ASSERT_TRUE(stalled.proc().Signal(SIGSTOP).ok());
  for (auto& p : watcher_proxies_) p->Cut();
  // Registrar 2 leaves gracefully (50 removals), registrar 4 joins (50 additions).
  ASSERT_NO_FATAL_FAILURE(StopRegistrar(2));
  ASSERT_NO_FATAL_FAILURE(StartRegistrar(4, Endpoints(1)));
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto t = ReadTruth();
        if (!t.ok() || static_cast<int>(t->view.size()) != kInstances) return false;
        return !t->view.count("/services/world/r2-0") && t->view.count("/services/world/r4-0");
      },
      absl::Seconds(15)));
  auto truth = ReadTruth();
  ASSERT_TRUE(truth.ok()) << truth.status();
  ASSERT_TRUE(cluster_->Etcdctl({"compact", std::to_string(truth->revision), "--physical"}).ok());
  for (auto& p : watcher_proxies_) p->Heal();
  ASSERT_TRUE(stalled.proc().Signal(SIGCONT).ok());
  ExpectHealthyFleet("after compaction");
  // It really had to resync (its next revision was compacted away), not just resume.
  EXPECT_TRUE(absl::StrContains(stalled.proc().ReadStderr(), "resyncing"))
      << "the stalled watcher did not resync: " << stalled.proc().ReadStderr();
  View v = stalled.view();
  for (int i = 0; i < kPerRegistrar; ++i) {
    EXPECT_EQ(v.count(absl::StrCat("/services/world/r2-", i)), 0u) << "stale r2-" << i;
  }
}

}  // namespace
}  // namespace discovery::chaos
