// Tests of the real-etcd test harness itself (tests/support): ChildProcess, the small
// utilities, and EtcdCluster against the installed etcd binary.

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
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
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

}  // namespace
}  // namespace discovery::testing
