// Real-etcd test harness: starts throw-away etcd v3 clusters (1..N members on
// 127.0.0.1) for integration tests, and lets tests kill, stop, restart and wipe
// members. Everything is torn down by RAII, also when a test fails half-way, and child
// processes die with the test binary (PR_SET_PDEATHSIG).
//
//   auto cluster = EtcdCluster::Start({.members = 3});
//   ASSERT_TRUE(cluster.ok()) << cluster.status();
//   ... client configured with (*cluster)->ClientEndpoints() ...
//   ASSERT_TRUE((*cluster)->Kill(*(*cluster)->LeaderIndex()).ok());
//   EXPECT_TRUE(WaitUntil([&] { return ...; }, absl::Seconds(5)));
//
// All timeouts taken here are scaled by TimeScale() (env DISCOVERY_TEST_TIME_SCALE).
// Set DISCOVERY_TEST_KEEP_ETCD_DATA=1 to keep the cluster directory (data + logs) after
// the test for post-mortem debugging; its path is logged at start.

#ifndef DISCOVERY_TESTS_SUPPORT_ETCD_HARNESS_H_
#define DISCOVERY_TESTS_SUPPORT_ETCD_HARNESS_H_

#include <sys/types.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "child_process.h"  // IWYU pragma: export
#include "harness_util.h"   // IWYU pragma: export

namespace discovery::testing {

// Every field has a default member initializer so designated initializers
// ({.members = 3}) compile cleanly under -Wextra on GCC 12.
struct EtcdClusterOptions {
  int members = 1;
  // Appended to every member's command line (after the harness's own flags, so they
  // override them, e.g. {"--election-timeout", "1000"}).
  std::vector<std::string> extra_args = {};
  // Bound on bringing all members up healthy (scaled by TimeScale()).
  absl::Duration start_timeout = absl::Seconds(20);
  // Program name (looked up in $PATH) or path. A missing binary is an error, not a skip.
  std::string etcd_binary = "etcd";
  // Empty: `etcdctl` next to the resolved etcd binary, else from $PATH.
  std::string etcdctl_binary = {};
};

// Members are numbered 0..size()-1 and named "m<i>".
//
// Thread-safety: accessors, Etcdctl(), LeaderIndex() and WaitHealthy() may be called
// from any thread, also while a control method runs. Control methods (Kill, Stop, Cont,
// Restart, WipeAndRestartAll, EnableAuth) are meant to be called from the test's main
// thread (members are spawned by the calling thread; see ChildProcess about
// PR_SET_PDEATHSIG).
class EtcdCluster {
 public:
  // Starts opts.members etcd processes with fresh ports and data dirs (under /dev/shm
  // when it has room, else $TMPDIR or /tmp) and waits until every member reports
  // healthy. On a port clash the whole cluster is retried once with new ports. Errors
  // include the tail of the failing member's log.
  static absl::StatusOr<std::unique_ptr<EtcdCluster>> Start(EtcdClusterOptions opts = {});

  EtcdCluster(const EtcdCluster&) = delete;
  EtcdCluster& operator=(const EtcdCluster&) = delete;
  // SIGCONT + SIGKILL every member, reap, remove the cluster directory.
  ~EtcdCluster();

  int size() const { return static_cast<int>(members_.size()); }

  // "http://127.0.0.1:<client port>" of member i, whatever its state.
  std::string ClientEndpoint(int i) const;
  // Endpoints of all members (running or not), in member order.
  std::vector<std::string> ClientEndpoints() const;
  // ClientEndpoints() joined with ','.
  std::string EndpointsCsv() const;
  // Endpoints of members that are running and not SIGSTOPped.
  std::vector<std::string> LiveEndpoints() const;
  int ClientPort(int i) const;
  int PeerPort(int i) const;
  std::string MemberName(int i) const;

  // PID of member i's current process, or -1 after Kill().
  pid_t Pid(int i) const;
  // True if member i's process exists (a SIGSTOPped member is running).
  bool IsRunning(int i) const;
  // True if member i has been stopped with Stop() and not continued.
  bool IsStopped(int i) const;

  // SIGKILL + reap member i. OK if it was not running.
  absl::Status Kill(int i);
  // SIGSTOP member i (waits until the kernel reports it stopped).
  absl::Status Stop(int i);
  // SIGCONT member i (waits until it is no longer stopped; does not wait for health).
  absl::Status Cont(int i);
  // (Kills member i if still running, then) starts it again with the same name, ports
  // and data dir, and waits until it is healthy.
  absl::Status Restart(int i, absl::Duration timeout = absl::Seconds(20));
  // Kills every member, deletes all data dirs and bootstraps a brand-new cluster (new
  // cluster token, same names and ports), then waits until healthy: "etcd restarted
  // with wiped data". Stored auth credentials are forgotten (auth is off again).
  absl::Status WipeAndRestartAll(absl::Duration timeout = absl::Seconds(20));

  // Index of the member the live members consider leader. Unavailable while there is
  // no leader or the live members disagree (election in progress): poll with
  // WaitUntil if needed.
  absl::StatusOr<int> LeaderIndex();

  // Runs `etcdctl --endpoints=<LiveEndpoints()> [--user root:<pw>] args...` with
  // ETCDCTL_API=3. Returns stdout; an error containing stderr on non-zero exit; and
  // DeadlineExceeded (after killing etcdctl) when TimeScale(timeout) passes.
  absl::StatusOr<std::string> Etcdctl(const std::vector<std::string>& args,
                                      absl::Duration timeout = absl::Seconds(10));
  // Same, but talks to member i only (--endpoints=<ClientEndpoint(i)>), whatever its
  // state: e.g. a serializable read (--consistency=s) from one follower. Note that a
  // repeated --endpoints flag in `args` would be *appended* to the list by etcdctl.
  absl::StatusOr<std::string> EtcdctlAt(int i, const std::vector<std::string>& args,
                                        absl::Duration timeout = absl::Seconds(10));

  // Waits until every running, non-stopped member answers GET /health with
  // "health":"true". Fails early if a member process has exited. On failure the error
  // (and stderr) carries the tail of the unhealthy members' logs.
  absl::Status WaitHealthy(absl::Duration timeout = absl::Seconds(20));
  // Same for one member.
  absl::Status WaitMemberHealthy(int i, absl::Duration timeout = absl::Seconds(20));

  // `user add root:<pw>` + `auth enable`; afterwards Etcdctl() passes --user root:<pw>.
  absl::Status EnableAuth(std::string root_password);
  // "root:<pw>" after EnableAuth(), else empty.
  std::string Credentials() const;

  // Cluster directory (member data dirs and logs live below it).
  const std::string& dir() const { return dir_; }
  // etcd's own (zap) log of member i; stdout/stderr of the process sit next to it.
  std::string LogPath(int i) const;
  std::string StderrPath(int i) const;
  // Tail of member i's log and stderr, for failure messages.
  std::string LogTail(int i, size_t max_bytes = 6000) const;
  std::string cluster_token() const;

 private:
  struct Member {
    std::string name;
    int client_port = 0;
    int peer_port = 0;
    std::string member_dir;  // <dir>/<name>
    std::string data_dir;    // <member_dir>/data
    std::string log_path;    // <member_dir>/etcd.log
    std::string stdout_path;
    std::string stderr_path;
    std::shared_ptr<ChildProcess> proc;  // null after Kill()
    bool stopped = false;
  };
  struct Snapshot {
    int index;
    int client_port;
    std::shared_ptr<ChildProcess> proc;
  };

  explicit EtcdCluster(EtcdClusterOptions opts) : opts_(std::move(opts)) {}

  void CheckIndex(int i) const;
  // Picks new ports and a new token; (re)creates member dirs. Requires mu_.
  void AssignPortsLocked();
  std::string InitialClusterLocked() const;
  absl::Status SpawnMemberLocked(int i);
  void KillAllLocked();
  absl::Status WaitSnapshotsHealthy(const std::vector<Snapshot>& members, absl::Time deadline);
  absl::Status BootstrapAndWait(absl::Time deadline);
  bool AnyLogHasPortClash() const;

  struct CtlResult {
    int exit_value = -1;
    std::string out;
    std::string err;
  };
  absl::StatusOr<CtlResult> RunEtcdctl(const std::vector<std::string>& endpoints,
                                       const std::vector<std::string>& args,
                                       absl::Duration timeout);
  static absl::StatusOr<std::string> CtlOutput(absl::StatusOr<CtlResult> r,
                                               const std::vector<std::string>& args);

  const EtcdClusterOptions opts_;
  std::string etcd_path_;
  std::string etcdctl_path_;
  std::string dir_;
  bool keep_dir_ = false;

  mutable std::mutex mu_;
  std::vector<Member> members_;  // size fixed after Start(); ports fixed after Start()
  std::string token_;            // guarded by mu_ (changed only by control methods)
  std::string credentials_;      // guarded by mu_
  int generation_ = 0;           // bumps on every bootstrap (token suffix)
};

}  // namespace discovery::testing

#endif  // DISCOVERY_TESTS_SUPPORT_ETCD_HARNESS_H_
