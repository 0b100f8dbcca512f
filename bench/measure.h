// Measurement helpers shared by discovery-bench (the library side) and discovery-raw-bench
// (the standalone baseline, which must not link the library): clocks, CPU time, /proc fields,
// percentiles, rounding and a small thread pool. Header-only, standard library only.
#pragma once

#include <sys/resource.h>
#include <time.h>

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
