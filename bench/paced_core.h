// The paced, pipelined writer of watch-latency without its transport: the schedule, the
// in-flight slots and the per-put send/ack times, shared by the etcd writer (paced_writer.h,
// gRPC) and the Redis writer (redis_writer.h, hiredis) and so by every binary that offers the
// watch-latency load (discovery-bench, discovery-raw-bench, discovery-raw-redis-bench).
// Header-only, standard library only.
//
// One thread issues puts on a monotonic schedule (put `seq` is due at t0 + seq / rate, slept
// for with clock_nanosleep(TIMER_ABSTIME)); up to `inflight` puts are outstanding, so the
// offered rate does not depend on the round trip. A put that is due while all slots are busy
// waits for one and goes out late (schedule lag is reported). Each put records its send time
// (when issued) and its ack time (its completion), indexed by the sequence number that the
// value carries in meta.seq.
#pragma once

#include <time.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

namespace bench_writer {

// CLOCK_MONOTONIC nanoseconds: the one clock of both binaries' watch-latency timestamps.
inline int64_t MonoNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

inline void SleepUntilNs(int64_t due) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(due / 1000000000);
  ts.tv_nsec = static_cast<long>(due % 1000000000);
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) != 0) {
    // EINTR: sleep again until the same absolute time.
  }
}

// The instance id of key index i (ULID length, as the library's generated ids).
inline std::string InstanceId(int i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "01JCYFZQ7D4NB4MZ5S6Z%06d", i);
  return buf;
}

// Key `prefix` + "world/" + id: the library's layout (prefix/type/instanceId).
inline std::string SeqKey(const std::string& prefix, int i) {
  return prefix + "world/" + InstanceId(i);
}

// A small valid instance (about 100 bytes; the library decodes it, instanceId and type are
// all it requires) carrying the sequence number as meta.seq. Both sides write exactly this.
// `full`: the instance as a registrar writes it (~470 bytes: addresses, ports, status,
// version, region, performance, startedAt, an updatedAt that moves with `seq`, leaseId), in
// the library encoder's field order, so that the library's decode costs what it costs in a
// fleet.
inline std::string SeqValue(int i, int64_t seq, bool full = false) {
  char buf[640];
  if (!full) {
    std::snprintf(buf, sizeof buf,
                  R"({"instanceId":"%s","type":"world","group":"kr-%d","meta":{"seq":"%lld"}})",
                  InstanceId(i).c_str(), i % 8, static_cast<long long>(seq));
    return buf;
  }
  const int64_t ms = seq % 86400000;
  std::snprintf(
      buf, sizeof buf,
      R"({"instanceId":"%s","type":"world","group":"kr-%d","hostname":"game-%d.kr.example.com",)"
      R"("publicIp":"123.45.%d.%d","privateIp":"10.0.%d.%d","ports":{"game":8001,"grpc":50051},)"
      R"("status":"ready","version":"1.4.2","region":"ap-northeast-2","zone":"a","weight":100,)"
      R"("meta":{"seq":"%lld"},"performance":{"load":0.%02d,"tps":1200},)"
      R"("startedAt":"2023-11-14T22:13:20.000Z","updatedAt":"2026-12-03T%02d:%02d:%02d.%03dZ",)"
      R"("leaseId":"694d7a1c2f3b%04x"})",
      InstanceId(i).c_str(), i % 8, i, (i / 250) % 250, i % 250, (i / 250) % 250, i % 250,
      static_cast<long long>(seq), static_cast<int>(seq % 100), static_cast<int>(ms / 3600000),
      static_cast<int>(ms / 60000 % 60), static_cast<int>(ms / 1000 % 60),
      static_cast<int>(ms % 1000), i & 0xffff);
  return buf;
}

// The sequence number in a SeqValue (or any value with "seq":"N"), -1 if none.
inline int64_t SeqOf(const std::string& v) {
  size_t at = v.find("\"seq\":\"");
  if (at == std::string::npos) return -1;
  int64_t seq = 0;
  bool any = false;
  for (at += 7; at < v.size() && v[at] >= '0' && v[at] <= '9'; ++at) {
    seq = seq * 10 + (v[at] - '0');
    any = true;
  }
  return any && at < v.size() && v[at] == '"' ? seq : -1;
}

struct PacedResult {
  std::vector<int64_t> sent;  // per seq: when the Put was issued (0: not issued / failed)
  std::vector<int64_t> ack;   // per seq: when it completed OK (0: failed)
  int errors = 0;
  int64_t t0 = 0;                  // schedule start
  int64_t last_ack = 0;            // last completion
  int64_t max_lag_ns = 0;          // worst send - due
  int max_inflight_reached = 0;    // most Puts outstanding at once
  double achieved_rate_per_s = 0;  // OK puts / (last completion - t0)
};

// Runs the schedule: `issue(slot, seq, done)` starts put `seq` on slot `slot` (no other put uses
// that slot until `done(ok)` is called, from any thread) and must not block for the round trip.
// Blocks until every put completed.
inline PacedResult RunPaced(int rate, int total, int inflight,
                            const std::function<void(int, int, std::function<void(bool)>)>& issue) {
  rate = std::max(1, rate);
  total = std::max(1, total);
  inflight = std::max(1, inflight);
  std::vector<int> free_slots;
  for (int i = inflight - 1; i >= 0; --i) free_slots.push_back(i);
  std::mutex mu;
  std::condition_variable cv;

  PacedResult r;
  r.sent.assign(static_cast<size_t>(total), 0);
  r.ack.assign(static_cast<size_t>(total), 0);
  const int64_t period = static_cast<int64_t>(1e9 / rate);
  r.t0 = MonoNs();
  for (int seq = 0; seq < total; ++seq) {
    const int64_t due = r.t0 + period * seq;
    if (MonoNs() < due) SleepUntilNs(due);
    int s;
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return !free_slots.empty(); });
      s = free_slots.back();
      free_slots.pop_back();
      r.max_inflight_reached =
          std::max(r.max_inflight_reached, inflight - static_cast<int>(free_slots.size()));
      const int64_t now = MonoNs();
      r.max_lag_ns = std::max(r.max_lag_ns, now - due);
      r.sent[static_cast<size_t>(seq)] = now;
    }
    issue(s, seq, [&, s, seq](bool ok) {
      const int64_t done = MonoNs();
      std::lock_guard<std::mutex> lock(mu);
      const size_t q = static_cast<size_t>(seq);
      if (ok) {
        r.ack[q] = done;
        r.last_ack = std::max(r.last_ack, done);
      } else {
        ++r.errors;
        r.sent[q] = 0;
      }
      free_slots.push_back(s);
      cv.notify_one();
    });
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return static_cast<int>(free_slots.size()) == inflight; });
  const int ok = total - r.errors;
  if (ok > 0 && r.last_ack > r.t0) {
    r.achieved_rate_per_s = ok / (static_cast<double>(r.last_ack - r.t0) / 1e9);
  }
  return r;
}

}  // namespace bench_writer
