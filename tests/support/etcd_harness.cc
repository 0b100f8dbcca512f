#include "etcd_harness.h"

#include <signal.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "spdlog/spdlog.h"
#include "util/clock.h"

namespace discovery::testing {
namespace {

constexpr char kInstallHint[] = "run scripts/install-deps";
// etcd 3.4 writes a 64 MB WAL segment plus a 64 MB preallocated spare per member.
constexpr uint64_t kBytesPerMember = 256ull << 20;

std::string Url(int port) { return absl::StrCat("http://127.0.0.1:", port); }

bool EnvFlag(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' && absl::string_view(v) != "0";
}

// Available memory according to /proc/meminfo (0 if unknown).
uint64_t MemAvailableBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (in >> key >> kb) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return kb * 1024;
  }
  return 0;
}

// /dev/shm when it is writable and has room for `members` data dirs (tmpfs pages are
// RAM, so check memory too); otherwise empty, meaning $TMPDIR or /tmp.
std::string ChooseBaseDir(int members) {
  const uint64_t need = kBytesPerMember * static_cast<uint64_t>(members);
  struct statvfs sv;
  if (::access("/dev/shm", W_OK) == 0 && ::statvfs("/dev/shm", &sv) == 0) {
    const uint64_t avail = static_cast<uint64_t>(sv.f_bavail) * sv.f_frsize;
    const uint64_t mem = MemAvailableBytes();
    if (avail >= need && (mem == 0 || mem >= need + (512ull << 20))) return "/dev/shm";
  }
  return "";
}

}  // namespace

// ---------------------------------------------------------------- lifecycle

absl::StatusOr<std::unique_ptr<EtcdCluster>> EtcdCluster::Start(EtcdClusterOptions opts) {
  if (opts.members < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("EtcdCluster: members must be >= 1, got ", opts.members));
  }
  absl::StatusOr<std::string> etcd = ChildProcess::FindExecutable(opts.etcd_binary);
  if (!etcd.ok()) {
    return absl::NotFoundError(absl::StrCat("etcd binary not found in PATH; ", kInstallHint, " (",
                                            etcd.status().message(), ")"));
  }
  absl::StatusOr<std::string> etcdctl = absl::NotFoundError("");
  if (!opts.etcdctl_binary.empty()) {
    etcdctl = ChildProcess::FindExecutable(opts.etcdctl_binary);
  } else {
    const std::string sibling = (std::filesystem::path(*etcd).parent_path() / "etcdctl").string();
    etcdctl = ChildProcess::FindExecutable(sibling);
    if (!etcdctl.ok()) etcdctl = ChildProcess::FindExecutable("etcdctl");
  }
  if (!etcdctl.ok()) {
    return absl::NotFoundError(absl::StrCat("etcdctl binary not found in PATH; ", kInstallHint,
                                            " (", etcdctl.status().message(), ")"));
  }

  const int n = opts.members;
  const absl::Duration start_timeout = opts.start_timeout;
  std::unique_ptr<EtcdCluster> cluster(new EtcdCluster(std::move(opts)));
  cluster->etcd_path_ = *etcd;
  cluster->etcdctl_path_ = *etcdctl;
  cluster->keep_dir_ = EnvFlag("DISCOVERY_TEST_KEEP_ETCD_DATA");
  // The pid in the name identifies the owner of a directory leaked by a crashed test.
  absl::StatusOr<std::string> dir =
      MakeTempDir(absl::StrCat("discovery-etcd-", ::getpid(), "-"), ChooseBaseDir(n));
  if (!dir.ok()) return dir.status();
  cluster->dir_ = *dir;
  cluster->members_.resize(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    Member& m = cluster->members_[static_cast<size_t>(i)];
    m.name = absl::StrCat("m", i);
    m.member_dir = absl::StrCat(cluster->dir_, "/", m.name);
    m.data_dir = absl::StrCat(m.member_dir, "/data");
    m.log_path = absl::StrCat(m.member_dir, "/etcd.log");
    m.stdout_path = absl::StrCat(m.member_dir, "/stdout.log");
    m.stderr_path = absl::StrCat(m.member_dir, "/stderr.log");
    std::error_code ec;
    std::filesystem::create_directories(m.member_dir, ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("mkdir ", m.member_dir, ": ", ec.message()));
    }
  }

  const absl::Time started = util::MonoNow();
  absl::Status status;
  for (int attempt = 0; attempt < 2; ++attempt) {
    {
      std::lock_guard<std::mutex> lock(cluster->mu_);
      cluster->AssignPortsLocked();
    }
    status = cluster->BootstrapAndWait(util::MonoNow() + TimeScale(start_timeout));
    if (status.ok()) {
      spdlog::info("etcd cluster ({} member{}) healthy in {} at {}: {}", n, n == 1 ? "" : "s",
                   absl::FormatDuration(util::MonoNow() - started), cluster->dir_,
                   cluster->EndpointsCsv());
      return cluster;
    }
    if (attempt == 0 && cluster->AnyLogHasPortClash()) {
      spdlog::warn("etcd cluster start hit a port clash; retrying once with new ports");
      std::lock_guard<std::mutex> lock(cluster->mu_);
      cluster->KillAllLocked();
      continue;
    }
    break;
  }
  return status;
}

EtcdCluster::~EtcdCluster() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    KillAllLocked();
  }
  if (dir_.empty()) return;
  if (keep_dir_) {
    spdlog::info("DISCOVERY_TEST_KEEP_ETCD_DATA set: keeping {}", dir_);
    return;
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

void EtcdCluster::KillAllLocked() {
  for (Member& m : members_) {
    if (m.proc == nullptr) continue;
    (void)m.proc->Signal(SIGCONT);  // harmless if not stopped or already exited
    (void)m.proc->Kill();
    m.proc.reset();
    m.stopped = false;
  }
}

void EtcdCluster::AssignPortsLocked() {
  for (Member& m : members_) {
    m.client_port = PickFreePort();
    m.peer_port = PickFreePort();
  }
}

std::string EtcdCluster::InitialClusterLocked() const {
  std::vector<std::string> parts;
  for (const Member& m : members_) parts.push_back(absl::StrCat(m.name, "=", Url(m.peer_port)));
  return absl::StrJoin(parts, ",");
}

absl::Status EtcdCluster::SpawnMemberLocked(int i) {
  Member& m = members_[static_cast<size_t>(i)];
  ChildProcessOptions o;
  // --initial-cluster* are only read when the data dir is empty (bootstrap); a member
  // with a WAL (Restart, RestoreSnapshot) ignores them and rejoins its recorded cluster.
  o.argv = {etcd_path_,
            "--name",
            m.name,
            "--data-dir",
            m.data_dir,
            "--listen-client-urls",
            Url(m.client_port),
            "--advertise-client-urls",
            Url(m.client_port),
            "--listen-peer-urls",
            Url(m.peer_port),
            "--initial-advertise-peer-urls",
            Url(m.peer_port),
            "--initial-cluster",
            InitialClusterLocked(),
            "--initial-cluster-token",
            token_,
            "--initial-cluster-state",
            "new",
            "--logger",
            "zap",
            "--log-outputs",
            m.log_path,
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500"};
  o.argv.insert(o.argv.end(), opts_.extra_args.begin(), opts_.extra_args.end());
  // ETCD_* variables from the caller's environment would conflict with the flags.
  o.unset_env_prefixes = {"ETCD_"};
  o.stdout_path = m.stdout_path;
  o.stderr_path = m.stderr_path;
  o.working_dir = m.member_dir;
  absl::StatusOr<std::unique_ptr<ChildProcess>> proc = ChildProcess::Spawn(std::move(o));
  if (!proc.ok()) {
    return absl::Status(proc.status().code(), absl::StrCat("starting etcd member ", m.name, ": ",
                                                           proc.status().message()));
  }
  m.proc = std::shared_ptr<ChildProcess>(std::move(*proc));
  m.stopped = false;
  return absl::OkStatus();
}

absl::Status EtcdCluster::BootstrapAndWait(absl::Time deadline, bool new_token) {
  std::vector<Snapshot> snaps;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (new_token || token_.empty()) {
      token_ = absl::StrCat("discovery-test-", ::getpid(), "-", absl::ToUnixMicros(absl::Now()),
                            "-", generation_++);
    }
    for (Member& m : members_) {
      std::error_code ec;
      std::filesystem::remove_all(m.data_dir, ec);
      if (ec) return absl::InternalError(absl::StrCat("rm -r ", m.data_dir, ": ", ec.message()));
    }
    for (int i = 0; i < size(); ++i) {
      if (absl::Status s = SpawnMemberLocked(i); !s.ok()) {
        KillAllLocked();
        return s;
      }
      const Member& m = members_[static_cast<size_t>(i)];
      snaps.push_back({i, m.client_port, m.proc});
    }
  }
  return WaitSnapshotsHealthy(snaps, deadline);
}

bool EtcdCluster::AnyLogHasPortClash() const {
  for (const Member& m : members_) {
    if (absl::StrContains(TailFile(m.log_path, 1 << 16), "address already in use") ||
        absl::StrContains(TailFile(m.stderr_path, 1 << 16), "address already in use")) {
      return true;
    }
  }
  return false;
}

// ---------------------------------------------------------------- health

absl::Status EtcdCluster::WaitSnapshotsHealthy(const std::vector<Snapshot>& members,
                                               absl::Time deadline) {
  std::vector<bool> healthy(members.size(), false);
  std::vector<std::string> last_error(members.size(), "not checked");
  for (;;) {
    bool all = true;
    for (size_t k = 0; k < members.size(); ++k) {
      if (healthy[k]) continue;
      const Snapshot& s = members[k];
      if (!s.proc->Running()) {
        std::string msg = absl::StrCat("etcd member ", MemberName(s.index), " (pid ", s.proc->pid(),
                                       ") exited with ", s.proc->ExitValue().value_or(-1),
                                       " before becoming healthy\n", LogTail(s.index));
        spdlog::error("{}", msg);
        return absl::FailedPreconditionError(msg);
      }
      const absl::Duration left = (deadline - util::MonoNow()) / TimeScaleFactor();
      absl::StatusOr<HttpResponse> r = HttpGet(
          s.client_port, "/health", std::clamp(left, absl::Milliseconds(100), absl::Seconds(1)));
      if (r.ok() && r->status == 200 && absl::StrContains(r->body, "\"health\":\"true\"")) {
        healthy[k] = true;
      } else {
        all = false;
        last_error[k] = r.ok() ? absl::StrCat("HTTP ", r->status, " ", r->body)
                               : std::string(r.status().message());
      }
    }
    if (all) {
      // A member that lost a bind race may have exited right after another process
      // answered on its port: make sure ours are still alive.
      for (const Snapshot& s : members) {
        if (!s.proc->Running()) {
          std::string msg = absl::StrCat("etcd member ", MemberName(s.index), " exited with ",
                                         s.proc->ExitValue().value_or(-1), "\n", LogTail(s.index));
          spdlog::error("{}", msg);
          return absl::FailedPreconditionError(msg);
        }
      }
      return absl::OkStatus();
    }
    if (util::MonoNow() >= deadline) {
      std::string msg = "etcd members not healthy before the deadline:";
      for (size_t k = 0; k < members.size(); ++k) {
        if (healthy[k]) continue;
        absl::StrAppend(&msg, "\n", MemberName(members[k].index), " (", Url(members[k].client_port),
                        "): ", last_error[k], "\n", LogTail(members[k].index));
      }
      spdlog::error("{}", msg);
      return absl::DeadlineExceededError(msg);
    }
    absl::SleepFor(std::min(absl::Milliseconds(50), deadline - util::MonoNow()));
  }
}

absl::Status EtcdCluster::WaitHealthy(absl::Duration timeout) {
  const absl::Time deadline = util::MonoNow() + TimeScale(timeout);
  std::vector<Snapshot> snaps;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (int i = 0; i < size(); ++i) {
      const Member& m = members_[static_cast<size_t>(i)];
      if (m.proc != nullptr && !m.stopped) snaps.push_back({i, m.client_port, m.proc});
    }
  }
  if (snaps.empty()) return absl::FailedPreconditionError("no running etcd member");
  return WaitSnapshotsHealthy(snaps, deadline);
}

absl::Status EtcdCluster::WaitMemberHealthy(int i, absl::Duration timeout) {
  if (i < 0 || i >= size()) return absl::OutOfRangeError(absl::StrCat("no member ", i));
  const absl::Time deadline = util::MonoNow() + TimeScale(timeout);
  std::vector<Snapshot> snaps;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const Member& m = members_[static_cast<size_t>(i)];
    if (m.proc == nullptr) return absl::FailedPreconditionError(m.name + " is not running");
    if (m.stopped) return absl::FailedPreconditionError(m.name + " is stopped");
    snaps.push_back({i, m.client_port, m.proc});
  }
  return WaitSnapshotsHealthy(snaps, deadline);
}

// ---------------------------------------------------------------- accessors

void EtcdCluster::CheckIndex(int i) const {
  if (i < 0 || i >= size()) {
    spdlog::critical("EtcdCluster: member index {} out of range [0, {})", i, size());
    std::abort();
  }
}

std::string EtcdCluster::ClientEndpoint(int i) const {
  CheckIndex(i);
  return Url(members_[static_cast<size_t>(i)].client_port);
}

std::vector<std::string> EtcdCluster::ClientEndpoints() const {
  std::vector<std::string> out;
  for (const Member& m : members_) out.push_back(Url(m.client_port));
  return out;
}

std::string EtcdCluster::EndpointsCsv() const { return absl::StrJoin(ClientEndpoints(), ","); }

std::vector<std::string> EtcdCluster::LiveEndpoints() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const Member& m : members_) {
    if (m.proc != nullptr && !m.stopped && m.proc->Running()) out.push_back(Url(m.client_port));
  }
  return out;
}

int EtcdCluster::ClientPort(int i) const {
  CheckIndex(i);
  return members_[static_cast<size_t>(i)].client_port;
}

int EtcdCluster::PeerPort(int i) const {
  CheckIndex(i);
  return members_[static_cast<size_t>(i)].peer_port;
}

std::string EtcdCluster::MemberName(int i) const {
  CheckIndex(i);
  return members_[static_cast<size_t>(i)].name;
}

pid_t EtcdCluster::Pid(int i) const {
  CheckIndex(i);
  std::lock_guard<std::mutex> lock(mu_);
  const Member& m = members_[static_cast<size_t>(i)];
  return m.proc == nullptr ? -1 : m.proc->pid();
}

bool EtcdCluster::IsRunning(int i) const {
  CheckIndex(i);
  std::lock_guard<std::mutex> lock(mu_);
  const Member& m = members_[static_cast<size_t>(i)];
  return m.proc != nullptr && m.proc->Running();
}

bool EtcdCluster::IsStopped(int i) const {
  CheckIndex(i);
  std::lock_guard<std::mutex> lock(mu_);
  return members_[static_cast<size_t>(i)].stopped;
}

std::string EtcdCluster::Credentials() const {
  std::lock_guard<std::mutex> lock(mu_);
  return credentials_;
}

std::string EtcdCluster::cluster_token() const {
  std::lock_guard<std::mutex> lock(mu_);
  return token_;
}

std::string EtcdCluster::LogPath(int i) const {
  CheckIndex(i);
  return members_[static_cast<size_t>(i)].log_path;
}

std::string EtcdCluster::StderrPath(int i) const {
  CheckIndex(i);
  return members_[static_cast<size_t>(i)].stderr_path;
}

std::string EtcdCluster::LogTail(int i, size_t max_bytes) const {
  CheckIndex(i);
  const Member& m = members_[static_cast<size_t>(i)];
  std::string out = absl::StrCat("----- ", m.name, " ", m.log_path, " (tail) -----\n",
                                 TailFile(m.log_path, max_bytes));
  const std::string err = TailFile(m.stderr_path, max_bytes / 2);
  if (!err.empty()) {
    absl::StrAppend(&out, "----- ", m.name, " ", m.stderr_path, " (tail) -----\n", err);
  }
  return out;
}

// ---------------------------------------------------------------- fault injection

absl::Status EtcdCluster::Kill(int i) {
  if (i < 0 || i >= size()) return absl::OutOfRangeError(absl::StrCat("no member ", i));
  std::lock_guard<std::mutex> lock(mu_);
  Member& m = members_[static_cast<size_t>(i)];
  if (m.proc == nullptr) return absl::OkStatus();
  (void)m.proc->Signal(SIGCONT);
  absl::StatusOr<int> r = m.proc->Kill();
  m.proc.reset();
  m.stopped = false;
  return r.ok() ? absl::OkStatus() : r.status();
}

absl::Status EtcdCluster::Stop(int i) {
  if (i < 0 || i >= size()) return absl::OutOfRangeError(absl::StrCat("no member ", i));
  std::lock_guard<std::mutex> lock(mu_);
  Member& m = members_[static_cast<size_t>(i)];
  if (m.proc == nullptr) return absl::FailedPreconditionError(m.name + " is not running");
  if (absl::Status s = m.proc->Signal(SIGSTOP); !s.ok()) return s;
  m.stopped = true;
  std::shared_ptr<ChildProcess> proc = m.proc;
  if (!WaitUntil([&] { return proc->IsStopped(); }, absl::Seconds(2), absl::Milliseconds(1))) {
    return absl::InternalError(absl::StrCat(m.name, " did not stop after SIGSTOP"));
  }
  return absl::OkStatus();
}

absl::Status EtcdCluster::Cont(int i) {
  if (i < 0 || i >= size()) return absl::OutOfRangeError(absl::StrCat("no member ", i));
  std::lock_guard<std::mutex> lock(mu_);
  Member& m = members_[static_cast<size_t>(i)];
  if (m.proc == nullptr) return absl::FailedPreconditionError(m.name + " is not running");
  if (absl::Status s = m.proc->Signal(SIGCONT); !s.ok()) return s;
  m.stopped = false;
  std::shared_ptr<ChildProcess> proc = m.proc;
  if (!WaitUntil([&] { return !proc->IsStopped(); }, absl::Seconds(2), absl::Milliseconds(1))) {
    return absl::InternalError(absl::StrCat(m.name, " still stopped after SIGCONT"));
  }
  return absl::OkStatus();
}

absl::Status EtcdCluster::Restart(int i, absl::Duration timeout) {
  if (i < 0 || i >= size()) return absl::OutOfRangeError(absl::StrCat("no member ", i));
  const absl::Time deadline = util::MonoNow() + TimeScale(timeout);
  std::vector<Snapshot> snaps;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Member& m = members_[static_cast<size_t>(i)];
    if (m.proc != nullptr) {
      (void)m.proc->Signal(SIGCONT);
      (void)m.proc->Kill();
      m.proc.reset();
    }
    if (absl::Status s = SpawnMemberLocked(i); !s.ok()) return s;
    snaps.push_back({i, m.client_port, m.proc});
  }
  return WaitSnapshotsHealthy(snaps, deadline);
}

absl::Status EtcdCluster::GracefulRestart(int i, absl::Duration timeout) {
  if (i < 0 || i >= size()) return absl::OutOfRangeError(absl::StrCat("no member ", i));
  const absl::Time deadline = util::MonoNow() + TimeScale(timeout);
  std::shared_ptr<ChildProcess> proc;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Member& m = members_[static_cast<size_t>(i)];
    proc = m.proc;
    if (proc != nullptr) {
      (void)proc->Signal(SIGCONT);  // a stopped process would never see SIGTERM
      (void)proc->Signal(SIGTERM);
      m.stopped = false;
    }
  }
  // Leadership transfer and backend flush take a moment: wait outside the lock.
  if (proc != nullptr) {
    const absl::Duration left = std::max(absl::ZeroDuration(), deadline - util::MonoNow());
    if (absl::StatusOr<int> exited = proc->Wait(left / TimeScaleFactor()); !exited.ok()) {
      (void)proc->Kill();
      std::lock_guard<std::mutex> lock(mu_);
      members_[static_cast<size_t>(i)].proc.reset();
      return absl::DeadlineExceededError(absl::StrCat(MemberName(i), " did not exit within ",
                                                      absl::FormatDuration(TimeScale(timeout)),
                                                      " of SIGTERM; killed it\n", LogTail(i)));
    }
  }
  std::vector<Snapshot> snaps;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Member& m = members_[static_cast<size_t>(i)];
    m.proc.reset();
    if (absl::Status s = SpawnMemberLocked(i); !s.ok()) return s;
    snaps.push_back({i, m.client_port, m.proc});
  }
  return WaitSnapshotsHealthy(snaps, deadline);
}

absl::Status EtcdCluster::WipeAndBootstrap(absl::Duration timeout, bool new_token) {
  const absl::Time deadline = util::MonoNow() + TimeScale(timeout);
  {
    std::lock_guard<std::mutex> lock(mu_);
    KillAllLocked();
    credentials_.clear();
  }
  return BootstrapAndWait(deadline, new_token);
}

absl::Status EtcdCluster::WipeAndRestartAll(absl::Duration timeout) {
  return WipeAndBootstrap(timeout, /*new_token=*/true);
}

absl::Status EtcdCluster::WipeAndRestartSameIdentity(absl::Duration timeout) {
  return WipeAndBootstrap(timeout, /*new_token=*/false);
}

}  // namespace discovery::testing
