// Redis Cluster slot check (issue 17): every key of a namespace carries the hash tag {sd}, so
// the scripts run unchanged on a 3-master cluster (tests/support/redis_cluster_harness); the
// client, given a node that does not serve the slot, follows the MOVED reply to the owner.
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "redis/client.h"
#include "redis_cluster_harness.h"
#include "redis_test_util.h"
#include "store_backend.h"

namespace discovery {
namespace {

using testing::RedisCluster;
using testing::WaitUntil;

class RedisClusterTest : public RedisTestBase {};

TEST_F(RedisClusterTest, ScriptsRunUnchangedOnTheSlotOwnerAfterOneMoved) {
  auto started = RedisCluster::Start(3);
  ASSERT_TRUE(started.ok()) << started.status();
  RedisCluster& cluster = **started;
  const int owner = cluster.OwnerOfKey("{sd}");
  ASSERT_GE(owner, 0);
  const size_t seed = static_cast<size_t>(owner + 1) % cluster.nodes();
  const uint64_t moved = redis::GetSentinelCounters().moved;

  auto conn = ConnectUrl(cluster.node(seed).Url());
  ASSERT_TRUE(conn->Ping().ok());
  EventLog log;
  auto registrar = NewRegistrar(conn, &log);
  auto watcher = NewWatcher(ConnectUrl(cluster.node(seed).Url()));
  auto a = registrar->Register(World("a"), {.ttl = absl::Seconds(3)});
  auto b = registrar->Register(World("b"), {.ttl = absl::Seconds(3)});
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(a->SetStatus(InstanceStatus::kReady).ok());
  EXPECT_TRUE(WaitUntil(
      [&] {
        auto in = watcher->snapshot()->Find("world", "a");
        return Visible(*watcher, "b") && in != nullptr && in->status == InstanceStatus::kReady;
      },
      absl::Seconds(5)));
  // All of it on the slot's owner, nothing on the node the clients were given.
  EXPECT_EQ(StoreIds(cluster.node(static_cast<size_t>(owner))), (std::set<std::string>{"a", "b"}));
  auto keys = cluster.node(seed).Cli({"DBSIZE"});
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(*keys, "0");
  // A removal and a reaped lease (no keepalives) reach the watcher through the log.
  ASSERT_TRUE(b->Close().ok());
  auto holder = conn->backend()->NewLeaseHolder();
  auto writer = conn->backend()->NewInstanceWriter(absl::ZeroDuration());
  auto lease = holder->Grant(absl::Seconds(1));
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_TRUE(
      writer->PutIfAbsent("/services/world/dead", InstanceToJson(World("dead")).dump(), *lease)
          .ok());
  EXPECT_TRUE(WaitUntil([&] { return Visible(*watcher, "dead"); }, absl::Seconds(5)));
  EXPECT_TRUE(
      WaitUntil([&] { return CacheIds(*watcher) == std::set<std::string>{"a"}; }, absl::Seconds(5)))
      << absl::StrJoin(CacheIds(*watcher), ",");
  EXPECT_GT(redis::GetSentinelCounters().moved, moved);
  EXPECT_EQ(log.Count(RegistrationEventType::kLeaseLost), 0);
}

}  // namespace
}  // namespace discovery
