// discovery-ladder: one size of the ladder (instances, subscribers, replicas) end to end:
// etcd, idle RSS, bulk load, replicas' sync, subscribers' attach, whole-type discover, then
// one churn per rate, each giving one JSON line.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "etcd_harness.h"
#include "ladder.h"

namespace ladder {

namespace {

using discovery::testing::EtcdCluster;

void Log(const std::string& msg) {
  std::fprintf(stderr, "[ladder %.3f] %s\n", static_cast<double>(NowNs()) / 1e9, msg.c_str());
  std::fflush(stderr);
}

// Busy and total jiffies of the whole machine (/proc/stat "cpu" line).
std::pair<double, double> MachineJiffies() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  in >> cpu;
  double v[8] = {0};
  for (double& x : v) in >> x;
  double total = std::accumulate(v, v + 8, 0.0);
  return {total - v[3] - v[4], total};  // idle + iowait are not busy
}

struct CpuSample {
  std::vector<double> discoveryd;
  std::vector<std::map<pid_t, std::pair<std::string, double>>> threads;  // per replica
  double etcd = 0, ladder = 0, subscribers = 0;
  std::pair<double, double> machine;
  int64_t at = 0;
};

CpuSample SampleCpu(const std::vector<Replica>& reps, pid_t etcd_pid, const SseFleet& fleet) {
  CpuSample s;
  s.at = NowNs();
  for (const Replica& r : reps) {
    s.discoveryd.push_back(CpuSeconds(r.pid()));
    s.threads.push_back(ThreadCpu(r.pid()));
  }
  s.etcd = etcd_pid > 0 ? CpuSeconds(etcd_pid) : 0;
  s.ladder = CpuSeconds(getpid());
  for (pid_t t : fleet.thread_ids()) s.subscribers += CpuSeconds(getpid(), t);
  s.machine = MachineJiffies();
  return s;
}

double Pct100(double cpu_s, int64_t window_ns) {
  return R3(100.0 * cpu_s / (static_cast<double>(window_ns) / 1e9));
}

}  // namespace

absl::StatusOr<std::vector<Json>> RunSize(const Config& cfg, const Size& size) {
  std::vector<Json> lines;
  Json base;
  base["rung"] = size.name;
  base["instances"] = size.instances;
  base["subscribers"] = size.subscribers;
  base["replicas"] = size.replicas;
  base["loadavg_start"] = LoadAvg();
  base["nofile"] = {{"soft", cfg.nofile_soft}, {"hard", cfg.nofile_hard}};

  // etcd: our own on /dev/shm (harness), or the given one under a private prefix.
  std::unique_ptr<EtcdCluster> cluster;
  std::string endpoint = cfg.etcd_url;
  std::string prefix = "/services/";
  pid_t etcd_pid = -1;
  if (endpoint.empty()) {
    Log(absl::StrCat(size.name, ": starting etcd"));
    auto c =
        EtcdCluster::Start({.members = 1, .extra_args = {"--quota-backend-bytes", "8589934592"}});
    if (!c.ok()) return c.status();
    cluster = std::move(*c);
    endpoint = cluster->ClientEndpoint(0);
    etcd_pid = cluster->Pid(0);
    base["etcd"] = "own (/dev/shm)";
  } else {
    prefix = absl::StrCat("/ladder-", getpid(), "-", size.name, "/");
    base["etcd"] = endpoint;
  }
  auto channel = EtcdChannel(endpoint);
  std::vector<Replica> reps;
  auto cleanup = [&] {
    for (Replica& r : reps) StopReplica(r);
    reps.clear();
    if (!cfg.etcd_url.empty()) (void)DeletePrefix(channel, prefix);
  };

  // Idle RSS: one discoveryd synced on the empty prefix.
  {
    std::vector<Replica> idle;
    auto r = SpawnReplica(cfg.discoveryd, endpoint, prefix, cfg.work_dir, 99);
    if (!r.ok()) return r.status();
    idle.push_back(std::move(*r));
    absl::Status s = WaitSynced(idle, cfg.sync_timeout_s);
    base["rss_idle_kib"] = RssKib(idle[0].pid());
    StopReplica(idle[0]);
    if (!s.ok()) return s;
  }

  Log(absl::StrCat(size.name, ": loading ", size.instances, " instances"));
  int64_t t = NowNs();
  if (absl::Status s =
          LoadInstances(channel, prefix, size.instances, cfg.group_size, cfg.load_inflight);
      !s.ok()) {
    cleanup();
    return s;
  }
  base["load_s"] = R3(static_cast<double>(NowNs() - t) / 1e9);
  base["value_bytes"] = InstanceValue(0, cfg.group_size, 0).size();

  Log(absl::StrCat(size.name, ": starting ", size.replicas, " discoveryd"));
  for (int i = 0; i < size.replicas; ++i) {
    auto r = SpawnReplica(cfg.discoveryd, endpoint, prefix, cfg.work_dir, i);
    if (!r.ok()) {
      cleanup();
      return r.status();
    }
    reps.push_back(std::move(*r));
  }
  if (absl::Status s = WaitSynced(reps, cfg.sync_timeout_s); !s.ok()) {
    cleanup();
    return s;
  }
  Json sync = Json::array(), rss_synced = Json::array();
  for (const Replica& r : reps) {
    sync.push_back(R3(static_cast<double>(r.synced_ns - r.spawn_ns) / 1e9));
    rss_synced.push_back(RssKib(r.pid()));
  }
  base["sync_s"] = sync;
  base["rss_synced_kib"] = rss_synced;

  // Subscribers: s on replica s % R, watching group s % G.
  const int groups = std::max(1, size.instances / cfg.group_size);
  std::vector<SubSpec> subs(static_cast<size_t>(size.subscribers));
  std::vector<int> per_replica(reps.size(), 0);
  for (int s = 0; s < size.subscribers; ++s) {
    const int rep = s % size.replicas;
    subs[static_cast<size_t>(s)] = {reps[static_cast<size_t>(rep)].port, rep, s % groups};
    ++per_replica[static_cast<size_t>(rep)];
  }
  Log(absl::StrCat(size.name, ": attaching ", size.subscribers, " subscribers"));
  SseFleet fleet(subs, cfg.sub_threads, cfg.connect_inflight);
  fleet.Start();
  const int64_t attach_deadline = NowNs() + static_cast<int64_t>(cfg.attach_timeout_s * 1e9);
  int64_t all_attached = 0;
  while (!g_abort.load() && NowNs() < attach_deadline) {
    if (fleet.synced() + fleet.failed() >= size.subscribers) {
      all_attached = NowNs();
      break;
    }
    usleep(10000);
  }
  {
    std::vector<int64_t> att = fleet.AttachNs();
    std::vector<double> ms;
    for (int64_t a : att) {
      if (a > 0) ms.push_back(static_cast<double>(a) / 1e6);
    }
    base["attach_all_s"] =
        all_attached > 0 ? R3(static_cast<double>(all_attached - fleet.start_ns()) / 1e9) : -1.0;
    base["attach_ms"] = {{"p50", R3(Pct(ms, 50))},
                         {"p99", R3(Pct(ms, 99))},
                         {"max", R3(ms.empty() ? 0 : ms.back())}};
    base["attached"] = fleet.synced();
    base["init_frames"] = fleet.init_frames();
  }
  if (fleet.synced() < size.subscribers) {
    Log(absl::StrCat(size.name, ": only ", fleet.synced(), " of ", size.subscribers,
                     " subscribers synced; first error: ", fleet.first_error()));
  }
  // RSS per subscriber right after the attach (the shared init encodings still cached), and
  // idle: 2 s later, once discoveryd dropped them (1 s after the last attach, sse.h kInitKeep).
  auto per_subscriber = [&](Json* rss) {
    double per_sub = 0;
    for (size_t i = 0; i < reps.size(); ++i) {
      const int64_t a = RssKib(reps[i].pid());
      rss->push_back(a);
      per_sub += static_cast<double>(a - rss_synced[i].get<int64_t>()) * 1024.0 /
                 std::max(1, per_replica[i]);
    }
    return std::round(per_sub / static_cast<double>(reps.size()));
  };
  Json rss_att = Json::array(), rss_idle_subs = Json::array();
  base["rss_per_subscriber_attach_b"] = per_subscriber(&rss_att);
  usleep(2000000);
  base["rss_per_subscriber_b"] = per_subscriber(&rss_idle_subs);
  double per_inst = 0;
  for (size_t i = 0; i < reps.size(); ++i) {
    per_inst +=
        static_cast<double>(rss_synced[i].get<int64_t>() - base["rss_idle_kib"].get<int64_t>()) *
        1024.0 / std::max(1, size.instances);
  }
  base["rss_attached_kib"] = rss_att;
  base["rss_subscribers_idle_kib"] = rss_idle_subs;
  base["rss_per_instance_b"] = std::round(per_inst / static_cast<double>(reps.size()));

  // Whole type from replica 0: the first call builds the answer, the second finds it warm.
  Discover cold = TimedDiscover(reps[0].port, 120);
  Discover warm = TimedDiscover(reps[0].port, 120);
  base["discover_cold_ms"] = R3(cold.ms);
  base["discover_warm_ms"] = R3(warm.ms);
  base["discover_bytes"] = cold.bytes;
  base["discover_status"] = cold.status;
  base["rss_after_discover_kib"] = RssKib(reps[0].pid());

  const std::vector<int>& rates = size.churn.empty() ? cfg.churn : size.churn;
  int64_t seq_base = 1;
  for (int rate : rates) {
    if (g_abort.load()) break;
    Json line = base;
    line["rung"] = absl::StrCat(size.name, "@", rate);
    line["churn_per_s"] = rate;
    line["seconds"] = cfg.seconds;
    (void)fleet.TakeRecords();
    const int disc0 = fleet.disconnected(), fail0 = fleet.failed(), reset0 = fleet.resets();
    const int64_t deliv0 = fleet.delivered();
    Log(absl::StrCat(line["rung"].get<std::string>(), ": churn for ", cfg.seconds, " s"));
    fleet.SetRecording(true);
    CpuSample c0 = SampleCpu(reps, etcd_pid, fleet);
    ChurnResult churn = RunChurn(channel, prefix, size.instances, cfg.group_size, rate, cfg.seconds,
                                 cfg.writer_inflight, seq_base);
    seq_base += static_cast<int64_t>(churn.puts.size());
    const int64_t expected = ExpectedDeliveries(churn, subs);
    const int64_t drain_deadline = NowNs() + static_cast<int64_t>(cfg.drain_s * 1e9);
    while (!g_abort.load() && NowNs() < drain_deadline && fleet.delivered() - deliv0 < expected) {
      usleep(5000);
    }
    CpuSample c1 = SampleCpu(reps, etcd_pid, fleet);
    fleet.SetRecording(false);
    Delivery d = Match(churn, subs, fleet.TakeRecords());
    const int64_t window = c1.at - c0.at;

    int acked = 0;
    for (const auto& p : churn.puts) acked += p.ack_ns != 0 ? 1 : 0;
    line["puts_acked"] = acked;
    line["put_errors"] = churn.errors;
    line["achieved_per_s"] = churn.t_end > churn.t0
                                 ? R3(acked / (static_cast<double>(churn.t_end - churn.t0) / 1e9))
                                 : 0.0;
    line["writer_max_lag_ms"] = R3(static_cast<double>(churn.max_lag_ns) / 1e6);
    line["expected"] = d.expected;
    line["delivered"] = d.matched;
    line["unexpected"] = d.unexpected;
    line["latency_ms"] = LatencyJson(d.latency_ms);
    line["missed"] = d.missed;
    line["disconnected"] = fleet.disconnected() - disc0;
    line["failed"] = fleet.failed() - fail0;
    line["resets"] = fleet.resets() - reset0;
    // CPU over the window churn start -> last delivery (or the drain deadline).
    Json cpu;
    Json dd = Json::array();
    double dsum = 0;
    std::map<std::string, double> pct;
    for (size_t i = 0; i < reps.size(); ++i) {
      const double p = Pct100(c1.discoveryd[i] - c0.discoveryd[i], window);
      dd.push_back(p);
      dsum += c1.discoveryd[i] - c0.discoveryd[i];
      pct[absl::StrCat("discoveryd", i)] = p;
    }
    cpu["discoveryd"] = dd;
    // The busiest thread of each replica (a single-thread wall shows here, not in the total).
    Json tops = Json::array();
    for (size_t i = 0; i < reps.size(); ++i) {
      std::string name;
      double best = -1;
      for (const auto& [tid, v] : c1.threads[i]) {
        auto was = c0.threads[i].find(tid);
        const double d = v.second - (was == c0.threads[i].end() ? 0 : was->second.second);
        if (d > best) {
          best = d;
          name = v.first;
        }
      }
      tops.push_back({{"thread", name}, {"pct", Pct100(best, window)}});
    }
    cpu["discoveryd_top_thread"] = tops;
    cpu["etcd"] = etcd_pid > 0 ? Pct100(c1.etcd - c0.etcd, window) : -1.0;
    cpu["ladder"] = Pct100(c1.ladder - c0.ladder, window);
    cpu["ladder_subscriber_threads"] = Pct100(c1.subscribers - c0.subscribers, window);
    const double busy = c1.machine.first - c0.machine.first;
    const double total = c1.machine.second - c0.machine.second;
    cpu["machine_busy"] = total > 0 ? R3(100.0 * busy / total) : 0.0;
    cpu["window_s"] = R3(static_cast<double>(window) / 1e9);
    pct["etcd"] = cpu["etcd"].get<double>();
    pct["ladder"] = cpu["ladder"].get<double>();
    line["cpu_pct"] = cpu;
    const double frames_per_s =
        static_cast<double>(d.matched) / (static_cast<double>(window) / 1e9);
    line["frames_per_s"] = R3(frames_per_s);
    line["discoveryd_cpu_pct_per_1k_frames_s"] =
        d.matched > 0 ? R3(100.0 * dsum * 1000.0 / static_cast<double>(d.matched)) : -1.0;
    // The busiest process, and whether it ran at >= 90 % of a core (CPU-bound).
    auto top = std::max_element(pct.begin(), pct.end(),
                                [](const auto& a, const auto& b) { return a.second < b.second; });
    line["cpu_bound"] = top->second >= 90
                            ? top->first
                            : absl::StrCat("none (top ", top->first, " ", top->second, "%)");
    line["rss_after_kib"] = Json::array();
    for (const Replica& r : reps) line["rss_after_kib"].push_back(RssKib(r.pid()));
    line["loadavg_end"] = LoadAvg();
    std::printf("%s\n", line.dump().c_str());
    std::fflush(stdout);
    lines.push_back(std::move(line));
  }
  if (cfg.restart_storm && !g_abort.load()) {
    Config storm_cfg = cfg;
    if (storm_cfg.storm_seconds <= 0) {
      // Long enough for a restart (as long as the first sync) and the storm after it.
      storm_cfg.storm_seconds =
          static_cast<double>(reps[0].synced_ns - reps[0].spawn_ns) / 1e9 + 20;
    }
    Log(absl::StrCat(size.name, ": restart storm (replica 0, churn ", cfg.storm_rate, "/s for ",
                     R3(storm_cfg.storm_seconds), " s)"));
    auto storm = RunRestartStorm({.cfg = &storm_cfg,
                                  .size = &size,
                                  .base = &base,
                                  .subs = &subs,
                                  .channel = channel,
                                  .endpoint = endpoint,
                                  .prefix = prefix,
                                  .seq_base = seq_base},
                                 reps, fleet);
    if (storm.ok()) {
      std::printf("%s\n", storm->dump().c_str());
      std::fflush(stdout);
      lines.push_back(std::move(*storm));
    } else {
      Log(absl::StrCat(size.name, ": restart storm failed: ", storm.status().ToString()));
    }
  }
  fleet.Stop();
  cleanup();
  return lines;
}

}  // namespace ladder
