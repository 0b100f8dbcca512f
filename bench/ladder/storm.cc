// discovery-ladder: the restart storm (issue 15, "Attach"). Replica 0 is stopped and started
// again while a paced churn runs; once the new process has synced (/healthz 200), every one of
// its subscribers reconnects at once (up to --storm-inflight not yet synced). Measured: the
// restart (stop -> synced), the storm (synced -> every subscriber of replica 0 has its init +
// synced again), and, when there are other replicas, the put-ack -> frame latency and missed
// frames of THEIR subscribers over the whole window (the live stream must not be disturbed).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "ladder.h"

namespace ladder {

absl::StatusOr<Json> RunRestartStorm(const StormInput& in, std::vector<Replica>& reps,
                                     SseFleet& fleet) {
  const Config& cfg = *in.cfg;
  Json line = *in.base;
  line["rung"] = absl::StrCat(in.size->name, "@storm");
  line["churn_per_s"] = cfg.storm_rate;
  int on_zero = 0;
  std::vector<SubSpec> others = *in.subs;  // replica 0's subscribers watch no group here
  for (SubSpec& s : others) {
    if (s.replica == 0) {
      s.group = -1;
      ++on_zero;
    }
  }
  line["storm_subscribers"] = on_zero;
  line["storm_inflight"] = cfg.storm_inflight;
  (void)fleet.TakeRecords();
  const int disc0 = fleet.disconnected(), fail0 = fleet.failed(), synced0 = fleet.synced();
  fleet.SetRecording(true);

  // The churn runs through the whole restart and storm, in its own thread.
  ChurnResult churn;
  std::thread writer([&] {
    churn = RunChurn(in.channel, in.prefix, in.size->instances, cfg.group_size, cfg.storm_rate,
                     cfg.storm_seconds, cfg.writer_inflight, in.seq_base);
  });
  usleep(static_cast<useconds_t>(std::min(2.0, cfg.storm_seconds / 4) * 1e6));

  const int64_t t_stop = NowNs();
  StopReplica(reps[0]);
  absl::Status status;
  auto r = SpawnReplica(cfg.discoveryd, in.endpoint, in.prefix, cfg.work_dir, 100);
  if (r.ok()) {
    reps[0] = std::move(*r);
    std::vector<Replica> one;
    one.push_back(std::move(reps[0]));
    status = WaitSynced(one, cfg.sync_timeout_s);
    reps[0] = std::move(one[0]);
  } else {
    status = r.status();
  }
  int64_t t_synced = 0, t_all = 0;
  if (status.ok()) {
    t_synced = reps[0].synced_ns;
    fleet.Reconnect(0, reps[0].port, cfg.storm_inflight);
    const int64_t deadline = NowNs() + static_cast<int64_t>(cfg.attach_timeout_s * 1e9);
    while (!g_abort.load() && NowNs() < deadline) {
      if (fleet.synced() - synced0 + (fleet.failed() - fail0) >= on_zero) {
        t_all = NowNs();
        break;
      }
      usleep(5000);
    }
  }
  writer.join();
  // Deliveries to the other replicas' subscribers: drain as the churn rungs do.
  const int64_t expected = ExpectedDeliveries(churn, others);
  const int64_t drain_deadline = NowNs() + static_cast<int64_t>(cfg.drain_s * 1e9);
  std::vector<SseFleet::Record> kept;
  for (;;) {
    for (const auto& rec : fleet.TakeRecords()) {
      if (others[static_cast<size_t>(rec.sub)].group >= 0) kept.push_back(rec);
    }
    if (static_cast<int64_t>(kept.size()) >= expected || NowNs() > drain_deadline ||
        g_abort.load()) {
      break;
    }
    usleep(5000);
  }
  fleet.SetRecording(false);
  Delivery d = Match(churn, others, kept);

  line["storm_restart_s"] = R3(static_cast<double>(t_synced - t_stop) / 1e9);
  line["storm_attach_all_s"] = t_all > 0 ? R3(static_cast<double>(t_all - t_synced) / 1e9) : -1.0;
  line["storm_resynced"] = fleet.synced() - synced0;
  line["storm_failed"] = fleet.failed() - fail0;
  line["storm_disconnected"] = fleet.disconnected() - disc0;  // replica 0's, by the stop
  line["storm_error"] = status.ok() ? "" : status.ToString();
  int acked = 0;
  for (const auto& p : churn.puts) acked += p.ack_ns != 0 ? 1 : 0;
  line["puts_acked"] = acked;
  line["others_expected"] = d.expected;
  line["others_delivered"] = d.matched;
  line["others_missed"] = d.missed;
  line["others_latency_ms"] = LatencyJson(d.latency_ms);
  line["rss_after_kib"] = Json::array();
  for (const Replica& rep : reps) line["rss_after_kib"].push_back(RssKib(rep.pid()));
  line["loadavg_end"] = LoadAvg();
  if (!status.ok()) return status;
  return line;
}

}  // namespace ladder
