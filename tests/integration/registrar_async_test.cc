// Registrar::RegisterAsync and RegisterMany against a real etcd: happy path, where `done`
// runs, duplicates within a batch and against etcd, validation errors per element, a batch of
// 500 kept alive on 500 leases, etcd killed mid-batch, and a batch after the auth token expired.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <thread>

#include "discovery/registrar.h"
#include "etcd/client.h"
#include "etcd/lease_keeper.h"
#include "etcd_harness.h"
#include "util/clock.h"

namespace discovery {
namespace {

using testing::EtcdCluster;
using testing::EtcdClusterOptions;
using testing::TimeScale;
using testing::WaitUntil;
namespace pb = ::etcdserverpb;

Instance World(const std::string& id = "") {
  Instance in;
  in.instance_id = id;
  in.type = "world";
  in.group = "kr-1";
  in.hostname = "game-01";
  in.ports = {{"game", 8001}};
  return in;
}

class RegistrarAsyncTest : public ::testing::Test {
 protected:
  void Start(EtcdClusterOptions cluster = {}, std::string user = "", std::string password = "") {
    auto c = EtcdCluster::Start(cluster);
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
    if (!user.empty()) {
      ASSERT_TRUE(cluster_->EnableAuthWithUser("rootpw", user, password, {"/services/"}).ok());
    }
    Connect(user, password);
  }
  void Connect(std::string user = "", std::string password = "") {
    EtcdOptions o;
    o.endpoints = cluster_->ClientEndpoints();
    o.call_timeout = TimeScale(absl::Seconds(2));
    o.user = user;
    o.password = password;
    auto conn = Connection::Create(o);
    ASSERT_TRUE(conn.ok());
    conn_ = *conn;
    auto r =
        Registrar::Create({.connection = conn_, .on_event = [this](const RegistrationEvent& ev) {
                             if (ev.type == RegistrationEventType::kRegistered) ++registered_;
                           }});
    ASSERT_TRUE(r.ok()) << r.status();
    registrar_ = *std::move(r);
  }
  int64_t LeaseOf(const std::string& key) {
    pb::RangeRequest rr;
    rr.set_key(key);
    auto r = conn_->client()->Range(rr);
    if (!r.ok() || r->kvs_size() == 0) return 0;
    return r->kvs(0).lease();
  }

  std::atomic<int> registered_{0};
  std::unique_ptr<EtcdCluster> cluster_;
  std::shared_ptr<Connection> conn_;
  std::unique_ptr<Registrar> registrar_;
};

// Waits for one RegisterAsync result; records the thread `done` ran on.
struct AsyncResult {
  std::mutex mu;
  std::optional<absl::StatusOr<Registration>> result;
  std::thread::id thread;
  std::function<void(absl::StatusOr<Registration>)> Callback() {
    return [this](absl::StatusOr<Registration> r) {
      std::lock_guard lock(mu);
      thread = std::this_thread::get_id();
      result.emplace(std::move(r));
    };
  }
  bool Wait() {
    return WaitUntil(
        [&] {
          std::lock_guard lock(mu);
          return result.has_value();
        },
        absl::Seconds(10));
  }
};

TEST_F(RegistrarAsyncTest, RegisterAsyncPutsTheKeyUnderItsOwnLease) {
  Start();
  AsyncResult a;
  registrar_->RegisterAsync(World("srv-1"), {.ttl = absl::Seconds(3)}, a.Callback());
  ASSERT_TRUE(a.Wait());
  ASSERT_TRUE(a.result->ok()) << a.result->status();
  EXPECT_NE(a.thread, std::this_thread::get_id());
  Registration& reg = **a.result;
  EXPECT_EQ(reg.key(), "/services/world/srv-1");
  EXPECT_NE(reg.lease_id(), 0);
  EXPECT_EQ(LeaseOf(reg.key()), reg.lease_id());
  EXPECT_EQ(registrar_->size(), 1u);
  EXPECT_TRUE(WaitUntil([&] { return registered_.load() == 1; }, absl::Seconds(2)));
  EXPECT_TRUE(
      WaitUntil([&] { return conn_->client()->keeper().lease_count() == 1; }, absl::Seconds(2)));
  // The same id again: kAlreadyExists (here), not inline.
  AsyncResult b;
  registrar_->RegisterAsync(World("srv-1"), {}, b.Callback());
  ASSERT_TRUE(b.Wait());
  EXPECT_EQ(b.result->status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(b.thread, std::this_thread::get_id());
  EXPECT_TRUE(reg.Close().ok());
  EXPECT_EQ(LeaseOf("/services/world/srv-1"), 0);
}

TEST_F(RegistrarAsyncTest, RegisterAsyncErrorsAreNeverInline) {
  Start();
  Instance bad = World();
  bad.type = "no spaces";
  AsyncResult a;
  registrar_->RegisterAsync(bad, {}, a.Callback());
  ASSERT_TRUE(a.Wait());
  EXPECT_EQ(a.result->status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(a.thread, std::this_thread::get_id());
  // A key another process holds: kAlreadyExists, and our lease is revoked again.
  ASSERT_TRUE(cluster_->Etcdctl({"put", "/services/world/taken", "{}"}).ok());
  auto before = conn_->client()->LeaseLeases();
  ASSERT_TRUE(before.ok());
  AsyncResult b;
  registrar_->RegisterAsync(World("taken"), {}, b.Callback());
  ASSERT_TRUE(b.Wait());
  EXPECT_EQ(b.result->status().code(), absl::StatusCode::kAlreadyExists);
  auto after = conn_->client()->LeaseLeases();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->leases_size(), before->leases_size());
}

TEST_F(RegistrarAsyncTest, RegisterManyResultsAreInInputOrderAndIndependent) {
  Start();
  ASSERT_TRUE(cluster_->Etcdctl({"put", "/services/world/in-etcd", "{}"}).ok());
  std::vector<Instance> batch;
  batch.push_back(World("a"));
  batch.push_back(World("twice"));
  Instance bad = World("bad");
  bad.group = "";
  bad.type = "bad type";
  batch.push_back(bad);
  batch.push_back(World("twice"));
  batch.push_back(World("in-etcd"));
  batch.push_back(World());  // id generated
  auto results = registrar_->RegisterMany(std::move(batch), {.ttl = absl::Seconds(3)});
  ASSERT_EQ(results.size(), 6u);
  ASSERT_TRUE(results[0].ok()) << results[0].status();
  EXPECT_EQ(results[0]->instance_id(), "a");
  ASSERT_TRUE(results[1].ok()) << results[1].status();
  EXPECT_EQ(results[1]->instance_id(), "twice");
  EXPECT_EQ(results[2].status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(results[3].status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(results[4].status().code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(results[5].ok()) << results[5].status();
  EXPECT_EQ(results[5]->instance_id().size(), 26u);
  EXPECT_EQ(registrar_->size(), 3u);
  for (int i : {0, 1, 5}) EXPECT_EQ(LeaseOf(results[i]->key()), results[i]->lease_id());
  // Ids registered by this registrar already fail again, alone.
  auto again = registrar_->RegisterMany({World("a"), World("b")});
  ASSERT_EQ(again.size(), 2u);
  EXPECT_EQ(again[0].status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(again[1].ok()) << again[1].status();
  EXPECT_TRUE(registrar_->RegisterMany({}).empty());
}

TEST_F(RegistrarAsyncTest, BatchOfFiveHundredIsKeptAliveOnOwnLeases) {
  Start();
  std::vector<Instance> batch(500, World());
  auto results = registrar_->RegisterMany(std::move(batch), {.ttl = TimeScale(absl::Seconds(2))});
  ASSERT_EQ(results.size(), 500u);
  std::set<int64_t> leases;
  for (auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.status();
    leases.insert(r->lease_id());
  }
  EXPECT_EQ(leases.size(), 500u);
  EXPECT_TRUE(
      WaitUntil([&] { return conn_->client()->keeper().lease_count() == 500u; }, absl::Seconds(5)));
  EXPECT_EQ(conn_->keepalive_streams(), 1);
  // For three TTLs every key stays (checked all along): the 2 s leases would have expired
  // twice over without keepalives.
  pb::RangeRequest count;
  count.set_key("/services/world/");
  count.set_range_end("/services/world0");
  count.set_count_only(true);
  int64_t fewest = 500;
  const absl::Time until = util::MonoNow() + TimeScale(absl::Seconds(6));
  EXPECT_TRUE(WaitUntil(
      [&] {
        auto c = conn_->client()->Range(count);
        if (c.ok()) fewest = std::min<int64_t>(fewest, c->count());
        return util::MonoNow() >= until;
      },
      absl::Seconds(10)));
  EXPECT_EQ(fewest, 500);
  pb::RangeRequest rr;
  rr.set_key("/services/world/");
  rr.set_range_end("/services/world0");
  auto r = conn_->client()->Range(rr);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kvs_size(), 500);
  for (const auto& kv : r->kvs()) EXPECT_EQ(leases.count(kv.lease()), 1u);
  registrar_->ShutdownAll();
  r = conn_->client()->Range(rr);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kvs_size(), 0);
}

TEST_F(RegistrarAsyncTest, EtcdKilledMidBatchGivesErrorsNotAHang) {
  Start();
  std::vector<Instance> batch(2000, World());
  std::atomic<bool> returned{false};
  std::vector<absl::StatusOr<Registration>> results;
  std::thread t([&] {
    results = registrar_->RegisterMany(batch, {.ttl = absl::Seconds(5)});
    returned = true;
  });
  ASSERT_TRUE(
      WaitUntil([&] { return registrar_->size() >= 50 || returned.load(); }, absl::Seconds(20)));
  ASSERT_TRUE(cluster_->Kill(0).ok());
  // The elements in flight end within their 2 s call timeout; the rest are not attempted.
  const absl::Time killed = util::MonoNow();
  EXPECT_TRUE(WaitUntil([&] { return returned.load(); }, absl::Seconds(30)));
  EXPECT_LT(util::MonoNow() - killed, TimeScale(absl::Seconds(8)));
  t.join();
  ASSERT_EQ(results.size(), 2000u);
  int ok = 0, unavailable = 0;
  for (auto& r : results) {
    if (r.ok()) {
      ++ok;
    } else if (absl::IsUnavailable(r.status())) {
      ++unavailable;
    } else {
      ADD_FAILURE() << r.status();
    }
  }
  EXPECT_GE(ok, 50);
  EXPECT_GT(unavailable, 0);
  EXPECT_EQ(static_cast<size_t>(ok), registrar_->size());
  // Back up before the registrations are closed (each close would wait its call timeout).
  ASSERT_TRUE(cluster_->Restart(0).ok());
  results.clear();
}

TEST_F(RegistrarAsyncTest, RegisterManyWithAuthAfterTheTokenExpired) {
  Start({.extra_args = {"--auth-token-ttl", "3"}}, "svc", "secret");
  auto first = registrar_->Register(World("first"));
  ASSERT_TRUE(first.ok()) << first.status();
  const int64_t refreshes = conn_->client()->token_refreshes();
  // Wait until etcd rejects the token the client holds (idle > TTL).
  etcd::Client& client = *conn_->client();
  ASSERT_TRUE(WaitUntil(
      [&] {
        grpc::ClientContext ctx;
        client.PrepareContext(&ctx, util::MonoNow() + absl::Seconds(2));
        pb::RangeRequest rr;
        rr.set_key("/services/world/first");
        pb::RangeResponse resp;
        grpc::Status s = client.CurrentStubs(nullptr)->kv->Range(&ctx, rr, &resp);
        return !s.ok() && etcd::IsAuthRefusal(s.error_code(), s.error_message());
      },
      absl::Seconds(15),
      // Every probe uses the token (restarting its idle TTL): probe less often than it lasts.
      absl::Milliseconds(4500)));
  std::vector<Instance> batch(100, World());
  auto results = registrar_->RegisterMany(std::move(batch));
  ASSERT_EQ(results.size(), 100u);
  for (auto& r : results) EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_GT(client.token_refreshes(), refreshes);
  EXPECT_EQ(registrar_->size(), 101u);
}

}  // namespace
}  // namespace discovery
