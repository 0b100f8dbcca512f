// The watcher truth suite and the registrar suite (issues 16 and 17), run from ONE
// parameterised suite in every mode: direct (gRPC to etcd), gateway (through a discoveryd
// process in front of etcd) and Redis (the Redis backend). The code under test is the same
// Registrar and Watcher; only the Connection differs (mode_fixture.h). The store is the truth,
// read directly (store_view.h). Direct and Gateway carry the label etcd, Redis the label redis.
#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "mode_fixture.h"
#include "registration_event_log.h"
#include "util/clock.h"

namespace discovery::testing {
namespace {

using EventLog = ::discovery::testing::RegistrationEventLog;

using BothModesTest = ModeTest;

// Random ops from several registrars (register, status change, close), a registrar process
// SIGKILLed and keys on a lease nobody keeps alive: the watcher's cache ends equal to the store,
// and its event log, replayed from the first snapshot, gives the same set (nothing lost,
// nothing delivered twice).
TEST_P(BothModesTest, WatcherCacheEqualsStoreAfterRandomOpsAndExpiry) {
  // Some state before the watcher starts: its first snapshot is not empty.
  auto pre = Registrar::Create({.connection = Conn()});
  ASSERT_TRUE(pre.ok()) << pre.status();
  std::vector<Registration> before;
  for (int i = 0; i < 5; ++i) {
    auto r = (*pre)->Register(Make("lobby", "g0", absl::StrCat("pre", i)));
    ASSERT_TRUE(r.ok()) << r.status();
    before.push_back(*std::move(r));
  }
  // A registrar process with 5 instances on a 2 s TTL: SIGKILLed below, its keys expire.
  auto child = SpawnGameServer({"--ttl", "2", "--count", "5", "--id", "victim"});
  ASSERT_NE(child, nullptr);
  ASSERT_TRUE(WaitUntil([&] { return InStore("/services/world/victim-4"); }, absl::Seconds(10)))
      << child->ReadStderr();
  auto w = NewWatcher();
  ASSERT_NE(w, nullptr);
  EventRecorder rec;
  auto sub = w->Subscribe({}, rec.Callback(), /*initial=*/true);

  constexpr int kRegistrars = 3;
  std::vector<std::unique_ptr<Registrar>> regs;
  for (int i = 0; i < kRegistrars; ++i) {
    auto r = Registrar::Create({.connection = Conn()});
    ASSERT_TRUE(r.ok()) << r.status();
    regs.push_back(*std::move(r));
  }
  std::mutex survivors_mu;
  std::vector<Registration> survivors;
  std::atomic<int> ops{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kRegistrars; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::vector<Registration> live;
      while (ops.fetch_add(1) < 450) {
        const int op = static_cast<int>(rng() % 10);
        if (live.empty() || op < 4) {
          auto r =
              regs[t]->Register(Make(rng() % 2 ? "world" : "lobby", absl::StrCat("g", rng() % 3)),
                                {.ttl = absl::Seconds(3)});
          if (r.ok()) {
            live.push_back(*std::move(r));
          } else {
            failed.fetch_add(1);
          }
        } else if (op < 8) {
          auto& r = live[rng() % live.size()];
          if (!r.SetStatus(rng() % 2 ? InstanceStatus::kReady : InstanceStatus::kError,
                           absl::StrCat("s", rng() % 5))
                   .ok()) {
            failed.fetch_add(1);
          }
        } else {
          const size_t i = rng() % live.size();
          if (!live[i].Close().ok()) failed.fetch_add(1);
          live.erase(live.begin() + static_cast<long>(i));
        }
      }
      for (auto& r : live) (void)r.SetStatus(InstanceStatus::kReady);
      if (t == 0) live.clear();  // thread 0 deregisters all of its own
      std::lock_guard<std::mutex> lock(survivors_mu);
      for (auto& r : live) survivors.push_back(std::move(r));
    });
  }
  // The process dies in the middle of the churn.
  ASSERT_TRUE(child->Signal(SIGKILL).ok());
  for (auto& th : threads) th.join();
  EXPECT_EQ(failed.load(), 0);
  // Lease expiry of keys written behind everyone's back: 10 keys on a 1 s lease.
  auto lease = store_->Grant(absl::Seconds(1));
  ASSERT_TRUE(lease.ok()) << lease.status();
  for (int i = 0; i < 10; ++i) {
    Instance in = Make("world", "exp", absl::StrCat("exp", i));
    ASSERT_TRUE(store_->Put("/services/world/" + in.instance_id, EncodeInstance(in), *lease).ok());
  }
  ASSERT_TRUE(
      WaitUntil([&] { return w->snapshot()->Find("world", "exp9") != nullptr; }, absl::Seconds(5)));
  // Both expiries reach the cache: the killed process's keys (2 s TTL; in gateway mode
  // discoveryd keeps a lease at most one more TTL after the last heartbeat) and the 1 s lease.
  // Every key is checked: each of the victim's 5 registrations has its own lease, and etcd's
  // expiry pass (every 500 ms) can take victim-0 in one pass and victim-4 in the next; waiting
  // on victim-0 alone made the size check below flaky (CI, once).
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto s = w->snapshot();
        for (int i = 0; i < 10; ++i) {
          if (s->Find("world", absl::StrCat("exp", i)) != nullptr) return false;
        }
        for (int i = 0; i < 5; ++i) {
          if (s->Find("world", absl::StrCat("victim-", i)) != nullptr) return false;
        }
        return true;
      },
      absl::Seconds(8)));
  std::string diff;
  EXPECT_TRUE(WaitUntil([&] { return CacheEqualsStore(*store_, *w, &diff); }, absl::Seconds(5)))
      << diff;
  EXPECT_EQ(w->snapshot()->size(), survivors.size() + before.size());
  std::vector<std::string> errors;
  auto replay = rec.Replay(&errors);
  EXPECT_TRUE(errors.empty()) << errors.size() << " errors, first: " << errors.front();
  EXPECT_EQ(replay, CacheByKey(*w)) << "the event log does not replay to the cache";
  int64_t last = 0;
  for (const ChangeEvent& ev : rec.Take()) {
    if (ev.initial) continue;
    EXPECT_GE(ev.revision, last);
    last = ev.revision;
  }
  EXPECT_EQ(w->stats().resyncs, 0u);
}

// A registrar process SIGKILLed: its registration goes when the TTL runs out (not at once,
// not never). In gateway mode discoveryd stops refreshing a lease nobody heartbeats: the key
// may live up to one more TTL. On Redis a watcher's reaper (here the store view's) removes it
// at TTL + at most one reaper period (0.5 s).
TEST_P(BothModesTest, KilledProcessDisappearsAfterTtl) {
  auto child = SpawnGameServer({"--ttl", "2", "--type", "world"});
  ASSERT_NE(child, nullptr);
  auto id = child->ReadLine(absl::Seconds(10));
  ASSERT_TRUE(id.has_value()) << child->ReadStderr();
  const std::string key = "/services/world/" + *id;
  ASSERT_TRUE(WaitUntil([&] { return InStore(key); }, absl::Seconds(5)));
  const absl::Time killed = ::discovery::util::MonoNow();
  ASSERT_TRUE(child->Signal(SIGKILL).ok());
  const absl::Duration bound = gateway() ? absl::Seconds(2 * 2 + 1) : absl::Seconds(2 + 1);
  ASSERT_TRUE(WaitUntil([&] { return !InStore(key); }, bound, absl::Milliseconds(50)))
      << "still there " << absl::FormatDuration(::discovery::util::MonoNow() - killed)
      << " after SIGKILL";
  EXPECT_GT(::discovery::util::MonoNow() - killed, absl::Seconds(1))
      << "removed before its TTL could run out";
}

// SIGTERM: the process drains and deregisters; the key goes at once, not after its 10 s TTL.
TEST_P(BothModesTest, SigtermDeregistersAtOnce) {
  auto child = SpawnGameServer({"--ttl", "10"});
  ASSERT_NE(child, nullptr);
  auto id = child->ReadLine(absl::Seconds(10));
  ASSERT_TRUE(id.has_value()) << child->ReadStderr();
  const std::string key = "/services/world/" + *id;
  ASSERT_TRUE(
      WaitUntil([&] { return StoredJson(key).value("status", "") == "ready"; }, absl::Seconds(5)));
  ASSERT_TRUE(child->Signal(SIGTERM).ok());
  auto rc = child->Wait(absl::Seconds(5));
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(*rc, 0) << child->ReadStderr();
  EXPECT_FALSE(InStore(key));
}

// Close: shutting_down, then the key and its lease are gone at once.
TEST_P(BothModesTest, GracefulCloseRemovesKeyAndLeaseAtOnce) {
  auto registrar = Registrar::Create({.connection = Conn()});
  ASSERT_TRUE(registrar.ok()) << registrar.status();
  auto reg = (*registrar)->Register(Make("world", "kr-1"), {.ttl = absl::Seconds(10)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  const std::string key = reg->key();
  const int64_t lease = reg->lease_id();
  ASSERT_EQ(LeaseOf(key), lease);
  EXPECT_TRUE(store_->LeaseExists(lease));
  const absl::Time start = ::discovery::util::MonoNow();
  EXPECT_TRUE(reg->Close().ok());
  EXPECT_FALSE(InStore(key));
  EXPECT_LT(::discovery::util::MonoNow() - start, TimeScale(absl::Seconds(1)));
  EXPECT_FALSE(store_->LeaseExists(lease));
  EXPECT_TRUE(reg->closed());
  EXPECT_EQ((*registrar)->size(), 0u);
  EXPECT_TRUE(absl::IsFailedPrecondition(reg->SetStatus(InstanceStatus::kReady)));
}

// The lease revoked behind the registrar's back (as etcdctl lease revoke does; on Redis the
// revoke script: the lease, its deadline and its keys go, logged): lease_lost, then re_registered
// with the same id, a new lease and the latest state.
TEST_P(BothModesTest, ReRegistersAfterTheLeaseIsRevokedBehindItsBack) {
  EventLog log;
  auto registrar = Registrar::Create({.connection = Conn(), .on_event = log.Callback()});
  ASSERT_TRUE(registrar.ok()) << registrar.status();
  auto reg = (*registrar)->Register(Make("world", "kr-1", "phoenix"), {.ttl = absl::Seconds(3)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  ASSERT_TRUE(reg->SetStatus(InstanceStatus::kReady, "open").ok());
  const int64_t old_lease = reg->lease_id();
  ASSERT_TRUE(store_->Revoke(old_lease).ok());
  ASSERT_TRUE(WaitUntil([&] { return log.Count(RegistrationEventType::kReRegistered) >= 1; },
                        absl::Seconds(3 + 2)))
      << "not re-registered within TTL + 2 s";
  ASSERT_TRUE(WaitUntil([&] { return InStore(reg->key()); }, absl::Seconds(2)));
  EXPECT_GE(log.Count(RegistrationEventType::kLeaseLost), 1);
  json v = StoredJson(reg->key());
  EXPECT_EQ(v.value("instanceId", ""), "phoenix");
  EXPECT_EQ(v.value("status", ""), "ready");
  EXPECT_EQ(v.value("customState", ""), "open");
  EXPECT_NE(reg->lease_id(), old_lease);
  EXPECT_EQ(LeaseOf(reg->key()), reg->lease_id());
}

// An operator's status (written straight to the store, same lease) is kept by the game server's
// background writes, and kept again when the registration is re-created after its lease was
// revoked.
TEST_P(BothModesTest, OperatorsStatusIsKeptAcrossReRegistration) {
  EventLog log;
  auto registrar = Registrar::Create({.connection = Conn(), .on_event = log.Callback()});
  ASSERT_TRUE(registrar.ok()) << registrar.status();
  auto reg = (*registrar)->Register(Make("world", "kr-1", "op"), {.ttl = absl::Seconds(3)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  ASSERT_TRUE(reg->SetStatus(InstanceStatus::kReady).ok());
  Instance theirs = reg->instance();
  theirs.status = InstanceStatus::kError;
  theirs.custom_state = "maintenance";
  ASSERT_TRUE(store_->Put(reg->key(), EncodeInstance(theirs), reg->lease_id()).ok());
  // The next background write keeps the operator's status.
  ASSERT_TRUE(reg->UpdatePerformance({{"tps", 42}}).ok());
  ASSERT_TRUE(WaitUntil(
      [&] {
        return StoredJson(reg->key()).value("performance", json::object()).value("tps", 0) == 42;
      },
      absl::Seconds(3)));
  json v = StoredJson(reg->key());
  EXPECT_EQ(v.value("status", ""), "error");
  EXPECT_EQ(v.value("customState", ""), "maintenance");
  EXPECT_EQ(reg->instance().status, InstanceStatus::kError);
  // Lease gone: re-created with the operator's status, not the game server's old one.
  const int64_t old_lease = reg->lease_id();
  ASSERT_TRUE(store_->Revoke(old_lease).ok());
  ASSERT_TRUE(WaitUntil([&] { return log.Count(RegistrationEventType::kReRegistered) >= 1; },
                        absl::Seconds(3 + 2)));
  ASSERT_TRUE(WaitUntil([&] { return InStore(reg->key()); }, absl::Seconds(2)));
  v = StoredJson(reg->key());
  EXPECT_EQ(v.value("status", ""), "error");
  EXPECT_EQ(v.value("customState", ""), "maintenance");
  EXPECT_EQ(v.value("performance", json::object()).value("tps", 0), 42);
  EXPECT_NE(reg->lease_id(), old_lease);
  // Until the game server changes its status itself.
  ASSERT_TRUE(reg->SetStatus(InstanceStatus::kReady, "open").ok());
  v = StoredJson(reg->key());
  EXPECT_EQ(v.value("status", ""), "ready");
  EXPECT_EQ(v.value("customState", ""), "open");
}

INSTANTIATE_TEST_SUITE_P(Modes, BothModesTest,
                         ::testing::Values(Mode::kDirect, Mode::kGateway, Mode::kRedis), ModeName);

}  // namespace
}  // namespace discovery::testing
