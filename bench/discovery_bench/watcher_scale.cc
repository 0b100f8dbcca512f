// discovery-bench scenario "watcher-scale": the embedded watcher holding one large type.
//
// Loads N instances of type `world` (or spread over --scale-types types) straight into etcd (Txns
// of one group of `group_size` puts, ~450-byte values), starts a Watcher and waits for its sync,
// then churns `rate` updates/s for `seconds` (paced writer threads on bare stubs, each value
// stamped with its send time) while one subscriber on the type records send -> callback latency.
// Reports sync time, RSS per cached instance, the CPU of the watcher's threads
// (discovery-watch, the Watch reader that applies and publishes, and discovery-loop; from
// /proc/self/task/<tid>/stat) over the churn window, snapshots published and
// the publish cost per batch (WatcherStats::publishes / publish_time), callback latency p50/p99 and
// loadavg.
#include <dirent.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "bare.h"
#include "common.h"
#include "discovery/watcher.h"
#include "paced_writer.h"
#include "sample_instance.h"

namespace discovery_bench {
namespace {

// CPU seconds (user + system) of this process's threads whose name starts with `prefix`.
double ThreadCpuSeconds(const std::string& prefix) {
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  double total = 0;
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return -1;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    const std::string base = absl::StrCat("/proc/self/task/", e->d_name);
    std::string comm;
    std::getline(std::ifstream(base + "/comm"), comm);
    if (comm.rfind(prefix, 0) != 0) continue;
    std::string stat;
    std::getline(std::ifstream(base + "/stat"), stat);
    const size_t paren = stat.rfind(')');
    if (paren == std::string::npos) continue;
    std::istringstream rest(stat.substr(paren + 2));
    std::string field;
    double utime = 0, stime = 0;
    for (int i = 0; rest >> field; ++i) {  // field 3 (state) is i == 0; utime 14, stime 15
      if (i == 11) utime = std::stod(field);
      if (i == 12) {
        stime = std::stod(field);
        break;
      }
    }
    total += (utime + stime) / tick;
  }
  closedir(dir);
  return total;
}

std::string LoadAvg() {
  std::string line;
  std::getline(std::ifstream("/proc/loadavg"), line);
  return line.substr(0, line.find(' ', line.find(' ', line.find(' ') + 1) + 1));
}

// The type of instance i: `world` when there is one type, else type-NNN = i % types (a
// watcher of the whole prefix over many types, as a gateway of a fleet).
std::string ScaleType(int i, int types) {
  return types <= 1 ? "world" : absl::StrFormat("type-%03d", i % types);
}

// Instance i of the scenario: groups of `group_size`, ~450 bytes, meta.t = send time (mono ns).
std::string ScaleValue(int i, int group_size, int types, int64_t seq, int64_t sent_ns) {
  Instance in = SampleInstance(i, ScaleType(i, types));
  in.group = absl::StrFormat("g-%05d", i / group_size);
  in.updated_at = absl::Now();
  in.meta["seq"] = absl::StrCat(seq);
  in.meta["t"] = absl::StrCat(sent_ns);
  std::string v = discovery::EncodeInstance(in);
  if (v.size() + 10 < 450) {
    in.meta["pad"] = std::string(450 - 10 - v.size(), 'x');
    v = discovery::EncodeInstance(in);
  }
  return v;
}

std::string ScaleKey(const std::string& prefix, int i, int types) {
  return absl::StrCat(prefix, ScaleType(i, types), "/", bench_writer::InstanceId(i));
}

}  // namespace

Json RunWatcherScale(const Context& cx) {
  const Flags& f = *cx.flags;
  const int n = f.scale_n, rate = f.scale_rate, group = std::max(1, f.scale_group_size);
  const int types = std::max(1, f.scale_types);
  Json out;
  out["scenario"] = "watcher-scale";
  out["n"] = n;
  out["rate"] = rate;
  out["seconds"] = f.scale_seconds;
  out["types"] = types;
  out["loadavg_start"] = LoadAvg();
  const std::string prefix = UniquePrefix("watcher-scale", "ws");
  Bare bare(cx.endpoints[0]);

  // Load: one Txn per group (at most 128 ops per Txn, etcd's default --max-txn-ops).
  const int per_txn = std::min(group, 128);
  const int txns = (n + per_txn - 1) / per_txn;
  std::atomic<int> errors{0};
  const int64_t l0 = NowNs();
  ParallelFor(4, txns, [&](int t) {
    pb::TxnRequest req;
    for (int i = t * per_txn; i < std::min(n, (t + 1) * per_txn); ++i) {
      pb::PutRequest* put = req.add_success()->mutable_request_put();
      put->set_key(ScaleKey(prefix, i, types));
      put->set_value(ScaleValue(i, group, types, 0, 0));
    }
    grpc::ClientContext ctx;
    Bare::Deadline(&ctx, 30);
    pb::TxnResponse resp;
    if (!bare.kv->Txn(&ctx, req, &resp).ok()) errors.fetch_add(1);
  });
  out["load_s"] = Round(Seconds(NowNs() - l0));
  if (errors.load() != 0) {
    out["error"] = absl::StrCat(errors.load(), " load txns failed");
    return out;
  }

  auto [conn, watcher, sync_secs, rss0, rss_delta_kib] = cx.SyncWatcher(prefix);
  const int64_t rss1 = rss0 + rss_delta_kib;
  out["sync_s"] = Round(sync_secs);
  out["rss_per_instance_bytes"] = Round(rss_delta_kib * 1024.0 / n, 0);

  std::mutex mu;
  std::vector<int64_t> latencies;  // ns, guarded by mu
  std::atomic<int64_t> received{0};
  discovery::Subscription sub = watcher->Subscribe(
      {.type = types <= 1 ? "world" : ""}, [&](const discovery::ChangeEvent& ev) {
        const int64_t now = bench_writer::MonoNs();
        auto it = ev.instance->meta.find("t");
        int64_t t = 0;
        if (it == ev.instance->meta.end() || !absl::SimpleAtoi(it->second, &t) || t == 0) return;
        received.fetch_add(1);
        std::lock_guard lock(mu);
        latencies.push_back(now - t);
      });

  // Churn: W paced writer threads, update `seq` due at t0 + seq / rate on key (seq * p) % n.
  const int writers = 8;
  const int64_t total = static_cast<int64_t>(rate * f.scale_seconds);
  const discovery::WatcherStats st0 = watcher->stats();
  // The watcher's work runs on the Watch reader thread (discovery-watch: it drains inline) and,
  // under a backlog or for timers, on the loop thread (discovery-loop): both are counted.
  auto watcher_cpu = [] {
    return ThreadCpuSeconds("discovery-loop") + ThreadCpuSeconds("discovery-watch");
  };
  const double loop0 = watcher_cpu();
  const double cpu0 = CpuSeconds();
  const int64_t t0 = bench_writer::MonoNs() + 10'000'000;
  std::atomic<int64_t> sent{0}, put_errors{0}, late{0};
  std::vector<std::thread> pool;
  for (int w = 0; w < writers; ++w) {
    pool.emplace_back([&, w] {
      for (int64_t seq = w; seq < total; seq += writers) {
        const int64_t due = t0 + seq * 1'000'000'000 / std::max(1, rate);
        bench_writer::SleepUntilNs(due);
        const int64_t now = bench_writer::MonoNs();
        if (now - due > 50'000'000) late.fetch_add(1);
        const int i = static_cast<int>((seq * 7919) % n);
        if (bare.Put(ScaleKey(prefix, i, types), ScaleValue(i, group, types, seq + 1, now)).ok()) {
          sent.fetch_add(1);
        } else {
          put_errors.fetch_add(1);
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  const int64_t t1 = bench_writer::MonoNs();
  const double loop1 = watcher_cpu();
  const double cpu1 = CpuSeconds();
  const discovery::WatcherStats st1 = watcher->stats();
  const bool drained = WaitFor([&] { return received.load() >= sent.load(); }, absl::Seconds(60));
  const double drain_s = Seconds(bench_writer::MonoNs() - t1);
  sub.Reset();

  const double window = Seconds(t1 - t0);
  const uint64_t batches = st1.publishes - st0.publishes;
  out["sent"] = sent.load();
  out["put_errors"] = put_errors.load();
  out["late_puts"] = late.load();
  out["achieved_rate"] = Round(sent.load() / window, 0);
  out["received"] = received.load();
  out["drained"] = drained;
  out["drain_after_s"] = Round(drain_s);
  out["loop_cpu_pct"] = Round(100.0 * (loop1 - loop0) / window, 1);
  out["process_cpu_pct"] = Round(100.0 * (cpu1 - cpu0) / window, 1);
  out["batches"] = batches;
  out["changes_per_batch"] = batches == 0 ? 0.0 : Round(double(sent.load()) / batches, 1);
  out["publish_us_per_batch"] =
      batches == 0
          ? 0.0
          : Round(absl::ToDoubleMicroseconds(st1.publish_time - st0.publish_time) / batches, 1);
  {
    std::lock_guard lock(mu);
    out["latency_p50_ms"] = Round(Percentile(latencies, 50) / 1e6, 2);
    out["latency_p99_ms"] = Round(Percentile(latencies, 99) / 1e6, 2);
    out["latency_max_ms"] = Round(Percentile(latencies, 100) / 1e6, 2);
  }
  out["rss_after_churn_per_instance_bytes"] = Round((ProcStatus("VmRSS") - rss0) * 1024.0 / n, 0);
  out["loadavg_end"] = LoadAvg();
  out["target"] =
      Target("watcher threads <= 25 % of a core at 100k x 2,000/s, <= 1.5 KiB RSS per instance",
             100.0 * (loop1 - loop0) / window <= 25 && (rss1 - rss0) * 1024.0 / n <= 1536);
  return out;
}

}  // namespace discovery_bench
