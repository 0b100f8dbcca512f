// discovery-bench scenarios "watch-latency" and "fanout".
#include <atomic>
#include <mutex>
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

namespace discovery_bench {

// ---------------------------------------------------------------------------------------------
// watch-latency and fanout: a paced writer; put-acknowledged -> callback latency, through the
// Watcher (to every subscriber) and through a bare Watch stream (to as many plain callbacks).

Json RunLatency(const Context& cx, const std::string& name, int rate, double seconds,
                int subscribers) {
  const int total = std::max(1, static_cast<int>(rate * seconds));
  Json out;
  out["scenario"] = name;
  out["rate_per_s"] = rate;
  out["seconds"] = seconds;
  out["subscribers"] = subscribers;

  const std::string prefix = UniquePrefix(name, "lat");
  Bare writer(cx.endpoints[0]);
  Bare raw_bare(cx.endpoints[0]);
  auto conn = cx.Connect();
  auto watcher = cx.NewWatcher(conn, prefix);

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
      const int64_t now = NowNs();
      auto it = ev.instance->meta.find("seq");
      int64_t seq = -1;
      if (it == ev.instance->meta.end() || !absl::SimpleAtoi(it->second, &seq)) return;
      if (seq >= 0 && seq < total) record(lib_first[seq], lib_last[seq], now);
    }));
  }

  std::vector<std::function<void(int64_t, int64_t)>> raw_callbacks(
      subscribers, [&](int64_t seq, int64_t now) { record(raw_first[seq], raw_last[seq], now); });
  auto rev = writer.Revision();
  RawWatch raw(&raw_bare, prefix, rev.ok() ? *rev + 1 : 0,
               [&](const mvccpb::Event& ev, int64_t /*recv*/) {
                 // The bare stream's "logic": find the sequence number in the value.
                 const std::string& v = ev.kv().value();
                 size_t at = v.find("\"seq\":\"");
                 int64_t seq = -1;
                 if (at == std::string::npos) return;
                 at += 7;
                 size_t endq = v.find('"', at);
                 if (!absl::SimpleAtoi(absl::string_view(v).substr(at, endq - at), &seq)) return;
                 if (seq < 0 || seq >= total) return;
                 for (auto& cb : raw_callbacks) cb(seq, NowNs());
               });
  if (auto s = raw.Start(); !s.ok()) {
    out["error"] = s.ToString();
    return out;
  }

  // Writer: `rate` puts per second over 1,000 keys (first adds, then updates).
  const int keys = std::min(total, 1000);
  std::vector<Instance> instances;
  for (int i = 0; i < keys; ++i) instances.push_back(MakeInstance(i));
  int errors = 0;
  const int64_t t0 = NowNs();
  const int64_t period = static_cast<int64_t>(1e9 / rate);
  for (int seq = 0; seq < total; ++seq) {
    const int64_t due = t0 + period * seq;
    const int64_t now = NowNs();
    if (due > now) std::this_thread::sleep_for(std::chrono::nanoseconds(due - now));
    Instance& in = instances[seq % keys];
    in.meta["seq"] = absl::StrCat(seq);
    in.meta["ts"] = absl::StrCat(NowNs());
    if (!writer.Put(KeyOf(prefix, in), discovery::EncodeInstance(in)).ok()) {
      ++errors;
      continue;
    }
    ack[seq].store(NowNs());
  }
  const double write_secs = Seconds(NowNs() - t0);
  auto all_seen = [&](std::vector<std::atomic<int64_t>>& last) {
    for (int i = 0; i < total; ++i) {
      if (ack[i].load() != 0 && last[i].load() == 0) return false;
    }
    return true;
  };
  WaitFor([&] { return all_seen(lib_last) && all_seen(raw_last); }, absl::Seconds(10),
          absl::Milliseconds(10));
  raw.Stop();
  subs.clear();

  struct Lat {
    std::vector<int64_t> v;
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
    }
    return l;
  };
  auto put = [&](const std::string& tag, Lat l) {
    out[tag + "_p50_ms"] = Round(Percentile(l.v, 50) / 1e6);
    out[tag + "_p99_ms"] = Round(Percentile(l.v, 99) / 1e6);
    out[tag + "_max_ms"] = Round(l.v.empty() ? 0 : static_cast<double>(l.v.back()) / 1e6);
    out[tag + "_missing"] = l.missing;
    out[tag + "_before_ack"] = l.before_ack;
  };
  out["puts"] = total - errors;
  out["put_errors"] = errors;
  out["achieved_rate_per_s"] = Round((total - errors) / write_secs, 1);
  Lat lib_last_l = collect(lib_last);
  Lat raw_last_l = collect(raw_last);
  put("lib", lib_last_l);
  put("baseline", raw_last_l);
  if (subscribers > 1) {
    put("lib_first", collect(lib_first));
    put("baseline_first", collect(raw_first));
  }
  const double lib99 = out["lib_p99_ms"].get<double>();
  const double raw99 = out["baseline_p99_ms"].get<double>();
  out["delta_p99_ms"] = Round(lib99 - raw99);
  const bool complete = lib_last_l.missing == 0 && errors == 0;
  if (subscribers > 1) {
    out["target"] = Target("report only (p99 to the last of the subscribers)", complete);
  } else {
    out["target"] = Target("p99 <= baseline p99 + 0.5 ms", complete && lib99 <= raw99 + 0.5);
  }
  auto st = watcher->stats();
  out["watcher_events"] = st.events;
  out["watcher_invalid"] = st.invalid_values;
  return out;
}

}  // namespace discovery_bench
