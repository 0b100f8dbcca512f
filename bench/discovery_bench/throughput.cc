// discovery-bench scenario "watch-throughput": live and catch-up events/s.
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
#include "etcd/client.h"
#include "etcd/watch_hub.h"

namespace discovery_bench {

// ---------------------------------------------------------------------------------------------
// watch-throughput

Json RunThroughput(const Context& cx) {
  const Flags& f = *cx.flags;
  const int n = f.throughput_n;
  Json out;
  out["scenario"] = "watch-throughput";
  out["n"] = n;
  out["writers"] = f.throughput_writers;

  const std::string prefix = UniquePrefix("throughput", "tp");
  Bare writer(cx.endpoints[0]);
  Bare raw_bare(cx.endpoints[0]);
  std::vector<std::string> keys(n), values(n);
  for (int i = 0; i < n; ++i) {
    Instance in = MakeInstance(i);
    keys[i] = KeyOf(prefix, in);
    values[i] = discovery::EncodeInstance(in);
  }
  auto conn = cx.Connect();
  auto watcher = cx.NewWatcher(conn, prefix);
  auto rev = writer.Revision();
  if (!rev.ok()) {
    out["error"] = rev.status().ToString();
    return out;
  }

  // 1. Live: both watchers follow the same puts; time from the first put until the
  // watcher's snapshot holds all n / the bare stream has counted n events.
  {
    std::atomic<int64_t> raw_done{0};
    std::atomic<uint64_t> raw_count{0};
    RawWatch raw(&raw_bare, prefix, *rev + 1, [&](const mvccpb::Event&, int64_t recv) {
      if (raw_count.fetch_add(1) + 1 == static_cast<uint64_t>(n)) raw_done.store(recv);
    });
    if (auto s = raw.Start(); !s.ok()) {
      out["error"] = s.ToString();
      return out;
    }
    std::atomic<int> errors{0};
    std::atomic<int64_t> puts_done{0};
    const int64_t t0 = NowNs();
    std::thread writers([&] {
      ParallelFor(f.throughput_writers, n, [&](int i) {
        if (!writer.Put(keys[i], values[i]).ok()) errors.fetch_add(1);
      });
      puts_done.store(NowNs());
    });
    int64_t lib_done = 0;
    WaitFor(
        [&] {
          if (lib_done == 0 && watcher->snapshot()->size() == static_cast<size_t>(n)) {
            lib_done = NowNs();
          }
          return lib_done != 0 && raw_done.load() != 0;
        },
        absl::Seconds(300));
    writers.join();
    raw.Stop();
    const double put_secs = Seconds(puts_done.load() - t0);
    out["put_errors"] = errors.load();
    out["puts_per_s"] = Round(n / put_secs, 1);
    if (lib_done == 0 || raw_done.load() == 0) {
      out["error"] = absl::StrFormat("timeout: watcher has %d, raw stream %d of %d",
                                     watcher->snapshot()->size(), raw_count.load(), n);
      out["target"] = Target(">= 0.9x baseline events/s", false);
      return out;
    }
    const double lib_rate = n / Seconds(lib_done - t0);
    const double raw_rate = n / Seconds(raw_done.load() - t0);
    out["events_per_s"] = Round(lib_rate, 1);
    out["baseline_events_per_s"] = Round(raw_rate, 1);
    out["ratio"] = Round(lib_rate / raw_rate);
    out["lag_after_last_put_ms"] = Round(std::max<int64_t>(0, lib_done - puts_done.load()) / 1e6);
    out["baseline_lag_after_last_put_ms"] =
        Round(std::max<int64_t>(0, raw_done.load() - puts_done.load()) / 1e6);
    out["target"] = Target(">= 0.9x baseline events/s", lib_rate >= 0.9 * raw_rate);
  }

  // 2. Catch-up (consumer speed alone): n updates are written while the watcher's stream is
  // paused; then the time until it has applied them, vs a bare stream reading the same
  // history from the same revision.
  {
    auto& hub = conn->client()->watch_hub();
    hub.SetPausedForTest(true);
    WaitFor([&] { return conn->watch_streams() == 0; }, absl::Seconds(5));
    auto before = writer.Revision();
    const uint64_t events0 = watcher->stats().events;
    ParallelFor(f.throughput_writers, n, [&](int i) {
      std::string v = values[i];
      v.insert(v.size() - 1, ",\"bench\":1");  // an unknown field: a real value change
      (void)writer.Put(keys[i], v);
    });
    const int64_t t0 = NowNs();
    hub.SetPausedForTest(false);
    const bool lib_ok =
        WaitFor([&] { return watcher->stats().events >= events0 + static_cast<uint64_t>(n); },
                absl::Seconds(300));
    const double lib_secs = Seconds(NowNs() - t0);
    std::atomic<uint64_t> count{0};
    std::atomic<int64_t> done{0};
    const int64_t r0 = NowNs();
    RawWatch raw(&raw_bare, prefix, before.ok() ? *before + 1 : 0,
                 [&](const mvccpb::Event&, int64_t recv) {
                   if (count.fetch_add(1) + 1 == static_cast<uint64_t>(n)) done.store(recv);
                 });
    const bool raw_ok =
        raw.Start().ok() && WaitFor([&] { return done.load() != 0; }, absl::Seconds(300));
    raw.Stop();
    if (lib_ok && raw_ok) {
      out["catchup_events_per_s"] = Round(n / lib_secs, 1);
      out["catchup_baseline_events_per_s"] = Round(n / Seconds(done.load() - r0), 1);
      out["catchup_ratio"] = Round((n / lib_secs) / (n / Seconds(done.load() - r0)));
    } else {
      out["catchup_error"] = "timeout";
    }
  }
  return out;
}

}  // namespace discovery_bench
