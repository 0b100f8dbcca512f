// discovery-bench scenario "keepalive": N registrations held by one Registrar; CPU, threads
// and lost leases while only keepalives flow. CPU is the getrusage delta over the measured
// window only, defined as in `discovery-raw-bench keepalive`: it starts TTL/2 after the last
// registration returned (warm-up) and lasts --keepalive-seconds. Threads are split into the
// library's (named discovery-*) and the rest (gRPC's; the bench's own are joined by then).
// With --gateway / --store the registrations are held through discoveryd (one batch heartbeat
// per interval) or on Redis (one script call per interval); --peer-pids adds the servers' CPU
// over the same window, and in gateway mode the TCP connections to the gateway are counted
// (/proc/self/fd against /proc/net/tcp).
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "common.h"
#include "discovery/registrar.h"
#include "tcp_sockets.h"

namespace discovery_bench {

Json RunKeepalive(const Context& cx) {
  const Flags& f = *cx.flags;
  const int n = f.keepalive_n;
  const double d = f.keepalive_seconds;
  const int ttl = f.keepalive_ttl;
  Json out;
  out["scenario"] = "keepalive";
  out["impl"] = "library";
  out["backend"] = cx.Backend();
  out["n"] = n;
  out["seconds"] = d;
  out["ttl_s"] = ttl;

  const int64_t threads_before = ProcStatus("Threads");
  auto conn = cx.Connect();
  std::atomic<int> lost{0}, at_risk{0};
  auto registrar = discovery::Registrar::Create(
      {.connection = conn,
       .on_event =
           [&](const discovery::RegistrationEvent& ev) {
             if (ev.type == discovery::RegistrationEventType::kLeaseLost) lost.fetch_add(1);
             if (ev.type == discovery::RegistrationEventType::kLeaseAtRisk) at_risk.fetch_add(1);
           },
       .logger = cx.logger});
  if (!registrar.ok()) {
    out["error"] = registrar.status().ToString();
    return out;
  }
  const std::string prefix = cx.Prefix("keepalive", "lib");
  std::mutex mu;
  std::vector<discovery::Registration> regs;
  std::atomic<int> errors{0};
  ParallelFor(f.keepalive_threads, n, [&](int i) {
    auto reg =
        (*registrar)->Register(MakeInstance(i), {.ttl = absl::Seconds(ttl), .prefix = prefix});
    if (!reg.ok()) {
      errors.fetch_add(1);
      return;
    }
    std::lock_guard lock(mu);
    regs.push_back(*std::move(reg));
  });

  // Warm-up, then the measured window.
  const int64_t w0 = NowNs() + static_cast<int64_t>(ttl * 1e9 / 2);
  const int64_t w1 = w0 + static_cast<int64_t>(d * 1e9);
  while (NowNs() < w0)
    absl::SleepFor(absl::Milliseconds(std::min<int64_t>(100, (w0 - NowNs()) / 1000000 + 1)));
  const double cpu0 = CpuSeconds();
  bench_measure::PeerCpu peers(f.peer_pids);
  peers.Begin();
  // Gateway mode: connections to the first gateway URL's port, most seen in the window.
  int gateway_port = 0;
  if (!f.gateway.empty()) {
    const std::string first = f.gateway.substr(0, f.gateway.find(','));
    const size_t colon = first.rfind(':');
    if (colon != std::string::npos) gateway_port = std::atoi(first.c_str() + colon + 1);
  }
  // Every socket to the gateway seen in the window (sampled every 250 ms): bytes when first
  // seen and last seen; one that sent bytes, or appeared, during the window carried requests.
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> sockets;
  int gateway_open_max = 0;
  auto sample_sockets = [&](bool at_start) {
    if (gateway_port <= 0) return;
    const auto now = SocketInodesTo(gateway_port);
    gateway_open_max = std::max(gateway_open_max, static_cast<int>(now.size()));
    for (const auto& [ino, bytes] : now) {
      auto [it, fresh] = sockets.try_emplace(ino, at_start ? bytes : 0, bytes);
      if (!fresh) it->second.second = bytes;
    }
  };
  sample_sockets(true);
  ThreadCounts threads = CountThreads();
  int min_streams = conn->keepalive_streams(), max_streams = min_streams;
  // The sampling reads /proc (~0.1 % of a core at 4 per second): the benchmark's own cost,
  // not the library's, so its CPU time is taken out of the figure (the raw binary samples
  // nothing).
  int64_t sampling_ns = 0;
  while (NowNs() < w1) {
    absl::SleepFor(absl::Milliseconds(std::min<int64_t>(250, (w1 - NowNs()) / 1000000 + 1)));
    const int64_t s0 = bench_measure::ThreadCpuNs();
    sample_sockets(false);
    ThreadCounts t = CountThreads();
    if (t.total > threads.total) threads = t;
    min_streams = std::min(min_streams, conn->keepalive_streams());
    max_streams = std::max(max_streams, conn->keepalive_streams());
    sampling_ns += bench_measure::ThreadCpuNs() - s0;
  }
  const double cpu = CpuSeconds() - cpu0 - static_cast<double>(sampling_ns) / 1e9;
  const double wall = Seconds(NowNs() - w0);
  for (const auto& [name, pct] : peers.End()) out[name] = pct;
  if (gateway_port > 0) {
    // Open (most at once; idle keep-alive connections left from the registration burst
    // included) and carrying traffic in the window (the heartbeats).
    int active = 0;
    for (const auto& [ino, b] : sockets) active += b.second > b.first ? 1 : 0;
    out["gateway_connections_open"] = gateway_open_max;
    out["gateway_connections_seen"] = static_cast<int>(sockets.size());
    out["gateway_connections"] = active;
  }
  out["registered"] = static_cast<int>(regs.size());
  out["register_errors"] = errors.load();
  out["warmup_s"] = Round(ttl / 2.0, 2);
  out["cpu_s"] = Round(cpu);
  out["cpu_pct_of_core"] = Round(100.0 * cpu / wall, 2);
  out["cpu_us_per_keepalive"] =
      regs.empty() ? 0.0
                   : Round(1e6 * cpu / (static_cast<double>(regs.size()) * wall * 3 / ttl), 2);
  out["threads_total"] = threads.total;
  out["threads_before_connection"] = threads_before;
  out["threads_added"] = threads.total - threads_before;
  out["threads_library"] = threads.library;
  out["threads_grpc"] = threads.total - threads.library - 1;  // all but main and the library's
  out["keepalive_streams"] = max_streams;
  out["keepalive_streams_min"] = min_streams;
  out["leases_lost"] = lost.load();
  out["lease_at_risk"] = at_risk.load();
  out["keepalives_per_s"] = Round(n / (ttl / 3.0), 1);
  const std::string backend = cx.Backend();
  if (backend == "gateway") {
    const double pct = 100.0 * cpu / wall;
    out["target"] = Target(
        "gateway mode: client CPU <= 5 % of a core, 1 connection, 0 lost, 0 at risk",
        pct <= 5.0 && out["gateway_connections"] == 1 && lost.load() == 0 && at_risk.load() == 0);
  } else if (backend == "redis") {
    out["target"] = Target("report beside discovery-raw-redis-bench keepalive; 0 lost",
                           lost.load() == 0 && errors.load() == 0);
  } else {
    const bool met = threads.library <= 4 && lost.load() == 0 && max_streams == 1;
    out["target"] = Target(
        "CPU <= 1.2x discovery-raw-bench keepalive (bench/compare.sh); <= 4 library threads, "
        "0 lost, 1 stream",
        met);
  }
  ParallelFor(f.keepalive_threads, static_cast<int>(regs.size()),
              [&](int i) { (void)regs[i].Close(); });
  return out;
}

}  // namespace discovery_bench
