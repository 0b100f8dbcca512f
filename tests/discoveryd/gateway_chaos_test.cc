// Gateway chaos (issue 16, label chaos): two discoveryd in front of one etcd, 100 gateway-mode
// registrations (4 in-process Registrars, both URLs, in both orders) and 3 gateway-mode
// Watchers. etcd is the truth, read with a direct Connection; every wait is WaitUntil on
// observable state, its deadline scaled by DISCOVERY_TEST_TIME_SCALE (harness_util.h).
//  (a) one discoveryd SIGKILLed and restarted: no registration lost, watchers converge;
//  (b) a discoveryd restarted with an empty ring under its watchers: they resync, no ghosts;
//  (c) etcd wiped and re-created with the same identity behind discoveryd: registrars
//      re-register, watchers converge to the new truth;
//  (d) one discoveryd frozen (SIGSTOP): no registration lost;
//  (e) both discoveryd dead for two TTLs: leases expire, everyone comes back afterwards.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <iostream>
#include <mutex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "mode_fixture.h"
#include "util/clock.h"

namespace discovery::testing {
namespace {

constexpr int kRegistrations = 100;
constexpr int kRegistrars = 4;
const std::string kOurs = "/services/world/c";  // prefix of the 100 registrations' keys

// Lease TTL in whole seconds, scaled for sanitizer builds.
int TtlSeconds() {
  return static_cast<int>(std::ceil(absl::ToDoubleSeconds(TimeScale(absl::Seconds(3)))));
}

// A span of `ttls` lease TTLs as a WaitUntil timeout (WaitUntil scales it again: undo that,
// TtlSeconds() is scaled already).
absl::Duration Ttls(int ttls) { return absl::Seconds(ttls * TtlSeconds()) / TimeScaleFactor(); }

// Samples etcd every 50 ms on its own thread: the fewest of the 100 keys seen at once, and
// whether any of them changed its lease (a lost registration comes back with a new one).
class KeyMonitor {
 public:
  KeyMonitor(std::shared_ptr<Connection> direct, std::map<std::string, int64_t> leases)
      : direct_(std::move(direct)), leases_(std::move(leases)), thread_([this] { Run(); }) {}
  ~KeyMonitor() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  int min_count() const { return min_count_.load(); }
  int lease_changes() const { return lease_changes_.load(); }
  int samples() const { return samples_.load(); }
  bool lost() const { return min_count() < kRegistrations || lease_changes() > 0; }

 private:
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      lock.unlock();
      Sample();
      lock.lock();
      cv_.wait_for(lock, std::chrono::milliseconds(50), [this] { return stop_; });
    }
  }
  void Sample() {
    ::etcdserverpb::RangeRequest rr;
    rr.set_key(kOurs);
    rr.set_range_end("/services/world/d");
    rr.set_keys_only(true);
    auto r = direct_->client()->Range(rr);
    if (!r.ok()) return;  // etcd itself unreachable: nothing to judge
    int n = 0;
    for (const auto& kv : r->kvs()) {
      auto it = leases_.find(kv.key());
      if (it == leases_.end()) continue;
      ++n;
      if (kv.lease() != it->second) lease_changes_.fetch_add(1);
    }
    min_count_.store(std::min(min_count_.load(), n));
    samples_.fetch_add(1);
  }

  std::shared_ptr<Connection> direct_;
  const std::map<std::string, int64_t> leases_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::atomic<int> min_count_{kRegistrations};
  std::atomic<int> lease_changes_{0};
  std::atomic<int> samples_{0};
  std::thread thread_;
};

struct WatchedBy {
  std::unique_ptr<Watcher> watcher;
  std::unique_ptr<EventRecorder> events;
  Subscription sub;
};

class GatewayChaosTest : public DiscoverydTest {
 protected:
  void SetUp() override {
    DiscoverydTest::SetUp();
    if (HasFatalFailure()) return;
    direct_ = DirectConnection(*cluster_);
    ASSERT_NE(direct_, nullptr);
    a_ = StartGateway();
    b_ = StartGateway();
    ASSERT_GT(a_.port, 0);
    ASSERT_GT(b_.port, 0);
  }
  void TearDown() override {
    watchers_.clear();
    for (auto& r : registrars_) r->ShutdownAll();
  }

  // 100 registrations from 4 Registrars, ids c<r>-<i>, each Registrar's connection lists
  // `urls` (rotated by one for every other registrar, so both gateways carry heartbeats).
  void RegisterHundred(std::vector<std::string> urls) {
    for (int r = 0; r < kRegistrars; ++r) {
      std::vector<std::string> mine = urls;
      if (r % 2 == 1) std::rotate(mine.begin(), mine.begin() + 1, mine.end());
      auto registrar = Registrar::Create(
          {.connection = GatewayConnection(mine), .on_event = [this](const RegistrationEvent& e) {
             event_counts_[static_cast<int>(e.type)].fetch_add(1);
           }});
      ASSERT_TRUE(registrar.ok()) << registrar.status();
      std::vector<Instance> many;
      for (int i = 0; i < kRegistrations / kRegistrars; ++i) {
        many.push_back(WorldInstance(absl::StrCat("c", r, "-", i)));
      }
      for (auto& reg : (*registrar)->RegisterMany(many, {.ttl = absl::Seconds(TtlSeconds())})) {
        ASSERT_TRUE(reg.ok()) << reg.status();
        regs_.push_back(*std::move(reg));
      }
      registrars_.push_back(*std::move(registrar));
    }
  }
  std::map<std::string, int64_t> OurLeases() {
    std::map<std::string, int64_t> out;
    for (const Registration& r : regs_) out[r.key()] = r.lease_id();
    return out;
  }
  void Watch(std::vector<std::string> urls) {
    WatcherOptions o;
    o.connection = GatewayConnection(std::move(urls));
    o.protect_threshold = 0;
    auto w = Watcher::Create(std::move(o));
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE((*w)->WaitForSync(absl::Seconds(10)).ok());
    WatchedBy wb;
    wb.watcher = *std::move(w);
    wb.events = std::make_unique<EventRecorder>();
    wb.sub = wb.watcher->Subscribe({}, wb.events->Callback(), /*initial=*/true);
    watchers_.push_back(std::move(wb));
  }
  // Every watcher's cache equals etcd (values included).
  bool AllConverged(std::string* diff) {
    for (size_t i = 0; i < watchers_.size(); ++i) {
      std::string d;
      if (!CacheEqualsEtcd(*direct_, *watchers_[i].watcher, &d)) {
        *diff = absl::StrCat("watcher ", i, ": ", d);
        return false;
      }
    }
    return true;
  }
  // Every watcher's event log replays to its cache: removals delivered, nothing twice.
  void ExpectLogsReplayToCaches() {
    for (size_t i = 0; i < watchers_.size(); ++i) {
      std::vector<std::string> errors;
      auto replay = watchers_[i].events->Replay(&errors);
      EXPECT_TRUE(errors.empty()) << "watcher " << i << ": " << errors.size()
                                  << " errors, first: " << errors.front();
      EXPECT_EQ(replay, CacheByKey(*watchers_[i].watcher)) << "watcher " << i;
    }
  }
  size_t EtcdCount() { return EtcdState(*direct_).size(); }
  // SIGKILL, then a new discoveryd on the same port (its ring starts empty).
  void KillGateway(GatewayProc& gw) { ASSERT_TRUE(gw.proc->Kill().ok()); }
  void RestartGateway(GatewayProc& gw) {
    const int port = gw.port;
    gw = StartGateway({}, {}, absl::StrCat("127.0.0.1:", port));
    ASSERT_EQ(gw.port, port);
  }
  int Events(RegistrationEventType t) { return event_counts_[static_cast<int>(t)].load(); }
  void Report(const std::string& what) {
    std::cout << what << ":";
    for (size_t i = 0; i < watchers_.size(); ++i) {
      WatcherStats s = watchers_[i].watcher->stats();
      std::cout << " w" << i << "{resyncs " << s.resyncs << ", history_resets " << s.history_resets
                << ", reconnects " << s.resync_backoffs << "}";
    }
    std::cout << "; lease_lost " << Events(RegistrationEventType::kLeaseLost) << ", re_registered "
              << Events(RegistrationEventType::kReRegistered) << "\n";
  }

  std::shared_ptr<Connection> direct_;
  GatewayProc a_, b_;
  std::vector<std::unique_ptr<Registrar>> registrars_;
  std::vector<Registration> regs_;
  std::vector<WatchedBy> watchers_;
  std::array<std::atomic<int>, 16> event_counts_{};
};

// (a) One of two discoveryd SIGKILLed, changes made while it is down, then restarted on its
// port: etcd holds all 100 registrations with their original leases throughout (the other
// gateway answers the heartbeats), and every watcher (one on the dead gateway only) converges.
TEST_F(GatewayChaosTest, OneDiscoverydKilledAndRestartedLosesNoRegistration) {
  const std::string a = GatewayUrl(a_), b = GatewayUrl(b_);
  RegisterHundred({a, b});
  Watch({a, b});
  Watch({b, a});
  Watch({a});
  std::string diff;
  ASSERT_TRUE(WaitUntil([&] { return AllConverged(&diff); }, absl::Seconds(10))) << diff;
  ASSERT_EQ(EtcdCount(), static_cast<size_t>(kRegistrations));
  KeyMonitor monitor(direct_, OurLeases());
  KillGateway(a_);
  // Changes while `a` is down (direct mode: they do not depend on either gateway).
  auto direct_registrar = Registrar::Create({.connection = direct_});
  ASSERT_TRUE(direct_registrar.ok());
  std::vector<Registration> extra;
  for (int i = 0; i < 5; ++i) {
    auto r = (*direct_registrar)->Register(WorldInstance(absl::StrCat("d", i)));
    ASSERT_TRUE(r.ok()) << r.status();
    extra.push_back(*std::move(r));
  }
  ASSERT_TRUE(regs_[0].SetStatus(InstanceStatus::kError, "while-a-down").ok());
  // The watchers that know `b` see them through it.
  ASSERT_TRUE(WaitUntil(
      [&] {
        return CacheEqualsEtcd(*direct_, *watchers_[0].watcher, &diff) &&
               CacheEqualsEtcd(*direct_, *watchers_[1].watcher, &diff);
      },
      absl::Seconds(10)))
      << diff;
  // Two TTLs with `a` dead: nothing of the 100 goes missing.
  EXPECT_FALSE(WaitUntil([&] { return monitor.lost(); }, Ttls(2), absl::Milliseconds(100)))
      << "min " << monitor.min_count() << " lease changes " << monitor.lease_changes();
  RestartGateway(a_);
  extra[0].Close().IgnoreError();
  EXPECT_TRUE(WaitUntil([&] { return AllConverged(&diff); }, absl::Seconds(15))) << diff;
  EXPECT_GT(monitor.samples(), 20);
  EXPECT_EQ(monitor.min_count(), kRegistrations);
  EXPECT_EQ(monitor.lease_changes(), 0);
  EXPECT_EQ(Events(RegistrationEventType::kLeaseLost), 0);
  EXPECT_EQ(Events(RegistrationEventType::kReRegistered), 0);
  ExpectLogsReplayToCaches();
  Report("(a)");
}

// (b) The only discoveryd of 3 watchers restarted with an empty ring while registrations were
// closed, changed and added (through the other gateway): the watchers cannot resume, get a
// fresh state, and converge with every removal delivered: no ghosts.
TEST_F(GatewayChaosTest, DiscoverydRestartedWithEmptyRingWatchersResyncWithoutGhosts) {
  const std::string a = GatewayUrl(a_), b = GatewayUrl(b_);
  RegisterHundred({b, a});
  for (int i = 0; i < 3; ++i) Watch({a});
  std::string diff;
  ASSERT_TRUE(WaitUntil([&] { return AllConverged(&diff); }, absl::Seconds(10))) << diff;
  std::vector<uint64_t> resyncs_before;
  for (auto& w : watchers_) resyncs_before.push_back(w.watcher->stats().resyncs);
  KillGateway(a_);
  std::set<std::string> closed;
  for (int i = 0; i < 10; ++i) {
    closed.insert(regs_[i * 10].instance_id());
    ASSERT_TRUE(regs_[i * 10].Close().ok());
    ASSERT_TRUE(regs_[i * 10 + 1].SetStatus(InstanceStatus::kReady, "changed").ok());
  }
  auto late = registrars_[0]->Register(WorldInstance("late"), {.ttl = absl::Seconds(TtlSeconds())});
  ASSERT_TRUE(late.ok()) << late.status();
  ASSERT_EQ(EtcdCount(), static_cast<size_t>(kRegistrations - 10 + 1));
  RestartGateway(a_);
  EXPECT_TRUE(WaitUntil([&] { return AllConverged(&diff); }, absl::Seconds(15))) << diff;
  for (size_t i = 0; i < watchers_.size(); ++i) {
    auto snap = watchers_[i].watcher->snapshot();
    for (const std::string& id : closed) {
      EXPECT_EQ(snap->Find("world", id), nullptr) << "ghost " << id << " in watcher " << i;
    }
    EXPECT_NE(snap->Find("world", "late"), nullptr);
    EXPECT_GT(watchers_[i].watcher->stats().resyncs, resyncs_before[i]) << "watcher " << i;
  }
  ExpectLogsReplayToCaches();
  Report("(b)");
}

// (c) etcd wiped and re-created with the same identity (cluster id unchanged, revisions from
// 1 again) behind both discoveryd: the 100 come back with the same ids (re-registered), the
// keys written behind everyone's back are gone, and every watcher converges to the new truth.
TEST_F(GatewayChaosTest, EtcdWipedBehindDiscoverydEveryoneConverges) {
  const std::string a = GatewayUrl(a_), b = GatewayUrl(b_);
  RegisterHundred({a, b});
  Watch({a, b});
  Watch({b, a});
  Watch({b});
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(cluster_
                    ->Etcdctl({"put", absl::StrCat("/services/world/ghost", i),
                               EncodeInstance(WorldInstance(absl::StrCat("ghost", i)))})
                    .ok());
  }
  std::string diff;
  ASSERT_TRUE(WaitUntil([&] { return EtcdCount() == kRegistrations + 5u && AllConverged(&diff); },
                        absl::Seconds(10)))
      << diff;
  std::vector<uint64_t> resyncs_before;
  for (auto& w : watchers_) resyncs_before.push_back(w.watcher->stats().resyncs);
  const absl::Time wiped_at = ::discovery::util::MonoNow();
  ASSERT_TRUE(cluster_->WipeAndRestartSameIdentity().ok());
  const absl::Time restarted_at = ::discovery::util::MonoNow();
  EXPECT_TRUE(WaitUntil(
      [&] {
        return EtcdCount() == static_cast<size_t>(kRegistrations) &&
               Events(RegistrationEventType::kReRegistered) >= kRegistrations;
      },
      absl::Seconds(TtlSeconds() + 10)))
      << "etcd holds " << EtcdCount() << ", re_registered "
      << Events(RegistrationEventType::kReRegistered);
  const absl::Duration back = ::discovery::util::MonoNow() - restarted_at;
  EXPECT_TRUE(WaitUntil([&] { return AllConverged(&diff); }, absl::Seconds(15))) << diff;
  std::cout << "(c) wipe took " << absl::FormatDuration(restarted_at - wiped_at)
            << ", all 100 back " << absl::FormatDuration(back) << " after the restart\n";
  for (size_t i = 0; i < watchers_.size(); ++i) {
    auto snap = watchers_[i].watcher->snapshot();
    EXPECT_EQ(snap->size(), static_cast<size_t>(kRegistrations)) << "watcher " << i;
    EXPECT_EQ(snap->Find("world", "ghost0"), nullptr) << "ghost in watcher " << i;
    EXPECT_GT(watchers_[i].watcher->stats().resyncs, resyncs_before[i]) << "watcher " << i;
  }
  ExpectLogsReplayToCaches();
  Report("(c)");
}

// (d) One of two discoveryd frozen (SIGSTOP: connections accepted, nothing answered) for
// three TTLs: the registrations whose connection prefers it fail over to the other gateway
// in time; etcd holds all 100 with their original leases throughout.
TEST_F(GatewayChaosTest, FrozenDiscoverydLosesNoRegistration) {
  const std::string a = GatewayUrl(a_), b = GatewayUrl(b_);
  RegisterHundred({a, b});
  Watch({b});
  std::string diff;
  ASSERT_TRUE(WaitUntil([&] { return AllConverged(&diff); }, absl::Seconds(10))) << diff;
  KeyMonitor monitor(direct_, OurLeases());
  ASSERT_TRUE(a_.proc->Signal(SIGSTOP).ok());
  const bool lost = WaitUntil([&] { return monitor.lost(); }, Ttls(3), absl::Milliseconds(100));
  // A change made while `a` is frozen goes through `b`.
  const absl::Status changed = regs_[0].SetStatus(InstanceStatus::kReady, "while-a-frozen");
  ASSERT_TRUE(a_.proc->Signal(SIGCONT).ok());
  EXPECT_FALSE(lost) << "min " << monitor.min_count() << " of " << kRegistrations
                     << ", lease changes " << monitor.lease_changes();
  EXPECT_TRUE(changed.ok()) << changed;
  EXPECT_EQ(Events(RegistrationEventType::kLeaseLost), 0);
  EXPECT_TRUE(WaitUntil([&] { return AllConverged(&diff); }, absl::Seconds(10))) << diff;
  Report("(d)");
}

// (e) Both discoveryd dead for two TTLs: nobody can heartbeat, etcd expires the leases (the
// registrars warn lease_at_risk); once the gateways are back, every registrar hears "gone"
// and re-registers the same ids, and the watchers converge.
TEST_F(GatewayChaosTest, AllDiscoverydDownLongerThanTheTtlEveryoneComesBack) {
  const std::string a = GatewayUrl(a_), b = GatewayUrl(b_);
  RegisterHundred({a, b});
  Watch({a, b});
  Watch({b, a});
  std::string diff;
  ASSERT_TRUE(WaitUntil([&] { return AllConverged(&diff); }, absl::Seconds(10))) << diff;
  KillGateway(a_);
  KillGateway(b_);
  ASSERT_TRUE(WaitUntil([&] { return EtcdCount() == 0; }, absl::Seconds(2 * TtlSeconds() + 2)))
      << "etcd still holds " << EtcdCount() << " with no gateway alive";
  EXPECT_GE(Events(RegistrationEventType::kLeaseAtRisk), 1);
  RestartGateway(a_);
  RestartGateway(b_);
  EXPECT_TRUE(WaitUntil(
      [&] {
        return EtcdCount() == static_cast<size_t>(kRegistrations) &&
               Events(RegistrationEventType::kReRegistered) >= kRegistrations;
      },
      absl::Seconds(TtlSeconds() + 10)))
      << "etcd holds " << EtcdCount() << ", re_registered "
      << Events(RegistrationEventType::kReRegistered);
  EXPECT_TRUE(WaitUntil([&] { return AllConverged(&diff); }, absl::Seconds(15))) << diff;
  ExpectLogsReplayToCaches();
  Report("(e)");
}

}  // namespace
}  // namespace discovery::testing
