// Registrar against a real etcd: registration layout, crash and graceful stop, status
// transitions, re-registration after etcd loses its data, leader failover, and 1,000
// registrations over one keepalive stream.
#include "discovery/registrar.h"

#include <gtest/gtest.h>

#include <csignal>
#include <mutex>

#include "absl/strings/str_split.h"
#include "child_process.h"
#include "etcd/client.h"
#include "etcd/lease_keeper.h"
#include "etcd_harness.h"
#include "nlohmann/json.hpp"
#include "registration_event_log.h"

namespace discovery {
namespace {

using testing::EtcdCluster;
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

class RegistrarTest : public ::testing::Test {
 protected:
  void Start(int members = 1) {
    auto c = EtcdCluster::Start({.members = members});
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
    EtcdOptions o;
    o.endpoints = cluster_->ClientEndpoints();
    o.call_timeout = TimeScale(absl::Seconds(3));
    auto conn = Connection::Create(o);
    ASSERT_TRUE(conn.ok());
    conn_ = *conn;
    auto r = Registrar::Create({.connection = conn_, .on_event = log_.Callback()});
    ASSERT_TRUE(r.ok()) << r.status();
    registrar_ = *std::move(r);
  }
  absl::StatusOr<std::string> Get(const std::string& key) {
    return cluster_->Etcdctl({"get", key, "--print-value-only"});
  }
  bool KeyExists(const std::string& key) {
    auto v = Get(key);
    return v.ok() && !v->empty();
  }
  int64_t LeaseOf(const std::string& key) {
    pb::RangeRequest rr;
    rr.set_key(key);
    auto r = conn_->client()->Range(rr);
    if (!r.ok() || r->kvs_size() == 0) return 0;
    return r->kvs(0).lease();
  }

  EventLog log_;
  std::unique_ptr<EtcdCluster> cluster_;
  std::shared_ptr<Connection> conn_;
  std::unique_ptr<Registrar> registrar_;
};

TEST_F(RegistrarTest, RegisterWritesJsonUnderLease) {
  Start();
  auto reg = registrar_->Register(World(), {.ttl = absl::Seconds(3)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  EXPECT_EQ(reg->instance_id().size(), 26u);  // ULID
  EXPECT_EQ(reg->key(), "/services/world/" + reg->instance_id());
  auto out = cluster_->Etcdctl({"get", reg->key(), "-w", "json"});
  ASSERT_TRUE(out.ok()) << out.status();
  auto j = nlohmann::json::parse(*out);
  ASSERT_EQ(j["kvs"].size(), 1u);
  EXPECT_EQ(j["kvs"][0]["lease"].get<int64_t>(), reg->lease_id());
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

TEST_F(RegistrarTest, StatusTransitionsAndDuplicateIds) {
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

TEST_F(RegistrarTest, PerformanceWritesAreCoalesced) {
  Start();
  auto reg = registrar_->Register(World(), {.ttl = absl::Seconds(3)});
  ASSERT_TRUE(reg.ok());
  pb::RangeRequest rr;
  rr.set_key(reg->key());
  int64_t v0 = conn_->client()->Range(rr)->kvs(0).version();
  absl::Time start = absl::Now();
  for (int i = 0; i < 200; ++i) ASSERT_TRUE(reg->UpdatePerformance({{"tps", i}}).ok());
  // The last value arrives...
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto v = Get(reg->key());
        return v.ok() && nlohmann::json::parse(*v)["performance"]["tps"] == 199;
      },
      absl::Seconds(3)));
  absl::Duration took = absl::Now() - start;
  // ...with at most one write per elapsed second (+1 for the first immediate write).
  int64_t writes = conn_->client()->Range(rr)->kvs(0).version() - v0;
  EXPECT_LE(writes, 1 + absl::ToInt64Seconds(took) + 1);
  EXPECT_GE(writes, 1);
  EXPECT_TRUE(absl::IsInvalidArgument(reg->UpdatePerformance(nlohmann::json::array())));
}

TEST_F(RegistrarTest, KeepsAnOperatorsStatusChange) {
  Start();
  auto reg = registrar_->Register(World(), {.ttl = absl::Seconds(5)});
  ASSERT_TRUE(reg.ok());
  ASSERT_TRUE(reg->SetStatus(InstanceStatus::kReady).ok());
  // An operator (discoveryctl set-status, discoveryd PATCH) rewrites the value, same lease.
  Instance theirs = reg->instance();
  theirs.status = InstanceStatus::kError;
  theirs.custom_state = "maintenance";
  pb::PutRequest put;
  put.set_key(reg->key());
  put.set_value(EncodeInstance(theirs));
  put.set_lease(reg->lease_id());
  ASSERT_TRUE(conn_->client()->Put(put).ok());
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

TEST_F(RegistrarTest, GracefulCloseRemovesKeyAndLeaseAtOnce) {
  Start();
  auto reg = registrar_->Register(World(), {.ttl = absl::Seconds(10)});
  ASSERT_TRUE(reg.ok());
  std::string key = reg->key();
  int64_t lease = reg->lease_id();
  absl::Time start = absl::Now();
  EXPECT_TRUE(reg->Close().ok());
  EXPECT_FALSE(KeyExists(key));
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  pb::LeaseTimeToLiveRequest t;
  t.set_id(lease);
  auto ttl = conn_->client()->LeaseTimeToLive(t);
  ASSERT_TRUE(ttl.ok());
  EXPECT_EQ(ttl->ttl(), -1);  // no such lease
  EXPECT_TRUE(reg->closed());
  EXPECT_EQ(registrar_->size(), 0u);
  EXPECT_TRUE(absl::IsFailedPrecondition(reg->SetStatus(InstanceStatus::kReady)));
}

TEST_F(RegistrarTest, DrainShowsShuttingDownBeforeRevoke) {
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

TEST_F(RegistrarTest, KilledProcessDisappearsAfterTtl) {
  Start();
  auto child =
      testing::ChildProcess::Spawn({.argv = {EXAMPLE_GAME_SERVER, "--ttl", "2", "--type", "world"},
                                    .env = {{"ETCD_ENDPOINTS", cluster_->EndpointsCsv()}},
                                    .stdout_to_pipe = true});
  ASSERT_TRUE(child.ok()) << child.status();
  auto id = (*child)->ReadLine(absl::Seconds(10));
  ASSERT_TRUE(id.has_value()) << (*child)->ReadStderr();
  std::string key = "/services/world/" + *id;
  ASSERT_TRUE(WaitUntil([&] { return KeyExists(key); }, absl::Seconds(5)));
  absl::Time killed = absl::Now();
  ASSERT_TRUE((*child)->Signal(SIGKILL).ok());
  ASSERT_TRUE(WaitUntil([&] { return !KeyExists(key); }, absl::Seconds(3 + 1)));
  // Not before the TTL could have run out (keepalive kept it until the kill).
  EXPECT_GT(absl::Now() - killed, absl::Seconds(1));
}

TEST_F(RegistrarTest, SigtermDeregistersGracefully) {
  Start();
  auto child = testing::ChildProcess::Spawn({.argv = {EXAMPLE_GAME_SERVER, "--ttl", "10"},
                                             .env = {{"ETCD_ENDPOINTS", cluster_->EndpointsCsv()}},
                                             .stdout_to_pipe = true});
  ASSERT_TRUE(child.ok());
  auto id = (*child)->ReadLine(absl::Seconds(10));
  ASSERT_TRUE(id.has_value()) << (*child)->ReadStderr();
  std::string key = "/services/world/" + *id;
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto v = Get(key);
        return v.ok() && !v->empty() && nlohmann::json::parse(*v)["status"] == "ready";
      },
      absl::Seconds(5)));
  ASSERT_TRUE((*child)->Signal(SIGTERM).ok());
  auto rc = (*child)->Wait(absl::Seconds(5));
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(*rc, 0) << (*child)->ReadStderr();
  EXPECT_FALSE(KeyExists(key));  // gone at once, not after the 10 s TTL
}

TEST_F(RegistrarTest, ReRegistersAfterEtcdLosesItsData) {
  Start();
  auto reg = registrar_->Register(World("phoenix"), {.ttl = absl::Seconds(2)});
  ASSERT_TRUE(reg.ok());
  ASSERT_TRUE(reg->SetStatus(InstanceStatus::kReady, "open").ok());
  int64_t old_lease = reg->lease_id();
  ASSERT_TRUE(cluster_->WipeAndRestartAll().ok());
  absl::Time restarted = absl::Now();
  ASSERT_TRUE(WaitUntil([&] { return KeyExists(reg->key()); }, absl::Seconds(2 + 2)))
      << "not re-registered within TTL + 2 s";
  EXPECT_LE(absl::Now() - restarted, TimeScale(absl::Seconds(4)));
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

TEST_F(RegistrarTest, LeaseAtRiskWhenEtcdFreezes) {
  Start();
  auto reg = registrar_->Register(World(), {.ttl = absl::Seconds(3)});
  ASSERT_TRUE(reg.ok());
  ASSERT_TRUE(cluster_->Stop(0).ok());
  EXPECT_TRUE(WaitUntil([&] { return log_.Count(RegistrationEventType::kLeaseAtRisk) >= 1; },
                        absl::Seconds(4)));
  ASSERT_TRUE(cluster_->Cont(0).ok());
  // The lease survives a freeze shorter than its TTL... or is re-registered if it did not;
  // either way the key is back and healthy.
  EXPECT_TRUE(WaitUntil([&] { return KeyExists(reg->key()); }, absl::Seconds(6)));
}

TEST_F(RegistrarTest, LeaderKillLosesNothingInAThreeNodeCluster) {
  Start(3);
  std::vector<Registration> regs;
  std::map<std::string, int64_t> leases;
  for (int i = 0; i < 20; ++i) {
    auto reg = registrar_->Register(World(), {.ttl = absl::Seconds(2)});
    ASSERT_TRUE(reg.ok()) << reg.status();
    leases[reg->key()] = reg->lease_id();
    regs.push_back(*std::move(reg));
  }
  auto leader = cluster_->LeaderIndex();
  ASSERT_TRUE(leader.ok());
  ASSERT_TRUE(cluster_->Kill(*leader).ok());
  // Over 3 TTLs every key stays, with the same lease (never re-created).
  absl::Time until = absl::Now() + absl::Seconds(6);
  while (absl::Now() < until) {
    for (auto& [key, lease] : leases) {
      ASSERT_EQ(LeaseOf(key), lease) << key << " lost or re-created";
    }
    absl::SleepFor(absl::Milliseconds(300));
  }
  EXPECT_EQ(log_.Count(RegistrationEventType::kLeaseLost), 0);
  EXPECT_EQ(log_.Count(RegistrationEventType::kReRegistered), 0);
}

TEST_F(RegistrarTest, ThousandRegistrationsShareOneKeepAliveStream) {
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

}  // namespace
}  // namespace discovery
