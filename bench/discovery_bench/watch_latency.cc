// discovery-bench scenarios "watch-latency" and "fanout" (compare watch-latency with
// `discovery-raw-bench watch-latency`).
#include <atomic>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "bare.h"
#include "common.h"
#include "discovery/picker.h"
#include "discovery/registrar.h"
#include "discovery/watcher.h"
#include "paced_writer.h"
#include "redis_writer.h"

namespace discovery_bench {

// ---------------------------------------------------------------------------------------------
// watch-latency and fanout: the paced, pipelined writer of bench/paced_writer.h (up to
// --latency-inflight Puts outstanding on its own channel); latency from the put's answer (ack_*)
// and from its send (send_*) to the Watcher's callback, to the last (and, fanout, the first)
// subscriber. fanout also follows the prefix on an in-process bare Watch stream (inproc_raw_*, a
// diagnostic only). --gateway: the Watcher follows discoveryd's SSE stream while the writer still
// puts to etcd at --endpoints (the etcd behind discoveryd); --store redis://: the writer is
// bench/redis_writer.h (the library's put script from raw hiredis connections) and the Watcher
// reads Redis's change log.

Json RunLatency(const Context& cx, const std::string& name, int rate, double seconds,
                int subscribers) {
  const int total = std::max(1, static_cast<int>(rate * seconds));
  Json out;
  out["scenario"] = name;
  out["impl"] = "library";
  out["rate_per_s"] = rate;
  out["seconds"] = seconds;
  out["subscribers"] = subscribers;
  const std::string backend = cx.Backend();
  out["backend"] = backend;

  const std::string prefix = cx.Prefix(name, "lat");
  const bool redis = backend == "redis";
  if (!redis && cx.endpoints.empty()) {
    out["error"] = "the writer puts to etcd: give --endpoints (the etcd behind --gateway)";
    return out;
  }
  std::optional<Bare> writer, raw_bare;
  std::optional<bench_writer::RedisPacedWriter> redis_writer;
  if (redis) {
    redis_writer.emplace(cx.flags->store);
    if (!redis_writer->error().empty()) {
      out["error"] = "redis writer: " + redis_writer->error();
      return out;
    }
  } else {
    writer.emplace(cx.endpoints[0]);
    raw_bare.emplace(cx.endpoints[0]);
  }
  auto conn = cx.Connect();
  auto watcher = cx.NewWatcher(conn, prefix);

  // The in-process bare Watch stream is a diagnostic of fanout only (it shares this process's
  // CPU); the raw figure to compare watch-latency with is `discovery-raw-bench watch-latency`.
  const bool inproc_raw = subscribers > 1 && !redis;
  std::vector<std::atomic<int64_t>> ack(total), lib_first(total), lib_last(total), raw_first(total),
      raw_last(total);
  for (int i = 0; i < total; ++i) {
    ack[i] = lib_first[i] = lib_last[i] = raw_first[i] = raw_last[i] = 0;
  }
  auto record = [](std::atomic<int64_t>& first, std::atomic<int64_t>& last, int64_t now) {
    int64_t zero = 0;
    first.compare_exchange_strong(zero, now);
    last.store(now);
  };

  std::vector<discovery::Subscription> subs;
  for (int s = 0; s < subscribers; ++s) {
    subs.push_back(watcher->Subscribe({}, [&](const discovery::ChangeEvent& ev) {
      const int64_t now = bench_writer::MonoNs();
      auto it = ev.instance->meta.find("seq");
      int64_t seq = -1;
      if (it == ev.instance->meta.end() || !absl::SimpleAtoi(it->second, &seq)) return;
      if (seq >= 0 && seq < total) record(lib_first[seq], lib_last[seq], now);
    }));
  }

  std::vector<std::function<void(int64_t, int64_t)>> raw_callbacks(
      subscribers, [&](int64_t seq, int64_t now) { record(raw_first[seq], raw_last[seq], now); });
  std::optional<RawWatch> raw;
  if (inproc_raw) {
    auto rev = writer->Revision();
    raw.emplace(&*raw_bare, prefix, rev.ok() ? *rev + 1 : 0,
                [&](const mvccpb::Event& ev, int64_t /*recv*/) {
                  // The bare stream's "logic": find the sequence number in the value.
                  const int64_t seq = bench_writer::SeqOf(ev.kv().value());
                  if (seq < 0 || seq >= total) return;
                  for (auto& cb : raw_callbacks) cb(seq, bench_writer::MonoNs());
                });
  }
  if (absl::Status s = raw ? raw->Start() : absl::OkStatus(); !s.ok()) {
    out["error"] = s.ToString();
    return out;
  }

  // Writer: `rate` puts per second over 1,000 keys (first adds, then updates), pipelined
  // (bench/paced_writer.h, the same code and values as discovery-raw-bench watch-latency).
  bench_writer::PacedResult w =
      redis
          ? redis_writer->Run(prefix, rate, total, cx.flags->latency_inflight)
          : bench_writer::RunPacedWriter(writer->channel, prefix, rate, total,
                                         cx.flags->latency_inflight, cx.flags->latency_full_value);
  const std::vector<int64_t>& sent = w.sent;
  const int errors = w.errors;
  for (int i = 0; i < total; ++i) ack[i].store(w.ack[i]);
  auto all_seen = [&](std::vector<std::atomic<int64_t>>& last) {
    for (int i = 0; i < total; ++i) {
      if (ack[i].load() != 0 && last[i].load() == 0) return false;
    }
    return true;
  };
  WaitFor([&] { return all_seen(lib_last) && (!inproc_raw || all_seen(raw_last)); },
          absl::Seconds(10), absl::Milliseconds(10));
  if (raw) raw->Stop();
  subs.clear();

  struct Lat {
    std::vector<int64_t> v;     // receive - put acknowledged (0 when the event overtook it)
    std::vector<int64_t> send;  // receive - put sent
    int missing = 0;
    int before_ack = 0;
  };
  auto collect = [&](std::vector<std::atomic<int64_t>>& recv) {
    Lat l;
    for (int i = 0; i < total; ++i) {
      if (ack[i].load() == 0) continue;
      if (recv[i].load() == 0) {
        ++l.missing;
        continue;
      }
      int64_t d = recv[i].load() - ack[i].load();
      if (d < 0) {
        ++l.before_ack;
        d = 0;  // the event overtook the Put's answer
      }
      l.v.push_back(d);
      l.send.push_back(recv[i].load() - sent[i]);
    }
    return l;
  };
  // Figure names as in discovery-raw-bench: ack_* from the put's answer, send_* from its send.
  auto put = [&](const std::string& tag, Lat l) {
    auto figures = [&](const std::string& t, std::vector<int64_t>& v) {
      out[t + "p50_ms"] = Round(Percentile(v, 50) / 1e6);
      out[t + "p99_ms"] = Round(Percentile(v, 99) / 1e6);
      out[t + "p999_ms"] = Round(Percentile(v, 99.9) / 1e6);
      out[t + "max_ms"] = Round(v.empty() ? 0 : static_cast<double>(v.back()) / 1e6);
    };
    figures(tag + "ack_", l.v);
    figures(tag + "send_", l.send);
    out[tag + "missing"] = l.missing;
    out[tag + "before_ack"] = l.before_ack;
  };
  out["puts"] = total - errors;
  out["put_errors"] = errors;
  out["writer_inflight"] = cx.flags->latency_inflight;
  out["full_value"] = cx.flags->latency_full_value;
  out["achieved_rate_per_s"] = Round(w.achieved_rate_per_s, 1);
  out["writer_max_inflight"] = w.max_inflight_reached;
  out["writer_max_lag_ms"] = Round(static_cast<double>(w.max_lag_ns) / 1e6);
  Lat lib_last_l = collect(lib_last);
  // To the last subscriber (watch-latency: the only one); fanout also to the first one.
  put("", lib_last_l);
  if (subscribers > 1) put("first_", collect(lib_first));
  if (inproc_raw) {  // in-process diagnostic (fanout only)
    put("inproc_raw_", collect(raw_last));
    put("inproc_raw_first_", collect(raw_first));
  }
  const bool complete = lib_last_l.missing == 0 && errors == 0;
  if (subscribers > 1) {
    out["target"] = Target("report only (p99 to the last of the subscribers)", complete);
  } else if (backend == "gateway") {
    out["target"] = Target("ack p99 <= direct + 5 ms (bench/gateway_compare.sh)", complete);
  } else if (redis) {
    out["target"] = Target("report beside discovery-raw-redis-bench watch-latency", complete);
  } else {
    out["target"] =
        Target("ack p99 <= raw + 0.1 ms, send p50 <= raw + 20 us (discovery-raw-bench, compare.sh)",
               complete);
  }
  auto st = watcher->stats();
  out["watcher_events"] = st.events;
  out["watcher_invalid"] = st.invalid_values;
  if (redis) redis_writer->Revoke();  // the writer's keys go with its lease
  return out;
}

}  // namespace discovery_bench
