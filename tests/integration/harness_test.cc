// Tests of the real-etcd test harness itself (tests/support): ChildProcess, the small
// utilities, and EtcdCluster against the installed etcd binary (EtcdHarnessTest: the
// production habits: same-identity wipes, snapshot restore, RBAC users, auth tokens).

#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "etcd_harness.h"
#include "gtest/gtest.h"

namespace discovery::testing {
namespace {

bool ProcessGone(pid_t pid) { return ::kill(pid, 0) == -1 && errno == ESRCH; }

std::unique_ptr<EtcdCluster> StartOrDie(int members) {
  absl::StatusOr<std::unique_ptr<EtcdCluster>> cluster = EtcdCluster::Start({.members = members});
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  return cluster.ok() ? std::move(*cluster) : nullptr;
}

// Polls until `cluster` has a leader and returns its index (-1 on timeout).
int WaitForLeader(EtcdCluster& cluster) {
  int leader = -1;
  WaitUntil(
      [&] {
        absl::StatusOr<int> l = cluster.LeaderIndex();
        if (l.ok()) leader = *l;
        return l.ok();
      },
      absl::Seconds(10), absl::Milliseconds(50));
  return leader;
}

// ---------------------------------------------------------------- utilities

TEST(HarnessUtilTest, PickFreePortNeverRepeats) {
  std::set<int> ports;
  for (int i = 0; i < 50; ++i) {
    const int port = PickFreePort();
    EXPECT_GT(port, 0);
    EXPECT_LT(port, 65536);
    EXPECT_TRUE(ports.insert(port).second) << "port " << port << " returned twice";
  }
}

TEST(HarnessUtilTest, WaitUntilReturnsAsSoonAsTrueAndFalseOnTimeout) {
  int calls = 0;
  EXPECT_TRUE(WaitUntil([&] { return ++calls >= 3; }, absl::Seconds(5), absl::Milliseconds(1)));
  EXPECT_EQ(calls, 3);

  const absl::Time start = absl::Now();
  EXPECT_FALSE(WaitUntil([] { return false; }, absl::Milliseconds(100)));
  const absl::Duration took = absl::Now() - start;
  EXPECT_GE(took, TimeScale(absl::Milliseconds(100)));
  EXPECT_LT(took, TimeScale(absl::Seconds(2)));
}

TEST(HarnessUtilTest, TimeScaleIsPositive) {
  EXPECT_GT(TimeScaleFactor(), 0);
  EXPECT_EQ(TimeScale(absl::Seconds(2)), absl::Seconds(2) * TimeScaleFactor());
  EXPECT_EQ(TimeScale(absl::InfiniteDuration()), absl::InfiniteDuration());
}

TEST(HarnessUtilTest, HttpGetOnClosedPortFails) {
  absl::StatusOr<HttpResponse> r = HttpGet(PickFreePort(), "/health", absl::Milliseconds(500));
  EXPECT_FALSE(r.ok());
}

// ---------------------------------------------------------------- ChildProcess

TEST(ChildProcessTest, ReadLineAndExitCode) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> child =
      ChildProcess::Spawn({.argv = {"/bin/sh", "-c", "echo hi; exit 3"}, .stdout_to_pipe = true});
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_EQ((*child)->ReadLine(absl::Seconds(5)), "hi");
  absl::StatusOr<int> code = (*child)->Wait(absl::Seconds(5));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 3);
  EXPECT_FALSE((*child)->Running());
  EXPECT_EQ((*child)->ReadLine(absl::Milliseconds(100)), std::nullopt);  // EOF
  EXPECT_FALSE((*child)->Signal(SIGTERM).ok());  // reaped: never signal a recycled pid
}

TEST(ChildProcessTest, ReadLineTimesOut) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> child =
      ChildProcess::Spawn({.argv = {"sleep", "100"}, .stdout_to_pipe = true});
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_EQ((*child)->ReadLine(absl::Milliseconds(50)), std::nullopt);
  EXPECT_TRUE((*child)->Running());
}

TEST(ChildProcessTest, OutputFilesAndEnvironment) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> child =
      ChildProcess::Spawn({.argv = {"/bin/sh", "-c", "echo \"$HARNESS_FOO\"; echo oops >&2"},
                           .env = {{"HARNESS_FOO", "bar"}}});
  ASSERT_TRUE(child.ok()) << child.status();
  absl::StatusOr<int> code = (*child)->Wait(absl::Seconds(5));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
  EXPECT_EQ((*child)->ReadStdout(), "bar\n");
  EXPECT_EQ((*child)->ReadStderr(), "oops\n");
  EXPECT_TRUE(std::filesystem::exists((*child)->stdout_path()));
}

TEST(ChildProcessTest, SigkillGives128PlusSignal) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> child =
      ChildProcess::Spawn({.argv = {"sleep", "100"}});
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_TRUE((*child)->Running());
  EXPECT_EQ((*child)->Wait(absl::Milliseconds(20)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE((*child)->Signal(SIGKILL).ok());
  absl::StatusOr<int> code = (*child)->Wait(absl::Seconds(5));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 128 + SIGKILL);
}

TEST(ChildProcessTest, DestructorKillsAndReaps) {
  pid_t pid = -1;
  std::string dir;
  {
    absl::StatusOr<std::unique_ptr<ChildProcess>> child =
        ChildProcess::Spawn({.argv = {"sleep", "100"}});
    ASSERT_TRUE(child.ok()) << child.status();
    pid = (*child)->pid();
    dir = std::filesystem::path((*child)->stdout_path()).parent_path().string();
    ASSERT_EQ(::kill(pid, 0), 0);
  }
  EXPECT_TRUE(ProcessGone(pid));  // killed *and* reaped: not even a zombie is left
  EXPECT_FALSE(std::filesystem::exists(dir));
}

TEST(ChildProcessTest, MissingProgramIsAnError) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> child =
      ChildProcess::Spawn({.argv = {"discovery-no-such-program"}});
  EXPECT_EQ(child.status().code(), absl::StatusCode::kNotFound);
}

// ---------------------------------------------------------------- EtcdCluster

TEST(EtcdClusterTest, MissingEtcdBinaryIsAClearError) {
  absl::StatusOr<std::unique_ptr<EtcdCluster>> cluster =
      EtcdCluster::Start({.etcd_binary = "discovery-no-such-etcd"});
  ASSERT_FALSE(cluster.ok());
  EXPECT_EQ(cluster.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(cluster.status().message(),
                                "etcd binary not found in PATH; run scripts/install-deps"))
      << cluster.status();
}

TEST(EtcdClusterTest, MemberThatDiesAtStartFailsFastWithItsLog) {
  EtcdClusterOptions opts;
  opts.extra_args = {"--no-such-flag"};
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<EtcdCluster>> cluster = EtcdCluster::Start(opts);
  ASSERT_FALSE(cluster.ok());
  EXPECT_LT(absl::Now() - start, TimeScale(absl::Seconds(5)));  // not the full start_timeout
  EXPECT_TRUE(absl::StrContains(cluster.status().message(), "no-such-flag")) << cluster.status();
}

TEST(EtcdClusterTest, SingleNodePutGetAndCleanTeardown) {
  std::unique_ptr<EtcdCluster> cluster = StartOrDie(1);
  ASSERT_NE(cluster, nullptr);
  EXPECT_EQ(cluster->size(), 1);
  EXPECT_EQ(cluster->ClientEndpoint(0), absl::StrCat("http://127.0.0.1:", cluster->ClientPort(0)));
  EXPECT_EQ(cluster->EndpointsCsv(), cluster->ClientEndpoint(0));
  EXPECT_TRUE(cluster->IsRunning(0));

  absl::StatusOr<std::string> put = cluster->Etcdctl({"put", "/harness/k", "v1"});
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(*put, "OK\n");
  absl::StatusOr<std::string> get = cluster->Etcdctl({"get", "/harness/k", "--print-value-only"});
  ASSERT_TRUE(get.ok()) << get.status();
  EXPECT_EQ(*get, "v1\n");

  absl::StatusOr<int> leader = cluster->LeaderIndex();
  ASSERT_TRUE(leader.ok()) << leader.status();
  EXPECT_EQ(*leader, 0);

  // etcdctl failures carry stderr.
  absl::StatusOr<std::string> bad = cluster->Etcdctl({"no-such-command"});
  EXPECT_FALSE(bad.ok());

  EXPECT_TRUE(std::filesystem::exists(cluster->LogPath(0)));
  const pid_t pid = cluster->Pid(0);
  const std::string dir = cluster->dir();
  cluster.reset();
  EXPECT_TRUE(ProcessGone(pid));
  EXPECT_FALSE(std::filesystem::exists(dir));
}

TEST(EtcdClusterTest, AuthCredentialsAreUsedAfterEnableAuth) {
  std::unique_ptr<EtcdCluster> cluster = StartOrDie(1);
  ASSERT_NE(cluster, nullptr);
  ASSERT_TRUE(cluster->EnableAuth("s3cret").ok());
  EXPECT_EQ(cluster->Credentials(), "root:s3cret");
  absl::StatusOr<std::string> put = cluster->Etcdctl({"put", "/harness/auth", "yes"});
  EXPECT_TRUE(put.ok()) << put.status();

  // Without credentials the same request is rejected.
  absl::StatusOr<std::unique_ptr<ChildProcess>> anon = ChildProcess::Spawn(
      {.argv = {"etcdctl", "--endpoints=" + cluster->EndpointsCsv(), "put", "/harness/auth", "no"},
       .env = {{"ETCDCTL_API", "3"}},
       .unset_env_prefixes = {"ETCDCTL_"}});
  ASSERT_TRUE(anon.ok()) << anon.status();
  absl::StatusOr<int> code = (*anon)->Wait(absl::Seconds(10));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_NE(*code, 0);
  EXPECT_TRUE(cluster->WaitHealthy(absl::Seconds(5)).ok());
}

TEST(EtcdClusterTest, ThreeNodesSurviveLeaderKillAndRestart) {
  std::unique_ptr<EtcdCluster> cluster = StartOrDie(3);
  ASSERT_NE(cluster, nullptr);
  ASSERT_EQ(cluster->ClientEndpoints().size(), 3u);
  const int leader = WaitForLeader(*cluster);
  ASSERT_GE(leader, 0);

  const pid_t old_pid = cluster->Pid(leader);
  ASSERT_TRUE(cluster->Kill(leader).ok());
  EXPECT_FALSE(cluster->IsRunning(leader));
  EXPECT_EQ(cluster->Pid(leader), -1);
  EXPECT_TRUE(ProcessGone(old_pid));
  EXPECT_EQ(cluster->LiveEndpoints().size(), 2u);

  // The remaining two elect a new leader and serve writes.
  absl::Status last;
  EXPECT_TRUE(WaitUntil(
      [&] {
        absl::StatusOr<std::string> r =
            cluster->Etcdctl({"put", "/harness/after-kill", "1"}, absl::Seconds(1));
        last = r.status();
        return r.ok();
      },
      absl::Seconds(10), absl::Milliseconds(50)))
      << last;
  const int new_leader = WaitForLeader(*cluster);
  EXPECT_GE(new_leader, 0);
  EXPECT_NE(new_leader, leader);

  // Restart the killed member: same name, ports and data; it catches up.
  absl::Status restarted = cluster->Restart(leader, absl::Seconds(15));
  ASSERT_TRUE(restarted.ok()) << restarted;
  EXPECT_TRUE(cluster->IsRunning(leader));
  EXPECT_NE(cluster->Pid(leader), old_pid);
  ASSERT_TRUE(cluster->WaitHealthy(absl::Seconds(10)).ok());
  // Linearizable read served through the restarted member alone.
  absl::StatusOr<std::string> get =
      cluster->EtcdctlAt(leader, {"get", "/harness/after-kill", "--print-value-only"});
  ASSERT_TRUE(get.ok()) << get.status();
  EXPECT_EQ(*get, "1\n");
}

TEST(EtcdClusterTest, StopAndContMember) {
  std::unique_ptr<EtcdCluster> cluster = StartOrDie(3);
  ASSERT_NE(cluster, nullptr);
  const int leader = WaitForLeader(*cluster);
  ASSERT_GE(leader, 0);
  const int follower = (leader + 1) % 3;

  ASSERT_TRUE(cluster->Stop(follower).ok());
  EXPECT_TRUE(cluster->IsStopped(follower));
  EXPECT_TRUE(cluster->IsRunning(follower));
  EXPECT_EQ(cluster->LiveEndpoints().size(), 2u);
  // A stopped member accepts TCP connections (kernel backlog) but never answers.
  EXPECT_FALSE(HttpGet(cluster->ClientPort(follower), "/health", absl::Milliseconds(300)).ok());
  absl::StatusOr<std::string> put = cluster->Etcdctl({"put", "/harness/stopped", "1"});
  EXPECT_TRUE(put.ok()) << put.status();

  ASSERT_TRUE(cluster->Cont(follower).ok());
  EXPECT_FALSE(cluster->IsStopped(follower));
  absl::Status healthy = cluster->WaitHealthy(absl::Seconds(10));
  EXPECT_TRUE(healthy.ok()) << healthy;
  // Serializable read from the resumed follower alone: it catches up shortly.
  absl::StatusOr<std::string> get;
  EXPECT_TRUE(WaitUntil(
      [&] {
        get = cluster->EtcdctlAt(
            follower, {"get", "/harness/stopped", "--print-value-only", "--consistency=s"});
        return get.ok() && *get == "1\n";
      },
      absl::Seconds(5)))
      << get.status();
}

TEST(EtcdClusterTest, WipeAndRestartAllStartsAnEmptyClusterOnTheSamePorts) {
  std::unique_ptr<EtcdCluster> cluster = StartOrDie(3);
  ASSERT_NE(cluster, nullptr);
  ASSERT_TRUE(cluster->Etcdctl({"put", "/harness/wiped", "x"}).ok());
  const std::vector<std::string> endpoints = cluster->ClientEndpoints();
  const std::string token = cluster->cluster_token();
  std::vector<pid_t> old_pids;
  for (int i = 0; i < cluster->size(); ++i) old_pids.push_back(cluster->Pid(i));

  absl::Status wiped = cluster->WipeAndRestartAll();
  ASSERT_TRUE(wiped.ok()) << wiped;
  EXPECT_EQ(cluster->ClientEndpoints(), endpoints);
  EXPECT_NE(cluster->cluster_token(), token);
  for (pid_t pid : old_pids) EXPECT_TRUE(ProcessGone(pid));

  absl::StatusOr<std::string> get = cluster->Etcdctl({"get", "/harness/wiped"});
  ASSERT_TRUE(get.ok()) << get.status();
  EXPECT_EQ(*get, "");
  absl::StatusOr<std::string> put = cluster->Etcdctl({"put", "/harness/wiped", "y"});
  EXPECT_TRUE(put.ok()) << put.status();
  EXPECT_GE(WaitForLeader(*cluster), 0);
}

// ---------------------------------------------------------------- production habits

// MemberStatus(i) or a failed expectation (and a zero status).
EtcdMemberStatus StatusOf(EtcdCluster& cluster, int i) {
  absl::StatusOr<EtcdMemberStatus> s = cluster.MemberStatus(i);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : EtcdMemberStatus{};
}

// `etcdctl get --prefix <prefix>` as root: "key\nvalue\n..." (or the error text).
std::string Dump(EtcdCluster& cluster, const std::string& prefix) {
  absl::StatusOr<std::string> out = cluster.Etcdctl({"get", "--prefix", prefix});
  return out.ok() ? *out : std::string(out.status().message());
}

// Range request for `key` through member i's gRPC gateway with a simple token.
absl::StatusOr<HttpResponse> RangeWithToken(EtcdCluster& cluster, int i, const std::string& key,
                                            const std::string& token) {
  return cluster.GatewayPost(i, "/v3/kv/range",
                             absl::StrCat("{\"key\":\"", absl::Base64Escape(key), "\"}"), token);
}

TEST(EtcdHarnessTest, WipeAndRestartSameIdentityKeepsClusterIdButRevisionStartsOver) {
  std::unique_ptr<EtcdCluster> cluster = StartOrDie(3);
  ASSERT_NE(cluster, nullptr);
  for (int k = 0; k < 5; ++k) {
    ASSERT_TRUE(cluster->Etcdctl({"put", absl::StrCat("/harness/k", k), "v"}).ok());
  }
  const std::string token = cluster->cluster_token();
  const std::vector<std::string> endpoints = cluster->ClientEndpoints();
  std::vector<EtcdMemberStatus> before;
  for (int i = 0; i < 3; ++i) before.push_back(StatusOf(*cluster, i));
  ASSERT_NE(before[0].cluster_id, 0u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(before[static_cast<size_t>(i)].cluster_id, before[0].cluster_id);
    EXPECT_GE(before[static_cast<size_t>(i)].revision, 6);
  }

  // "systemctl restart etcd" of the leader changes nothing either.
  const int leader = WaitForLeader(*cluster);
  ASSERT_GE(leader, 0);
  absl::Status restarted = cluster->GracefulRestart(leader);
  ASSERT_TRUE(restarted.ok()) << restarted;
  EXPECT_EQ(StatusOf(*cluster, leader).cluster_id, before[0].cluster_id);
  EXPECT_EQ(StatusOf(*cluster, leader).revision, before[0].revision);

  ASSERT_TRUE(cluster->EnableAuth("s3cret").ok());
  absl::Status wiped = cluster->WipeAndRestartSameIdentity();
  ASSERT_TRUE(wiped.ok()) << wiped;
  EXPECT_EQ(cluster->cluster_token(), token);
  EXPECT_EQ(cluster->ClientEndpoints(), endpoints);
  EXPECT_EQ(cluster->Credentials(), "");  // auth is off again
  for (int i = 0; i < 3; ++i) {
    const EtcdMemberStatus after = StatusOf(*cluster, i);
    EXPECT_EQ(after.cluster_id, before[0].cluster_id) << "member " << i;
    EXPECT_EQ(after.member_id, before[static_cast<size_t>(i)].member_id) << "member " << i;
    EXPECT_EQ(after.revision, 1) << "member " << i;
  }
  EXPECT_EQ(Dump(*cluster, "/harness/"), "");
  absl::StatusOr<std::string> anon = cluster->EtcdctlAs("", {"put", "/harness/anon", "ok"});
  EXPECT_TRUE(anon.ok()) << anon.status();

  // Whereas WipeAndRestartAll (new token) gives a different cluster id.
  ASSERT_TRUE(cluster->WipeAndRestartAll().ok());
  EXPECT_NE(StatusOf(*cluster, 0).cluster_id, before[0].cluster_id);
  EXPECT_EQ(StatusOf(*cluster, 0).revision, 1);
}

TEST(EtcdHarnessTest, SnapshotRestoreBringsBackKeysRevisionAndAuth) {
  std::unique_ptr<EtcdCluster> cluster = StartOrDie(3);
  ASSERT_NE(cluster, nullptr);
  ASSERT_TRUE(cluster->Etcdctl({"put", "/harness/a", "1"}).ok());
  ASSERT_TRUE(cluster->Etcdctl({"put", "/harness/b", "2"}).ok());
  ASSERT_TRUE(cluster->EnableAuth("s3cret").ok());
  const EtcdMemberStatus at_save = StatusOf(*cluster, 0);
  const std::string snap = cluster->dir() + "/backup.db";
  absl::Status saved = cluster->SnapshotSave(snap);
  ASSERT_TRUE(saved.ok()) << saved;
  ASSERT_TRUE(std::filesystem::exists(snap));
  const std::string dump_at_save = Dump(*cluster, "/harness/");
  EXPECT_EQ(dump_at_save, "/harness/a\n1\n/harness/b\n2\n");

  // Life goes on after the backup...
  ASSERT_TRUE(cluster->Etcdctl({"put", "/harness/c", "3"}).ok());
  ASSERT_TRUE(cluster->Etcdctl({"del", "/harness/a"}).ok());
  ASSERT_TRUE(cluster->Etcdctl({"put", "/harness/b", "22"}).ok());
  const int64_t rev_before_restore = StatusOf(*cluster, 0).revision;
  ASSERT_EQ(rev_before_restore, at_save.revision + 3);

  // ...until the cluster is restored from it.
  absl::Status restored = cluster->RestoreSnapshot(snap);
  ASSERT_TRUE(restored.ok()) << restored;
  EXPECT_EQ(cluster->Credentials(), "root:s3cret");
  for (int i = 0; i < 3; ++i) {
    const EtcdMemberStatus s = StatusOf(*cluster, i);
    EXPECT_EQ(s.cluster_id, at_save.cluster_id) << "member " << i;
    EXPECT_EQ(s.revision, at_save.revision) << "member " << i;
  }
  EXPECT_EQ(Dump(*cluster, "/harness/"), dump_at_save);
  EXPECT_FALSE(cluster->EtcdctlAs("", {"get", "/harness/a"}).ok());  // auth still on
  EXPECT_GE(WaitForLeader(*cluster), 0);
  ASSERT_TRUE(cluster->Etcdctl({"put", "/harness/d", "4"}).ok());
  EXPECT_EQ(StatusOf(*cluster, 1).revision, at_save.revision + 1);
}

TEST(EtcdHarnessTest, SnapshotRestoreFollowsTheSnapshotsAuthAndTheCurrentToken) {
  std::unique_ptr<EtcdCluster> cluster = StartOrDie(1);
  ASSERT_NE(cluster, nullptr);
  ASSERT_TRUE(cluster->Etcdctl({"put", "/harness/k", "plain"}).ok());
  absl::StatusOr<std::string> lease = cluster->Etcdctl({"lease", "grant", "600"});
  ASSERT_TRUE(lease.ok()) << lease.status();
  const std::vector<std::string> words = absl::StrSplit(*lease, ' ');  // lease <id> granted...
  ASSERT_GE(words.size(), 2u) << *lease;
  const std::string lease_id = words[1];
  ASSERT_TRUE(cluster->Etcdctl({"put", "/leased/k", "v", "--lease=" + lease_id}).ok());
  const EtcdMemberStatus original = StatusOf(*cluster, 0);
  const std::string plain = cluster->dir() + "/plain.db";
  ASSERT_TRUE(cluster->SnapshotSave(plain).ok());
  ASSERT_TRUE(cluster->EnableAuth("s3cret").ok());
  ASSERT_TRUE(cluster->Etcdctl({"put", "/harness/k", "auth"}).ok());
  const std::string with_auth = cluster->dir() + "/auth.db";
  ASSERT_TRUE(cluster->SnapshotSave(with_auth).ok());

  // A snapshot taken before `auth enable` brings the cluster back without auth.
  absl::Status restored = cluster->RestoreSnapshot(plain);
  ASSERT_TRUE(restored.ok()) << restored;
  EXPECT_EQ(cluster->Credentials(), "");
  absl::StatusOr<std::string> anon = cluster->EtcdctlAs("", {"get", "/harness/k"});
  ASSERT_TRUE(anon.ok()) << anon.status();
  EXPECT_EQ(*anon, "/harness/k\nplain\n");
  EXPECT_EQ(StatusOf(*cluster, 0).revision, original.revision);
  // Leases come back with their keys.
  absl::StatusOr<std::string> ttl = cluster->Etcdctl({"lease", "timetolive", lease_id, "--keys"});
  ASSERT_TRUE(ttl.ok()) << ttl.status();
  EXPECT_TRUE(absl::StrContains(*ttl, "attached keys([/leased/k])")) << *ttl;

  // And back to the one with auth.
  restored = cluster->RestoreSnapshot(with_auth);
  ASSERT_TRUE(restored.ok()) << restored;
  EXPECT_EQ(cluster->Credentials(), "root:s3cret");
  EXPECT_EQ(Dump(*cluster, "/harness/"), "/harness/k\nauth\n");
  EXPECT_FALSE(cluster->EtcdctlAs("", {"get", "/harness/k"}).ok());

  // The cluster id is derived from token + member URLs, not read from the snapshot:
  // after WipeAndRestartAll (new token) a restore keeps the new id.
  ASSERT_TRUE(cluster->WipeAndRestartAll().ok());
  const uint64_t new_id = StatusOf(*cluster, 0).cluster_id;
  EXPECT_NE(new_id, original.cluster_id);
  restored = cluster->RestoreSnapshot(plain);
  ASSERT_TRUE(restored.ok()) << restored;
  EXPECT_EQ(StatusOf(*cluster, 0).cluster_id, new_id);
  EXPECT_EQ(Dump(*cluster, "/harness/"), "/harness/k\nplain\n");

  EXPECT_EQ(cluster->RestoreSnapshot(cluster->dir() + "/missing.db").code(),
            absl::StatusCode::kNotFound);
}

TEST(EtcdHarnessTest, EnableAuthWithUsersGrantsOnlyWhatRbacShGrants) {
  std::unique_ptr<EtcdCluster> cluster = StartOrDie(1);
  ASSERT_NE(cluster, nullptr);
  using Type = EtcdPermission::Type;
  const EtcdUser registrar{.name = "discovery-registrar",
                           .password = "reg:pw",
                           .permissions = {EtcdPermission::Prefix("/services/"),
                                           EtcdPermission::Key("/config/registrar")}};
  const EtcdUser reader{.name = "discovery-reader",
                        .password = "read-pw",
                        .permissions = {EtcdPermission::Prefix("/services/", Type::kRead),
                                        EtcdPermission::Range("/r/a", "/r/c", Type::kRead)}};
  absl::Status enabled = cluster->EnableAuthWithUsers("rootpw", {registrar, reader});
  ASSERT_TRUE(enabled.ok()) << enabled;
  EXPECT_EQ(cluster->Credentials(), "root:rootpw");
  EXPECT_EQ(cluster->EnableAuthWithUsers("rootpw", {}).code(),
            absl::StatusCode::kFailedPrecondition);

  const std::string reg = registrar.credentials();
  const std::string rd = reader.credentials();
  auto ok = [&](const std::string& who, std::vector<std::string> args) {
    absl::StatusOr<std::string> r = cluster->EtcdctlAs(who, args);
    return r.ok() ? ::testing::AssertionSuccess() : ::testing::AssertionFailure() << r.status();
  };
  auto denied = [&](const std::string& who, std::vector<std::string> args) {
    absl::StatusOr<std::string> r = cluster->EtcdctlAs(who, args);
    if (r.ok()) return ::testing::AssertionFailure() << "allowed: " << *r;
    if (!absl::StrContains(r.status().message(), "permission denied") &&
        !absl::StrContains(r.status().message(), "user name is empty")) {
      return ::testing::AssertionFailure() << "failed for another reason: " << r.status();
    }
    return ::testing::AssertionSuccess();
  };

  EXPECT_TRUE(ok(reg, {"put", "/services/a", "1"}));
  EXPECT_TRUE(ok(reg, {"get", "/services/a"}));
  EXPECT_TRUE(ok(reg, {"get", "--prefix", "/services/"}));
  EXPECT_TRUE(ok(reg, {"put", "/config/registrar", "x"}));
  EXPECT_TRUE(denied(reg, {"put", "/config/registrar2", "x"}));  // a single key, no prefix
  EXPECT_TRUE(denied(reg, {"put", "/other", "x"}));
  EXPECT_TRUE(denied(reg, {"get", "/r/b"}));
  // Leases need no role; a lease-bound put is checked against the key only.
  absl::StatusOr<std::string> lease = cluster->EtcdctlAs(reg, {"lease", "grant", "30"});
  ASSERT_TRUE(lease.ok()) << lease.status();
  const std::vector<std::string> words = absl::StrSplit(*lease, ' ');  // lease <id> granted...
  ASSERT_GE(words.size(), 2u) << *lease;
  EXPECT_TRUE(ok(reg, {"put", "/services/leased", "1", "--lease=" + words[1]}));

  EXPECT_TRUE(ok(rd, {"get", "--prefix", "/services/"}));
  EXPECT_TRUE(ok(rd, {"get", "/r/b"}));
  EXPECT_TRUE(denied(rd, {"get", "/r/c"}));  // range end is exclusive
  EXPECT_TRUE(denied(rd, {"put", "/services/a", "2"}));
  EXPECT_TRUE(denied(rd, {"get", "/config/registrar"}));

  EXPECT_TRUE(denied("", {"get", "/services/a"}));
  EXPECT_FALSE(cluster->EtcdctlAs("discovery-reader:wrong", {"get", "/services/a"}).ok());
  EXPECT_TRUE(ok(cluster->Credentials(), {"put", "/other", "root may"}));

  // Users can be added later, with auth on (rbac.sh run again after adding a user).
  absl::Status added =
      cluster->AddUser({.name = "late", .password = "pw", .role = "discovery-reader"});
  ASSERT_TRUE(added.ok()) << added;
  EXPECT_TRUE(ok("late:pw", {"get", "/services/a"}));
  EXPECT_TRUE(denied("late:pw", {"put", "/services/a", "3"}));
}

TEST(EtcdHarnessTest, SimpleTokenExpiresAfterIdleTtl) {
  absl::StatusOr<std::unique_ptr<EtcdCluster>> started =
      EtcdCluster::Start({.extra_args = {"--auth-token-ttl", "2"}});
  ASSERT_TRUE(started.ok()) << started.status();
  EtcdCluster& cluster = **started;
  absl::Status enabled = cluster.EnableAuthWithUser("rootpw", "app", "app-pw", {"/app/"});
  ASSERT_TRUE(enabled.ok()) << enabled;

  absl::StatusOr<std::string> token = cluster.SimpleToken(0, "app", "app-pw");
  ASSERT_TRUE(token.ok()) << token.status();
  absl::StatusOr<HttpResponse> r = RangeWithToken(cluster, 0, "/app/x", *token);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200) << r->body;
  r = RangeWithToken(cluster, 0, "/other", *token);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(absl::StrContains(r->body, "permission denied")) << r->body;

  // The TTL counts from the last use and etcd sweeps once a second: after 2 s + 1 s +
  // margin of idleness the token must be gone. The idle time itself is what is tested
  // (any probe would restart the TTL), hence a plain wait here.
  absl::SleepFor(absl::Milliseconds(3500));
  r = RangeWithToken(cluster, 0, "/app/x", *token);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 401) << r->body;
  EXPECT_TRUE(absl::StrContains(r->body, "invalid auth token")) << r->body;

  token = cluster.SimpleToken(0, "app", "app-pw");
  ASSERT_TRUE(token.ok()) << token.status();
  r = RangeWithToken(cluster, 0, "/app/x", *token);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200) << r->body;
}

TEST(EtcdHarnessTest, SimpleTokenSurvivesRestartUntilAWriteIsPersisted) {
  std::unique_ptr<EtcdCluster> cluster = StartOrDie(1);
  ASSERT_NE(cluster, nullptr);
  ASSERT_TRUE(cluster->EnableAuthWithUser("rootpw", "app", "app-pw", {"/app/"}).ok());
  absl::StatusOr<std::string> token = cluster->SimpleToken(0, "app", "app-pw");
  ASSERT_TRUE(token.ok()) << token.status();

  // No write since the login: the restarted member re-applies the Authenticate entry
  // from its WAL, and the token works again.
  absl::Status restarted = cluster->Restart(0);
  ASSERT_TRUE(restarted.ok()) << restarted;
  absl::StatusOr<HttpResponse> r = RangeWithToken(*cluster, 0, "/app/x", *token);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200) << r->body;

  // A write, flushed by the graceful stop, moves the persisted consistent index past
  // the login: now the token is forgotten.
  ASSERT_TRUE(cluster->EtcdctlAs("app:app-pw", {"put", "/app/x", "1"}).ok());
  restarted = cluster->GracefulRestart(0);
  ASSERT_TRUE(restarted.ok()) << restarted;
  r = RangeWithToken(*cluster, 0, "/app/x", *token);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 401) << r->body;
  EXPECT_TRUE(absl::StrContains(r->body, "invalid auth token")) << r->body;
  EXPECT_EQ(cluster->Credentials(), "root:rootpw");  // auth is persistent, tokens are not
  absl::StatusOr<std::string> fresh = cluster->SimpleToken(0, "app", "app-pw");
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  r = RangeWithToken(*cluster, 0, "/app/x", *fresh);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200) << r->body;
}

}  // namespace
}  // namespace discovery::testing
