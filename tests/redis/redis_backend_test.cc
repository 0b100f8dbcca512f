// The Registrar and the Watcher over the Redis backend (issue 17), against a real
// redis-server started by tests/support/redis_harness: registration visible, expiry by the
// reaper after TTL, graceful Close, lease lost (FLUSHALL) -> re-registered with the same id,
// outage grace (SIGSTOP for 2 x TTL), restart without persistence (epoch change), watcher truth.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>

#include "absl/strings/str_split.h"
#include "discovery/redis.h"
#include "discovery/registrar.h"
#include "discovery/watcher.h"
#include "harness_util.h"
#include "redis_harness.h"
#include "redis_test_util.h"
#include "store_backend.h"
#include "util/clock.h"

namespace discovery {
namespace {

using testing::RedisServer;
using testing::TimeScale;
using testing::WaitUntil;

class RedisBackendTest : public RedisTestBase {
 protected:
  void SetUp() override {
    auto r = RedisServer::Start({});
    ASSERT_TRUE(r.ok()) << r.status();
    redis_ = *std::move(r);
  }
  std::shared_ptr<Connection> Connect(absl::Duration grace = absl::Seconds(3)) {
    return ConnectUrl(redis_->Url(), grace);
  }

  std::unique_ptr<RedisServer> redis_;
};

TEST_F(RedisBackendTest, RegisteredInstanceIsVisibleInRedisAndToTheWatcher) {
  auto conn = Connect();
  ASSERT_TRUE(conn->Ping().ok());
  EXPECT_EQ(conn->backend()->kind(), "redis");
  EventLog log;
  auto registrar = NewRegistrar(conn, &log);
  auto watcher = NewWatcher(conn);
  auto reg = registrar->Register(World("w-1"), {.ttl = absl::Seconds(5)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  EXPECT_TRUE(WaitUntil([&] { return Visible(*watcher, "w-1"); }, absl::Seconds(5)));
  auto json = redis_->Cli({"HGET", "{sd}:inst", "/services/world/w-1"});
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_NE(json->find("\"instanceId\":\"w-1\""), std::string::npos) << *json;
  auto deadline = redis_->Cli({"ZSCORE", "{sd}:dl", absl::StrCat(reg->lease_id())});
  ASSERT_TRUE(deadline.ok());
  EXPECT_FALSE(deadline->empty());

  // An update goes through the guarded write and reaches the watcher.
  ASSERT_TRUE(reg->SetStatus(InstanceStatus::kReady).ok());
  EXPECT_TRUE(WaitUntil(
      [&] {
        auto in = watcher->snapshot()->Find("world", "w-1");
        return in != nullptr && in->status == InstanceStatus::kReady;
      },
      absl::Seconds(5)));
}

TEST_F(RedisBackendTest, UnrefreshedLeaseIsReapedAfterTtlAndGracefulCloseRemovesAtOnce) {
  auto conn = Connect();
  EventLog log;
  auto registrar = NewRegistrar(conn, &log);
  auto watcher = NewWatcher(conn);
  // A crashed game server: its lease and key exist, nobody refreshes the lease.
  auto holder = conn->backend()->NewLeaseHolder();
  auto writer = conn->backend()->NewInstanceWriter(absl::ZeroDuration());
  auto lease = holder->Grant(absl::Seconds(2));
  ASSERT_TRUE(lease.ok()) << lease.status();
  const absl::Time put_at = util::MonoNow();
  auto put =
      writer->PutIfAbsent("/services/world/dead", InstanceToJson(World("dead")).dump(), *lease);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_GT(*put, 0);
  ASSERT_TRUE(WaitUntil([&] { return Visible(*watcher, "dead"); }, absl::Seconds(5)));
  ASSERT_TRUE(WaitUntil([&] { return !Visible(*watcher, "dead"); }, absl::Seconds(10)));
  const absl::Duration took = util::MonoNow() - put_at;
  std::printf("2 s lease without keepalives: gone at the watcher after %s\n",
              absl::FormatDuration(took).c_str());
  EXPECT_GE(took, absl::Milliseconds(1900));                        // not before the TTL
  EXPECT_LE(took, TimeScale(absl::Seconds(2) + absl::Seconds(2)));  // TTL + reaper period + slack
  // A write on the reaped lease is refused.
  EXPECT_EQ(writer->PutIfAbsent("/services/world/dead", "{}", *lease).status().code(),
            absl::StatusCode::kNotFound);

  // A healthy registration survives many TTLs; its Close removes it at once.
  auto reg = registrar->Register(World("alive"), {.ttl = absl::Seconds(2)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  ASSERT_TRUE(WaitUntil([&] { return Visible(*watcher, "alive"); }, absl::Seconds(5)));
  const absl::Time until = util::MonoNow() + absl::Seconds(5);
  EXPECT_FALSE(WaitUntil([&] { return !Visible(*watcher, "alive"); }, until - util::MonoNow()));
  const absl::Time closed_at = util::MonoNow();
  ASSERT_TRUE(reg->Close().ok());
  ASSERT_TRUE(WaitUntil([&] { return !Visible(*watcher, "alive"); }, absl::Seconds(5)));
  EXPECT_LT(util::MonoNow() - closed_at, absl::Seconds(1));
  EXPECT_EQ(log.Count(RegistrationEventType::kLeaseLost), 0);
}

TEST_F(RedisBackendTest, FlushAllLosesTheLeaseAndTheServerReRegistersWithTheSameId) {
  auto conn = Connect();
  EventLog log;
  auto registrar = NewRegistrar(conn, &log);
  auto watcher = NewWatcher(conn);
  auto reg = registrar->Register(World("w-1"), {.ttl = absl::Seconds(3)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  ASSERT_TRUE(WaitUntil([&] { return Visible(*watcher, "w-1"); }, absl::Seconds(5)));
  const int64_t old_lease = reg->lease_id();
  const uint64_t resets = watcher->stats().history_resets;
  ASSERT_TRUE(redis_->FlushAll().ok());
  EXPECT_TRUE(WaitUntil([&] { return log.Count(RegistrationEventType::kReRegistered) >= 1; },
                        absl::Seconds(3 + 2)));
  EXPECT_GE(log.Count(RegistrationEventType::kLeaseLost), 1);
  EXPECT_NE(reg->lease_id(), old_lease);
  EXPECT_EQ(reg->instance_id(), "w-1");
  EXPECT_TRUE(
      WaitUntil([&] { return watcher->stats().history_resets > resets; }, absl::Seconds(5)));
  EXPECT_TRUE(WaitUntil([&] { return Visible(*watcher, "w-1"); }, absl::Seconds(5)));
  auto json = redis_->Cli({"HGET", "{sd}:inst", "/services/world/w-1"});
  ASSERT_TRUE(json.ok());
  EXPECT_NE(json->find("w-1"), std::string::npos);
}

TEST_F(RedisBackendTest, RestartWithoutPersistenceChangesTheEpochAndEveryoneRecovers) {
  auto conn = Connect();
  EventLog log;
  auto registrar = NewRegistrar(conn, &log);
  auto watcher = NewWatcher(conn);
  auto reg = registrar->Register(World("w-1"), {.ttl = absl::Seconds(3)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  ASSERT_TRUE(WaitUntil([&] { return Visible(*watcher, "w-1"); }, absl::Seconds(5)));
  auto epoch = redis_->Cli({"HGET", "{sd}:meta", "epoch"});
  ASSERT_TRUE(epoch.ok());
  const uint64_t resets = watcher->stats().history_resets;
  ASSERT_TRUE(redis_->Restart().ok());
  // Registrar re-registers within TTL + 2 s; the watcher sees another history.
  EXPECT_TRUE(WaitUntil([&] { return log.Count(RegistrationEventType::kReRegistered) >= 1; },
                        absl::Seconds(3 + 2)));
  EXPECT_TRUE(
      WaitUntil([&] { return watcher->stats().history_resets > resets; }, absl::Seconds(5)));
  EXPECT_TRUE(WaitUntil([&] { return Visible(*watcher, "w-1"); }, absl::Seconds(5)));
  auto epoch2 = redis_->Cli({"HGET", "{sd}:meta", "epoch"});
  ASSERT_TRUE(epoch2.ok());
  EXPECT_NE(*epoch, *epoch2);
}

// With AOF (appendfsync everysec) a restart keeps the epoch, the leases and the keys: the
// registration goes on with the same lease and the watcher resumes without a history reset.
TEST_F(RedisBackendTest, RestartWithAofKeepsLeasesAndHistory) {
  redis_.reset();
  auto r = RedisServer::Start({.aof = true});
  ASSERT_TRUE(r.ok()) << r.status();
  redis_ = *std::move(r);
  auto conn = Connect();
  EventLog log;
  auto registrar = NewRegistrar(conn, &log);
  auto watcher = NewWatcher(conn);
  auto reg = registrar->Register(World("w-1"), {.ttl = absl::Seconds(5)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  ASSERT_TRUE(WaitUntil([&] { return Visible(*watcher, "w-1"); }, absl::Seconds(5)));
  const int64_t lease = reg->lease_id();
  // The AOF holds the registration (fsync'd within ~1 s) before the kill.
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto dir = redis_->Cli({"CONFIG", "GET", "dir"});
        if (!dir.ok()) return false;
        std::vector<std::string> parts = absl::StrSplit(*dir, '\n');
        std::string all;
        for (const auto& e : std::filesystem::recursive_directory_iterator(parts.back())) {
          if (e.path().string().find(".aof") == std::string::npos) continue;
          std::ifstream in(e.path());
          all.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        }
        return all.find("/services/world/w-1") != std::string::npos;
      },
      absl::Seconds(5)));
  const uint64_t resets = watcher->stats().history_resets;
  ASSERT_TRUE(redis_->Restart().ok());
  ASSERT_TRUE(reg->SetStatus(InstanceStatus::kReady).ok());
  EXPECT_TRUE(WaitUntil(
      [&] {
        auto in = watcher->snapshot()->Find("world", "w-1");
        return in != nullptr && in->status == InstanceStatus::kReady;
      },
      absl::Seconds(10)));
  EXPECT_EQ(reg->lease_id(), lease);
  EXPECT_EQ(log.Count(RegistrationEventType::kLeaseLost), 0);
  EXPECT_EQ(watcher->stats().history_resets, resets);
}

// The change log trimmed past a watcher that could not read it (its ACL user lost XREAD while
// 400 changes were made with log_max_len 100): a full resync that emits only the differences.
TEST_F(RedisBackendTest, LogTrimmedUnderAStalledWatcherResyncsWithOnlyTheDifferences) {
  ASSERT_TRUE(redis_->Cli({"ACL", "SETUSER", "w", "on", ">pw", "~*", "&*", "+@all"}).ok());
  RedisOptions wo;
  wo.url = absl::StrCat("redis://w:pw@127.0.0.1:", redis_->port());
  wo.log_max_len = 100;
  auto wconn = ConnectRedis(wo);
  ASSERT_TRUE(wconn.ok()) << wconn.status();
  auto watcher = NewWatcher(*wconn);
  std::mutex mu;
  std::vector<std::pair<ChangeType, std::string>> events;
  auto sub = watcher->Subscribe({.type = "world"}, [&](const ChangeEvent& ev) {
    std::lock_guard<std::mutex> l(mu);
    events.emplace_back(ev.type, ev.instance->instance_id);
  });
  RedisOptions ro;
  ro.url = redis_->Url();
  ro.log_max_len = 100;
  auto rconn = ConnectRedis(ro);
  ASSERT_TRUE(rconn.ok());
  EventLog log;
  auto registrar = NewRegistrar(*rconn, &log);
  auto stays = registrar->Register(World("stays"), {.ttl = absl::Seconds(10)});
  auto goes = registrar->Register(World("goes"), {.ttl = absl::Seconds(10)});
  ASSERT_TRUE(stays.ok() && goes.ok());
  ASSERT_TRUE(WaitUntil([&] { return watcher->snapshot()->OfType("world").size() == 2; },
                        absl::Seconds(5)));
  const uint64_t resyncs = watcher->stats().resyncs;
  {
    std::lock_guard<std::mutex> l(mu);
    events.clear();
  }
  ASSERT_TRUE(redis_->Cli({"ACL", "SETUSER", "w", "-xread"}).ok());
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(stays->SetStatus(InstanceStatus::kReady).ok());
    ASSERT_TRUE(stays->SetStatus(InstanceStatus::kError).ok());
  }
  ASSERT_TRUE(goes->Close().ok());
  ASSERT_TRUE(stays->SetStatus(InstanceStatus::kReady).ok());
  auto len = redis_->Cli({"XLEN", "{sd}:log"});
  ASSERT_TRUE(len.ok());
  EXPECT_LT(std::stoi(*len), 300) << "the log was not trimmed";
  ASSERT_TRUE(redis_->Cli({"ACL", "SETUSER", "w", "+xread"}).ok());
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto in = watcher->snapshot()->Find("world", "stays");
        return watcher->snapshot()->OfType("world").size() == 1 && in != nullptr &&
               in->status == InstanceStatus::kReady;
      },
      absl::Seconds(15)));
  EXPECT_GT(watcher->stats().resyncs, resyncs);
  std::lock_guard<std::mutex> l(mu);
  // Only the differences: "goes" removed once; "stays" at most twice (the first change can be
  // delivered by an XREAD BLOCK admitted before the ACL change, then the resync's difference),
  // never the 401 changes the log had.
  int removed = 0, other = 0;
  for (const auto& [type, id] : events) {
    if (type == ChangeType::kRemoved && id == "goes") {
      ++removed;
    } else {
      ++other;
    }
  }
  EXPECT_EQ(removed, 1);
  EXPECT_LE(other, 2);
}

// Redis frozen for 2 x TTL: nobody could heartbeat. The reaper must shift the deadlines by the
// gap instead of removing every live server (outage grace).
TEST_F(RedisBackendTest, SigstopForTwiceTheTtlRemovesNobody) {
  auto conn = Connect(absl::Seconds(1));
  EventLog log;
  auto registrar = NewRegistrar(conn, &log);
  auto watcher = NewWatcher(conn);
  std::atomic<int> removed{0};
  auto sub = watcher->Subscribe({.type = "world"}, [&](const ChangeEvent& ev) {
    if (ev.type == ChangeType::kRemoved) removed.fetch_add(1);
  });
  std::vector<Registration> regs;
  for (int i = 0; i < 3; ++i) {
    auto reg = registrar->Register(World(absl::StrCat("w-", i)), {.ttl = absl::Seconds(2)});
    ASSERT_TRUE(reg.ok()) << reg.status();
    regs.push_back(*std::move(reg));
  }
  ASSERT_TRUE(WaitUntil([&] { return watcher->snapshot()->OfType("world").size() == 3; },
                        absl::Seconds(5)));
  ASSERT_TRUE(redis_->Pause().ok());
  // The outage itself lasts 2 x TTL (a fault held for a duration, not a synchronisation).
  const absl::Time resume_at = util::MonoNow() + absl::Seconds(4);
  WaitUntil([&] { return util::MonoNow() >= resume_at; }, absl::Seconds(5));
  ASSERT_TRUE(redis_->Resume().ok());
  // The reaper ran after the outage (its timestamp moved) and several periods more.
  auto reaped_after = [&] {
    auto last = redis_->Cli({"HGET", "{sd}:meta", "reaper_last"});
    auto now = redis_->Cli({"TIME"});
    if (!last.ok() || !now.ok()) return false;
    int64_t l = 0, t = 0;
    std::vector<std::string> parts = absl::StrSplit(*now, '\n');
    if (!absl::SimpleAtoi(*last, &l) || !absl::SimpleAtoi(parts[0], &t)) return false;
    return l / 1000 >= t - 1 && l > 0;
  };
  ASSERT_TRUE(WaitUntil(reaped_after, absl::Seconds(5)));
  const absl::Time until = util::MonoNow() + absl::Seconds(3);
  WaitUntil([&] { return removed.load() > 0 || util::MonoNow() >= until; }, absl::Seconds(4));
  EXPECT_EQ(removed.load(), 0);
  EXPECT_EQ(watcher->snapshot()->OfType("world").size(), 3u);
  EXPECT_EQ(log.Count(RegistrationEventType::kLeaseLost), 0);
}

// Random registrations, updates and closes from three registrars plus expiring leases: the
// watcher's cache equals the store, and the subscription's events replay to the same set.
TEST_F(RedisBackendTest, WatcherTruthUnderRandomOpsFromThreeRegistrars) {
  auto wconn = Connect();
  auto watcher = NewWatcher(wconn);
  std::mutex mu;
  std::map<std::string, int> replay;  // instance id -> present (events applied in order)
  auto sub = watcher->Subscribe({.type = "world"}, [&](const ChangeEvent& ev) {
    std::lock_guard<std::mutex> l(mu);
    if (ev.type == ChangeType::kAdded) replay[ev.instance->instance_id]++;
    if (ev.type == ChangeType::kRemoved) replay[ev.instance->instance_id]--;
  });
  std::vector<std::shared_ptr<Connection>> conns;
  std::vector<std::unique_ptr<Registrar>> registrars;
  std::vector<EventLog> logs(3);
  for (int i = 0; i < 3; ++i) {
    conns.push_back(Connect());
    registrars.push_back(NewRegistrar(conns.back(), &logs[i]));
  }
  auto holder = wconn->backend()->NewLeaseHolder();
  auto writer = wconn->backend()->NewInstanceWriter(absl::ZeroDuration());
  std::mt19937 rng(17);
  std::map<std::string, Registration> live;
  for (int op = 0; op < 120; ++op) {
    const std::string id = absl::StrCat("i-", rng() % 30);
    auto it = live.find(id);
    const int what = static_cast<int>(rng() % 10);
    if (it == live.end() && what < 8) {
      auto reg = registrars[rng() % 3]->Register(World(id), {.ttl = absl::Seconds(5)});
      ASSERT_TRUE(reg.ok()) << reg.status();
      live.emplace(id, *std::move(reg));
    } else if (it == live.end()) {  // a server that dies at once: expires by the reaper
      const std::string dead = absl::StrCat("dead-", op);
      auto lease = holder->Grant(absl::Seconds(1));
      ASSERT_TRUE(lease.ok());
      ASSERT_TRUE(
          writer->PutIfAbsent("/services/world/" + dead, InstanceToJson(World(dead)).dump(), *lease)
              .ok());
    } else if (what < 5) {
      // ready <-> error: transitions the registrar allows in both directions.
      absl::Status st =
          it->second.SetStatus(what % 2 ? InstanceStatus::kReady : InstanceStatus::kError);
      ASSERT_TRUE(st.ok()) << st;
    } else {
      ASSERT_TRUE(it->second.Close().ok());
      live.erase(it);
    }
  }
  // Converged: the expired ones are gone, the cache equals the hash, the replay equals both.
  auto store_ids = [&] {
    std::set<std::string> ids;
    auto keys = redis_->Cli({"HKEYS", "{sd}:inst"});
    if (!keys.ok()) return ids;
    for (absl::string_view k : absl::StrSplit(*keys, '\n', absl::SkipEmpty())) {
      ids.insert(std::string(k.substr(k.rfind('/') + 1)));
    }
    return ids;
  };
  auto cache_ids = [&] {
    std::set<std::string> ids;
    for (const auto& in : watcher->snapshot()->OfType("world")) ids.insert(in->instance_id);
    return ids;
  };
  std::set<std::string> want;
  for (const auto& [id, reg] : live) want.insert(id);
  ASSERT_TRUE(
      WaitUntil([&] { return store_ids() == want && cache_ids() == want; }, absl::Seconds(10)))
      << "store " << store_ids().size() << " cache " << cache_ids().size() << " want "
      << want.size();
  std::lock_guard<std::mutex> l(mu);
  for (const auto& [id, n] : replay) {
    EXPECT_EQ(n, want.count(id) ? 1 : 0) << id << ": an event lost or delivered twice";
  }
}

// Hostile values in the instance hash (written with redis-cli, seen by a full read) and in the
// change log (written through the scripts, seen live): skipped and counted; the healthy
// instance stays visible, the watcher keeps following.
TEST_F(RedisBackendTest, HostileValuesNeverAffectHealthyInstances) {
  auto conn = Connect();
  EventLog log;
  auto registrar = NewRegistrar(conn, &log);
  auto reg = registrar->Register(World("healthy"), {.ttl = absl::Seconds(5)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  const std::vector<std::pair<std::string, std::string>> hostile = {
      {"/services/world/notjson", "not json"},
      {"/services/world/truncated", "{\"instanceId\":\"trunc"},
      {"/services/world/wrongtypes", "{\"instanceId\":7,\"type\":[],\"ports\":\"x\"}"},
      {"/services/world/mismatch", InstanceToJson(World("other")).dump()},
      {"/services/world/a/b", InstanceToJson(World("b")).dump()},
      {"/services/world/bad name!", "{}"},
      {"/services/world/nul", std::string("{\"a\":\"\0\"}", 10)},
      {"/services/world/big", std::string(100000, '[')},  // (an argv string stays < 128 KiB)
  };
  for (const auto& [key, value] : hostile) {
    ASSERT_TRUE(redis_->Cli({"HSET", "{sd}:inst", key, value}).ok()) << key;
  }
  auto watcher = NewWatcher(conn);  // full read over the garbage
  ASSERT_TRUE(WaitUntil([&] { return Visible(*watcher, "healthy"); }, absl::Seconds(5)));
  EXPECT_GE(watcher->stats().invalid_values, 1u);
  // The same garbage through the log, while the watcher follows it.
  auto holder = conn->backend()->NewLeaseHolder();
  auto writer = conn->backend()->NewInstanceWriter(absl::ZeroDuration());
  auto lease = holder->Grant(absl::Seconds(5));
  ASSERT_TRUE(lease.ok());
  for (const auto& [key, value] : hostile) {
    ASSERT_TRUE(writer->PutIfAbsent(key + "-live", value, *lease).ok()) << key;
  }
  ASSERT_TRUE(writer->PutIfAbsent("/services/world/huge", std::string(1 << 20, '['), *lease).ok());
  // A foreign log entry whose id (a ms timestamp) is far above every seq: writes go on, the
  // watchers resync past it.
  ASSERT_TRUE(
      redis_
          ->Cli({"XADD", "{sd}:log", "*", "op", "put", "key", "/services/world/x", "value", "junk"})
          .ok());
  auto reg2 = registrar->Register(World("after"), {.ttl = absl::Seconds(5)});
  ASSERT_TRUE(reg2.ok()) << reg2.status();
  EXPECT_TRUE(WaitUntil([&] { return Visible(*watcher, "after"); }, absl::Seconds(5)));
  EXPECT_TRUE(Visible(*watcher, "healthy"));
  EXPECT_EQ(watcher->snapshot()->OfType("world").size(), 2u);
  EXPECT_EQ(log.Count(RegistrationEventType::kLeaseLost), 0);
  EXPECT_TRUE(reg->SetStatus(InstanceStatus::kReady).ok());
}

}  // namespace
}  // namespace discovery
