// The three modes of discovery-raw-redis-bench (see raw_redis.h).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "paced_core.h"
#include "raw_redis.h"
#include "redis_raw.h"
#include "redis_writer.h"

namespace raw_redis {
namespace {

using bench_measure::CpuSeconds;
using bench_measure::NowNs;
using bench_measure::ParallelFor;
using bench_measure::Percentile;
using bench_measure::Round;
using bench_measure::Seconds;
namespace scripts = discovery::redis;

std::string Prefix(const Flags& f, const std::string& mode) {
  if (!f.prefix.empty()) return f.prefix;
  static std::atomic<int> counter{0};
  return "/bench/raw-redis-" + mode + "-" + std::to_string(getpid()) + "-" +
         std::to_string(time(nullptr)) + "-" + std::to_string(counter.fetch_add(1)) + "/";
}

// A value of the library's size and shape (camelCase instance JSON, about 450 bytes).
std::string Value(int i, int64_t lease) {
  char buf[768];
  std::snprintf(
      buf, sizeof buf,
      R"({"instanceId":"%s","type":"world","group":"kr-%d","hostname":"game-%d.kr.example.com",)"
      R"("publicIp":"123.45.%d.%d","privateIp":"10.0.%d.%d","ports":{"game":8001,"grpc":50051},)"
      R"("status":"ready","customState":"","version":"1.4.2","region":"ap-northeast-2",)"
      R"("zone":"a","weight":100,"meta":{},"systemInfo":{},"performance":{"load":0.5,)"
      R"("tps":1200},"startedAt":"2023-11-14T22:13:20.000Z",)"
      R"("updatedAt":"2026-12-01T21:48:32.703Z","leaseId":"%llx"})",
      bench_writer::InstanceId(i).c_str(), i % 8, i, (i / 250) % 250, i % 250, (i / 250) % 250,
      i % 250, static_cast<unsigned long long>(lease));
  return buf;
}

// Grant + put-if-absent: the library's Register on Redis. The lease, or 0.
int64_t RegisterOne(bench_redis::Conn& c, const std::string& prefix, int i, int64_t ttl_ms) {
  const int64_t lease = bench_redis::Grant(c, ttl_ms);
  if (lease == 0) return 0;
  bench_redis::ReplyPtr r = c.Eval(
      scripts::kPutIfAbsentScript,
      {prefix + "world/" + bench_writer::InstanceId(i), Value(i, lease), std::to_string(lease)});
  return bench_redis::IntAt(r.get(), 0) == 1 ? lease : 0;
}

// Registers n on `threads` connections; the leases (0: failed) and per-call latencies.
void RegisterAll(const Flags& f, const std::string& prefix, int n, int threads, int64_t ttl_ms,
                 std::vector<int64_t>* leases, std::vector<int64_t>* latency_ns) {
  leases->assign(static_cast<size_t>(n), 0);
  latency_ns->assign(static_cast<size_t>(n), 0);
  std::atomic<int> next{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < std::max(1, threads); ++t) {
    pool.emplace_back([&] {
      bench_redis::Conn c(f.url);
      for (int i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
        const int64_t s = NowNs();
        (*leases)[static_cast<size_t>(i)] = RegisterOne(c, prefix, i, ttl_ms);
        (*latency_ns)[static_cast<size_t>(i)] = NowNs() - s;
      }
    });
  }
  for (auto& th : pool) th.join();
}

void RevokeAll(const Flags& f, const std::vector<int64_t>& leases) {
  std::atomic<size_t> next{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < 8; ++t) {
    pool.emplace_back([&] {
      bench_redis::Conn c(f.url);
      for (size_t i = next.fetch_add(1); i < leases.size(); i = next.fetch_add(1)) {
        if (leases[i] != 0) c.Eval(scripts::kRevokeScript, {std::to_string(leases[i])});
      }
    });
  }
  for (auto& th : pool) th.join();
}

int Failed(const std::vector<int64_t>& leases) {
  return static_cast<int>(std::count(leases.begin(), leases.end(), 0));
}

}  // namespace

Json RunRegister(const Flags& f) {
  Json out;
  out["scenario"] = "register";
  out["impl"] = "raw-hiredis";
  out["n"] = f.register_n;
  out["inflight"] = f.inflight;
  {
    bench_redis::Conn probe(f.url);
    if (!probe.ok()) {
      out["error"] = probe.error();
      return out;
    }
  }
  const std::string prefix = Prefix(f, "register");
  std::vector<int64_t> leases, lat;
  bench_measure::PeerCpu peers(f.peer_pids);
  peers.Begin();
  const int64_t t0 = NowNs();
  RegisterAll(f, prefix, f.register_n, f.inflight, 10000, &leases, &lat);
  const double secs = Seconds(NowNs() - t0);
  for (const auto& [name, pct] : peers.End()) out[name] = pct;
  const int errors = Failed(leases);
  out["per_s"] = Round((f.register_n - errors) / secs, 1);
  out["p50_ms"] = Round(Percentile(lat, 50) / 1e6);
  out["p99_ms"] = Round(Percentile(lat, 99) / 1e6);
  out["errors"] = errors;
  RevokeAll(f, leases);
  if (errors > 0) out["error"] = std::to_string(errors) + " registrations failed";
  return out;
}

Json RunKeepalive(const Flags& f) {
  const int n = f.keepalive_n;
  const int ttl = f.ttl;
  Json out;
  out["scenario"] = "keepalive";
  out["impl"] = "raw-hiredis";
  out["n"] = n;
  out["seconds"] = f.keepalive_seconds;
  out["ttl_s"] = ttl;
  const std::string prefix = Prefix(f, "keepalive");
  std::vector<int64_t> leases, lat;
  RegisterAll(f, prefix, n, 16, int64_t{ttl} * 1000, &leases, &lat);
  const int errors = Failed(leases);
  std::vector<std::string> ids;
  for (int64_t l : leases) {
    if (l != 0) ids.push_back(std::to_string(l));
  }
  // One script call per tick for all leases (the library refreshes at TTL/3).
  bench_redis::Conn c(f.url);
  const int64_t interval = static_cast<int64_t>(ttl * 1e9 / 3);
  std::atomic<int> lost{0};
  auto tick = [&] {
    bench_redis::ReplyPtr r = c.Eval(scripts::kKeepAliveScript, ids);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
      lost.fetch_add(1);  // a failed call counts as a miss
      return;
    }
    lost.fetch_add(static_cast<int>(r->elements));
  };
  int64_t next = NowNs();
  tick();
  next += interval;
  const int64_t w0 = NowNs() + static_cast<int64_t>(ttl * 1e9 / 2);
  const int64_t w1 = w0 + static_cast<int64_t>(f.keepalive_seconds * 1e9);
  double cpu0 = -1;
  bench_measure::PeerCpu peers(f.peer_pids);
  while (NowNs() < w1) {
    const int64_t wake = std::min(next, cpu0 < 0 ? w0 : w1);
    if (NowNs() < wake) bench_writer::SleepUntilNs(wake);
    if (cpu0 < 0 && NowNs() >= w0) {
      cpu0 = CpuSeconds();
      peers.Begin();
    }
    if (NowNs() >= next) {
      tick();
      next += interval;
    }
  }
  const double cpu = CpuSeconds() - cpu0;
  const double wall = Seconds(NowNs() - w0);
  for (const auto& [name, pct] : peers.End()) out[name] = pct;
  out["registered"] = static_cast<int>(ids.size());
  out["register_errors"] = errors;
  out["cpu_s"] = Round(cpu);
  out["cpu_pct_of_core"] = Round(100.0 * cpu / wall, 2);
  out["cpu_us_per_keepalive"] =
      ids.empty() ? 0.0 : Round(1e6 * cpu / (static_cast<double>(ids.size()) * wall * 3 / ttl), 2);
  out["leases_lost"] = lost.load();
  RevokeAll(f, leases);
  if (errors > 0) out["error"] = std::to_string(errors) + " registrations failed";
  return out;
}

Json RunWatchLatency(const Flags& f) {
  const int total = std::max(1, static_cast<int>(f.rate * f.latency_seconds));
  Json out;
  out["scenario"] = "watch-latency";
  out["impl"] = "raw-hiredis";
  out["rate_per_s"] = f.rate;
  out["seconds"] = f.latency_seconds;
  const std::string prefix = Prefix(f, "watch");
  bench_writer::RedisPacedWriter writer(f.url);
  if (!writer.error().empty()) {
    out["error"] = writer.error();
    return out;
  }
  std::vector<std::atomic<int64_t>> recv(static_cast<size_t>(total));
  for (auto& r : recv) r = 0;
  std::atomic<bool> stop{false};
  // The reader: XREAD BLOCK on the change log from its current end, the value's meta.seq.
  bench_redis::Conn reader(f.url);
  std::string last = "0-0";
  if (bench_redis::ReplyPtr top =
          reader.Command({"XREVRANGE", reader.keys()[6], "+", "-", "COUNT", "1"});
      top && top->type == REDIS_REPLY_ARRAY && top->elements == 1) {
    last.assign(top->element[0]->element[0]->str, top->element[0]->element[0]->len);
  }
  std::thread th([&] {
    while (!stop.load()) {
      bench_redis::ReplyPtr r = reader.Command(
          {"XREAD", "COUNT", "1000", "BLOCK", "100", "STREAMS", reader.keys()[6], last});
      if (!r || r->type != REDIS_REPLY_ARRAY || r->elements == 0) continue;
      const redisReply* entries = r->element[0]->element[1];
      for (size_t e = 0; e < entries->elements; ++e) {
        const redisReply* entry = entries->element[e];
        last.assign(entry->element[0]->str, entry->element[0]->len);
        const redisReply* kv = entry->element[1];
        for (size_t i = 0; i + 1 < kv->elements; i += 2) {
          if (std::string(kv->element[i]->str, kv->element[i]->len) != "value") continue;
          const int64_t seq =
              bench_writer::SeqOf(std::string(kv->element[i + 1]->str, kv->element[i + 1]->len));
          if (seq < 0 || seq >= total) continue;
          int64_t zero = 0;
          recv[static_cast<size_t>(seq)].compare_exchange_strong(zero, bench_writer::MonoNs());
        }
      }
    }
  });
  bench_writer::PacedResult w = writer.Run(prefix, f.rate, total, f.writer_inflight);
  const int64_t deadline = NowNs() + 10000000000;
  auto all_seen = [&] {
    for (int i = 0; i < total; ++i) {
      if (w.ack[static_cast<size_t>(i)] != 0 && recv[static_cast<size_t>(i)].load() == 0) {
        return false;
      }
    }
    return true;
  };
  while (!all_seen() && NowNs() < deadline) bench_writer::SleepUntilNs(NowNs() + 10000000);
  stop = true;
  th.join();
  std::vector<int64_t> ack, send;
  int missing = 0;
  for (int i = 0; i < total; ++i) {
    const size_t q = static_cast<size_t>(i);
    if (w.ack[q] == 0) continue;
    if (recv[q].load() == 0) {
      ++missing;
      continue;
    }
    ack.push_back(std::max<int64_t>(0, recv[q].load() - w.ack[q]));
    send.push_back(recv[q].load() - w.sent[q]);
  }
  auto figures = [&](const std::string& t, std::vector<int64_t>& v) {
    out[t + "p50_ms"] = Round(Percentile(v, 50) / 1e6);
    out[t + "p99_ms"] = Round(Percentile(v, 99) / 1e6);
    out[t + "p999_ms"] = Round(Percentile(v, 99.9) / 1e6);
  };
  figures("ack_", ack);
  figures("send_", send);
  out["puts"] = total - w.errors;
  out["put_errors"] = w.errors;
  out["missing"] = missing;
  out["achieved_rate_per_s"] = Round(w.achieved_rate_per_s, 1);
  out["writer_max_lag_ms"] = Round(static_cast<double>(w.max_lag_ns) / 1e6);
  writer.Revoke();
  if (w.errors > 0 || missing > 0) out["error"] = "put errors or missing events";
  return out;
}

}  // namespace raw_redis
