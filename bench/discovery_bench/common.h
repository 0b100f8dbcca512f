// discovery-bench: shared flags, measurement helpers, test data and the scenario context.
// One file per scenario next to this one; main.cc parses the flags and runs them.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "discovery/etcd.h"
#include "discovery/instance.h"
#include "discovery/watcher.h"
#include "measure.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace etcdserverpb {}

namespace discovery_bench {

namespace pb = ::etcdserverpb;
using discovery::Instance;
using discovery::InstancePtr;
using Json = nlohmann::ordered_json;

// ---------------------------------------------------------------------------------------------
// Flags

struct Flags {
  std::vector<std::string> scenarios;
  bool smoke = false;
  std::string endpoints;
  std::string log_level = "warn";
  // The backend of register, keepalive and watch-latency (one switch, as examples/game_server):
  // a discoveryd URL list (gateway mode; watch-latency's writer still puts to --endpoints) or
  // a store URL (redis://host:port; etcd://host:port). Empty: etcd at --endpoints directly.
  std::string gateway;
  std::string store;
  std::string gateway_prefix = "/services/";  // discoveryd's --prefix (gateway mode only)
  // "name=pid,..." of the servers whose CPU keepalive and register report (etcd, discoveryd,
  // redis-server); bench/gateway_compare.sh passes them.
  std::string peer_pids;

  int register_n = 5000;
  int register_inflight = 16;         // K registrations in flight
  std::string register_api = "sync";  // sync (K threads), async (K in flight), many (batch)

  int keepalive_n = 10000;
  double keepalive_seconds = 30;
  int keepalive_ttl = 10;
  int keepalive_threads = 16;

  int latency_rate = 1000;
  double latency_seconds = 10;
  int latency_inflight = 32;        // watch-latency/fanout writer: Puts outstanding at once
  bool latency_full_value = false;  // watch-latency: registrar-sized values (SeqValue)

  int fanout_subscribers = 100;
  int fanout_rate = 100;
  double fanout_seconds = 10;

  int throughput_n = 50000;
  int throughput_writers = 16;

  int resync_n = 50000;

  int pick_n = 1000;
  int pick_rate = 100;
  double pick_seconds = 10;

  int scale_n = 100000;  // watcher-scale: instances of one type
  int scale_rate = 2000;
  double scale_seconds = 20;
  int scale_group_size = 100;
  int scale_types = 1;  // watcher-scale: instance i is of type i % scale_types

  std::string discoveryd;
  std::string discoveryd_args = "--listen=127.0.0.1:{port} --endpoints={endpoints}";
  std::string discoveryd_token = "bench-token";
  double gateway_seconds = 5;
  int gateway_connections = 4;
  int sse_subscribers = 1000;

  void ApplySmoke() {
    register_n = 200;
    register_inflight = 8;
    keepalive_n = 200;
    keepalive_seconds = 3;
    keepalive_ttl = 2;
    latency_rate = 200;
    latency_seconds = 1;
    fanout_rate = 50;
    fanout_seconds = 1;
    throughput_n = 2000;
    resync_n = 2000;
    pick_n = 200;
    pick_seconds = 1;
    scale_n = 2000;
    scale_rate = 200;
    scale_seconds = 1;
    gateway_seconds = 1;
    sse_subscribers = 50;
  }
};

extern const std::vector<std::string> kAllScenarios;
// The scenarios that run over --gateway / --store etcd:// too.
extern const std::vector<std::string> kBackendScenarios;
// ... and over --store redis:// (kBackendScenarios plus watch-throughput and resync, whose
// Redis versions are redis_throughput.cc and redis_resync.cc).
extern const std::vector<std::string> kRedisScenarios;

// ---------------------------------------------------------------------------------------------
// Measurement helpers

// Clocks, CPU time, /proc fields, percentiles, rounding, ParallelFor: bench/measure.h (shared
// with discovery-raw-bench).
using bench_measure::CpuSeconds;
using bench_measure::NowNs;
using bench_measure::ParallelFor;
using bench_measure::Percentile;
using bench_measure::ProcStatus;
using bench_measure::Round;
using bench_measure::Seconds;

// Threads of this process by name (/proc/self/task/*/comm): the library's are named
// discovery-* (the main thread, also "discovery-bench", is not counted as the library's).
struct ThreadCounts {
  int total = 0;
  int library = 0;
};
ThreadCounts CountThreads();

bool WaitFor(const std::function<bool()>& pred, absl::Duration timeout,
             absl::Duration poll = absl::Milliseconds(1));

Json Target(const std::string& what, bool met);

// ---------------------------------------------------------------------------------------------
// Test data

Instance MakeInstance(int i, const std::string& type = "world");
std::string KeyOf(const std::string& prefix, const Instance& in);
std::string PrefixEnd(std::string prefix);

// A unique key prefix per scenario run (also unique on a shared --endpoints cluster).
std::string UniquePrefix(const std::string& scenario, const std::string& who);

// ---------------------------------------------------------------------------------------------
// Scenario context

struct Context {
  const Flags* flags = nullptr;
  std::vector<std::string> endpoints;
  std::shared_ptr<spdlog::logger> logger;

  // "etcd", "gateway" or "redis": which backend Connect() reaches.
  std::string Backend() const;
  // The key prefix of a scenario run: unique on a store, discoveryd's own in gateway mode.
  std::string Prefix(const std::string& scenario, const std::string& who) const;

  discovery::EtcdOptions EtcdOpts() const;
  std::shared_ptr<discovery::Connection> Connect() const;
  std::unique_ptr<discovery::Watcher> NewWatcher(std::shared_ptr<discovery::Connection> conn,
                                                 const std::string& prefix) const;
  // A fresh connection and a watcher synced on `prefix`, with the initial sync's wall time and
  // the process RSS it added (malloc_trim first, so freed pages of earlier phases do not count).
  struct MeasuredSync {
    std::shared_ptr<discovery::Connection> conn;
    std::unique_ptr<discovery::Watcher> watcher;
    double sync_s = 0;
    int64_t rss_before_kib = 0;  // VmRSS right before the watcher was created
    int64_t rss_delta_kib = 0;
  };
  MeasuredSync SyncWatcher(const std::string& prefix) const;
};

class Bare;

// Writes n instances MakeInstance(0..n) under prefix with `threads` bare writers.
int BulkPut(Bare& bare, const std::string& prefix, int n, int threads);

// ---------------------------------------------------------------------------------------------
// Scenarios (one file each)

Json RunRegister(const Context& cx);
Json RunKeepalive(const Context& cx);
// watch-latency (1 subscriber) and fanout (many).
Json RunLatency(const Context& cx, const std::string& name, int rate, double seconds,
                int subscribers);
Json RunThroughput(const Context& cx);
Json RunResync(const Context& cx);
// --store redis:// versions, raw hiredis baselines in the same run (redis_log.h).
Json RunRedisThroughput(const Context& cx);
Json RunRedisResync(const Context& cx);
Json RunPick(const Context& cx);
Json RunGateway(const Context& cx);
Json RunWatcherScale(const Context& cx);

}  // namespace discovery_bench
