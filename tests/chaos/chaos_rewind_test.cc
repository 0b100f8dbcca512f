// Chaos suite, the way deploy/ runs etcd: a fixed initial-cluster-token (a wiped cluster comes
// back with the same cluster id and its revision starting again from 1), backups restored
// with `etcdctl snapshot restore` (the revision goes back), and auth on with the users and
// roles of deploy/etcd/rbac.sh.
//
// A reader resuming its watch from its old revision after such a rewind asks etcd for a
// revision from the future, which etcd accepts and silently waits for: it would keep every
// instance as it was (ghosts, stale lease ids) until etcd's revision caught up. Before the
// fault each test ages the revision (chaos_scenarios.cc: AgeRevision) as a production etcd's
// is, so that catching up takes longer than the bound the test gives: after each rewind the
// fleet is back (same instance ids) and every watcher view and discoveryd's answer equal
// etcd's state within TTL + 5 s.
//
// After a wipe the test re-runs the rbac.sh steps as an operator would; a restore brings the
// snapshot's auth state back.
#include "chaos_fixture.h"

namespace discovery::chaos {
namespace {

// The whole cluster wiped and bootstrapped again with the same token, names and URLs.
TEST_F(ChaosTest, ClusterWipedSameIdentity) { ScenarioWipeSameIdentity(); }

// A snapshot saved under the running fleet, 50 instances deregistered and 50 added, then the
// cluster restored from the snapshot.
TEST_F(ChaosTest, SnapshotRestoredAfterChurn) { ScenarioSnapshotRestore(); }

// With auth on (rbac.sh's users, --auth-token-ttl 3, every process logged in with its own
// user): leader killed for a TTL, quorum lost for 2x TTL, the cluster wiped with the same
// identity (rbac.sh re-run), restored from a snapshot taken with auth on. One fleet for the
// four scenarios, in sequence.
TEST_F(ChaosAuthTest, LeaderKillQuorumLossWipeAndRestore) {
  ASSERT_NO_FATAL_FAILURE(ScenarioLeaderKill());
  ASSERT_NO_FATAL_FAILURE(ScenarioQuorumLoss());
  ASSERT_NO_FATAL_FAILURE(ScenarioWipeSameIdentity());
  ASSERT_NO_FATAL_FAILURE(ScenarioSnapshotRestore());
}

}  // namespace
}  // namespace discovery::chaos
