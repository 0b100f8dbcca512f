#include "etcd_harness.h"

#include <signal.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "spdlog/spdlog.h"

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

// Parses the unsigned integer following `"key":` at or after `from` in `json`.
std::optional<uint64_t> FindUint(absl::string_view json, absl::string_view key, size_t from = 0,
                                 size_t* end = nullptr) {
  const std::string needle = absl::StrCat("\"", key, "\":");
  size_t pos = json.find(needle, from);
  if (pos == absl::string_view::npos) return std::nullopt;
  pos += needle.size();
  while (pos < json.size() && json[pos] == ' ') ++pos;
  size_t stop = pos;
  while (stop < json.size() && absl::ascii_isdigit(static_cast<unsigned char>(json[stop]))) {
    ++stop;
  }
  uint64_t value = 0;
  if (!absl::SimpleAtoi(json.substr(pos, stop - pos), &value)) return std::nullopt;
  if (end != nullptr) *end = stop;
  return value;
}

// Parses the string following `"key":"` at or after `from` (no escape handling).
std::optional<std::string> FindString(absl::string_view json, absl::string_view key,
                                      size_t from = 0) {
  const std::string needle = absl::StrCat("\"", key, "\":\"");
  size_t pos = json.find(needle, from);
  if (pos == absl::string_view::npos) return std::nullopt;
  pos += needle.size();
  const size_t stop = json.find('"', pos);
  if (stop == absl::string_view::npos) return std::nullopt;
  return std::string(json.substr(pos, stop - pos));
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

  const absl::Time started = absl::Now();
  absl::Status status;
  for (int attempt = 0; attempt < 2; ++attempt) {
    {
      std::lock_guard<std::mutex> lock(cluster->mu_);
      cluster->AssignPortsLocked();
    }
    status = cluster->BootstrapAndWait(absl::Now() + TimeScale(start_timeout));
    if (status.ok()) {
      spdlog::info("etcd cluster ({} member{}) healthy in {} at {}: {}", n, n == 1 ? "" : "s",
                   absl::FormatDuration(absl::Now() - started), cluster->dir_,
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

absl::Status EtcdCluster::BootstrapAndWait(absl::Time deadline) {
  std::vector<Snapshot> snaps;
  {
    std::lock_guard<std::mutex> lock(mu_);
    token_ = absl::StrCat("discovery-test-", ::getpid(), "-", absl::ToUnixMicros(absl::Now()), "-",
                          generation_++);
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
      const absl::Duration left = (deadline - absl::Now()) / TimeScaleFactor();
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
    if (absl::Now() >= deadline) {
      std::string msg = "etcd members not healthy before the deadline:";
      for (size_t k = 0; k < members.size(); ++k) {
        if (healthy[k]) continue;
        absl::StrAppend(&msg, "\n", MemberName(members[k].index), " (", Url(members[k].client_port),
                        "): ", last_error[k], "\n", LogTail(members[k].index));
      }
      spdlog::error("{}", msg);
      return absl::DeadlineExceededError(msg);
    }
    absl::SleepFor(std::min(absl::Milliseconds(50), deadline - absl::Now()));
  }
}

absl::Status EtcdCluster::WaitHealthy(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + TimeScale(timeout);
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
  const absl::Time deadline = absl::Now() + TimeScale(timeout);
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
  const absl::Time deadline = absl::Now() + TimeScale(timeout);
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

absl::Status EtcdCluster::WipeAndRestartAll(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + TimeScale(timeout);
  {
    std::lock_guard<std::mutex> lock(mu_);
    KillAllLocked();
    credentials_.clear();
  }
  return BootstrapAndWait(deadline);
}

// ---------------------------------------------------------------- etcdctl

absl::StatusOr<EtcdCluster::CtlResult> EtcdCluster::RunEtcdctl(
    const std::vector<std::string>& endpoints, const std::vector<std::string>& args,
    absl::Duration timeout) {
  const std::string credentials = Credentials();
  const std::string what = absl::StrCat("etcdctl ", absl::StrJoin(args, " "));
  if (endpoints.empty()) return absl::FailedPreconditionError(what + ": no live etcd member");

  const absl::Duration scaled = TimeScale(timeout);
  ChildProcessOptions o;
  o.argv = {etcdctl_path_, absl::StrCat("--endpoints=", absl::StrJoin(endpoints, ",")),
            // Let etcdctl give up (with its own error message) just before we kill it.
            absl::StrCat("--command-timeout=",
                         std::max<int64_t>(100, absl::ToInt64Milliseconds(scaled * 0.9)), "ms")};
  if (!credentials.empty()) o.argv.push_back(absl::StrCat("--user=", credentials));
  o.argv.insert(o.argv.end(), args.begin(), args.end());
  o.env = {{"ETCDCTL_API", "3"}};
  o.unset_env_prefixes = {"ETCDCTL_"};
  absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Spawn(std::move(o));
  if (!child.ok()) return child.status();

  absl::StatusOr<int> exit_value = (*child)->Wait(timeout);
  if (!exit_value.ok()) {
    (void)(*child)->Kill();
    return absl::DeadlineExceededError(absl::StrCat(what, ": timed out after ",
                                                    absl::FormatDuration(scaled),
                                                    "; stderr: ", (*child)->ReadStderr()));
  }
  CtlResult result;
  result.exit_value = *exit_value;
  result.out = (*child)->ReadStdout();
  result.err = (*child)->ReadStderr();
  return result;
}

absl::StatusOr<std::string> EtcdCluster::CtlOutput(absl::StatusOr<CtlResult> r,
                                                   const std::vector<std::string>& args) {
  if (!r.ok()) return r.status();
  if (r->exit_value != 0) {
    return absl::UnknownError(absl::StrCat("etcdctl ", absl::StrJoin(args, " "), " exited with ",
                                           r->exit_value, ": ", r->err, r->out));
  }
  return std::move(r->out);
}

absl::StatusOr<std::string> EtcdCluster::Etcdctl(const std::vector<std::string>& args,
                                                 absl::Duration timeout) {
  return CtlOutput(RunEtcdctl(LiveEndpoints(), args, timeout), args);
}

absl::StatusOr<std::string> EtcdCluster::EtcdctlAt(int i, const std::vector<std::string>& args,
                                                   absl::Duration timeout) {
  if (i < 0 || i >= size()) return absl::OutOfRangeError(absl::StrCat("no member ", i));
  return CtlOutput(RunEtcdctl({ClientEndpoint(i)}, args, timeout), args);
}

absl::Status EtcdCluster::EnableAuth(std::string root_password) {
  const std::string credentials = absl::StrCat("root:", root_password);
  if (absl::StatusOr<std::string> r = Etcdctl({"user", "add", credentials}); !r.ok()) {
    return r.status();
  }
  // etcdctl grants the root role to root if needed.
  if (absl::StatusOr<std::string> r = Etcdctl({"auth", "enable"}); !r.ok()) return r.status();
  std::lock_guard<std::mutex> lock(mu_);
  credentials_ = credentials;
  return absl::OkStatus();
}

absl::StatusOr<int> EtcdCluster::LeaderIndex() {
  // Member IDs -> indices (names are "m<i>").
  absl::StatusOr<std::string> list = Etcdctl({"member", "list", "-w", "json"}, absl::Seconds(5));
  if (!list.ok()) return list.status();
  std::map<uint64_t, int> index_of;
  for (size_t pos = 0;;) {
    size_t end = 0;
    std::optional<uint64_t> id = FindUint(*list, "ID", pos, &end);
    if (!id.has_value()) break;
    // A member that never started has no "name": only look inside this member's object.
    const size_t next = list->find("\"ID\":", end);
    std::optional<std::string> name =
        FindString(absl::string_view(*list).substr(0, next), "name", end);
    pos = end;
    int index = -1;
    if (name.has_value() && absl::StartsWith(*name, "m") &&
        absl::SimpleAtoi(name->substr(1), &index) && index >= 0 && index < size()) {
      index_of[*id] = index;
    }
  }

  // Every live member's view of the leader; they must agree.
  absl::StatusOr<CtlResult> status =
      RunEtcdctl(LiveEndpoints(), {"endpoint", "status", "-w", "json"}, absl::Seconds(5));
  if (!status.ok()) return status.status();
  std::optional<uint64_t> leader;
  int answers = 0;
  for (size_t pos = status->out.find("\"Endpoint\":"); pos != std::string::npos;) {
    const size_t next = status->out.find("\"Endpoint\":", pos + 1);
    const absl::string_view entry = absl::string_view(status->out).substr(pos, next - pos);
    pos = next;
    std::optional<uint64_t> l = FindUint(entry, "leader");
    if (!l.has_value()) continue;
    ++answers;
    if (*l == 0) return absl::UnavailableError("etcd: a member reports no leader");
    if (leader.has_value() && *leader != *l) {
      return absl::UnavailableError("etcd: members disagree on the leader (election running)");
    }
    leader = *l;
  }
  if (answers == 0) {
    return absl::UnavailableError(absl::StrCat("etcdctl endpoint status gave no answer (exit ",
                                               status->exit_value, "): ", status->err));
  }
  const auto it = index_of.find(*leader);
  if (it == index_of.end()) {
    return absl::UnavailableError(absl::StrCat("etcd leader ", *leader, " is not a known member"));
  }
  return it->second;
}

}  // namespace discovery::testing
