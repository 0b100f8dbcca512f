// discovery-bench: end-to-end load tool for the discovery library against a real etcd.
//
// It starts a throw-away single-member etcd on 127.0.0.1 (data dir under /dev/shm, through
// the test harness) for every scenario, or uses `--endpoints` of an existing cluster. Each
// scenario prints ONE JSON line on stdout with the library's figures, a raw baseline measured
// in the same run (a bare gRPC client on the generated etcd stubs doing the same etcd calls
// without library logic), the ratio and the target. Logs go to stderr.
//
//   discovery-bench                         # every scenario at full size
//   discovery-bench --scenario register --register-n 2000
//   discovery-bench --smoke                 # every scenario, tiny sizes, < 60 s (CI)
//
// See bench/README.md for what each scenario measures and the latest results.
#include <algorithm>
#include <iostream>
#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
#include "common.h"
#include "etcd_harness.h"
#include "spdlog/sinks/stdout_sinks.h"

namespace discovery_bench {
namespace {

Json RunScenario(const std::string& name, const Context& cx) {
  const Flags& f = *cx.flags;
  if (name == "register") return RunRegister(cx);
  if (name == "keepalive") return RunKeepalive(cx);
  if (name == "watch-latency") return RunLatency(cx, name, f.latency_rate, f.latency_seconds, 1);
  if (name == "fanout") {
    return RunLatency(cx, name, f.fanout_rate, f.fanout_seconds, f.fanout_subscribers);
  }
  const bool redis = cx.Backend() == "redis";
  if (name == "watch-throughput") return redis ? RunRedisThroughput(cx) : RunThroughput(cx);
  if (name == "resync") return redis ? RunRedisResync(cx) : RunResync(cx);
  if (name == "pick") return RunPick(cx);
  if (name == "gateway") return RunGateway(cx);
  if (name == "watcher-scale") return RunWatcherScale(cx);
  Json out;
  out["scenario"] = name;
  out["error"] = "unknown scenario";
  return out;
}

}  // namespace
}  // namespace discovery_bench

int main(int argc, char** argv) {
  using namespace discovery_bench;  // NOLINT
  Flags f;
  CLI::App app{"discovery-bench: end-to-end benchmarks of the discovery library against etcd"};
  app.add_option("--scenario", f.scenarios,
                 "Scenario(s) to run (default: all): keepalive, register, watch-latency, "
                 "fanout, watch-throughput, resync, pick, gateway, watcher-scale");
  app.add_flag("--smoke", f.smoke, "All scenarios (unless --scenario) with tiny sizes; < 60 s");
  app.add_option("--endpoints", f.endpoints,
                 "Existing etcd (comma list); default: start one per scenario on 127.0.0.1");
  app.add_option("--log-level", f.log_level, "Library log level (stderr)");
  app.add_option("--gateway", f.gateway,
                 "register, keepalive, watch-latency through discoveryd (URL list; the token "
                 "from DISCOVERY_API_TOKEN); watch-latency's writer puts to --endpoints");
  app.add_option("--store", f.store,
                 "register, keepalive, watch-latency (and, redis:// only, watch-throughput, "
                 "resync) on this store: redis://host:port or etcd://host:port (default: etcd "
                 "at --endpoints)");
  app.add_option("--gateway-prefix", f.gateway_prefix, "gateway mode: discoveryd's --prefix");
  app.add_option("--peer-pids", f.peer_pids,
                 "register, keepalive: name=pid,... of servers whose CPU to report");
  app.add_option("--register-n", f.register_n, "register: instances");
  app.add_option("--register-inflight,--register-threads", f.register_inflight,
                 "register: registrations in flight");
  app.add_option("--register-api", f.register_api,
                 "register: sync (K threads calling Register), async (RegisterAsync, K in "
                 "flight) or many (one RegisterMany of all N, 64 in flight)")
      ->check(CLI::IsMember({"sync", "async", "many"}));
  app.add_option("--keepalive-n", f.keepalive_n, "keepalive: leases");
  app.add_option("--keepalive-seconds", f.keepalive_seconds, "keepalive: measured seconds");
  app.add_option("--keepalive-ttl", f.keepalive_ttl, "keepalive: lease TTL seconds");
  app.add_option("--latency-rate", f.latency_rate, "watch-latency: puts per second (1000, 10000)");
  app.add_option("--latency-seconds", f.latency_seconds, "watch-latency: seconds");
  app.add_option("--latency-inflight", f.latency_inflight,
                 "watch-latency, fanout: writer Puts outstanding at once")
      ->check(CLI::Range(1, 4096));
  app.add_flag("--latency-full-value", f.latency_full_value,
               "watch-latency (etcd): put the instance as a registrar writes it (~470 B) instead "
               "of the minimal one (~100 B)");
  app.add_option("--fanout-subscribers", f.fanout_subscribers, "fanout: subscribers");
  app.add_option("--fanout-rate", f.fanout_rate, "fanout: puts per second");
  app.add_option("--fanout-seconds", f.fanout_seconds, "fanout: seconds");
  app.add_option("--throughput-n", f.throughput_n, "watch-throughput: puts");
  app.add_option("--throughput-writers", f.throughput_writers, "watch-throughput: writers");
  app.add_option("--resync-n", f.resync_n, "resync: instances");
  app.add_option("--pick-n", f.pick_n, "pick: instances");
  app.add_option("--pick-rate", f.pick_rate, "pick: changes per second");
  app.add_option("--pick-seconds", f.pick_seconds, "pick: seconds");
  app.add_option("--scale-n", f.scale_n, "watcher-scale: instances of one type");
  app.add_option("--scale-rate", f.scale_rate, "watcher-scale: updates per second");
  app.add_option("--scale-seconds", f.scale_seconds, "watcher-scale: seconds of churn");
  app.add_option("--scale-group-size", f.scale_group_size, "watcher-scale: instances per group");
  app.add_option("--scale-types", f.scale_types,
                 "watcher-scale: types the instances are spread over (1: all of type world)");
  app.add_option("--discoveryd", f.discoveryd, "gateway: path of discoveryd (else skipped)");
  app.add_option("--discoveryd-args", f.discoveryd_args,
                 "gateway: discoveryd arguments; {port} and {endpoints} are substituted");
  app.add_option("--gateway-seconds", f.gateway_seconds, "gateway: seconds of discover load");
  app.add_option("--gateway-connections", f.gateway_connections, "gateway: keep-alive conns");
  app.add_option("--sse-subscribers", f.sse_subscribers, "gateway: SSE subscribers");
  CLI11_PARSE(app, argc, argv);

  if (f.smoke) {
    // Explicit sizes given on the command line still win.
    Flags given = f;
    f.ApplySmoke();
    if (app.count("--register-n")) f.register_n = given.register_n;
    if (app.count("--keepalive-n")) f.keepalive_n = given.keepalive_n;
    if (app.count("--keepalive-seconds")) f.keepalive_seconds = given.keepalive_seconds;
    if (app.count("--throughput-n")) f.throughput_n = given.throughput_n;
    if (app.count("--resync-n")) f.resync_n = given.resync_n;
    if (app.count("--scale-n")) f.scale_n = given.scale_n;
    if (app.count("--scale-rate")) f.scale_rate = given.scale_rate;
    if (app.count("--scale-seconds")) f.scale_seconds = given.scale_seconds;
    if (app.count("--scale-types")) f.scale_types = given.scale_types;
  }
  const bool other_backend = !f.gateway.empty() || !f.store.empty();
  if (!f.gateway.empty() && !f.store.empty()) {
    std::cerr << "--gateway and --store: choose one\n";
    return 2;
  }
  // --store redis:// runs watch-throughput and resync too (the gateway and etcd:// cannot).
  const bool redis_store = absl::StartsWith(f.store, "redis://");
  const std::vector<std::string>& allowed = redis_store ? kRedisScenarios : kBackendScenarios;
  if (f.scenarios.empty()) {
    f.scenarios = other_backend ? allowed : kAllScenarios;
  }
  for (const std::string& name : f.scenarios) {
    if (other_backend && std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
      std::cerr << (redis_store ? "--store redis:// runs register, keepalive, watch-latency, "
                                  "watch-throughput and resync only, not "
                                : "--gateway / --store etcd:// run register, keepalive and "
                                  "watch-latency only, not ")
                << name << "\n";
      return 2;
    }
  }

  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("discovery.bench", sink);
  logger->set_level(spdlog::level::from_str(f.log_level));

  int failures = 0;
  for (const std::string& name : f.scenarios) {
    Context cx;
    cx.flags = &f;
    cx.logger = logger;
    std::unique_ptr<discovery::testing::EtcdCluster> cluster;
    if (!f.endpoints.empty()) {
      cx.endpoints = discovery::SplitEndpoints(f.endpoints);
    } else if (!other_backend && (name != "gateway" || !f.discoveryd.empty())) {
      auto c = discovery::testing::EtcdCluster::Start(
          {.members = 1, .extra_args = {"--quota-backend-bytes", "4294967296"}});
      if (!c.ok()) {
        std::cerr << "starting etcd: " << c.status() << "\n";
        return 2;
      }
      cluster = *std::move(c);
      cx.endpoints = cluster->ClientEndpoints();
    }
    const int64_t t0 = NowNs();
    Json result = RunScenario(name, cx);
    result["wall_s"] = Round(Seconds(NowNs() - t0), 1);
    if (result.contains("error")) ++failures;
    std::cout << result.dump() << std::endl;
  }
  // Timing targets are reported, never asserted; only errors fail the run.
  return failures == 0 ? 0 : 1;
}
