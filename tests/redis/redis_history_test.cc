// Same identity, new history (issue 17): a Redis at the same address whose data is another
// history than the one a watcher followed. Here: an older copy (dump.rdb) restored while the
// watcher could not reach the store, and new writes pushing the store's seq past the
// watcher's before it could look again - the epoch is the same and the seq did not go
// backwards, only the replication id (a new process) and the log record at the watcher's
// seq (another nonce) tell. Restart without persistence, with AOF, and a trimmed log are in
// redis_backend_test.cc; the Sentinel failover in redis_failover_test.cc.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "redis_harness.h"
#include "redis_test_util.h"
#include "store_backend.h"
#include "util/clock.h"

namespace discovery {
namespace {

using testing::RedisServer;
using testing::WaitUntil;

class RedisHistoryTest : public RedisTestBase {};

int64_t MetaSeq(RedisServer& r) {
  int64_t v = -1;
  auto s = r.Cli({"HGET", "{sd}:meta", "seq"});
  if (!s.ok() || !absl::SimpleAtoi(*s, &v)) return -1;
  return v;
}

TEST_F(RedisHistoryTest, RestoredOlderCopyIsANewHistoryEvenAfterNewWritesPassedTheOldSeq) {
  auto started = RedisServer::Start({});
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<RedisServer> redis = *std::move(started);
  // The watcher logs in as its own ACL user: it is locked out (ACL users are not in the RDB)
  // until the test creates the user again after the restore.
  const std::vector<std::string> user = {"ACL", "SETUSER", "w", "on", ">pw", "~*", "&*", "+@all"};
  ASSERT_TRUE(redis->Cli(user).ok());
  auto wconn = ConnectUrl(absl::StrCat("redis://w:pw@127.0.0.1:", redis->port()));
  auto watcher = NewWatcher(wconn);
  auto conn = ConnectUrl(redis->Url());
  EventLog log;
  auto registrar = NewRegistrar(conn, &log);
  auto stays = registrar->Register(World("stays"), {.ttl = absl::Seconds(5)});
  ASSERT_TRUE(stays.ok()) << stays.status();
  ASSERT_TRUE(WaitUntil([&] { return Visible(*watcher, "stays"); }, absl::Seconds(5)));

  // The copy: an RDB of the store now.
  ASSERT_TRUE(redis->Cli({"SAVE"}).ok());
  const std::string dump = redis->dir() + "/dump.rdb";
  const std::string copy = redis->dir() + "/older.rdb";
  std::filesystem::copy_file(dump, copy, std::filesystem::copy_options::overwrite_existing);

  // After the copy: a live registration (its registrar will re-register it) and a ghost (a
  // key whose writer is gone: it exists only in this history).
  auto late = registrar->Register(World("late"), {.ttl = absl::Seconds(5)});
  ASSERT_TRUE(late.ok()) << late.status();
  auto holder = conn->backend()->NewLeaseHolder();
  auto writer = conn->backend()->NewInstanceWriter(absl::ZeroDuration());
  auto lease = holder->Grant(absl::Seconds(60));
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_TRUE(
      writer->PutIfAbsent("/services/world/ghost", InstanceToJson(World("ghost")).dump(), *lease)
          .ok());
  ASSERT_TRUE(WaitUntil([&] { return Visible(*watcher, "late") && Visible(*watcher, "ghost"); },
                        absl::Seconds(5)));
  const int64_t watcher_seq = MetaSeq(*redis);
  const uint64_t resets = watcher->stats().history_resets;

  // Restore the copy.
  ASSERT_TRUE(redis->Stop().ok());
  std::filesystem::copy_file(copy, dump, std::filesystem::copy_options::overwrite_existing);
  ASSERT_TRUE(redis->StartAgain().ok());
  ASSERT_LT(MetaSeq(*redis), watcher_seq) << "the restored copy is not older";
  // New writes in the restored history pass the watcher's seq while it cannot look.
  ASSERT_TRUE(WaitUntil([&] { return log.Count(RegistrationEventType::kReRegistered) >= 1; },
                        absl::Seconds(5 + 2)));
  for (int i = 0; MetaSeq(*redis) <= watcher_seq + 2 && i < 100; ++i) {
    ASSERT_TRUE(stays->SetStatus(i % 2 ? InstanceStatus::kReady : InstanceStatus::kError).ok());
  }
  ASSERT_GT(MetaSeq(*redis), watcher_seq + 2);
  ASSERT_TRUE(redis->Cli(user).ok());
  const absl::Time back = util::MonoNow();

  // The watcher sees another history and replaces its cache: no ghost, "late" re-registered.
  const std::set<std::string> want = {"stays", "late"};
  EXPECT_TRUE(WaitUntil([&] { return CacheIds(*watcher) == want && StoreIds(*redis) == want; },
                        absl::Seconds(15)))
      << "cache " << absl::StrJoin(CacheIds(*watcher), ",") << " store "
      << absl::StrJoin(StoreIds(*redis), ",");
  std::printf("watcher converged %s after it could read the restored store again\n",
              absl::FormatDuration(util::MonoNow() - back).c_str());
  EXPECT_GT(watcher->stats().history_resets, resets);
  EXPECT_EQ(late->instance_id(), "late");
}

}  // namespace
}  // namespace discovery
