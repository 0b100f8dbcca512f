// Small lifetime races (label etcd, real etcd):
//  - Close() racing the re-registration that follows a lost lease leaves no lease of that
//    registration in the shared LeaseKeeper;
//  - a ChannelPool destroyed from inside a watcher callback on the library thread is not
//    called into afterwards (the watcher had already picked the pool's callback for the same
//    event), and the watcher keeps delivering events.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>

#include "discovery/channel_pool.h"
#include "discovery/registrar.h"
#include "discovery/watcher.h"
#include "etcd/client.h"
#include "etcd/lease_keeper.h"
#include "etcd_harness.h"

namespace discovery {
namespace {

using testing::EtcdCluster;
using testing::WaitUntil;

namespace pb = ::etcdserverpb;

Instance World(const std::string& id, int grpc_port = 0) {
  Instance in;
  in.instance_id = id;
  in.type = "world";
  in.group = "kr-1";
  in.hostname = "game-01";
  in.private_ip = "127.0.0.1";
  in.ports["game"] = 8001;
  if (grpc_port > 0) in.ports["grpc"] = grpc_port;
  return in;
}

class LifetimeRacesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto c = EtcdCluster::Start({.members = 1});
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
    etcd_.endpoints = cluster_->ClientEndpoints();
  }
  std::unique_ptr<EtcdCluster> cluster_;
  EtcdOptions etcd_;
};

// Each round: the lease is revoked behind the registrar's back, the keeper reports it lost,
// re-registration starts on the background thread, and Close() runs at once (woken by the
// kLeaseLost event, not by polling, so it meets the re-registration mid-way). When Close()
// returns and the re-registration task has finished, the keeper tracks nothing.
TEST_F(LifetimeRacesTest, CloseRacingReRegistrationLeavesNoLeaseInTheKeeper) {
  std::mutex mu;
  std::condition_variable cv;
  int lost = 0;  // guarded by mu
  RegistrarOptions ro;
  ro.etcd = etcd_;
  ro.on_event = [&](const RegistrationEvent& ev) {
    if (ev.type != RegistrationEventType::kLeaseLost) return;
    std::lock_guard<std::mutex> lock(mu);
    ++lost;
    cv.notify_all();
  };
  auto registrar = Registrar::Create(ro);
  ASSERT_TRUE(registrar.ok()) << registrar.status();
  etcd::Client& client = *(*registrar)->connection()->client();

  constexpr int kRounds = 100;
  int leaked_rounds = 0;
  for (int round = 0; round < kRounds; ++round) {
    auto reg = (*registrar)
                   ->Register(World(NewUlid()), {.ttl = absl::Seconds(5),
                                                 .keepalive_interval = absl::Milliseconds(100)});
    ASSERT_TRUE(reg.ok()) << reg.status();
    pb::LeaseRevokeRequest revoke;
    revoke.set_id(reg->lease_id());
    ASSERT_TRUE(client.LeaseRevoke(revoke).ok());
    {
      std::unique_lock<std::mutex> lock(mu);
      ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return lost > round; }))
          << "round " << round << ": the lost lease was not reported";
    }
    EXPECT_TRUE(reg->Close().ok());
    client.background().RunSync([] {});  // a re-registration still running has finished
    size_t tracked = client.keeper().lease_count();
    if (tracked != 0) ++leaked_rounds;
    EXPECT_EQ(tracked, 0u) << "round " << round << ": a lease of a closed registration is kept";
  }
  EXPECT_EQ(leaked_rounds, 0);
  EXPECT_EQ((*registrar)->size(), 0u);
}

// The first subscription (older, so it runs first for each event) destroys the pool when it
// sees instance "...KILL"; the watcher had already picked the pool's own subscription for that
// event. Then more events flow and the watcher keeps working.
TEST_F(LifetimeRacesTest, ChannelPoolDestroyedFromAWatcherCallback) {
  auto conn = Connection::Create(etcd_);
  ASSERT_TRUE(conn.ok()) << conn.status();
  auto watcher = Watcher::Create({.connection = *conn});
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  ASSERT_TRUE((*watcher)->WaitForSync(absl::Seconds(10)).ok());
  auto registrar = Registrar::Create({.connection = *conn});
  ASSERT_TRUE(registrar.ok()) << registrar.status();

  const std::string kill_id = "01JCYFZQ7D4NB4MZ5S6Z6NKILL";
  std::mutex mu;
  std::unique_ptr<ChannelPool> pool;  // guarded by mu
  std::atomic<int> seen{0};
  std::atomic<bool> destroyed{false};
  Subscription first = (*watcher)->Subscribe({.type = "world"}, [&](const ChangeEvent& ev) {
    if (ev.instance->instance_id == kill_id && ev.type == ChangeType::kAdded) {
      std::lock_guard<std::mutex> lock(mu);
      pool.reset();  // from inside the watcher's dispatch of this very event
      destroyed = true;
    }
    ++seen;
  });
  {
    std::lock_guard<std::mutex> lock(mu);
    auto p = ChannelPool::Create(**watcher, {.type = "world", .port_name = "grpc"});
    ASSERT_TRUE(p.ok()) << p.status();
    pool = *std::move(p);
  }
  std::vector<Registration> regs;
  auto a = (*registrar)->Register(World(NewUlid(), 50051));
  ASSERT_TRUE(a.ok()) << a.status();
  regs.push_back(*std::move(a));
  ASSERT_TRUE(WaitUntil(
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        return pool->size() == 1;
      },
      absl::Seconds(10)));

  auto k = (*registrar)->Register(World(kill_id, 50052));
  ASSERT_TRUE(k.ok()) << k.status();
  regs.push_back(*std::move(k));
  ASSERT_TRUE(WaitUntil([&] { return destroyed.load(); }, absl::Seconds(10)));

  // More events after the pool is gone: adds, updates and removes of instances it had channels
  // for and of new ones.
  const int before = seen.load();
  for (int i = 0; i < 5; ++i) {
    auto r = (*registrar)->Register(World(NewUlid(), 50060 + i));
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE(r->SetStatus(InstanceStatus::kReady).ok());
    regs.push_back(*std::move(r));
  }
  for (Registration& r : regs) EXPECT_TRUE(r.Close().ok());
  // 5 adds + 5 updates + 7 removes.
  EXPECT_TRUE(WaitUntil([&] { return seen.load() >= before + 17; }, absl::Seconds(10)))
      << seen.load() - before;
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(pool, nullptr);
}

}  // namespace
}  // namespace discovery
