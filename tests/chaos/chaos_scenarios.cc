// Chaos suite: etcd's history as the test reads it, and the scenarios several tests share.
#include <algorithm>
#include <iostream>
#include <map>

#include "absl/strings/str_cat.h"
#include "chaos_fixture.h"
#include "etcd/client.h"
#include "etcd/watch_hub.h"
#include "util/clock.h"

namespace discovery::chaos {

namespace pb = ::etcdserverpb;

namespace {

// Revisions written outside the prefix before a wipe or restore: the fleet writes ~100 per
// second, so a watcher resuming from its old revision would wait ~20 s (longer than the
// scenario's bound) before the rewound etcd reached it again.
constexpr int kAgeRevisions = 2500;
// Every registration is back and every view equals etcd within this long of etcd being back
// (the re-registration needs at most a TTL; the rest is for the restored registrations of a
// process that left after the snapshot to expire, and for the readers to resync).
const absl::Duration kRewindBound = kTtl + absl::Seconds(5);

// What is left of a TimeScale()d deadline, as an unscaled timeout for WaitUntil (which scales
// it again); never less than a moment, so a late check still looks once.
absl::Duration Left(absl::Time deadline) {
  return std::max(deadline - util::MonoNow(), absl::Milliseconds(200)) / testing::TimeScaleFactor();
}

}  // namespace

std::vector<std::pair<int64_t, std::string>> ChaosTest::History(int64_t from, int64_t to) {
  std::mutex mu;
  std::vector<std::pair<int64_t, std::string>> h;
  absl::Status broken;
  etcd::WatchHub::Listener l;
  l.on_events = [&](const pb::WatchResponse& resp) {
    std::lock_guard<std::mutex> lock(mu);
    for (const auto& ev : resp.events()) h.emplace_back(ev.kv().mod_revision(), ev.kv().key());
  };
  l.on_broken = [&](const absl::Status& s) {
    std::lock_guard<std::mutex> lock(mu);
    broken = s;
  };
  // A connection of its own, logged in just now: the reference must not depend on the
  // library's handling of a watch stream whose token expired (--auth-token-ttl).
  auto conn = Connection::Create(conn_options_);
  if (!conn.ok()) {
    ADD_FAILURE() << "reading etcd's history: " << conn.status();
    return {};
  }
  std::shared_ptr<etcd::Client> client = (*conn)->client();
  auto id = client->watch_hub().Add(
      {.key = kPrefix, .range_end = "/services0", .start_revision = from + 1}, l);
  bool done = WaitUntil(
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        return !broken.ok() || (!h.empty() && h.back().first >= to);
      },
      absl::Seconds(10));
  client->watch_hub().Remove(id);
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_TRUE(done && broken.ok()) << "reading etcd's history failed: " << broken;
  while (!h.empty() && h.back().first > to) h.pop_back();
  return h;
}

void ChaosTest::ExpectEventsMatchHistory(const std::string& when, int64_t from) {
  auto truth = ReadTruth();
  ASSERT_TRUE(truth.ok()) << truth.status();
  const int64_t to = truth->revision;
  // Writes continue (performance updates), so every watcher soon passes `to` (strictly: a
  // revision may carry several events, and all of `to`'s must have been read).
  // (Not fatal: a sequence of scenarios on one fleet goes on.)
  if (!WaitUntil(
          [&] {
            for (auto& w : watchers_) {
              if (w->last_revision() <= to) return false;
            }
            return true;
          },
          absl::Seconds(10))) {
    ADD_FAILURE() << when << ": a watcher stopped receiving events";
    return;
  }
  auto history = History(from, to);
  if (history.empty()) {
    ADD_FAILURE() << when << ": no history between " << from << " and " << to;
    return;
  }
  std::cerr << when << ": comparing " << kWatchers << " watchers' event logs with etcd's "
            << history.size() << " events over (" << from << ", " << to << "]\n";
  for (int w = 0; w < kWatchers; ++w) {
    std::vector<std::pair<int64_t, std::string>> got;
    for (const auto& ev : watchers_[w]->events()) {
      if (ev.revision > from && ev.revision <= to) got.emplace_back(ev.revision, ev.key);
    }
    if (got == history) continue;
    // Name the first divergence.
    size_t i = 0;
    while (i < got.size() && i < history.size() && got[i] == history[i]) ++i;
    std::string detail = i < history.size()
                             ? absl::StrCat("etcd has ", history[i].second, "@", history[i].first)
                             : "etcd has nothing more";
    if (i < got.size()) {
      absl::StrAppend(&detail, ", watcher has ", got[i].second, "@", got[i].first);
    }
    ADD_FAILURE() << when << ": watcher " << w << " event log != etcd history over (" << from
                  << ", " << to << "]: " << got.size() << " vs " << history.size()
                  << " events; first difference at #" << i << ": " << detail;
  }
}

void ChaosTest::AgeRevision(int n) {
  constexpr int kThreads = 8;
  std::atomic<int> next{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      pb::PutRequest req;
      req.set_key(absl::StrCat("/chaos-filler/", t));
      req.set_value("x");
      while (next.fetch_add(1) < n) {
        if (!conn_->client()->Put(req).ok()) failed.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(failed.load(), 0) << "filler writes failed";
  auto status = conn_->client()->MemberStatus();
  ASSERT_TRUE(status.ok()) << status.status();
  const int64_t aged = status->header().revision();
  // The watchers' resume position is their last event's revision: wait for a fleet write
  // past the filler.
  ASSERT_TRUE(WaitUntil(
      [&] {
        for (auto& w : watchers_) {
          if (w->last_revision() <= aged) return false;
        }
        return true;
      },
      absl::Seconds(10)))
      << "a watcher did not pass revision " << aged;
}

// 1. The leader dies (SIGKILL) and comes back later.
void ChaosTest::ScenarioLeaderKill() {
  auto before = ReadTruth();
  ASSERT_TRUE(before.ok()) << before.status();
  const EventCounts counts = CountEvents();
  auto leader = cluster_->LeaderIndex();
  ASSERT_TRUE(leader.ok()) << leader.status();
  ASSERT_TRUE(cluster_->Kill(*leader).ok());
  // Down for a whole TTL: longer than any lease could survive without the new leader.
  absl::Time until = util::MonoNow() + kTtl;
  ASSERT_NO_FATAL_FAILURE(WaitForNewLeader(*leader));
  HoldFault(until, [&] { ExpectAllPresent("leader down"); });
  ASSERT_TRUE(cluster_->Restart(*leader).ok());
  ExpectHealthyFleet("after leader kill + restart");
  ExpectNothingLost("after leader kill", *before, counts);
  ExpectEventsMatchHistory("after leader kill", before->revision);
}

// 3. Quorum lost (2 of 3 members down) for 2x TTL, then restored.
void ChaosTest::ScenarioQuorumLoss() {
  auto before = ReadTruth();
  ASSERT_TRUE(before.ok()) << before.status();
  auto leader = cluster_->LeaderIndex();
  ASSERT_TRUE(leader.ok()) << leader.status();
  const int a = *leader, b = (*leader + 1) % 3;
  ASSERT_TRUE(cluster_->Kill(a).ok());
  ASSERT_TRUE(cluster_->Kill(b).ok());
  absl::Time restore_at = util::MonoNow() + 2 * kTtl;
  EXPECT_TRUE(WaitUntil([&] { return Healthz() == 503; }, absl::Seconds(8)))
      << "/healthz did not report 503 without quorum";
  int healthy_answers = 0;
  HoldFault(restore_at, [&] { healthy_answers += Healthz() == 200; });
  EXPECT_EQ(healthy_answers, 0) << "/healthz said 200 without quorum";
  ASSERT_TRUE(cluster_->Restart(a).ok());
  ASSERT_TRUE(cluster_->Restart(b).ok());
  EXPECT_TRUE(WaitUntil([&] { return Healthz() == 200; }, absl::Seconds(10)))
      << "/healthz did not come back";
  EXPECT_TRUE(AllRegistered(kTtl + absl::Seconds(5))) << "not everything re-registered";
  ExpectHealthyFleet("after quorum loss");
  ExpectEventsMatchHistory("after quorum loss", before->revision);
}

// After etcd came back at `up` with a rewound revision (and the operator re-ran rbac.sh where
// needed): every registration of the running fleet is back, and every watcher and discoveryd
// shows exactly etcd's state, no ghost, within kRewindBound of `up`.
void ChaosTest::ExpectBackAfterRewind(const std::string& when, absl::Time up) {
  const absl::Time deadline = up + TimeScale(kRewindBound);
  if (FleetRegistered(Left(deadline))) {
    std::cerr << when << ": fleet back in etcd after " << util::MonoNow() - up << "\n";
  } else {
    auto truth = ReadTruth();
    ADD_FAILURE() << when << ": the fleet is not back in etcd within " << kRewindBound << ": "
                  << (truth.ok() ? absl::StrCat(truth->view.size(), " of ", FleetKeys().size(),
                                                " registered (ready or not)")
                                 : truth.status().ToString());
  }
  ExpectConverged(when, Left(deadline));
  if (!HasFailure()) {
    std::cerr << when << ": every view equal to etcd after " << util::MonoNow() - up << "\n";
  }
  if (HasFailure()) {
    // A reader that resumed from its pre-rewind revision is waiting for etcd to reach it.
    auto truth = ReadTruth();
    for (int w = 0; w < kWatchers; ++w) {
      std::cerr << when << ": watcher " << w << " printed its last event at revision "
                << watchers_[w]->last_revision() << "; etcd is at revision "
                << (truth.ok() ? truth->revision : -1) << "\n";
    }
  }
  ExpectAllAlive(when);
  ExpectNoLeakedLeases(when);
  EXPECT_TRUE(WaitUntil([&] { return Healthz() == 200; }, absl::Seconds(5))) << when;
}

// The whole cluster is wiped and bootstrapped again from the same configuration (what
// deploy/etcd/*.yml's fixed initial-cluster-token gives): same cluster id, revision from 1.
void ChaosTest::ScenarioWipeSameIdentity() {
  ASSERT_NO_FATAL_FAILURE(AgeRevision(kAgeRevisions));
  auto before = cluster_->MemberStatus(0);
  ASSERT_TRUE(before.ok()) << before.status();
  const EventCounts counts = CountEvents();
  ASSERT_TRUE(cluster_->WipeAndRestartSameIdentity().ok());
  const absl::Time up = util::MonoNow();
  if (auth_) {
    ASSERT_NO_FATAL_FAILURE(ApplyRbac());  // the operator runs rbac.sh again
  }
  ASSERT_NO_FATAL_FAILURE(ReconnectTestClient());
  auto after = cluster_->MemberStatus(0);
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_EQ(after->cluster_id, before->cluster_id) << "the harness did not keep the identity";
  ASSERT_LT(after->revision, before->revision / 2) << "the revision did not start again";
  ExpectBackAfterRewind("after a same-identity wipe", up);
  // Every lease was unknown to the new cluster.
  EXPECT_EQ(CountEvents().re_registered - counts.re_registered, kInstances);
}

// A snapshot is saved while the fleet runs; the fleet changes (registrar 2 leaves: 50
// deregistered; registrar 4 joins: 50 added); the cluster is restored from the snapshot: the
// revision goes back, registrar 2's instances are in etcd again until their (restored)
// leases expire, registrar 4's leases are unknown so it re-registers. Auth, users and roles
// are those of the snapshot.
void ChaosTest::ScenarioSnapshotRestore() {
  const std::string path = absl::StrCat(snapshot_dir_, "/fleet.db");
  ASSERT_TRUE(cluster_->SnapshotSave(path).ok());
  ASSERT_NO_FATAL_FAILURE(StopRegistrar(2));
  ASSERT_NO_FATAL_FAILURE(StartRegistrar(4, Endpoints(1)));
  ASSERT_TRUE(FleetRegistered(absl::Seconds(15))) << "the churn did not settle";
  ASSERT_NO_FATAL_FAILURE(ExpectConverged("after churn"));
  ASSERT_NO_FATAL_FAILURE(AgeRevision(kAgeRevisions));
  auto before = cluster_->MemberStatus(0);
  ASSERT_TRUE(before.ok()) << before.status();
  const int r4_before = RegistrarEvents(4, "re_registered");
  std::map<int, int> lost_before;
  for (const auto& [r, proc] : registrars_) lost_before[r] = RegistrarEvents(r, "lease_lost");
  ASSERT_TRUE(cluster_->RestoreSnapshot(path).ok());
  const absl::Time up = util::MonoNow();
  ASSERT_NO_FATAL_FAILURE(ReconnectTestClient());
  auto after = cluster_->MemberStatus(0);
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_EQ(after->cluster_id, before->cluster_id);
  ASSERT_LT(after->revision, before->revision - kAgeRevisions) << "the revision did not go back";
  if (auth_) {
    // The snapshot's auth state: on, with rbac.sh's users.
    EXPECT_FALSE(cluster_->EtcdctlAs("", {"get", "--prefix", kPrefix, "--keys-only"}).ok())
        << "anonymous read allowed after restoring a snapshot taken with auth on";
    auto reader = cluster_->EtcdctlAs(absl::StrCat(kReaderUser, ":", kReaderPassword),
                                      {"get", "--prefix", kPrefix, "--keys-only", "--limit", "1"});
    EXPECT_TRUE(reader.ok()) << "rbac.sh's reader cannot read after the restore: "
                             << reader.status();
  }
  ExpectBackAfterRewind("after a snapshot restore", up);
  EXPECT_EQ(RegistrarEvents(4, "re_registered") - r4_before, kPerRegistrar)
      << "registrar 4's leases did not exist in the snapshot";
  // The other registrars' leases are in the snapshot (etcd extends every lease by its TTL
  // when a leader takes over): they keep them.
  for (const auto& [r, lost] : lost_before) {
    if (r != 4) {
      EXPECT_EQ(RegistrarEvents(r, "lease_lost") - lost, 0)
          << "registrar " << r << " lost leases that the snapshot holds";
    }
  }
}

}  // namespace discovery::chaos
