// Watcher against a real etcd whose history goes back in time or keeps refusing the watch:
//  - etcd wiped and re-bootstrapped with the SAME identity (same cluster id, revision from 1)
//    and etcd restored from an older snapshot: the cache is replaced by etcd's new state,
//    Snapshot::history bumps once, OnHistoryReset runs once before the differences, ghosts
//    are removed;
//  - a new cluster id is a history reset too;
//  - a watch broken right after every sync (continuous compaction) does not turn into a
//    resync loop: few resyncs, growing delays, counted;
//  - a subscription destroyed from its own callback gets nothing more of the batch.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "discovery/watcher.h"
#include "etcd/client.h"
#include "etcd/watch_hub.h"
#include "etcd_harness.h"
#include "util/clock.h"
#include "watch_truth.h"

namespace discovery {
namespace {

using testing::EtcdCluster;
using testing::TimeScale;
using testing::WaitUntil;
namespace pb = ::etcdserverpb;

Instance Make(const std::string& id, const std::string& host = "h") {
  Instance in;
  in.instance_id = id;
  in.type = "world";
  in.group = "g";
  in.hostname = host;
  in.private_ip = "127.0.0.1";
  in.ports = {{"game", 7000}};
  in.status = InstanceStatus::kReady;
  return in;
}

// Records a subscription's events (tests/support/watch_truth.h).
using Recorder = testing::EventRecorder;

// What OnHistoryReset saw.
struct ResetLog {
  std::mutex mu;
  std::vector<SnapshotPtr> snapshots;
  std::vector<size_t> events_before;  // events the recorder had when the listener ran
};

class WatcherHistoryTest : public ::testing::Test {
 protected:
  void Start(int members = 1) {
    auto c = EtcdCluster::Start({.members = members});
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
    EtcdOptions o;
    o.endpoints = cluster_->ClientEndpoints();
    o.call_timeout = TimeScale(absl::Seconds(3));
    auto conn = Connection::Create(o);
    ASSERT_TRUE(conn.ok()) << conn.status();
    conn_ = *std::move(conn);
  }
  std::unique_ptr<Watcher> NewWatcher(WatcherOptions o = {}) {
    o.connection = conn_;
    auto w = Watcher::Create(std::move(o));
    EXPECT_TRUE(w.ok()) << w.status();
    EXPECT_TRUE((*w)->WaitForSync(TimeScale(absl::Seconds(5))).ok());
    return *std::move(w);
  }
  absl::StatusOr<int64_t> Put(const std::string& key, const std::string& value) {
    pb::PutRequest p;
    p.set_key(key);
    p.set_value(value);
    auto r = conn_->client()->Put(p);
    if (!r.ok()) return r.status();
    return r->header().revision();
  }
  absl::Status PutInstance(const Instance& in) {
    return Put("/services/world/" + in.instance_id, EncodeInstance(in)).status();
  }
  // Moves etcd's revision to at least `target` with writes outside the watched prefix.
  void BumpRevisionTo(int64_t target) {
    int64_t rev = 0;
    while (rev < target) {
      auto r = Put("/other/bump", absl::StrCat(rev));
      ASSERT_TRUE(r.ok()) << r.status();
      rev = *r;
    }
  }
  // etcd's current header (retried while etcd comes back after a restart).
  pb::ResponseHeader Header() {
    pb::ResponseHeader h;
    bool ok = WaitUntil(
        [&] {
          pb::RangeRequest rr;
          rr.set_key("/x");
          auto r = conn_->client()->Range(rr);
          if (r.ok()) h = r->header();
          return r.ok();
        },
        absl::Seconds(10));
    EXPECT_TRUE(ok) << "etcd does not answer";
    return h;
  }
  int64_t EtcdRevision() { return Header().revision(); }
  // Writes right after etcd restarted: retried until the connection is back.
  void PutAfterRestart(const Instance& in) {
    EXPECT_TRUE(WaitUntil([&] { return PutInstance(in).ok(); }, absl::Seconds(10)))
        << "cannot write " << in.instance_id;
  }
  // id -> encoded instance of every valid instance in etcd under /services/.
  std::map<std::string, std::string> EtcdInstances() {
    pb::RangeRequest rr;
    rr.set_key("/services/");
    rr.set_range_end("/services0");
    auto r = conn_->client()->Range(rr);
    EXPECT_TRUE(r.ok()) << r.status();
    std::map<std::string, std::string> out;
    if (!r.ok()) return out;
    for (const auto& kv : r->kvs()) {
      auto in = DecodeInstance(kv.value());
      if (in.ok()) out[in->type + "/" + in->instance_id] = EncodeInstance(*in);
    }
    return out;
  }
  static std::map<std::string, std::string> CacheInstances(const Snapshot& s) {
    std::map<std::string, std::string> out;
    for (const auto& in : s.All()) out[in->type + "/" + in->instance_id] = EncodeInstance(*in);
    return out;
  }
  // Subscribes `rec` to everything and `log` to history resets.
  void Observe(Watcher& w, Recorder& rec, ResetLog& log) {
    sub_ = w.Subscribe({}, rec.Callback());
    reset_sub_ = w.OnHistoryReset([&rec, &log](const SnapshotPtr& s) {
      size_t n = rec.size();
      std::lock_guard<std::mutex> lock(log.mu);
      log.snapshots.push_back(s);
      log.events_before.push_back(n);
    });
  }
  // After a history reset to etcd's state {same, changed(new host), fresh} from a cache of
  // {same, changed, ghost0..ghost4}: exactly the differences, after the reset listener.
  void ExpectReplacedCache(Watcher& w, Recorder& rec, ResetLog& log, uint64_t history_before) {
    ASSERT_TRUE(WaitUntil([&] { return w.stats().history_resets >= 1; }, absl::Seconds(20)))
        << "no history reset; revision " << w.revision() << ", etcd at " << EtcdRevision();
    ASSERT_TRUE(WaitUntil([&] { return rec.size() >= 7; }, absl::Seconds(5))) << rec.size();
    EXPECT_EQ(CacheInstances(*w.snapshot()), EtcdInstances());
    EXPECT_EQ(w.stats().history_resets, 1u);
    EXPECT_EQ(w.snapshot()->history(), history_before + 1);
    EXPECT_EQ(w.revision(), EtcdRevision());
    {
      std::lock_guard<std::mutex> lock(log.mu);
      ASSERT_EQ(log.snapshots.size(), 1u);
      EXPECT_EQ(log.events_before[0], 0u) << "differences delivered before OnHistoryReset";
      EXPECT_EQ(log.snapshots[0]->history(), history_before + 1);
      EXPECT_EQ(CacheInstances(*log.snapshots[0]), EtcdInstances());
    }
    std::map<std::string, ChangeType> got;
    for (const auto& ev : rec.Take()) {
      EXPECT_TRUE(got.emplace(ev.instance->instance_id, ev.type).second)
          << "two events for " << ev.instance->instance_id;
      EXPECT_EQ(ev.revision, w.revision());
    }
    EXPECT_EQ(got.size(), 7u);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(got[absl::StrCat("ghost", i)], ChangeType::kRemoved);
    EXPECT_EQ(got["changed"], ChangeType::kUpdated);
    EXPECT_EQ(got["fresh"], ChangeType::kAdded);
    EXPECT_EQ(got.count("same"), 0u) << "an unchanged value must not produce an event";
    // The watch runs in the new history.
    ASSERT_TRUE(PutInstance(Make("after")).ok());
    EXPECT_TRUE(WaitUntil([&] { return w.snapshot()->Find("world", "after") != nullptr; },
                          absl::Seconds(5)));
    EXPECT_EQ(CacheInstances(*w.snapshot()), EtcdInstances());
  }

  std::unique_ptr<EtcdCluster> cluster_;
  std::shared_ptr<Connection> conn_;
  Subscription sub_, reset_sub_;
};

TEST_F(WatcherHistoryTest, WipeWithSameIdentityReplacesTheCache) {
  Start();
  ASSERT_TRUE(PutInstance(Make("same")).ok());
  ASSERT_TRUE(PutInstance(Make("changed")).ok());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(PutInstance(Make(absl::StrCat("ghost", i))).ok());
  BumpRevisionTo(200);
  auto w = NewWatcher({.protect_threshold = 0});
  ASSERT_EQ(w->snapshot()->size(), 7u);
  ASSERT_GE(w->revision(), 200);
  const uint64_t history = w->snapshot()->history();
  EXPECT_EQ(history, 1u);
  Recorder rec;
  ResetLog log;
  Observe(*w, rec, log);
  const uint64_t cluster_before = Header().cluster_id();
  // etcd is re-created from its unchanged configuration while the watcher is disconnected,
  // and gets fewer writes than the watcher has seen: its revision is below the cache's.
  conn_->client()->watch_hub().SetPausedForTest(true);
  ASSERT_TRUE(cluster_->WipeAndRestartSameIdentity().ok());
  PutAfterRestart(Make("same"));
  PutAfterRestart(Make("changed", "elsewhere"));
  PutAfterRestart(Make("fresh"));
  ASSERT_LT(EtcdRevision(), w->revision());
  ASSERT_EQ(Header().cluster_id(), cluster_before) << "the harness must keep the cluster id";
  conn_->client()->watch_hub().SetPausedForTest(false);
  ExpectReplacedCache(*w, rec, log, history);
}

TEST_F(WatcherHistoryTest, RestoreFromAnOlderSnapshotReplacesTheCache) {
  Start();
  ASSERT_TRUE(PutInstance(Make("same")).ok());
  ASSERT_TRUE(PutInstance(Make("changed", "elsewhere")).ok());
  ASSERT_TRUE(PutInstance(Make("fresh")).ok());
  auto dir = testing::MakeTempDir("watcher-snap");
  ASSERT_TRUE(dir.ok()) << dir.status();
  const std::string path = *dir + "/etcd.db";
  ASSERT_TRUE(cluster_->SnapshotSave(path).ok());
  // After the snapshot: the history the watcher will know, later lost by the restore.
  pb::DeleteRangeRequest del;
  del.set_key("/services/world/fresh");
  ASSERT_TRUE(conn_->client()->DeleteRange(del).ok());
  ASSERT_TRUE(PutInstance(Make("changed")).ok());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(PutInstance(Make(absl::StrCat("ghost", i))).ok());
  BumpRevisionTo(200);
  auto w = NewWatcher({.protect_threshold = 0});
  ASSERT_EQ(w->snapshot()->size(), 7u);
  const uint64_t history = w->snapshot()->history();
  Recorder rec;
  ResetLog log;
  Observe(*w, rec, log);
  conn_->client()->watch_hub().SetPausedForTest(true);
  ASSERT_TRUE(cluster_->RestoreSnapshot(path).ok());
  ASSERT_LT(EtcdRevision(), w->revision());
  conn_->client()->watch_hub().SetPausedForTest(false);
  ExpectReplacedCache(*w, rec, log, history);
  std::filesystem::remove_all(*dir);
}

TEST_F(WatcherHistoryTest, NewClusterIdIsAHistoryReset) {
  Start();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(PutInstance(Make(absl::StrCat("ghost", i))).ok());
  auto w = NewWatcher({.protect_threshold = 0});
  ASSERT_EQ(w->snapshot()->size(), 3u);
  Recorder rec;
  ResetLog log;
  Observe(*w, rec, log);
  ASSERT_TRUE(cluster_->WipeAndRestartAll().ok());
  PutAfterRestart(Make("fresh"));
  ASSERT_TRUE(WaitUntil([&] { return CacheInstances(*w->snapshot()) == EtcdInstances(); },
                        absl::Seconds(15)))
      << "cache has " << w->snapshot()->size();
  EXPECT_EQ(w->stats().history_resets, 1u);
  EXPECT_EQ(w->snapshot()->history(), 2u);
  std::lock_guard<std::mutex> lock(log.mu);
  EXPECT_EQ(log.snapshots.size(), 1u);
}

// The watch breaks right after every sync (as when etcd refuses each new watch): here every
// ~300 ms the history is compacted past the watch's start and the stream cut, so each watch the
// watcher creates is compacted when the hub re-creates it. Every resync succeeds, yet they must
// not loop: the backoff starts over only after a watch stayed up, and the delays grow.
TEST_F(WatcherHistoryTest, WatchBrokenAfterEverySyncDoesNotLoop) {
  Start();
  ASSERT_TRUE(PutInstance(Make("a")).ok());
  auto w = NewWatcher();
  std::atomic<bool> stop{false};
  std::atomic<int> breaks{0};
  std::thread breaker([&] {
    while (!stop.load()) {
      if (conn_->client()->watch_hub().open_streams() == 0) {  // reconnecting: nothing to cut
        absl::SleepFor(absl::Milliseconds(5));
        continue;
      }
      // The fault's cadence, not a synchronisation: etcd reports a compacted watch within its
      // 100 ms sync loop; give it that time before cutting the stream again.
      absl::SleepFor(absl::Milliseconds(250));
      auto r = Put("/other/churn", "x");  // outside the prefix: the watch gets no event
      if (r.ok()) {
        pb::CompactionRequest c;
        c.set_revision(*r);
        (void)conn_->client()->Compact(c);
      }
      conn_->client()->watch_hub().BreakStreamForTest();
      breaks++;
    }
  });
  std::vector<absl::Time> resync_times;
  std::vector<absl::Duration> delays;  // each rate-limited resync's delay (>= 200 ms apart)
  const absl::Time start = util::MonoNow();
  uint64_t seen = w->stats().resyncs, delayed = w->stats().resync_backoffs;
  while (util::MonoNow() - start < TimeScale(absl::Seconds(8))) {
    WatcherStats now = w->stats();
    for (; seen < now.resyncs; ++seen) resync_times.push_back(util::MonoNow());
    for (; delayed < now.resync_backoffs; ++delayed) delays.push_back(now.resync_delay);
    absl::SleepFor(absl::Milliseconds(2));  // sampling the counters, not synchronising
  }
  stop = true;
  breaker.join();
  WatcherStats st = w->stats();
  std::string times;
  for (auto t : resync_times) absl::StrAppend(&times, " +", absl::FormatDuration(t - start));
  absl::StrAppend(&times, "; delays");
  for (auto d : delays) absl::StrAppend(&times, " ", absl::FormatDuration(d));
  std::cout << "resyncs at:" << times << " (" << breaks.load() << " breaks)\n";
  // Without the rate limit: a resync per break (every ~350 ms), ~20 here.
  EXPECT_GE(resync_times.size(), 3u) << "the watch was not broken repeatedly:" << times;
  EXPECT_LE(resync_times.size(), 8u) << "resync loop:" << times;
  EXPECT_GE(st.resync_backoffs + 1, resync_times.size());
  ASSERT_GE(delays.size(), 2u) << times;
  for (size_t i = 1; i < delays.size(); ++i) {
    EXPECT_GT(delays[i], delays[i - 1]) << "delays must grow:" << times;
  }
  // Once the compaction stops, the watcher follows etcd again (after at most one ceiling).
  ASSERT_TRUE(PutInstance(Make("b")).ok());
  EXPECT_TRUE(
      WaitUntil([&] { return w->snapshot()->Find("world", "b") != nullptr; }, absl::Seconds(40)));
  EXPECT_EQ(w->stats().history_resets, 0u);
}

// watcher.h: after a Subscription is destroyed no callback of it runs — also when it is
// destroyed by its own callback in the middle of a batch (one Txn = one batch of 3 events).
TEST_F(WatcherHistoryTest, SubscriptionDestroyedInItsOwnCallbackGetsNoMoreOfTheBatch) {
  Start();
  for (Delivery delivery : {Delivery::kLibraryThread, Delivery::kPoll}) {
    SCOPED_TRACE(delivery == Delivery::kPoll ? "poll" : "library thread");
    auto w = NewWatcher({.delivery = delivery});
    std::atomic<int> calls{0};
    std::optional<Subscription> self;
    Recorder all;
    auto control = w->Subscribe({}, all.Callback());
    self = w->Subscribe({}, [&](const ChangeEvent&) {
      calls++;
      self.reset();  // destroys the subscription from inside its callback
    });
    (void)w->protecting("world");  // a round trip through the loop: it sees `self` assigned
    pb::TxnRequest txn;
    for (int i = 0; i < 3; ++i) {
      auto* put = txn.add_success()->mutable_request_put();
      put->set_key(absl::StrCat("/services/world/", delivery == Delivery::kPoll ? "p" : "l", i));
      put->set_value(
          EncodeInstance(Make(absl::StrCat(delivery == Delivery::kPoll ? "p" : "l", i))));
    }
    ASSERT_TRUE(conn_->client()->Txn(txn).ok());
    ASSERT_TRUE(WaitUntil(
        [&] {
          if (delivery == Delivery::kPoll) w->Poll();
          return all.size() >= 3;
        },
        absl::Seconds(5)));
    if (delivery == Delivery::kPoll) w->Poll();
    EXPECT_EQ(calls.load(), 1);
    EXPECT_FALSE(self.has_value());
  }
}

}  // namespace
}  // namespace discovery
