// Measurement helpers shared by discovery-bench (the library side) and discovery-raw-bench
// (the standalone baseline, which must not link the library): clocks, CPU time, /proc fields,
// percentiles, rounding and a small thread pool. Header-only, standard library only.
#pragma once

#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace bench_measure {

// CLOCK_MONOTONIC nanoseconds (the same clock in both binaries, so times can be compared).
inline int64_t NowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

inline double Seconds(int64_t ns) { return static_cast<double>(ns) / 1e9; }

// User + system CPU seconds of the whole process (getrusage RUSAGE_SELF).
inline double CpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto tv = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return tv(ru.ru_utime) + tv(ru.ru_stime);
}

// CPU time of the calling thread, ns (e.g. to take the benchmark's own sampling out of a
// process figure).
inline int64_t ThreadCpuNs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// A numeric field of /proc/self/status ("Threads", "VmRSS" in kB); -1 if absent.
inline int64_t ProcStatus(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      std::istringstream rest(line.substr(field.size() + 1));
      int64_t v = -1;
      if (rest >> v) return v;
      return -1;
    }
  }
  return -1;
}

inline double Round(double v, int digits = 3) {
  double f = std::pow(10.0, digits);
  return std::round(v * f) / f;
}

// Percentile (0..100) of unsorted samples; sorts them.
template <typename T>
double Percentile(std::vector<T>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t idx = static_cast<size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
  return static_cast<double>(v[std::min(idx, v.size() - 1)]);
}

// User + system CPU seconds of another process (/proc/<pid>/stat fields 14 and 15); -1 if it
// cannot be read.
inline double PidCpuSeconds(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  std::getline(in, stat);
  const size_t close = stat.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos) return -1;
  std::istringstream rest(stat.substr(close + 2));
  std::string f;
  double utime = -1, stime = -1;
  for (int i = 3; i <= 15 && rest >> f; ++i) {  // field 3 (state) is the first after ')'
    if (i == 14) utime = std::atof(f.c_str());
    if (i == 15) stime = std::atof(f.c_str());
  }
  if (utime < 0 || stime < 0) return -1;
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// CPU of peer processes (etcd, discoveryd, redis-server) over a window, as % of one core.
// `spec` is "name=pid,name=pid" (the --peer-pids flag of the bench binaries).
class PeerCpu {
 public:
  explicit PeerCpu(const std::string& spec) {
    std::istringstream in(spec);
    std::string item;
    while (std::getline(in, item, ',')) {
      const size_t eq = item.find('=');
      if (eq == std::string::npos) continue;
      peers_.push_back({item.substr(0, eq), std::atoi(item.c_str() + eq + 1), 0});
    }
  }
  void Begin() {
    t0_ = NowNs();
    for (auto& p : peers_) p.cpu0 = PidCpuSeconds(p.pid);
  }
  // (name + "_cpu_pct", % of a core since Begin); -1 when the process could not be read.
  std::vector<std::pair<std::string, double>> End() const {
    const double wall = Seconds(NowNs() - t0_);
    std::vector<std::pair<std::string, double>> out;
    for (const auto& p : peers_) {
      const double c = PidCpuSeconds(p.pid);
      const double pct = c < 0 || p.cpu0 < 0 || wall <= 0 ? -1 : 100.0 * (c - p.cpu0) / wall;
      out.emplace_back(p.name + "_cpu_pct", Round(pct, 2));
    }
    return out;
  }

 private:
  struct Peer {
    std::string name;
    int pid;
    double cpu0;
  };
  std::vector<Peer> peers_;
  int64_t t0_ = 0;
};

// Runs fn(i) for i in [0, n) on `threads` threads (work stealing by an atomic index).
inline void ParallelFor(int threads, int n, const std::function<void(int)>& fn) {
  std::atomic<int> next{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < std::max(1, threads); ++t) {
    pool.emplace_back([&] {
      for (int i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
    });
  }
  for (auto& th : pool) th.join();
}

}  // namespace bench_measure
