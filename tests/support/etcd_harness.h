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

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
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
  //
  // {"--auth-token-ttl", "3"} (etcd >= 3.4) shortens the life of *simple* auth tokens
  // (the default token type, what etcdctl and clients get from Authenticate) from 300 s
  // to 3 s. It is an idle timeout: every request made with the token restarts it, and
  // etcd sweeps expired tokens once a second, so an unused token is rejected ("invalid
  // auth token") between 3 and 4 s after its last use (SimpleTokenExpiresAfterIdleTtl).
  std::vector<std::string> extra_args = {};
  // Bound on bringing all members up healthy (scaled by TimeScale()).
  absl::Duration start_timeout = absl::Seconds(20);
  // Program name (looked up in $PATH) or path. A missing binary is an error, not a skip.
  std::string etcd_binary = "etcd";
  // Empty: `etcdctl` next to the resolved etcd binary, else from $PATH.
  std::string etcdctl_binary = {};
};

// One permission of an etcd role (`etcdctl role grant-permission`).
struct EtcdPermission {
  enum class Type { kRead, kWrite, kReadWrite };
  std::string key = {};
  // Empty: the single key `key` (with `prefix`: every key starting with `key`).
  // Otherwise the range [key, range_end); "\0" means every key >= key.
  std::string range_end = {};
  bool prefix = false;
  Type type = Type::kReadWrite;

  static EtcdPermission Prefix(std::string prefix, Type type = Type::kReadWrite) {
    return {.key = std::move(prefix), .prefix = true, .type = type};
  }
  static EtcdPermission Key(std::string key, Type type = Type::kReadWrite) {
    return {.key = std::move(key), .type = type};
  }
  static EtcdPermission Range(std::string begin, std::string end, Type type = Type::kReadWrite) {
    return {.key = std::move(begin), .range_end = std::move(end), .type = type};
  }
};

// An etcd user with one role, created like deploy/etcd/rbac.sh does.
struct EtcdUser {
  std::string name = {};
  // Empty: created with --no-password (can only log in with a client certificate CN).
  std::string password = {};
  // Empty: a role named like the user. Several users may share a role; its permissions
  // are the union of what they list.
  std::string role = {};
  std::vector<EtcdPermission> permissions = {};

  // "name:password", for EtcdctlAs().
  std::string credentials() const { return name + ":" + password; }
};

// What `etcdctl endpoint status -w json` says about one member.
struct EtcdMemberStatus {
  uint64_t cluster_id = 0;
  uint64_t member_id = 0;
  int64_t revision = 0;  // current store revision (1 on an empty cluster)
  uint64_t raft_term = 0;
  uint64_t raft_index = 0;
  uint64_t leader = 0;  // member id of the leader, 0 if none
};

// Members are numbered 0..size()-1 and named "m<i>".
//
// Thread-safety: accessors, Etcdctl(), LeaderIndex() and WaitHealthy() may be called
// from any thread, also while a control method runs. Control methods (Kill, Stop, Cont,
// Restart, GracefulRestart, WipeAndRestartAll, WipeAndRestartSameIdentity,
// RestoreSnapshot, EnableAuth*, AddUser) are meant to be called from the test's main
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
  //
  // Simple auth tokens and restarts: tokens live in memory, but etcd hands them out in
  // a raft entry (Authenticate) and, when it starts, re-applies the WAL entries past the
  // consistent index persisted in its backend, which only a *write* (put, delete, txn,
  // lease...) moves forward. So a token survives Restart() when no write has been
  // persisted since it was issued (by the 100 ms backend commit loop, or on a graceful
  // stop). To make a member reliably forget its tokens, write something, then
  // GracefulRestart() it (SimpleTokenSurvivesRestartUntilAWriteIsPersisted).
  absl::Status Restart(int i, absl::Duration timeout = absl::Seconds(20));
  // Like Restart(), but stops member i with SIGTERM first (etcd transfers leadership
  // and flushes its backend: "systemctl restart etcd") and waits for it to exit; if it
  // has not exited within `timeout` it is killed and an error returned.
  absl::Status GracefulRestart(int i, absl::Duration timeout = absl::Seconds(20));
  // Kills every member, deletes all data dirs and bootstraps a brand-new cluster (new
  // cluster token, same names and ports), then waits until healthy: "etcd restarted
  // with wiped data". The cluster id changes. Stored auth credentials are forgotten
  // (auth is off again).
  absl::Status WipeAndRestartAll(absl::Duration timeout = absl::Seconds(20));
  // Same, but bootstraps again with the same cluster token, names and URLs, like a
  // deployment that re-creates etcd from its unchanged configuration: the cluster and
  // member ids come out the same (etcd derives them from token + peer URLs) while the
  // revision starts again from 1. Auth is off again, credentials forgotten.
  absl::Status WipeAndRestartSameIdentity(absl::Duration timeout = absl::Seconds(20));

  // `etcdctl snapshot save <path>` from one live member (as root when auth is on).
  // Remembers Credentials() for RestoreSnapshot(path).
  absl::Status SnapshotSave(const std::string& path);
  // Disaster recovery as documented by etcd: kills every member, deletes the data dirs,
  // runs `etcdctl snapshot restore <path>` for every member with its name, the current
  // cluster token and the member URLs, then starts the members on the restored data
  // (same flags and ports) and waits until healthy. Afterwards: keys, leases (with
  // their keys), users, roles and the auth switch are those of the snapshot; the
  // revision is the snapshot's; the raft log starts anew (raft index from a few
  // entries, not the snapshot's); the cluster id is re-derived from token + member
  // URLs, so it is unchanged unless the token changed since (WipeAndRestartAll).
  // Credentials() become those remembered by SnapshotSave() for this path (a path not
  // saved by this cluster keeps the current ones).
  absl::Status RestoreSnapshot(const std::string& path, absl::Duration timeout = absl::Seconds(20));

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
  // Like Etcdctl() but as another user: `credentials` is "user:password", or empty for
  // an anonymous call (no --user at all).
  absl::StatusOr<std::string> EtcdctlAs(const std::string& credentials,
                                        const std::vector<std::string>& args,
                                        absl::Duration timeout = absl::Seconds(10));

  // `etcdctl endpoint status -w json` of member i.
  absl::StatusOr<EtcdMemberStatus> MemberStatus(int i);

  // Waits until every running, non-stopped member answers GET /health with
  // "health":"true". Fails early if a member process has exited. On failure the error
  // (and stderr) carries the tail of the unhealthy members' logs.
  absl::Status WaitHealthy(absl::Duration timeout = absl::Seconds(20));
  // Same for one member.
  absl::Status WaitMemberHealthy(int i, absl::Duration timeout = absl::Seconds(20));

  // `user add root:<pw>` + `auth enable`; afterwards Etcdctl() passes --user root:<pw>.
  absl::Status EnableAuth(std::string root_password);
  // What deploy/etcd/rbac.sh does: user root (with role root), then for every user its
  // role with the listed permissions, the user, the grant, and finally `auth enable`.
  // Auth must be off. Afterwards Etcdctl() runs as root and EtcdctlAs(u.credentials())
  // as user u.
  absl::Status EnableAuthWithUsers(std::string root_password, const std::vector<EtcdUser>& users);
  // Shorthand: one user with a role of the same name, readwrite on each prefix.
  absl::Status EnableAuthWithUser(std::string root_password, std::string user, std::string password,
                                  std::vector<std::string> prefixes);
  // Adds (role if missing, permissions, user, grant) one user; auth may be on or off.
  absl::Status AddUser(const EtcdUser& user);

  // A simple auth token from member i's gRPC gateway (POST /v3/auth/authenticate), the
  // way a client logs in once and reuses its token (etcdctl logs in on every call).
  absl::StatusOr<std::string> SimpleToken(int i, const std::string& user,
                                          const std::string& password);
  // POST of a JSON body to member i's gRPC gateway (e.g. "/v3/kv/range" with
  // {"key":"<base64>"}), with `token` as Authorization header unless empty. An invalid
  // or expired token gives status 401 and "invalid auth token" in the body.
  absl::StatusOr<HttpResponse> GatewayPost(int i, const std::string& path, const std::string& json,
                                           const std::string& token = "",
                                           absl::Duration timeout = absl::Seconds(5));
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
  // Deletes the data dirs and starts every member as a new cluster; with `new_token` a
  // fresh cluster token first (new cluster id).
  absl::Status BootstrapAndWait(absl::Time deadline, bool new_token = true);
  absl::Status WipeAndBootstrap(absl::Duration timeout, bool new_token);
  bool AnyLogHasPortClash() const;

  struct CtlResult {
    int exit_value = -1;
    std::string out;
    std::string err;
  };
  // As `as_user` ("user:pw", "" anonymous), by default as Credentials(). With no
  // endpoints at all (`offline`, e.g. snapshot restore) no --endpoints/--user are passed.
  absl::StatusOr<CtlResult> RunEtcdctl(const std::vector<std::string>& endpoints,
                                       const std::vector<std::string>& args, absl::Duration timeout,
                                       std::optional<std::string> as_user = std::nullopt,
                                       bool offline = false);
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
  // SnapshotSave() path -> credentials_ at that time. Guarded by mu_.
  std::map<std::string, std::string> snapshot_credentials_;
  int generation_ = 0;  // bumps on every bootstrap (token suffix)
};

}  // namespace discovery::testing

#endif  // DISCOVERY_TESTS_SUPPORT_ETCD_HARNESS_H_
