// discovery-ladder: matches the SSE frames the subscribers recorded against the churn's puts
// (by etcd revision: one put, one revision), giving put-ack -> received latencies and the
// missed count, plus the list of keys every rung's JSON line carries.
#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "ladder.h"

namespace ladder {

namespace {

// Subscribers per group.
std::unordered_map<int, std::vector<int>> ByGroup(const std::vector<SubSpec>& subs) {
  std::unordered_map<int, std::vector<int>> by;
  for (size_t s = 0; s < subs.size(); ++s) by[subs[s].group].push_back(static_cast<int>(s));
  return by;
}

}  // namespace

int64_t ExpectedDeliveries(const ChurnResult& churn, const std::vector<SubSpec>& subs) {
  auto by = ByGroup(subs);
  int64_t n = 0;
  for (const auto& p : churn.puts) {
    if (p.ack_ns == 0) continue;
    auto it = by.find(p.group);
    if (it != by.end()) n += static_cast<int64_t>(it->second.size());
  }
  return n;
}

Delivery Match(const ChurnResult& churn, const std::vector<SubSpec>& subs,
               const std::vector<SseFleet::Record>& records) {
  Delivery d;
  d.expected = ExpectedDeliveries(churn, subs);
  std::unordered_map<int64_t, size_t> by_rev;  // revision -> put index
  by_rev.reserve(churn.puts.size() * 2);
  for (size_t i = 0; i < churn.puts.size(); ++i) {
    if (churn.puts[i].ack_ns != 0) by_rev[churn.puts[i].revision] = i;
  }
  // (put, subscriber) pairs seen, to count duplicates once.
  std::unordered_map<int64_t, std::vector<int32_t>> seen;
  d.latency_ms.reserve(records.size());
  for (const auto& r : records) {
    auto it = by_rev.find(r.revision);
    if (it == by_rev.end()) {
      ++d.unexpected;
      continue;
    }
    const ChurnResult::Put& p = churn.puts[it->second];
    if (subs[static_cast<size_t>(r.sub)].group != p.group) {
      ++d.unexpected;
      continue;
    }
    auto& who = seen[r.revision];
    if (std::find(who.begin(), who.end(), r.sub) != who.end()) {
      ++d.unexpected;
      continue;
    }
    who.push_back(r.sub);
    ++d.matched;
    d.latency_ms.push_back(static_cast<double>(r.recv_ns - p.ack_ns) / 1e6);
  }
  d.missed = d.expected - d.matched;
  return d;
}

double Pct(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t idx = static_cast<size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(idx, v.size() - 1)];
}

Json LatencyJson(std::vector<double>& ms) {
  return {{"p50", R3(Pct(ms, 50))},
          {"p99", R3(Pct(ms, 99))},
          {"p99.9", R3(Pct(ms, 99.9))},
          {"max", R3(ms.empty() ? 0 : ms.back())}};
}

double R3(double v) { return std::round(v * 1000.0) / 1000.0; }

const std::vector<std::string>& RequiredKeys() {
  static const std::vector<std::string> keys = {"rung",
                                                "instances",
                                                "subscribers",
                                                "replicas",
                                                "churn_per_s",
                                                "seconds",
                                                "load_s",
                                                "sync_s",
                                                "rss_idle_kib",
                                                "rss_synced_kib",
                                                "rss_attached_kib",
                                                "rss_after_kib",
                                                "rss_per_instance_b",
                                                "rss_per_subscriber_b",
                                                "attach_all_s",
                                                "attach_ms",
                                                "discover_cold_ms",
                                                "discover_warm_ms",
                                                "discover_bytes",
                                                "puts_acked",
                                                "achieved_per_s",
                                                "writer_max_lag_ms",
                                                "expected",
                                                "delivered",
                                                "latency_ms",
                                                "missed",
                                                "disconnected",
                                                "failed",
                                                "resets",
                                                "cpu_pct",
                                                "discoveryd_cpu_pct_per_1k_frames_s",
                                                "frames_per_s",
                                                "cpu_bound",
                                                "loadavg_start",
                                                "loadavg_end",
                                                "nofile"};
  return keys;
}

}  // namespace ladder
