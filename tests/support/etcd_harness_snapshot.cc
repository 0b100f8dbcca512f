// EtcdCluster: snapshot save and disaster-recovery restore (see etcd_harness.h).
//
// etcd 3.4 restores with `etcdctl snapshot restore` (etcdutl only exists from 3.5 on).
// The restore writes a new WAL with the cluster membership computed from --name,
// --initial-cluster, --initial-cluster-token and --initial-advertise-peer-urls, so
// member and cluster ids come from token + peer URLs, exactly as at bootstrap, and it
// keeps the key-value store (revision included), leases, users, roles and the auth
// switch from the snapshot.

#include <algorithm>
#include <filesystem>
#include <optional>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "etcd_harness.h"
#include "util/clock.h"

namespace discovery::testing {

absl::Status EtcdCluster::SnapshotSave(const std::string& path) {
  std::error_code ec;
  const std::string abs_path = std::filesystem::absolute(path, ec).lexically_normal().string();
  if (ec)
    return absl::InvalidArgumentError(absl::StrCat("snapshot path ", path, ": ", ec.message()));
  // etcdctl refuses more than one endpoint for `snapshot save`.
  const std::vector<std::string> live = LiveEndpoints();
  if (live.empty()) return absl::FailedPreconditionError("SnapshotSave: no live etcd member");
  const std::vector<std::string> args = {"snapshot", "save", abs_path};
  if (absl::StatusOr<std::string> r =
          CtlOutput(RunEtcdctl({live.front()}, args, absl::Seconds(30)), args);
      !r.ok()) {
    return r.status();
  }
  std::lock_guard<std::mutex> lock(mu_);
  snapshot_credentials_[abs_path] = credentials_;
  return absl::OkStatus();
}

absl::Status EtcdCluster::RestoreSnapshot(const std::string& path, absl::Duration timeout) {
  const absl::Time deadline = util::MonoNow() + TimeScale(timeout);
  std::error_code ec;
  const std::string abs_path = std::filesystem::absolute(path, ec).lexically_normal().string();
  if (ec || !std::filesystem::is_regular_file(abs_path, ec)) {
    return absl::NotFoundError(absl::StrCat("RestoreSnapshot: no snapshot file at ", path));
  }

  std::string token;
  std::string initial_cluster;
  {
    std::lock_guard<std::mutex> lock(mu_);
    KillAllLocked();
    if (const auto it = snapshot_credentials_.find(abs_path); it != snapshot_credentials_.end()) {
      credentials_ = it->second;
    }
    token = token_;
    initial_cluster = InitialClusterLocked();
  }

  // Members are down and only the calling (control) thread touches their data dirs.
  for (int i = 0; i < size(); ++i) {
    const Member& m = members_[static_cast<size_t>(i)];
    std::filesystem::remove_all(m.data_dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("rm -r ", m.data_dir, ": ", ec.message()));
    const std::vector<std::string> args = {
        "snapshot",
        "restore",
        abs_path,
        absl::StrCat("--data-dir=", m.data_dir),
        absl::StrCat("--name=", m.name),
        absl::StrCat("--initial-cluster=", initial_cluster),
        absl::StrCat("--initial-cluster-token=", token),
        absl::StrCat("--initial-advertise-peer-urls=http://127.0.0.1:", m.peer_port)};
    const absl::Duration left = std::max(absl::Seconds(1), deadline - util::MonoNow());
    absl::StatusOr<std::string> r = CtlOutput(
        RunEtcdctl({}, args, left / TimeScaleFactor(), std::nullopt, /*offline=*/true), args);
    if (!r.ok()) {
      return absl::Status(r.status().code(), absl::StrCat("restoring ", m.name, " from ", abs_path,
                                                          ": ", r.status().message()));
    }
  }

  // Start on the restored data dirs (a WAL exists, so the --initial-cluster* flags are
  // ignored and every member rejoins the restored membership).
  std::vector<Snapshot> snaps;
  {
    std::lock_guard<std::mutex> lock(mu_);
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

}  // namespace discovery::testing
