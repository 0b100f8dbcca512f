// Watcher against a real store: the cache equals the store after churn, resync after the store
// loses its data, garbage values, Poll() delivery, pickers following the cache, and mass-expiry
// protection run on etcd and on Redis from one parameterised fixture (`Stores/WatcherTest.*/Etcd`,
// `…/Redis`; the store's truth through tests/support/store_view.h). Resume after a broken
// stream in a 3-member cluster and resync after compaction are etcd's own (WatcherEtcdTest;
// Redis: RedisBackendTest.LogTrimmedUnderAStalledWatcherResyncsWithOnlyTheDifferences).
#include "discovery/watcher.h"

#include <gtest/gtest.h>

#include <csignal>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "child_process.h"
#include "discovery/registrar.h"
#include "etcd/client.h"
#include "etcd/watch_hub.h"
#include "etcd_harness.h"
#include "nlohmann/json.hpp"
#include "store_view.h"
#include "watch_truth.h"

namespace discovery {
namespace {

using testing::EtcdCluster;
using testing::Make;
using testing::StoreKind;
using testing::StoreView;
using testing::TimeScale;
using testing::WaitUntil;
using Recorder = testing::EventRecorder;
namespace pb = ::etcdserverpb;

class WatcherFixture : public ::testing::Test {
 protected:
  void Start(StoreKind kind, int members = 1) {
    auto s = StoreView::Start(kind, members);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
    conn_ = NewConnection();
    ASSERT_NE(conn_, nullptr);
  }
  // A new direct Connection; on etcd to `endpoints` when given.
  std::shared_ptr<Connection> NewConnection(std::vector<std::string> endpoints = {}) {
    if (endpoints.empty()) return store_->Connect();
    EtcdOptions o;
    o.endpoints = endpoints;
    o.call_timeout = TimeScale(absl::Seconds(3));
    auto conn = Connection::Create(o);
    EXPECT_TRUE(conn.ok());
    return *conn;
  }
  std::unique_ptr<Watcher> NewWatcher(WatcherOptions o = {}) {
    if (o.connection == nullptr) o.connection = conn_;
    auto w = Watcher::Create(std::move(o));
    EXPECT_TRUE(w.ok()) << w.status();
    EXPECT_TRUE((*w)->WaitForSync(TimeScale(absl::Seconds(5))).ok());
    return *std::move(w);
  }
  bool CacheEqualsStore(const Watcher& w, std::string* diff = nullptr) {
    return testing::CacheEqualsStore(*store_, w, diff);
  }
  // A value written behind everyone's back (no lease on etcd).
  absl::Status PutRaw(const std::string& key, const std::string& value) {
    return store_->Put(key, value);
  }
  EtcdCluster* cluster() { return store_->etcd(); }

  std::unique_ptr<StoreView> store_;
  std::shared_ptr<Connection> conn_;
};

// The same tests on etcd and on Redis.
class WatcherTest : public WatcherFixture, public ::testing::WithParamInterface<StoreKind> {
 protected:
  void Start() { WatcherFixture::Start(GetParam()); }
};

// etcd only: a 3-member cluster, the etcd watch stream's internals, compaction.
class WatcherEtcdTest : public WatcherFixture {
 protected:
  void Start(int members = 1) { WatcherFixture::Start(StoreKind::kEtcd, members); }
};

TEST_P(WatcherTest, InitialSyncQueriesAndTypedEvents) {
  Start();
  auto reg = Registrar::Create({.connection = conn_});
  ASSERT_TRUE(reg.ok());
  auto a = (*reg)->Register(Make("world", "kr-1", "a"));
  auto b = (*reg)->Register(Make("world", "kr-2", "b"));
  auto c = (*reg)->Register(Make("lobby", "kr-1", "c"));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  ASSERT_TRUE(a->SetStatus(InstanceStatus::kReady).ok());
  auto w = NewWatcher();
  auto snap = w->snapshot();
  EXPECT_EQ(snap->size(), 3u);
  EXPECT_GT(snap->revision(), 0);
  EXPECT_EQ(snap->OfType("world").size(), 2u);
  EXPECT_EQ(snap->Select({.type = "world", .group = "kr-2"}).size(), 1u);
  EXPECT_EQ(snap->Select({.status = InstanceStatus::kReady}).size(), 1u);
  EXPECT_NE(snap->Find("lobby", "c"), nullptr);
  auto all = snap->All();
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0]->type, "lobby");  // sorted by type, group, id

  Recorder world, initial;
  auto s1 = w->Subscribe({.type = "world"}, world.Callback());
  auto s2 = w->Subscribe({.group = "kr-1"}, initial.Callback(), /*initial=*/true);
  EXPECT_EQ(initial.size(), 2u);  // a and c, as added/initial
  for (auto& ev : initial.Take()) {
    EXPECT_TRUE(ev.initial);
    EXPECT_EQ(ev.type, ChangeType::kAdded);
  }
  ASSERT_TRUE(b->SetStatus(InstanceStatus::kReady).ok());
  ASSERT_TRUE(b->UpdateMetadata({{"map", "desert"}}).ok());
  auto d = (*reg)->Register(Make("world", "kr-3", "d"));
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE(b->Close().ok());
  ASSERT_TRUE(WaitUntil([&] { return world.size() >= 5; }, absl::Seconds(5)));
  auto evs = world.Take();
  ASSERT_EQ(evs.size(), 5u);
  EXPECT_EQ(evs[0].type, ChangeType::kStatusChanged);
  EXPECT_EQ(evs[0].previous->status, InstanceStatus::kInitializing);
  EXPECT_EQ(evs[0].instance->status, InstanceStatus::kReady);
  EXPECT_EQ(evs[1].type, ChangeType::kUpdated);
  EXPECT_EQ(evs[1].instance->meta.at("map"), "desert");
  EXPECT_EQ(evs[2].type, ChangeType::kAdded);
  EXPECT_EQ(evs[2].instance->instance_id, "d");
  // Close writes shutting_down first, then revokes: status change then removal.
  EXPECT_EQ(evs[3].type, ChangeType::kStatusChanged);
  EXPECT_EQ(evs[4].type, ChangeType::kRemoved);
  EXPECT_EQ(evs[4].instance->instance_id, "b");
  for (size_t i = 1; i < evs.size(); ++i) EXPECT_GT(evs[i].revision, evs[i - 1].revision);
  EXPECT_EQ(w->snapshot()->OfType("world").size(), 2u);
  // Unsubscribed: no more events.
  s1.Reset();
  ASSERT_TRUE(d->SetStatus(InstanceStatus::kReady).ok());
  ASSERT_TRUE(
      WaitUntil([&] { return w->snapshot()->Find("world", "d")->status == InstanceStatus::kReady; },
                absl::Seconds(5)));
  EXPECT_EQ(world.size(), 5u);
}

TEST_P(WatcherTest, CacheEqualsStoreAfterRandomChurn) {
  Start();
  auto w = NewWatcher();
  Recorder all;
  auto sub = w->Subscribe({}, all.Callback());
  constexpr int kRegistrars = 3;
  std::vector<std::unique_ptr<Registrar>> regs;
  for (int i = 0; i < kRegistrars; ++i) {
    auto r = Registrar::Create({.connection = NewConnection()});
    ASSERT_TRUE(r.ok());
    regs.push_back(*std::move(r));
  }
  // 2,000 operations from 3 threads: register, status change, deregister.
  std::mutex survivors_mu;
  std::vector<Registration> survivors;
  std::atomic<int> ops{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kRegistrars; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::vector<Registration> live;
      while (ops.fetch_add(1) < 2000) {
        int op = rng() % 10;
        if (live.empty() || op < 4) {
          auto r =
              regs[t]->Register(Make(rng() % 2 ? "world" : "lobby", absl::StrCat("g", rng() % 3)),
                                {.ttl = absl::Seconds(2)});
          if (r.ok()) live.push_back(*std::move(r));
        } else if (op < 8) {
          auto& r = live[rng() % live.size()];
          (void)r.SetStatus(rng() % 2 ? InstanceStatus::kReady : InstanceStatus::kError,
                            absl::StrCat("s", rng() % 5));
        } else {
          size_t i = rng() % live.size();
          (void)live[i].Close();
          live.erase(live.begin() + i);
        }
      }
      // Survivors stay registered (ready); thread 0 deregisters all of its own.
      for (auto& r : live) (void)r.SetStatus(InstanceStatus::kReady);
      if (t == 0) live.clear();
      std::lock_guard<std::mutex> lock(survivors_mu);
      for (auto& r : live) survivors.push_back(std::move(r));
    });
  }
  for (auto& th : threads) th.join();
  // Lease expiry too: 10 keys on a lease that nobody keeps alive.
  auto lease = store_->Grant(absl::Seconds(1));
  ASSERT_TRUE(lease.ok()) << lease.status();
  for (int i = 0; i < 10; ++i) {
    Instance in = Make("world", "exp", absl::StrCat("exp", i));
    ASSERT_TRUE(store_->Put("/services/world/" + in.instance_id, EncodeInstance(in), *lease).ok());
  }
  ASSERT_TRUE(
      WaitUntil([&] { return w->snapshot()->Find("world", "exp9") != nullptr; }, absl::Seconds(5)));
  ASSERT_TRUE(
      WaitUntil([&] { return w->snapshot()->Find("world", "exp0") == nullptr; }, absl::Seconds(5)));
  std::string diff;
  EXPECT_TRUE(WaitUntil([&] { return CacheEqualsStore(*w, &diff); }, absl::Seconds(5))) << diff;
  // Replaying the events from empty yields the same set (nothing lost, nothing twice).
  std::map<std::string, InstancePtr> replay;
  int64_t last = 0;
  for (auto& ev : all.Take()) {
    EXPECT_GE(ev.revision, last);
    last = ev.revision;
    std::string key = ev.instance->type + "/" + ev.instance->instance_id;
    if (ev.type == ChangeType::kAdded) {
      EXPECT_EQ(replay.count(key), 0u) << "added twice: " << key;
    } else {
      EXPECT_EQ(replay.count(key), 1u) << "change of unknown " << key;
    }
    if (ev.type == ChangeType::kRemoved) {
      replay.erase(key);
    } else {
      replay[key] = ev.instance;
    }
  }
  EXPECT_EQ(replay.size(), w->snapshot()->size());
  EXPECT_EQ(w->stats().resyncs, 0u);
}

TEST_F(WatcherEtcdTest, ResumesWithoutLossWhenItsMemberDies) {
  Start(3);
  auto w = NewWatcher();
  Recorder rec;
  auto sub = w->Subscribe({}, rec.Callback());
  int watched = 0;
  conn_->client()->CurrentStubs(&watched);
  // The writer talks to the other members only.
  std::vector<std::string> others;
  for (int i = 0; i < 3; ++i) {
    if (i != watched) others.push_back(cluster()->ClientEndpoint(i));
  }
  auto writer_conn = NewConnection(others);
  auto writer = [&](int from, int to) {
    for (int i = from; i < to; ++i) {
      Instance in = Make("world", "g", absl::StrCat("i", i));
      pb::PutRequest p;
      p.set_key("/services/world/" + in.instance_id);
      p.set_value(EncodeInstance(in));
      ASSERT_TRUE(writer_conn->client()->Put(p).ok());
    }
  };
  writer(0, 50);
  ASSERT_TRUE(WaitUntil([&] { return rec.size() == 50; }, absl::Seconds(5)));
  ASSERT_TRUE(cluster()->Kill(watched).ok());
  writer(50, 150);
  ASSERT_TRUE(WaitUntil([&] { return rec.size() >= 150; }, absl::Seconds(15)))
      << "got " << rec.size();
  auto evs = rec.Take();
  ASSERT_EQ(evs.size(), 150u) << "duplicates";
  for (int i = 0; i < 150; ++i) {
    EXPECT_EQ(evs[i].instance->instance_id, absl::StrCat("i", i));
    EXPECT_EQ(evs[i].type, ChangeType::kAdded);
  }
  EXPECT_EQ(w->stats().resyncs, 0u);
}

TEST_F(WatcherEtcdTest, ResyncAfterCompactionEmitsOnlyDifferences) {
  Start();
  auto reg = Registrar::Create({.connection = conn_});
  ASSERT_TRUE(reg.ok());
  auto stay = (*reg)->Register(Make("world", "g", "stay"));
  auto change = (*reg)->Register(Make("world", "g", "change"));
  auto gone = (*reg)->Register(Make("world", "g", "gone"));
  ASSERT_TRUE(stay.ok() && change.ok() && gone.ok());
  auto w = NewWatcher();
  Recorder rec;
  auto sub = w->Subscribe({}, rec.Callback());
  conn_->client()->watch_hub().SetPausedForTest(true);
  // While the watcher is stalled: change, delete, add, then compact the history away.
  ASSERT_TRUE(change->SetStatus(InstanceStatus::kReady).ok());
  ASSERT_TRUE(gone->Close().ok());
  auto added = (*reg)->Register(Make("world", "g", "added"));
  ASSERT_TRUE(added.ok());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(change->UpdateMetadata({{"n", std::to_string(i)}}).ok());
  pb::RangeRequest rr;
  rr.set_key("/x");
  pb::CompactionRequest cr;
  cr.set_revision(conn_->client()->Range(rr)->header().revision());
  cr.set_physical(true);
  ASSERT_TRUE(conn_->client()->Compact(cr).ok());
  conn_->client()->watch_hub().SetPausedForTest(false);
  ASSERT_TRUE(WaitUntil([&] { return w->stats().resyncs == 1; }, absl::Seconds(10)));
  std::string diff;
  EXPECT_TRUE(WaitUntil([&] { return CacheEqualsStore(*w, &diff); }, absl::Seconds(5))) << diff;
  // Exactly the differences: change (status), gone (removed), added (added).
  ASSERT_TRUE(WaitUntil([&] { return rec.size() >= 3; }, absl::Seconds(5)));
  std::map<std::string, ChangeType> got;
  for (auto& ev : rec.Take()) got[ev.instance->instance_id] = ev.type;
  EXPECT_EQ(got.size(), 3u);
  EXPECT_EQ(got["change"], ChangeType::kStatusChanged);
  EXPECT_EQ(got["gone"], ChangeType::kRemoved);
  EXPECT_EQ(got["added"], ChangeType::kAdded);
  EXPECT_EQ(got.count("stay"), 0u);
}

TEST_P(WatcherTest, ConvergesAfterTheStoreLosesItsData) {
  Start();
  auto reg = Registrar::Create({.connection = conn_});
  ASSERT_TRUE(reg.ok());
  // A registrar (re-registers itself) and raw keys (gone for good with the data).
  auto back = (*reg)->Register(Make("world", "g", "comes-back"), {.ttl = absl::Seconds(2)});
  ASSERT_TRUE(back.ok());
  for (int i = 0; i < 5; ++i) {
    Instance in = Make("world", "g", absl::StrCat("lost", i));
    ASSERT_TRUE(PutRaw("/services/world/" + in.instance_id, EncodeInstance(in)).ok());
  }
  auto w = NewWatcher({.protect_threshold = 0});
  ASSERT_EQ(w->snapshot()->size(), 6u);
  // etcd: wiped and restarted (a new cluster); Redis: restarted without persistence.
  ASSERT_TRUE(store_->LoseAllData().ok());
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto s = w->snapshot();
        return s->size() == 1 && s->Find("world", "comes-back") != nullptr;
      },
      absl::Seconds(15)))
      << "cache has " << w->snapshot()->size();
  std::string diff;
  EXPECT_TRUE(CacheEqualsStore(*w, &diff)) << diff;
  EXPECT_GE(w->stats().resyncs, 1u);
  EXPECT_EQ(w->stats().history_resets, 1u);  // a new cluster id / epoch is a new history
  EXPECT_EQ(w->snapshot()->history(), 2u);
}

TEST_P(WatcherTest, GarbageValuesAreSkippedAndCounted) {
  Start();
  auto reg = Registrar::Create({.connection = conn_});
  ASSERT_TRUE(reg.ok());
  auto good = (*reg)->Register(Make("world", "g", "good"));
  ASSERT_TRUE(good.ok());
  // Some garbage before the watcher starts, some after.
  ASSERT_TRUE(PutRaw("/services/world/junk1", "not json").ok());
  auto w = NewWatcher();
  Recorder rec;
  auto sub = w->Subscribe({}, rec.Callback());
  std::vector<std::pair<std::string, std::string>> garbage = {
      {"/services/world/junk2", "{\"instanceId\":\"junk2\""},              // truncated
      {"/services/world/junk3", "[1,2,3]"},                                // wrong shape
      {"/services/world/junk4", "{\"instanceId\":\"junk4\",\"type\":5}"},  // wrong type
      {"/services/world/junk5", std::string(200000, '[')},                 // deep nesting
      {"/services/world/junk6", std::string(1 << 20, 'x')},                // 1 MiB
      {"/services/world/a/b", EncodeInstance(Make("world", "g", "b"))},    // extra path segment
      {"/services/world/mismatch", EncodeInstance(Make("world", "g", "other"))},
  };
  for (auto& [k, v] : garbage) ASSERT_TRUE(PutRaw(k, v).ok());
  ASSERT_TRUE(good->SetStatus(InstanceStatus::kReady).ok());
  ASSERT_TRUE(WaitUntil([&] { return rec.size() == 1; }, absl::Seconds(5)));
  EXPECT_EQ(rec.Take()[0].instance->instance_id, "good");
  EXPECT_EQ(w->snapshot()->size(), 1u);
  EXPECT_EQ(w->stats().invalid_values, 1u + garbage.size());
  // A valid value written over garbage shows up; garbage over a valid one removes it.
  Instance fixed = Make("world", "g", "junk1");
  ASSERT_TRUE(PutRaw("/services/world/junk1", EncodeInstance(fixed)).ok());
  ASSERT_TRUE(WaitUntil([&] { return w->snapshot()->size() == 2; }, absl::Seconds(5)));
  ASSERT_TRUE(PutRaw("/services/world/junk1", "garbage again").ok());
  ASSERT_TRUE(WaitUntil([&] { return w->snapshot()->size() == 1; }, absl::Seconds(5)));
  EXPECT_NE(w->snapshot()->Find("world", "good"), nullptr);
}

TEST_P(WatcherTest, PollDeliversOnTheCallingThreadInRevisionOrder) {
  Start();
  auto w = NewWatcher({.delivery = Delivery::kPoll});
  std::vector<int64_t> revisions;
  std::thread::id caller = std::this_thread::get_id();
  bool wrong_thread = false;
  auto sub = w->Subscribe({}, [&](const ChangeEvent& ev) {
    revisions.push_back(ev.revision);
    wrong_thread |= std::this_thread::get_id() != caller;
  });
  auto reg = Registrar::Create({.connection = conn_});
  ASSERT_TRUE(reg.ok());
  std::vector<Registration> regs;
  for (int i = 0; i < 10; ++i) regs.push_back(*(*reg)->Register(Make("world", "g")));
  ASSERT_TRUE(WaitUntil([&] { return w->snapshot()->size() == 10; }, absl::Seconds(5)));
  EXPECT_TRUE(revisions.empty()) << "callback ran before Poll()";
  // Events are queued right after the snapshot that holds them is published: poll until all
  // have arrived. Poll(max) runs at most `max` callbacks.
  size_t first = 0;
  ASSERT_TRUE(WaitUntil(
      [&] {
        first += w->Poll(3 - first);
        return first == 3;
      },
      absl::Seconds(5)));
  EXPECT_EQ(revisions.size(), 3u);
  size_t rest = 0;
  ASSERT_TRUE(WaitUntil(
      [&] {
        rest += w->Poll();
        return rest >= 7;
      },
      absl::Seconds(5)));
  EXPECT_EQ(rest, 7u);
  EXPECT_EQ(w->Poll(), 0u);
  ASSERT_EQ(revisions.size(), 10u);
  EXPECT_TRUE(std::is_sorted(revisions.begin(), revisions.end()));
  EXPECT_FALSE(wrong_thread);
}

TEST_P(WatcherTest, PickersFollowTheCacheAndSkipNonReady) {
  Start();
  auto w = NewWatcher();
  auto picker = w->NewPicker("world", "kr-1", {.kind = PickerKind::kRoundRobin});
  EXPECT_EQ(picker->Pick(), nullptr);
  auto reg = Registrar::Create({.connection = conn_});
  ASSERT_TRUE(reg.ok());
  auto a = (*reg)->Register(Make("world", "kr-1", "a"));
  auto b = (*reg)->Register(Make("world", "kr-1", "b"));
  auto other = (*reg)->Register(Make("world", "kr-2", "x"));
  ASSERT_TRUE(a.ok() && b.ok() && other.ok());
  ASSERT_TRUE(WaitUntil([&] { return w->snapshot()->size() == 3; }, absl::Seconds(5)));
  EXPECT_EQ(picker->Pick(), nullptr);  // nobody ready yet
  ASSERT_TRUE(a->SetStatus(InstanceStatus::kReady).ok());
  ASSERT_TRUE(b->SetStatus(InstanceStatus::kReady).ok());
  ASSERT_TRUE(other->SetStatus(InstanceStatus::kReady).ok());
  ASSERT_TRUE(WaitUntil([&] { return picker->size() == 2; }, absl::Seconds(5)));
  std::set<std::string> seen;
  for (int i = 0; i < 10; ++i) seen.insert(picker->Pick()->instance_id);
  EXPECT_EQ(seen, (std::set<std::string>{"a", "b"}));
  ASSERT_TRUE(b->SetStatus(InstanceStatus::kShuttingDown).ok());  // draining: no new work
  ASSERT_TRUE(WaitUntil([&] { return picker->size() == 1; }, absl::Seconds(5)));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(picker->Pick()->instance_id, "a");
}

TEST_P(WatcherTest, MassExpiryKeepsLastGoodSetThenFollowsTruth) {
  Start();
  std::atomic<int> activations{0}, deactivations{0};
  auto w = NewWatcher({.protect_threshold = 0.5,
                       .protect_window = absl::Seconds(10),
                       .protect_hold = TimeScale(absl::Seconds(4)),
                       .on_protection = [&](const std::string& type, bool active, size_t) {
                         (active ? activations : deactivations)++;
                       }});
  auto picker = w->NewPicker("world", "", {.kind = PickerKind::kRoundRobin});
  // 4 registrar processes with 5 instances each.
  std::vector<std::unique_ptr<testing::ChildProcess>> procs;
  for (int p = 0; p < 4; ++p) {
    auto child = testing::ChildProcess::Spawn(
        // TTL 1 s (3 s under sanitizers: a TSan-built game server must not lose its own leases).
        {.argv = {EXAMPLE_GAME_SERVER, "--ttl",
                  absl::StrCat(absl::ToInt64Seconds(TimeScale(absl::Seconds(1)))), "--count", "5",
                  "--id", absl::StrCat("p", p)},
         .env = store_->ChildEnv(),
         .unset_env_prefixes = {"ETCD_", "DISCOVERY_"}});
    ASSERT_TRUE(child.ok());
    procs.push_back(*std::move(child));
  }
  ASSERT_TRUE(WaitUntil([&] { return picker->size() == 20; }, absl::Seconds(10)));
  // Kill 3 of the 4 at once: 15 of 20 ready instances expire together.
  for (int p = 1; p < 4; ++p) ASSERT_TRUE(procs[p]->Signal(SIGKILL).ok());
  ASSERT_TRUE(WaitUntil([&] { return w->snapshot()->size() == 5; }, TimeScale(absl::Seconds(5))));
  // The cache shows etcd's truth; the picker keeps the last good set and says so.
  ASSERT_TRUE(WaitUntil([&] { return activations.load() >= 1; }, absl::Seconds(5)));
  EXPECT_EQ(activations.load(), 1);
  EXPECT_TRUE(w->protecting("world"));
  EXPECT_GE(picker->size(), 11u);  // >= 5 live + the vanished ones it kept
  EXPECT_EQ(w->stats().protection_activations, 1u);
  // After the hold, the picker follows the truth.
  ASSERT_TRUE(WaitUntil([&] { return picker->size() == 5; }, absl::Seconds(10)));
  EXPECT_FALSE(w->protecting("world"));
  EXPECT_EQ(deactivations.load(), 1);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(picker->Pick()->instance_id.substr(0, 2), "p0");
}

INSTANTIATE_TEST_SUITE_P(Stores, WatcherTest,
                         ::testing::Values(StoreKind::kEtcd, StoreKind::kRedis),
                         testing::StoreName);

}  // namespace
}  // namespace discovery
