// Registrar against a real store: registration layout, crash and graceful stop, status
// transitions, re-registration after the store loses its data. The tests that use only the
// public API through a Connection run on etcd and on Redis from one parameterised fixture
// (`Stores/RegistrarTest.*/Etcd`, `…/Redis`; the store's truth through
// tests/support/store_view.h); leader failover in a 3-member cluster and 1,000 registrations over
// one keepalive stream are etcd's own (RegistrarEtcdTest; Redis: RedisFailoverTest,
// RedisLeaseTickTest).
#include "discovery/registrar.h"

#include <gtest/gtest.h>

#include <csignal>
#include <mutex>
#include <thread>

#include "child_process.h"
#include "etcd/client.h"
#include "etcd/lease_keeper.h"
#include "etcd_harness.h"
#include "nlohmann/json.hpp"
#include "registration_event_log.h"
#include "store_view.h"
#include "util/clock.h"

namespace discovery {
namespace {

using testing::StoreKind;
using testing::StoreView;
using testing::TimeScale;
using testing::WaitUntil;
namespace pb = ::etcdserverpb;

Instance World(const std::string& id = "") {
  Instance in;
  in.instance_id = id;
  in.type = "world";
  in.group = "kr-1";
  in.hostname = "game-01";
  in.private_ip = "10.0.0.5";
  in.ports = {{"game", 8001}, {"grpc", 50051}};
  in.version = "1.4.2";
  return in;
}

using EventLog = ::discovery::testing::RegistrationEventLog;

class RegistrarFixture : public ::testing::Test {
 protected:
  void Start(StoreKind kind, int members = 1) {
    auto s = StoreView::Start(kind, members);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
    conn_ = store_->Connect();
    ASSERT_NE(conn_, nullptr);
    auto r = Registrar::Create({.connection = conn_, .on_event = log_.Callback()});
    ASSERT_TRUE(r.ok()) << r.status();
    registrar_ = *std::move(r);
  }
  absl::StatusOr<std::string> Get(const std::string& key) {
    auto v = store_->Get(key);
    return v ? *v : std::string();
  }
  bool KeyExists(const std::string& key) { return store_->Has(key); }
  int64_t LeaseOf(const std::string& key) { return store_->LeaseOf(key); }
  // example_game_server pointed at the store.
  std::unique_ptr<testing::ChildProcess> SpawnGameServer(std::vector<std::string> args) {
    args.insert(args.begin(), EXAMPLE_GAME_SERVER);
    auto child = testing::ChildProcess::Spawn({.argv = args,
                                               .env = store_->ChildEnv(),
                                               .unset_env_prefixes = {"ETCD_", "DISCOVERY_"},
                                               .stdout_to_pipe = true});
    EXPECT_TRUE(child.ok()) << child.status();
    return child.ok() ? *std::move(child) : nullptr;
  }

  EventLog log_;
  std::unique_ptr<StoreView> store_;
  std::shared_ptr<Connection> conn_;
  std::unique_ptr<Registrar> registrar_;
};

// The same tests on etcd and on Redis.
class RegistrarTest : public RegistrarFixture, public ::testing::WithParamInterface<StoreKind> {
 protected:
  void Start() { RegistrarFixture::Start(GetParam()); }
};

// etcd only: a 3-member cluster, the etcd keepalive stream.
class RegistrarEtcdTest : public RegistrarFixture {
 protected:
  void Start(int members = 1) { RegistrarFixture::Start(StoreKind::kEtcd, members); }
};

TEST_P(RegistrarTest, RegisterWritesJsonUnderLease) {
  Start();
  auto reg = registrar_->Register(World(), {.ttl = absl::Seconds(3)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  EXPECT_EQ(reg->instance_id().size(), 26u);  // ULID
  EXPECT_EQ(reg->key(), "/services/world/" + reg->instance_id());
  EXPECT_EQ(LeaseOf(reg->key()), reg->lease_id());
  auto value = Get(reg->key());
  ASSERT_TRUE(value.ok());
  auto v = nlohmann::json::parse(*value);
  EXPECT_EQ(v["instanceId"], reg->instance_id());
  EXPECT_EQ(v["type"], "world");
  EXPECT_EQ(v["group"], "kr-1");
  EXPECT_EQ(v["status"], "initializing");
  EXPECT_EQ(v["ports"]["grpc"], 50051);
  EXPECT_TRUE(v.contains("startedAt"));
  EXPECT_TRUE(WaitUntil([&] { return log_.Count(RegistrationEventType::kRegistered) == 1; },
                        absl::Seconds(2)));
}

TEST_P(RegistrarTest, StatusTransitionsAndDuplicateIds) {
  Start();
  auto reg = registrar_->Register(World("srv-1"), {.ttl = absl::Seconds(3)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  int64_t lease = reg->lease_id();
  EXPECT_TRUE(reg->SetStatus(InstanceStatus::kReady, "lobby").ok());
  auto v = nlohmann::json::parse(*Get(reg->key()));
  EXPECT_EQ(v["status"], "ready");
  EXPECT_EQ(v["customState"], "lobby");
  EXPECT_EQ(LeaseOf(reg->key()), lease);  // same lease after the update
  // ready -> initializing is not allowed; the stored value is unchanged.
  absl::Status bad = reg->SetStatus(InstanceStatus::kInitializing);
  EXPECT_TRUE(absl::IsInvalidArgument(bad)) << bad;
  EXPECT_EQ(nlohmann::json::parse(*Get(reg->key()))["status"], "ready");
  EXPECT_TRUE(reg->SetStatus(InstanceStatus::kError).ok());
  EXPECT_TRUE(reg->SetStatus(InstanceStatus::kReady).ok());
  EXPECT_TRUE(reg->UpdateMetadata({{"map", "forest"}}).ok());
  EXPECT_EQ(nlohmann::json::parse(*Get(reg->key()))["meta"]["map"], "forest");

  // The same id again: refused, from this registrar and from another one.
  EXPECT_TRUE(absl::IsAlreadyExists(registrar_->Register(World("srv-1")).status()));
  auto other = Registrar::Create({.connection = conn_});
  ASSERT_TRUE(other.ok());
  auto dup = (*other)->Register(World("srv-1"));
  EXPECT_TRUE(absl::IsAlreadyExists(dup.status())) << dup.status();
  EXPECT_EQ(LeaseOf(reg->key()), lease);  // not overwritten
  // Invalid names are refused before touching etcd.
  Instance badname = World();
  badname.type = "bad/type";
  EXPECT_TRUE(absl::IsInvalidArgument(registrar_->Register(badname).status()));
}

TEST_P(RegistrarTest, PerformanceWritesAreCoalesced) {
  Start();
  auto reg = registrar_->Register(World(), {.ttl = absl::Seconds(3)});
  ASSERT_TRUE(reg.ok());
  const int64_t v0 = store_->Versions(reg->key());
  ASSERT_GE(v0, 1);
  const absl::Time start = util::MonoNow();
  for (int i = 0; i < 200; ++i) ASSERT_TRUE(reg->UpdatePerformance({{"tps", i}}).ok());
  // The last value arrives...
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto v = Get(reg->key());
        return v.ok() && nlohmann::json::parse(*v)["performance"]["tps"] == 199;
      },
      absl::Seconds(3)));
  const absl::Duration took = util::MonoNow() - start;
  // ...with at most one write per elapsed second (+1 for the first immediate write).
  const int64_t writes = store_->Versions(reg->key()) - v0;
  EXPECT_LE(writes, 1 + absl::ToInt64Seconds(took) + 1);
  EXPECT_GE(writes, 1);
  EXPECT_TRUE(absl::IsInvalidArgument(reg->UpdatePerformance(nlohmann::json::array())));
}

TEST_P(RegistrarTest, KeepsAnOperatorsStatusChange) {
  Start();
  auto reg = registrar_->Register(World(), {.ttl = absl::Seconds(5)});
  ASSERT_TRUE(reg.ok());
  ASSERT_TRUE(reg->SetStatus(InstanceStatus::kReady).ok());
  // An operator (discoveryctl set-status, discoveryd PATCH) rewrites the value, same lease.
  Instance theirs = reg->instance();
  theirs.status = InstanceStatus::kError;
  theirs.custom_state = "maintenance";
  ASSERT_TRUE(store_->Put(reg->key(), EncodeInstance(theirs), reg->lease_id()).ok());
  // The game server's next background write keeps the operator's status...
  ASSERT_TRUE(reg->UpdatePerformance({{"tps", 42}}).ok());
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto v = nlohmann::json::parse(*Get(reg->key()));
        return v["performance"]["tps"] == 42;
      },
      absl::Seconds(3)));
  auto v = nlohmann::json::parse(*Get(reg->key()));
  EXPECT_EQ(v["status"], "error");
  EXPECT_EQ(v["customState"], "maintenance");
  EXPECT_EQ(reg->instance().status, InstanceStatus::kError);
  // ...until the game server changes its status itself.
  ASSERT_TRUE(reg->SetStatus(InstanceStatus::kReady, "open").ok());
  v = nlohmann::json::parse(*Get(reg->key()));
  EXPECT_EQ(v["status"], "ready");
  EXPECT_EQ(v["customState"], "open");
  EXPECT_EQ(LeaseOf(reg->key()), reg->lease_id());
}

TEST_P(RegistrarTest, GracefulCloseRemovesKeyAndLeaseAtOnce) {
  Start();
  auto reg = registrar_->Register(World(), {.ttl = absl::Seconds(10)});
  ASSERT_TRUE(reg.ok());
  std::string key = reg->key();
  int64_t lease = reg->lease_id();
  EXPECT_TRUE(store_->LeaseExists(lease));
  const absl::Time start = util::MonoNow();
  EXPECT_TRUE(reg->Close().ok());
  EXPECT_FALSE(KeyExists(key));
  EXPECT_LT(util::MonoNow() - start, absl::Seconds(1));
  EXPECT_FALSE(store_->LeaseExists(lease));
  EXPECT_TRUE(reg->closed());
  EXPECT_EQ(registrar_->size(), 0u);
  EXPECT_TRUE(absl::IsFailedPrecondition(reg->SetStatus(InstanceStatus::kReady)));
}

TEST_P(RegistrarTest, DrainShowsShuttingDownBeforeRevoke) {
  Start();
  auto reg = registrar_->Register(World(), {.ttl = absl::Seconds(10)});
  ASSERT_TRUE(reg.ok());
  ASSERT_TRUE(reg->SetStatus(InstanceStatus::kReady).ok());
  std::string key = reg->key();
  std::thread closer([&] { (void)reg->Close(TimeScale(absl::Milliseconds(1500))); });
  EXPECT_TRUE(WaitUntil(
      [&] {
        auto v = Get(key);
        return v.ok() && !v->empty() && nlohmann::json::parse(*v)["status"] == "shutting_down";
      },
      absl::Seconds(1)));
  closer.join();
  EXPECT_FALSE(KeyExists(key));
}

TEST_P(RegistrarTest, KilledProcessDisappearsAfterTtl) {
  Start();
  auto child = SpawnGameServer({"--ttl", "2", "--type", "world"});
  ASSERT_NE(child, nullptr);
  auto id = child->ReadLine(absl::Seconds(10));
  ASSERT_TRUE(id.has_value()) << child->ReadStderr();
  std::string key = "/services/world/" + *id;
  ASSERT_TRUE(WaitUntil([&] { return KeyExists(key); }, absl::Seconds(5)));
  const absl::Time killed = util::MonoNow();
  ASSERT_TRUE(child->Signal(SIGKILL).ok());
  // etcd: at the TTL; Redis: at the next reaper run after it (0.5 s, the store view's watcher).
  ASSERT_TRUE(WaitUntil([&] { return !KeyExists(key); }, absl::Seconds(3 + 1)));
  // Not before the TTL could have run out (keepalive kept it until the kill).
  EXPECT_GT(util::MonoNow() - killed, absl::Seconds(1));
}

TEST_P(RegistrarTest, SigtermDeregistersGracefully) {
  Start();
  auto child = SpawnGameServer({"--ttl", "10"});
  ASSERT_NE(child, nullptr);
  auto id = child->ReadLine(absl::Seconds(10));
  ASSERT_TRUE(id.has_value()) << child->ReadStderr();
  std::string key = "/services/world/" + *id;
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto v = Get(key);
        return v.ok() && !v->empty() && nlohmann::json::parse(*v)["status"] == "ready";
      },
      absl::Seconds(5)));
  ASSERT_TRUE(child->Signal(SIGTERM).ok());
  auto rc = child->Wait(absl::Seconds(5));
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(*rc, 0) << child->ReadStderr();
  EXPECT_FALSE(KeyExists(key));  // gone at once, not after the 10 s TTL
}

TEST_P(RegistrarTest, ReRegistersAfterTheStoreLosesItsData) {
  Start();
  auto reg = registrar_->Register(World("phoenix"), {.ttl = absl::Seconds(2)});
  ASSERT_TRUE(reg.ok());
  ASSERT_TRUE(reg->SetStatus(InstanceStatus::kReady, "open").ok());
  int64_t old_lease = reg->lease_id();
  // etcd: wiped and restarted (a new cluster); Redis: restarted without persistence.
  ASSERT_TRUE(store_->LoseAllData().ok());
  const absl::Time restarted = util::MonoNow();
  ASSERT_TRUE(WaitUntil([&] { return KeyExists(reg->key()); }, absl::Seconds(2 + 2)))
      << "not re-registered within TTL + 2 s";
  EXPECT_LE(util::MonoNow() - restarted, TimeScale(absl::Seconds(4)));
  auto v = nlohmann::json::parse(*Get(reg->key()));
  EXPECT_EQ(v["instanceId"], "phoenix");
  EXPECT_EQ(v["status"], "ready");
  EXPECT_EQ(v["customState"], "open");
  EXPECT_TRUE(WaitUntil([&] { return log_.Count(RegistrationEventType::kReRegistered) == 1; },
                        absl::Seconds(2)));
  EXPECT_GE(log_.Count(RegistrationEventType::kLeaseLost), 1);
  EXPECT_NE(reg->lease_id(), old_lease);
  EXPECT_EQ(LeaseOf(reg->key()), reg->lease_id());
}

TEST_P(RegistrarTest, LeaseAtRiskWhenTheStoreFreezes) {
  Start();
  auto reg = registrar_->Register(World(), {.ttl = absl::Seconds(3)});
  ASSERT_TRUE(reg.ok());
  ASSERT_TRUE(store_->Freeze().ok());  // SIGSTOP
  EXPECT_TRUE(WaitUntil([&] { return log_.Count(RegistrationEventType::kLeaseAtRisk) >= 1; },
                        absl::Seconds(4)));
  ASSERT_TRUE(store_->Thaw().ok());
  // The lease survives a freeze shorter than its TTL... or is re-registered if it did not;
  // either way the key is back and healthy.
  EXPECT_TRUE(WaitUntil([&] { return KeyExists(reg->key()); }, absl::Seconds(6)));
}

TEST_F(RegistrarEtcdTest, LeaderKillLosesNothingInAThreeNodeCluster) {
  Start(3);
  std::vector<Registration> regs;
  std::map<std::string, int64_t> leases;
  for (int i = 0; i < 20; ++i) {
    auto reg = registrar_->Register(World(), {.ttl = absl::Seconds(2)});
    ASSERT_TRUE(reg.ok()) << reg.status();
    leases[reg->key()] = reg->lease_id();
    regs.push_back(*std::move(reg));
  }
  auto leader = store_->etcd()->LeaderIndex();
  ASSERT_TRUE(leader.ok());
  ASSERT_TRUE(store_->etcd()->Kill(*leader).ok());
  // Over 3 TTLs every key stays, with the same lease (never re-created).
  const absl::Time until = util::MonoNow() + absl::Seconds(6);
  while (util::MonoNow() < until) {
    for (auto& [key, lease] : leases) {
      ASSERT_EQ(LeaseOf(key), lease) << key << " lost or re-created";
    }
    absl::SleepFor(absl::Milliseconds(300));
  }
  EXPECT_EQ(log_.Count(RegistrationEventType::kLeaseLost), 0);
  EXPECT_EQ(log_.Count(RegistrationEventType::kReRegistered), 0);
}

TEST_F(RegistrarEtcdTest, ThousandRegistrationsShareOneKeepAliveStream) {
  Start();
  std::vector<Registration> regs;
  regs.reserve(1000);
  for (int i = 0; i < 1000; ++i) {
    auto reg = registrar_->Register(World(), {.ttl = absl::Seconds(2)});
    ASSERT_TRUE(reg.ok()) << reg.status();
    regs.push_back(*std::move(reg));
  }
  EXPECT_EQ(conn_->keepalive_streams(), 1);
  EXPECT_EQ(conn_->client()->keeper().lease_count(), 1000u);
  // Three TTLs later all are still there with their original leases.
  absl::SleepFor(absl::Seconds(6));
  pb::RangeRequest rr;
  rr.set_key("/services/world/");
  rr.set_range_end("/services/world0");
  auto r = conn_->client()->Range(rr);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kvs_size(), 1000);
  std::set<int64_t> live;
  for (const auto& kv : r->kvs()) live.insert(kv.lease());
  for (auto& reg : regs) EXPECT_EQ(live.count(reg.lease_id()), 1u);
  EXPECT_EQ(conn_->keepalive_streams(), 1);
  EXPECT_EQ(log_.Count(RegistrationEventType::kLeaseLost), 0);
  // Shutting all down revokes every lease.
  registrar_->ShutdownAll();
  r = conn_->client()->Range(rr);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kvs_size(), 0);
}

INSTANTIATE_TEST_SUITE_P(Stores, RegistrarTest,
                         ::testing::Values(StoreKind::kEtcd, StoreKind::kRedis),
                         testing::StoreName);

}  // namespace
}  // namespace discovery
