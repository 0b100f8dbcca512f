// discovery-ladder: discoveryd replicas (the repo's built binary) as child processes on free
// loopback ports, their sync time (first /healthz 200), and the /proc figures of any process:
// RSS from /proc/<pid>/status, utime+stime from /proc/<pid>/stat.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "harness_util.h"
#include "ladder.h"

namespace ladder {

using discovery::testing::ChildProcess;

absl::StatusOr<Replica> SpawnReplica(const std::string& binary, const std::string& endpoint,
                                     const std::string& prefix, const std::string& log_dir,
                                     int index) {
  Replica r;
  r.port = discovery::testing::PickFreePort();
  const std::string log = absl::StrCat(log_dir, "/discoveryd", index, ".log");
  r.spawn_ns = NowNs();
  auto child = ChildProcess::Spawn(
      {.argv = {binary, absl::StrCat("--listen=127.0.0.1:", r.port),
                absl::StrCat("--endpoints=", endpoint), absl::StrCat("--prefix=", prefix)},
       .env = {{"SPDLOG_LEVEL", "warn"}},
       .unset_env_prefixes = {"ETCD_", "DISCOVERY_"},
       .stdout_path = log,
       .stderr_path = log});
  if (!child.ok()) return child.status();
  r.proc = std::move(*child);
  return r;
}

absl::Status WaitSynced(std::vector<Replica>& replicas, double timeout_s) {
  const int64_t deadline = NowNs() + static_cast<int64_t>(timeout_s * 1e9);
  for (;;) {
    bool all = true;
    for (Replica& r : replicas) {
      if (r.synced_ns != 0) continue;
      if (!r.proc->Running()) {
        return absl::InternalError(absl::StrCat("discoveryd on port ", r.port,
                                                " exited: ", r.proc->ReadStderr().substr(0, 400)));
      }
      auto h = discovery::testing::HttpGet(r.port, "/healthz", absl::Seconds(2));
      if (h.ok() && h->status == 200) {
        r.synced_ns = NowNs();
      } else {
        all = false;
      }
    }
    if (all) return absl::OkStatus();
    if (NowNs() > deadline || g_abort.load()) {
      return absl::DeadlineExceededError(
          absl::StrCat("discoveryd not synced (/healthz 200) within ", timeout_s, " s"));
    }
    usleep(20000);
  }
}

void StopReplica(Replica& r) {
  if (!r.proc) return;
  (void)r.proc->Signal(SIGTERM);
  if (!r.proc->Wait(absl::Seconds(5)).ok()) (void)r.proc->Kill();
  r.proc.reset();
}

int64_t RssKib(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      std::istringstream rest(line.substr(6));
      int64_t v = -1;
      rest >> v;
      return v;
    }
  }
  return -1;
}

double CpuSeconds(pid_t pid, pid_t tid) {
  std::string path = tid > 0 ? absl::StrCat("/proc/", pid, "/task/", tid, "/stat")
                             : absl::StrCat("/proc/", pid, "/stat");
  std::ifstream in(path);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t paren = all.rfind(')');
  if (paren == std::string::npos) return -1;
  std::istringstream rest(all.substr(paren + 2));
  // Fields after the command: state(3) ppid pgrp session tty tpgid flags minflt cminflt
  // majflt cmajflt utime(14) stime(15).
  std::string f;
  double utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> f; ++i) {
    if (i == 14) utime = std::stod(f);
    if (i == 15) stime = std::stod(f);
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

std::map<pid_t, std::pair<std::string, double>> ThreadCpu(pid_t pid) {
  std::map<pid_t, std::pair<std::string, double>> out;
  std::error_code ec;
  for (const auto& e :
       std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/task"), ec)) {
    pid_t tid = 0;
    if (!absl::SimpleAtoi(e.path().filename().string(), &tid)) continue;
    std::ifstream comm(absl::StrCat("/proc/", pid, "/task/", tid, "/comm"));
    std::string name;
    std::getline(comm, name);
    out[tid] = {name, CpuSeconds(pid, tid)};
  }
  return out;
}

Discover TimedDiscover(int port, double timeout_s) {
  Discover d;
  const int64_t t0 = NowNs();
  auto r =
      discovery::testing::HttpGet(port, "/sd/v1/instances?type=world", absl::Seconds(timeout_s));
  if (!r.ok()) return d;
  d.ms = static_cast<double>(NowNs() - t0) / 1e6;
  d.bytes = r->body.size();
  d.status = r->status;
  return d;
}

std::string LoadAvg() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return absl::StrCat(a, " ", b, " ", c);
}

}  // namespace ladder
