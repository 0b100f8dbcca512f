// The watcher's latency path against a real etcd: the Watch stream is read by one library
// thread (gRPC sync API) that is replaced, not multiplied, when the stream breaks; events keep
// flowing in order without duplicates across the break; and a type's published vector, patched
// in place for small batches, stays sorted by (group, instanceId) and equal to etcd through
// group moves, deletes and re-adds.
#include <dirent.h>
#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <deque>
#include <fstream>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "discovery/watcher.h"
#include "etcd/client.h"
#include "etcd/watch_hub.h"
#include "etcd_harness.h"
#include "util/sync.h"

namespace discovery {
namespace {

using testing::EtcdCluster;
using testing::TimeScale;
using testing::WaitUntil;
namespace pb = ::etcdserverpb;

// Threads of this process whose name is `name`.
int ThreadsNamed(const std::string& name) {
  int n = 0;
  DIR* d = opendir("/proc/self/task");
  if (d == nullptr) return -1;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream f(absl::StrCat("/proc/self/task/", e->d_name, "/comm"));
    std::string comm;
    std::getline(f, comm);
    if (comm == name) ++n;
  }
  closedir(d);
  return n;
}

class WatcherDeliveryPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto c = EtcdCluster::Start({.members = 1});
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
    EtcdOptions o;
    o.endpoints = cluster_->ClientEndpoints();
    o.call_timeout = TimeScale(absl::Seconds(3));
    auto conn = Connection::Create(o);
    ASSERT_TRUE(conn.ok()) << conn.status();
    conn_ = *std::move(conn);
    auto w = Watcher::Create({.connection = conn_});
    ASSERT_TRUE(w.ok()) << w.status();
    watcher_ = *std::move(w);
    ASSERT_TRUE(watcher_->WaitForSync(TimeScale(absl::Seconds(5))).ok());
  }
  // Puts one instance; returns the revision of the put (0 on error).
  int64_t Put(const Instance& in) {
    pb::PutRequest p;
    p.set_key(absl::StrCat("/services/", in.type, "/", in.instance_id));
    p.set_value(EncodeInstance(in));
    auto r = conn_->client()->Put(p);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->header().revision() : 0;
  }
  int64_t Delete(const std::string& type, const std::string& id) {
    pb::DeleteRangeRequest d;
    d.set_key(absl::StrCat("/services/", type, "/", id));
    auto r = conn_->client()->DeleteRange(d);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->header().revision() : 0;
  }
  bool Reached(int64_t revision) {
    return WaitUntil([&] { return watcher_->snapshot()->revision() >= revision; },
                     TimeScale(absl::Seconds(5)));
  }

  std::unique_ptr<EtcdCluster> cluster_;
  std::shared_ptr<Connection> conn_;
  std::unique_ptr<Watcher> watcher_;
};

Instance Make(const std::string& group, const std::string& id) {
  Instance in;
  in.instance_id = id;
  in.type = "world";
  in.group = group;
  in.hostname = "h";
  in.private_ip = "127.0.0.1";
  in.ports = {{"game", 7000}};
  return in;
}

TEST_F(WatcherDeliveryPathTest, OneReaderThreadAcrossBrokenStreamsNoLossNoDuplicate) {
  std::mutex mu;
  std::vector<int64_t> revisions;
  std::map<std::string, int> added;
  auto sub = watcher_->Subscribe({}, [&](const ChangeEvent& ev) {
    std::lock_guard<std::mutex> lock(mu);
    revisions.push_back(ev.revision);
    if (ev.type == ChangeType::kAdded) ++added[ev.instance->instance_id];
  });
  int64_t last = 0;
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 25; ++i) last = Put(Make("g", absl::StrCat("r", round, "-", i)));
    conn_->client()->watch_hub().BreakStreamForTest();  // the reader thread is replaced
  }
  ASSERT_TRUE(Reached(last));
  // The stream of the last break resumes; old reader threads have ended.
  EXPECT_TRUE(
      WaitUntil([&] { return ThreadsNamed("discovery-watch") == 1; }, TimeScale(absl::Seconds(5))))
      << ThreadsNamed("discovery-watch") << " reader threads";
  EXPECT_TRUE(
      WaitUntil([&] { return conn_->watch_reconnects() >= 1; }, TimeScale(absl::Seconds(5))));
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(revisions.size(), 100u);
  for (size_t i = 1; i < revisions.size(); ++i) EXPECT_LT(revisions[i - 1], revisions[i]);
  for (auto& [id, n] : added) EXPECT_EQ(n, 1) << id;
}

// A snapshot read in a callback, or on another thread the callback woke, holds that callback's
// event (the watcher publishes a batch's snapshot before its callbacks; a design that builds it
// after them must build it on such a read: 2026-12-03, tried and taken back, bench/README.md).
// Writers in two threads make batches of several events.
TEST_F(WatcherDeliveryPathTest, SnapshotReadDuringOrAfterACallbackHoldsItsEvent) {
  struct Seen {
    int64_t revision;
    std::string id;
    bool removed;
  };
  std::mutex mu;
  std::deque<Seen> woken;  // events handed to the checker thread
  std::atomic<int> inline_bad{0}, inline_checked{0}, picker_bad{0};
  std::atomic<bool> picker_checked{false};
  auto holds = [](const Snapshot& s, const Seen& e) {
    if (s.revision() < e.revision) return false;
    // Ids are never reused: "k" ones stay once added, removed ones stay gone ("d" ones are
    // removed soon after their add, maybe in the same batch: their add is checked by revision).
    if (e.removed) return s.Find("world", e.id) == nullptr;
    return e.id[0] == 'd' || s.Find("world", e.id) != nullptr;
  };
  auto sub = watcher_->Subscribe({}, [&](const ChangeEvent& ev) {
    Seen e{ev.revision, ev.instance->instance_id, ev.type == ChangeType::kRemoved};
    if (!holds(*watcher_->snapshot(), e)) inline_bad.fetch_add(1);
    inline_checked.fetch_add(1);
    if (!e.removed && e.id[0] == 'k' && !picker_checked.exchange(true)) {
      // A picker made in a callback is built from the sets holding the event (a "k" add: never
      // removed; a "d" add may be gone already, with its removal in the same batch).
      std::shared_ptr<Picker> picker = watcher_->NewPicker("world", "", {}, /*ready_only=*/false);
      if (picker->size() == 0) picker_bad.fetch_add(1);
    }
    std::lock_guard<std::mutex> lock(mu);
    woken.push_back(std::move(e));
  });
  std::atomic<bool> done{false};
  int checked = 0, bad = 0;
  std::thread checker([&] {
    while (true) {
      std::optional<Seen> e;
      {
        std::lock_guard<std::mutex> lock(mu);
        if (!woken.empty()) {
          e = std::move(woken.front());
          woken.pop_front();
        }
      }
      if (!e.has_value()) {
        if (done.load()) return;
        std::this_thread::yield();
        continue;
      }
      ++checked;
      if (!holds(*watcher_->snapshot(), *e)) ++bad;
    }
  });
  std::vector<std::thread> writers;
  std::atomic<int64_t> last{0};
  for (int w = 0; w < 2; ++w) {
    writers.emplace_back([&, w] {
      for (int i = 0; i < 150; ++i) {
        const std::string id = absl::StrCat(i % 3 == 0 ? "d" : "k", w, "-", i);
        int64_t r = Put(Make("g", id));
        if (id[0] == 'd') r = Delete("world", id);
        int64_t seen = last.load();
        while (r > seen && !last.compare_exchange_weak(seen, r)) {
        }
      }
    });
  }
  for (std::thread& t : writers) t.join();
  ASSERT_TRUE(Reached(last.load()));
  ASSERT_TRUE(WaitUntil([&] { return inline_checked.load() == 400; }, TimeScale(absl::Seconds(5))))
      << inline_checked.load();  // 300 adds + 100 removals
  done.store(true);
  checker.join();
  EXPECT_EQ(checked, 400);
  EXPECT_EQ(bad, 0) << "reads on another thread without the event that woke them";
  EXPECT_EQ(inline_bad.load(), 0) << "reads in a callback without its own event";
  EXPECT_TRUE(picker_checked.load());
  EXPECT_EQ(picker_bad.load(), 0);
}

TEST_F(WatcherDeliveryPathTest, LargeTypeStaysSortedThroughSmallBatches) {
  // 300 instances: batches of one change patch the published vector instead of rebuilding it.
  std::map<std::string, std::string> truth;  // id -> group
  std::mt19937 rng(7);
  int64_t last = 0;
  for (int i = 0; i < 300; ++i) {
    std::string id = absl::StrCat("i", rng() % 100000, "-", i);
    std::string group = absl::StrCat("g", rng() % 5);
    truth[id] = group;
    last = Put(Make(group, id));
  }
  ASSERT_TRUE(Reached(last));
  auto check = [&](int step) {
    std::vector<InstancePtr> have = watcher_->snapshot()->Select({.type = "world"});
    std::vector<std::pair<std::string, std::string>> want;
    for (auto& [id, group] : truth) want.emplace_back(group, id);
    std::sort(want.begin(), want.end());
    ASSERT_EQ(have.size(), want.size()) << "after step " << step;
    for (size_t i = 0; i < have.size(); ++i) {
      ASSERT_EQ(have[i]->group, want[i].first) << "after step " << step << " at " << i;
      ASSERT_EQ(have[i]->instance_id, want[i].second) << "after step " << step << " at " << i;
    }
  };
  for (int step = 0; step < 150; ++step) {
    auto it = std::next(truth.begin(), static_cast<long>(rng() % truth.size()));
    switch (rng() % 4) {
      case 0:  // moves to another group (another position)
        it->second = absl::StrCat("g", rng() % 5);
        last = Put(Make(it->second, it->first));
        break;
      case 1: {  // same position, new value
        Instance in = Make(it->second, it->first);
        in.status = InstanceStatus::kReady;
        in.custom_state = absl::StrCat("s", step);
        last = Put(in);
        break;
      }
      case 2:
        last = Delete("world", it->first);
        truth.erase(it);
        break;
      default: {
        std::string id = absl::StrCat("n", rng() % 100000, "-", step);
        truth[id] = absl::StrCat("g", rng() % 5);
        last = Put(Make(truth[id], id));
        break;
      }
    }
    ASSERT_TRUE(Reached(last));
    check(step);
    if (HasFatalFailure()) return;
  }
}

// No thread hop between the socket and the callback: when the client loop is idle, the Watch
// stream's reader thread runs the hub's drain, the cache update and the dispatch itself,
// holding the loop's strand (EventLoop::Dispatch). Before: every callback ran on
// "discovery-loop" after a hand-off from the reader.
TEST_F(WatcherDeliveryPathTest, CallbacksRunOnTheReaderThreadWhenTheLoopIsIdle) {
  std::mutex mu;
  std::map<std::string, int> threads;  // thread name -> callbacks
  Subscription sub = watcher_->Subscribe({.type = "world"}, [&](const ChangeEvent&) {
    char name[16] = {};
    pthread_getname_np(pthread_self(), name, sizeof(name));
    std::lock_guard<std::mutex> lock(mu);
    ++threads[name];
  });
  const int64_t inline_before = conn_->client()->loop().inline_runs();
  int64_t last = 0;
  for (int i = 0; i < 20; ++i) {
    last = Put(Make("g", absl::StrCat("inline-", i)));
    // One at a time, each after the previous was delivered: the loop is idle for each.
    ASSERT_TRUE(Reached(last));
  }
  ASSERT_TRUE(WaitUntil(
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        int n = 0;
        for (auto& [name, count] : threads) n += count;
        return n == 20;
      },
      TimeScale(absl::Seconds(5))));
  std::lock_guard<std::mutex> lock(mu);
  // Most (a liveness probe or a sync task may occupy the loop at that instant).
  EXPECT_GE(threads["discovery-watch"], 15) << threads["discovery-loop"] << " on the loop";
  EXPECT_GE(conn_->client()->loop().inline_runs() - inline_before, 15);
}

// A callback that runs inline on the reader thread may cancel its subscription and destroy
// the watcher and the last reference to the connection, i.e. the client whose hub owns the
// very stream that thread reads: the hub's shutdown detaches that reader instead of waiting
// for itself (a hang before the detach existed), the reader touches nothing of the freed hub,
// and its thread ends.
TEST_F(WatcherDeliveryPathTest, CallbackOnTheReaderThreadMayDestroyWatcherAndClient) {
#ifdef DISCOVERY_TSAN
  // The last Client dropped on the reader thread shuts gRPC down from that thread and the next
  // round starts it again; TSan then reports races inside gRPC's event engine and absl's
  // deadlock-detector graph between threads gRPC created (third-party internals; the
  // suppressions did not take). Runs in the plain and ASan+UBSan builds.
  GTEST_SKIP() << "gRPC restart internals under TSan";
#endif
  // The fixture's watcher has one reader; it may not have started (and named itself) yet when
  // WaitForSync returns, so count it only once it is there.
  ASSERT_TRUE(
      WaitUntil([&] { return ThreadsNamed("discovery-watch") == 1; }, TimeScale(absl::Seconds(5))));
  const int readers_before = 1;
  EtcdOptions o;
  o.endpoints = cluster_->ClientEndpoints();
  o.call_timeout = TimeScale(absl::Seconds(3));
  for (int round = 0; round < 5; ++round) {
    auto conn = Connection::Create(o);
    ASSERT_TRUE(conn.ok()) << conn.status();
    auto w = Watcher::Create({.connection = *conn});
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE((*w)->WaitForSync(TimeScale(absl::Seconds(5))).ok());
    struct Owner {
      std::shared_ptr<Connection> conn;
      std::unique_ptr<Watcher> watcher;
      Subscription sub;
    };
    auto owner = std::make_shared<Owner>();
    std::mutex mu;  // guards `owner` (the callback takes it on the library's thread)
    std::atomic<bool> destroyed{false};
    std::string destroyed_on;
    {
      std::lock_guard<std::mutex> lock(mu);
      owner->conn = *std::move(conn);
      owner->watcher = *std::move(w);
      owner->sub = owner->watcher->Subscribe({.type = "world"}, [&](const ChangeEvent& ev) {
        if (ev.instance->instance_id != absl::StrCat("kill-", round)) return;
        char name[16] = {};
        pthread_getname_np(pthread_self(), name, sizeof(name));
        std::shared_ptr<Owner> doomed;
        {
          std::lock_guard<std::mutex> lock(mu);
          doomed = std::move(owner);
        }
        doomed->sub.Reset();
        doomed->watcher.reset();
        doomed->conn.reset();
        doomed.reset();  // the last reference to the client: destroyed here
        destroyed_on = name;
        destroyed = true;
      });
    }
    // The new client's watch is live (its reader runs, a put reaches the watcher), and the loop
    // is idle again, so the next event is handled on the reader thread.
    ASSERT_TRUE(WaitUntil([&] { return ThreadsNamed("discovery-watch") == readers_before + 1; },
                          TimeScale(absl::Seconds(5))));
    const int64_t warm = Put(Make("g", absl::StrCat("warm-", round)));
    ASSERT_TRUE(WaitUntil(
        [&] {
          std::lock_guard<std::mutex> lock(mu);
          return owner->watcher->snapshot()->revision() >= warm;
        },
        TimeScale(absl::Seconds(5))));
    Put(Make("g", absl::StrCat("kill-", round)));
    ASSERT_TRUE(WaitUntil([&] { return destroyed.load(); }, TimeScale(absl::Seconds(10))))
        << "round " << round;
    EXPECT_EQ(destroyed_on, "discovery-watch");
    // The detached reader ends; the fixture's watcher keeps its own.
    ASSERT_TRUE(WaitUntil([&] { return ThreadsNamed("discovery-watch") == readers_before; },
                          TimeScale(absl::Seconds(5))))
        << ThreadsNamed("discovery-watch");
  }
  // The fixture's watcher (another client) is unaffected.
  ASSERT_TRUE(Reached(Put(Make("g", "after"))));
}

}  // namespace
}  // namespace discovery
