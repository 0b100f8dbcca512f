// Redis Sentinel (issue 17): registrars and watchers on a redis+sentinel:// URL follow a
// failover to a replica that lost the last writes. A master, one replica and three sentinels
// (tests/support/redis_sentinel_harness); the replica is cut off the master before the last
// writes, then the master is SIGKILLed: the sentinels promote the replica, the clients ask
// them again, the watchers see another history (replid + the log record at their seq) and
// converge to the new master without the lost writes, registrars re-register what was lost.
// The watchers' ACL user is disabled on the replica until new writes on the promoted replica
// passed the watchers' seq: the seq never looks like it went backwards, only the replication
// id and the log record at the watchers' seq tell.
#include <gtest/gtest.h>

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "redis/client.h"
#include "redis_sentinel_harness.h"
#include "redis_test_util.h"
#include "store_backend.h"
#include "util/clock.h"

namespace discovery {
namespace {

using testing::PickFreePort;
using testing::RedisSentinelGroup;
using testing::RedisServer;
using testing::WaitUntil;

class RedisFailoverTest : public RedisTestBase {};

TEST_F(RedisFailoverTest, SentinelFailoverToAReplicaThatLostTheLastWrites) {
  auto started = RedisSentinelGroup::Start(1, 3);
  ASSERT_TRUE(started.ok()) << started.status();
  RedisSentinelGroup& g = **started;
  RedisServer& old_master = g.node(0);
  RedisServer& replica = g.node(1);

  auto conn = ConnectUrl(g.Url());
  ASSERT_TRUE(conn->Ping().ok());
  EventLog log;
  auto registrar = NewRegistrar(conn, &log);
  // ACL users are not replicated: the watchers' user exists on both data nodes.
  const std::vector<std::string> user = {"ACL", "SETUSER", "w", "on", ">pw", "~*", "&*", "+@all"};
  for (size_t i = 0; i < g.nodes(); ++i) ASSERT_TRUE(g.node(i).Cli(user).ok());
  std::string wurl = g.Url();
  wurl.replace(wurl.find("//") + 2, 0, "w:pw@");
  std::vector<std::unique_ptr<Watcher>> watchers;
  for (int i = 0; i < 2; ++i) watchers.push_back(NewWatcher(ConnectUrl(wurl)));
  std::vector<Registration> regs;
  for (int i = 0; i < 3; ++i) {
    auto reg = registrar->Register(World(absl::StrCat("w-", i)), {.ttl = absl::Seconds(3)});
    ASSERT_TRUE(reg.ok()) << reg.status();
    regs.push_back(*std::move(reg));
  }
  const std::set<std::string> first = {"w-0", "w-1", "w-2"};
  ASSERT_TRUE(WaitUntil([&] { return StoreIds(replica) == first; }, absl::Seconds(5)));
  for (auto& w : watchers) {
    ASSERT_TRUE(WaitUntil([&] { return CacheIds(*w) == first; }, absl::Seconds(5)));
  }

  // The replica stops following the master (a partition): the next writes never reach it.
  ASSERT_TRUE(replica.Cli({"REPLICAOF", "127.0.0.1", absl::StrCat(PickFreePort())}).ok());
  auto late = registrar->Register(World("late"), {.ttl = absl::Seconds(3)});
  ASSERT_TRUE(late.ok()) << late.status();
  auto holder = conn->backend()->NewLeaseHolder();
  auto writer = conn->backend()->NewInstanceWriter(absl::ZeroDuration());
  auto lease = holder->Grant(absl::Seconds(60));  // nobody refreshes it: its writer is gone
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_TRUE(
      writer->PutIfAbsent("/services/world/ghost", InstanceToJson(World("ghost")).dump(), *lease)
          .ok());
  for (auto& w : watchers) {
    ASSERT_TRUE(
        WaitUntil([&] { return Visible(*w, "late") && Visible(*w, "ghost"); }, absl::Seconds(5)));
  }
  std::vector<uint64_t> resets;
  for (auto& w : watchers) resets.push_back(w->stats().history_resets);
  const auto before = redis::GetSentinelCounters();

  auto meta_seq = [](RedisServer& r) {
    int64_t v = -1;
    auto s = r.Cli({"HGET", "{sd}:meta", "seq"});
    return s.ok() && absl::SimpleAtoi(*s, &v) ? v : -1;
  };
  const int64_t watcher_seq = meta_seq(old_master);
  ASSERT_TRUE(replica.Cli({"ACL", "SETUSER", "w", "off"}).ok());

  // The master dies; the sentinels promote the replica that lost "late" and "ghost".
  const absl::Time killed = util::MonoNow();
  ASSERT_TRUE(old_master.Stop().ok());
  ASSERT_TRUE(WaitUntil([&] { return g.MasterPort().value_or(0) == replica.port(); },
                        absl::Seconds(20), absl::Milliseconds(100)));
  const absl::Duration promoted = util::MonoNow() - killed;
  // New writes on the promoted replica pass the watchers' seq before they can look.
  ASSERT_TRUE(WaitUntil(
      [&] {
        (void)regs[1].SetStatus(meta_seq(replica) % 2 ? InstanceStatus::kReady
                                                      : InstanceStatus::kError);
        return meta_seq(replica) > watcher_seq + 2;
      },
      absl::Seconds(10)));
  ASSERT_TRUE(replica.Cli({"ACL", "SETUSER", "w", "on"}).ok());

  // Registrars and watchers follow: "late" re-registered on the new master, "ghost" nowhere.
  const std::set<std::string> want = {"w-0", "w-1", "w-2", "late"};
  EXPECT_TRUE(WaitUntil([&] { return StoreIds(replica) == want; }, absl::Seconds(3 + 2)))
      << absl::StrJoin(StoreIds(replica), ",");
  for (auto& w : watchers) {
    EXPECT_TRUE(WaitUntil([&] { return CacheIds(*w) == want; }, absl::Seconds(10)))
        << absl::StrJoin(CacheIds(*w), ",");
  }
  const absl::Duration converged = util::MonoNow() - killed;
  std::printf(
      "master SIGKILLed: replica promoted after %s, store and both watchers converged "
      "after %s\n",
      absl::FormatDuration(promoted).c_str(), absl::FormatDuration(converged).c_str());
  EXPECT_GE(log.Count(RegistrationEventType::kReRegistered), 1);
  EXPECT_EQ(late->instance_id(), "late");
  for (size_t i = 0; i < watchers.size(); ++i) {
    EXPECT_GT(watchers[i]->stats().history_resets, resets[i]) << "watcher " << i;
  }
  // Writes go to the new master.
  EXPECT_TRUE(
      WaitUntil([&] { return regs[0].SetStatus(InstanceStatus::kReady).ok(); }, absl::Seconds(5)));
  EXPECT_TRUE(WaitUntil(
      [&] {
        auto json = replica.Cli({"HGET", "{sd}:inst", "/services/world/w-0"});
        return json.ok() && json->find("\"status\":\"ready\"") != std::string::npos;
      },
      absl::Seconds(5)));
  // A lease granted now never takes the id of one lost with the old master (with ids from a
  // counter it took the ghost's: the ghost's keepalives would have kept it alive).
  auto fresh = holder->Grant(absl::Seconds(5));
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_NE(*fresh, *lease);
  const auto after = redis::GetSentinelCounters();
  EXPECT_GT(after.lookups, before.lookups);
  EXPECT_GT(after.master_changes, before.master_changes);
}

// A master demoted under connected clients (an operator's REPLICAOF after a SENTINEL FAILOVER,
// so no CLIENT KILL reaches them): their next write gets READONLY; the client drops the
// connection, asks the sentinels again and retries on the new master.
TEST_F(RedisFailoverTest, ReadonlyFromADemotedMasterMakesClientsAskTheSentinelsAgain) {
  auto started = RedisSentinelGroup::Start(1, 3);
  ASSERT_TRUE(started.ok()) << started.status();
  RedisSentinelGroup& g = **started;
  RedisServer& old_master = g.node(0);
  RedisServer& replica = g.node(1);
  auto conn = ConnectUrl(g.Url());
  EventLog log;
  auto registrar = NewRegistrar(conn, &log);
  auto watcher = NewWatcher(ConnectUrl(g.Url()));
  auto reg = registrar->Register(World("w-0"), {.ttl = absl::Seconds(5)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  ASSERT_TRUE(WaitUntil([&] { return StoreIds(replica) == std::set<std::string>{"w-0"}; },
                        absl::Seconds(5)));
  const auto before = redis::GetSentinelCounters();

  ASSERT_TRUE(g.sentinel(0).Cli({"SENTINEL", "failover", RedisSentinelGroup::kMasterName}).ok());
  ASSERT_TRUE(WaitUntil([&] { return g.MasterPort().value_or(0) == replica.port(); },
                        absl::Seconds(20), absl::Milliseconds(50)));
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto role = replica.Cli({"ROLE"});
        return role.ok() && role->rfind("master", 0) == 0;
      },
      absl::Seconds(10)));
  ASSERT_TRUE(old_master.Cli({"REPLICAOF", "127.0.0.1", absl::StrCat(replica.port())}).ok());

  // The registrar's connection still points at the demoted master: READONLY, ask again.
  EXPECT_TRUE(
      WaitUntil([&] { return reg->SetStatus(InstanceStatus::kReady).ok(); }, absl::Seconds(5)));
  EXPECT_TRUE(WaitUntil(
      [&] {
        auto json = replica.Cli({"HGET", "{sd}:inst", "/services/world/w-0"});
        auto in = watcher->snapshot()->Find("world", "w-0");
        return json.ok() && json->find("\"status\":\"ready\"") != std::string::npos &&
               in != nullptr && in->status == InstanceStatus::kReady;
      },
      absl::Seconds(10)));
  // A first call of a script on the old connection (the revoke's SCRIPT LOAD still works on a
  // replica, its EVALSHA gets READONLY): retried on the new master at once.
  absl::Status closed = reg->Close();
  EXPECT_TRUE(closed.ok()) << closed;
  EXPECT_TRUE(StoreIds(replica).empty()) << absl::StrJoin(StoreIds(replica), ",");
  const auto after = redis::GetSentinelCounters();
  EXPECT_GT(after.readonly, before.readonly);
  EXPECT_GT(after.master_changes, before.master_changes);
  EXPECT_EQ(log.Count(RegistrationEventType::kLeaseLost), 0);
}

}  // namespace
}  // namespace discovery
