// WatchHub against an etcd whose history goes backwards under the same cluster id (wiped and
// re-created with the same cluster token, or a watch asking for a revision the store has not
// reached), and the etcd::Client lifetime when its last reference is dropped on its own loop.
#include <dirent.h>
#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <string>

#include "etcd/client.h"
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

std::unique_ptr<EtcdCluster> Start() {
  auto c = EtcdCluster::Start({});
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

// What a rewind looks like to the hub: a watch from a revision the store is far behind.
// Without the check etcd accepts it and waits silently for that "future" revision.
TEST(StreamHistory, WatchFromRevisionAheadOfTheStoreIsDataLoss) {
  Recorder r;
  auto cluster = Start();
  ASSERT_NE(cluster, nullptr);
  auto client = MakeClient(cluster->ClientEndpoints());
  client->watch_hub().Add(PrefixSpec("/services/", 1000), r.Listener());
  ASSERT_TRUE(r.WaitBroken(absl::Seconds(3)));
  EXPECT_TRUE(absl::IsDataLoss(r.broken()[0])) << r.broken()[0];
  EXPECT_EQ(client->watch_hub().history_rewinds(), 1);
}

// etcd wiped and bootstrapped again from the same configuration: same cluster id, revision
// from 1. The watch (which holds revision ~21) learns it on its next create.
TEST(StreamHistory, SameIdentityWipeIsDataLossNotSilence) {
  Recorder r;
  auto cluster = Start();
  ASSERT_NE(cluster, nullptr);
  auto client = MakeClient(cluster->ClientEndpoints());
  auto rev = stream_test::Revision(*client);
  ASSERT_TRUE(rev.ok()) << rev.status();
  client->watch_hub().Add(PrefixSpec("/services/", *rev + 1), r.Listener());
  for (int i = 0; i < 20; ++i)
    ASSERT_TRUE(Put(*client, "/services/w/" + std::to_string(i), "x").ok());
  ASSERT_TRUE(r.WaitForCount(20, absl::Seconds(5)));
  ASSERT_TRUE(cluster->WipeAndRestartSameIdentity().ok());
  ASSERT_TRUE(r.WaitBroken(absl::Seconds(10))) << "the watch waits for revision 22 forever";
  EXPECT_TRUE(absl::IsDataLoss(r.broken()[0])) << r.broken()[0];
  EXPECT_EQ(r.count(), 20u);
}

// The same wipe, but the new history has already passed our revision by the time the watch is
// re-created: only the raft term (lower than the one this watch saw) tells.
TEST(StreamHistory, LowerRaftTermAfterSameIdentityWipeIsDataLoss) {
  Recorder r;
  auto cluster = Start();
  ASSERT_NE(cluster, nullptr);
  // Every restart of the single member is an election: term 2 -> 4.
  ASSERT_TRUE(cluster->GracefulRestart(0).ok());
  ASSERT_TRUE(cluster->GracefulRestart(0).ok());
  auto before = cluster->MemberStatus(0);
  ASSERT_TRUE(before.ok()) << before.status();
  auto client = MakeClient(cluster->ClientEndpoints());
  auto rev = stream_test::Revision(*client);
  ASSERT_TRUE(rev.ok()) << rev.status();
  client->watch_hub().Add(PrefixSpec("/services/", *rev + 1), r.Listener());
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(Put(*client, "/services/t/" + std::to_string(i), "x").ok());
  ASSERT_TRUE(r.WaitForCount(3, absl::Seconds(5)));
  client->watch_hub().SetPausedForTest(true);  // the stream stays down during the wipe
  ASSERT_TRUE(cluster->WipeAndRestartSameIdentity().ok());
  auto after = cluster->MemberStatus(0);
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_EQ(after->cluster_id, before->cluster_id);
  ASSERT_LT(after->raft_term, before->raft_term);
  int64_t now = 0;
  while (now < *rev + 10) {
    auto p = Put(*client, "/services/new", std::to_string(now));
    ASSERT_TRUE(p.ok()) << p.status();
    now = *p;
  }
  client->watch_hub().SetPausedForTest(false);
  ASSERT_TRUE(r.WaitBroken(absl::Seconds(10)));
  EXPECT_TRUE(absl::IsDataLoss(r.broken()[0])) << r.broken()[0];
  EXPECT_NE(r.broken()[0].message().find("raft term"), std::string::npos) << r.broken()[0];
}

// Threads of this process whose name is `name` (/proc/self/task/*/comm).
int ThreadsNamed(const std::string& name) {
  int n = 0;
  DIR* d = opendir("/proc/self/task");
  if (d == nullptr) return -1;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream comm(std::string("/proc/self/task/") + e->d_name + "/comm");
    std::string c;
    if (std::getline(comm, c) && c == name) ++n;
  }
  closedir(d);
  return n;
}

// A task on the client's own loop holds the last reference: ~Client runs on the loop thread,
// stops (detaches) that loop and frees it while its Run() is still on the stack. Run() must
// then leave without touching the freed loop (ASan: heap-use-after-free before the fix), and
// the thread must end.
TEST(ClientLifetime, LastReferenceDroppedOnItsOwnLoopThread) {
  Recorder r;
  auto cluster = Start();
  ASSERT_NE(cluster, nullptr);
  const int loops_before = ThreadsNamed("discovery-loop");
  auto client = MakeClient(cluster->ClientEndpoints());
  auto rev = stream_test::Revision(*client);
  ASSERT_TRUE(rev.ok()) << rev.status();
  client->watch_hub().Add(PrefixSpec("/services/", *rev + 1), r.Listener());  // a live stream
  ASSERT_TRUE(Put(*client, "/services/l/0", "x").ok());
  ASSERT_TRUE(r.WaitForCount(1, absl::Seconds(5)));
  ASSERT_EQ(ThreadsNamed("discovery-loop"), loops_before + 1);
  util::EventLoop& loop = client->loop();
  loop.Post([c = std::move(client)]() mutable { c.reset(); });
  EXPECT_TRUE(
      WaitUntil([&] { return ThreadsNamed("discovery-loop") == loops_before; }, absl::Seconds(5)))
      << "the loop thread of the destroyed client is still running";
}

}  // namespace
}  // namespace discovery
