// Chaos suite fixture: a real 3-member etcd cluster under a running fleet (see chaos_test.cc
// for the scenarios and what is asserted after each).
//
// The fleet, started fresh for every test (so each scenario is independent and can run on its
// own with --gtest_filter):
//  - 4 registrar processes (examples/example_game_server --count 50): 200 instances with a
//    5 s lease, each process writing performance figures every 2 s (about 100 writes/s in
//    total, so there is always traffic in flight when something breaks). Registrar 3 reaches
//    etcd only through TcpProxy, one per member, so a test can partition it alone.
//  - 3 watcher processes (`discoveryctl watch --initial`): each prints every change as a JSON
//    line; the test replays the lines into that watcher's view and keeps its event log.
//    Watcher 0 reaches etcd through its own TcpProxy set, so a test can cut it off.
//  - 1 `discoveryd` (its /healthz and its discover answer are checked).
// Every process gets the member list in a different order, so each member serves some of them.
//
// ChaosAuthTest runs the same fleet the way deploy/ runs etcd: auth on, users and roles as
// deploy/etcd/rbac.sh creates them, `--auth-token-ttl 3` on every member, and every process
// configured with ETCD_USER/ETCD_PASSWORD.
#ifndef DISCOVERY_TESTS_CHAOS_CHAOS_FIXTURE_H_
#define DISCOVERY_TESTS_CHAOS_CHAOS_FIXTURE_H_

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "discovery/etcd.h"
#include "etcd_harness.h"
#include "nlohmann/json.hpp"
#include "tcp_proxy.h"

namespace discovery::chaos {

using ::discovery::testing::ChildProcess;
using ::discovery::testing::EtcdCluster;
using ::discovery::testing::TcpProxy;
using ::discovery::testing::TimeScale;
using ::discovery::testing::WaitUntil;

inline constexpr int kTtlSeconds = 5;
inline constexpr int kRegistrars = 4;
inline constexpr int kPerRegistrar = 50;
inline constexpr int kInstances = kRegistrars * kPerRegistrar;
inline constexpr int kWatchers = 3;
inline constexpr int kProxiedRegistrar = 3;
inline constexpr int kProxiedWatcher = 0;
inline constexpr char kPrefix[] = "/services/";
inline const absl::Duration kTtl = absl::Seconds(kTtlSeconds);

// Users and roles as deploy/etcd/rbac.sh creates them (main's version: the readwrite role
// also gets readwrite on the single key <prefix>.epoch, discoveryd's SSE epoch).
inline constexpr char kRootPassword[] = "chaos-root-pw";
inline constexpr char kRegistrarUser[] = "discovery-registrar";  // registrars, discoveryd
inline constexpr char kRegistrarPassword[] = "chaos-registrar-pw";
inline constexpr char kReaderUser[] = "discovery-reader";  // watchers (Range + Watch)
inline constexpr char kReaderPassword[] = "chaos-reader-pw";
inline constexpr char kEpochKey[] = "/services.epoch";

// key -> "status leaseId", the part of an instance every component must agree on. The lease
// id changes on every re-registration, so a reader stuck on old data cannot pass for current.
using View = std::map<std::string, std::string>;

std::string ViewValue(const nlohmann::json& instance);
bool IsReady(const std::string& view_value);
// True for etcd releases whose ex-leader revokes leases after a pause (etcd-io/etcd#15247;
// fixed in 3.4.28 and 3.5.11 by etcd-io/etcd#16822).
bool EtcdRevokesFromStaleLeader(const std::string& version);
std::string InstanceKey(const nlohmann::json& instance);
// First differences between two views, for failure messages ("stale" = shown but not in
// etcd: a ghost).
std::string Diff(const View& want, const View& got);

// What etcd holds under the prefix, read with etcdctl (an independent client).
struct Truth {
  int64_t revision = 0;
  View view;
  std::map<std::string, int64_t> lease;  // key -> lease id
};

// One `discoveryctl watch --initial` process and what it printed.
class WatchProcess {
 public:
  struct Event {
    std::string type;
    int64_t revision = 0;
    std::string key;
  };

  static absl::StatusOr<std::unique_ptr<WatchProcess>> Spawn(
      const std::string& endpoints, std::vector<std::pair<std::string, std::string>> env);
  ~WatchProcess();

  ChildProcess& proc() { return *proc_; }
  View view();
  std::vector<Event> events();
  int64_t last_revision();
  // Lines that were not a well-formed event, and events that contradict the view they apply
  // to (an `added` for a key already there, a change or removal of an absent key).
  std::vector<std::string> anomalies();

 private:
  explicit WatchProcess(std::unique_ptr<ChildProcess> proc);
  void Read();
  void Apply(const std::string& line);

  std::unique_ptr<ChildProcess> proc_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  View view_;                           // guarded by mu_
  std::vector<Event> events_;           // guarded by mu_
  std::vector<std::string> anomalies_;  // guarded by mu_
  std::thread reader_;
};

class ChaosTest : public ::testing::Test {
 protected:
  ChaosTest() = default;
  explicit ChaosTest(bool auth) : auth_(auth) {}

  void SetUp() override;
  void TearDown() override;

  // Member endpoints starting at member `first`, comma separated.
  std::string Endpoints(int first) const;
  static std::string ProxyEndpoints(const std::vector<std::unique_ptr<TcpProxy>>& proxies);
  // ETCD_USER/ETCD_PASSWORD of `user` when auth is on, else nothing.
  std::vector<std::pair<std::string, std::string>> AuthEnv(const std::string& user) const;
  // What deploy/etcd/rbac.sh sets up (root, discovery-registrar, discovery-reader, auth on).
  static std::vector<testing::EtcdUser> RbacUsers();
  // Runs the rbac.sh steps against the current (auth-off) cluster, as an operator does after
  // re-creating etcd.
  void ApplyRbac();

  // A new connection for the test's own calls (LeaseLeases, filler writes) after a wipe or
  // restore: with auth on, a simple token from the previous incarnation names a raft index the
  // new one has not reached, and etcd holds every call carrying it until its deadline.
  void ReconnectTestClient();

  // Starts registrar `r`: instances r<r>-0 .. r<r>-49, type world (even r) or lobby (odd r).
  void StartRegistrar(int r, const std::string& endpoints);
  // SIGTERMs registrar `r` (it drains and deregisters its instances) and waits for its exit.
  void StopRegistrar(int r);
  // Times registrar `r` reported `event` ("lease_lost", "re_registered") on stderr.
  int RegistrarEvents(int r, const std::string& event);
  int AllRegistrarEvents(const std::string& event);

  absl::StatusOr<Truth> ReadTruth();
  absl::StatusOr<View> GatewayView();
  int Healthz();

  // Every watcher and discoveryd show exactly what etcd holds (within `timeout`).
  void ExpectConverged(const std::string& when, absl::Duration timeout = absl::Seconds(15));
  void ExpectAllAlive(const std::string& when);
  // Every lease etcd holds is attached to an instance key.
  void ExpectNoLeakedLeases(const std::string& when);
  // etcd's own history of the prefix over (from, to]: (revision, key) pairs.
  std::vector<std::pair<int64_t, std::string>> History(int64_t from, int64_t to);
  // Each watcher printed exactly etcd's history of the prefix since `from`, in order.
  void ExpectEventsMatchHistory(const std::string& when, int64_t from);

  // Registrar event counts at one moment, to assert on what a scenario added.
  struct EventCounts {
    int lease_lost = 0;
    int re_registered = 0;
  };
  EventCounts CountEvents();
  // No registration was lost or re-created since `before`: same lease on every key, and no
  // registrar saw a lease_lost or re_registered event since `counts`.
  void ExpectNothingLost(const std::string& when, const Truth& before, const EventCounts& counts);
  void ExpectSameLeases(const std::string& when, const Truth& before);

  // All 200 instances are in etcd again, ready.
  bool AllRegistered(absl::Duration timeout);
  // The keys of the instances the running registrars own.
  std::set<std::string> FleetKeys();
  // etcd holds exactly FleetKeys(), all ready (within `timeout`).
  bool FleetRegistered(absl::Duration timeout);

  // The live members agree on a leader other than `old`.
  void WaitForNewLeader(int old);
  // Keeps a fault in place until `until`, running `check` about every 250 ms meanwhile.
  void HoldFault(absl::Time until, const std::function<void()>& check);
  // All 200 instances are in etcd right now (ids only).
  void ExpectAllPresent(const std::string& when);
  // The checks every scenario ends with.
  void ExpectHealthyFleet(const std::string& when);

  // Writes `n` revisions outside the prefix (another application sharing etcd, or just
  // time): a production etcd's revision is far ahead of what a freshly bootstrapped or
  // restored one reaches in the few seconds a scenario lasts. Then waits until every watcher
  // process has seen a prefix event past them.
  void AgeRevision(int n);

  // Scenarios shared by several tests (each asserts what it must; see chaos_test.cc).
  void ScenarioLeaderKill();
  void ScenarioQuorumLoss();
  void ScenarioWipeSameIdentity();
  // After etcd came back at `up` (MonoNow) with a rewound revision: the fleet is back and
  // every view equals etcd, no ghost, within TTL + 5 s.
  void ExpectBackAfterRewind(const std::string& when, absl::Time up);
  void ScenarioSnapshotRestore();

  const bool auth_ = false;
  std::unique_ptr<EtcdCluster> cluster_;
  EtcdOptions conn_options_;  // the test's own client: root when auth is on
  std::shared_ptr<Connection> conn_;
  std::vector<std::unique_ptr<TcpProxy>> proxies_;          // registrar 3's way to etcd
  std::vector<std::unique_ptr<TcpProxy>> watcher_proxies_;  // watcher 0's way to etcd
  int gateway_port_ = 0;
  std::unique_ptr<ChildProcess> gateway_;
  std::vector<std::unique_ptr<WatchProcess>> watchers_;
  std::map<int, std::unique_ptr<ChildProcess>> registrars_;
  std::string snapshot_dir_;
};

// The fleet with auth on, as deploy/ runs etcd.
class ChaosAuthTest : public ChaosTest {
 protected:
  ChaosAuthTest() : ChaosTest(/*auth=*/true) {}
};

}  // namespace discovery::chaos

#endif  // DISCOVERY_TESTS_CHAOS_CHAOS_FIXTURE_H_
