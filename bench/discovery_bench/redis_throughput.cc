// discovery-bench scenario "watch-throughput" on --store redis://: live and catch-up events/s
// of the library Watcher vs a bare XREAD BLOCK reader of the change log in the same process.
//   live: n instances written by raw hiredis writers through the library's put script (one
//     change-log record each); time from the first write until the Watcher's snapshot holds all
//     n / the bare reader (started at the same seq) has counted n records.
//   catch-up: the Redis watch source has no pause hook (src/watch_source_redis.cc), so the n
//     updates go in ONE MULTI/EXEC transaction: Redis serves no blocked XREAD until EXEC has
//     run, so the Watcher cannot read any of them until all n are in the log; then the time
//     from EXEC's reply until it has applied n events, vs a bare reader reading the same n
//     records from the seq before the transaction (run after the Watcher, as on etcd).
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common.h"
#include "discovery/watcher.h"
#include "redis_log.h"

namespace discovery_bench {

Json RunRedisThroughput(const Context& cx) {
  const Flags& f = *cx.flags;
  const int n = f.throughput_n;
  const std::string& url = f.store;
  Json out;
  out["scenario"] = "watch-throughput";
  out["backend"] = "redis";
  out["n"] = n;
  out["writers"] = f.throughput_writers;

  const std::string prefix = UniquePrefix("throughput", "tp");
  redis_log::Conn admin(url);
  std::string grant_error;
  const std::string lease = redis_log::GrantHourLease(admin, &grant_error);
  if (lease.empty()) {
    out["error"] = grant_error;
    return out;
  }
  std::vector<std::string> keys(n), values(n);
  std::vector<int64_t> mods(n, 0);
  for (int i = 0; i < n; ++i) {
    Instance in = MakeInstance(i);
    keys[i] = KeyOf(prefix, in);
    values[i] = discovery::EncodeInstance(in);
  }
  auto conn = cx.Connect();
  auto watcher = cx.NewWatcher(conn, prefix);

  // 1. Live.
  {
    const int64_t seq0 = redis_log::StoreSeq(admin);
    redis_log::LogReader raw(url, prefix, seq0, static_cast<uint64_t>(n));
    if (seq0 < 0 || !raw.Start()) {
      out["error"] = "redis: raw reader failed";
      return out;
    }
    std::atomic<int> errors{0};
    std::atomic<int64_t> puts_done{0};
    const int64_t t0 = NowNs();
    std::thread writers([&] {
      errors.store(redis_log::ParallelPut(url, keys, values, lease, mods, f.throughput_writers));
      puts_done.store(NowNs());
    });
    int64_t lib_done = 0;
    WaitFor(
        [&] {
          if (lib_done == 0 && watcher->snapshot()->size() == static_cast<size_t>(n)) {
            lib_done = NowNs();
          }
          return lib_done != 0 && raw.done() != 0;
        },
        absl::Seconds(300));
    writers.join();
    raw.Stop();
    out["put_errors"] = errors.load();
    out["puts_per_s"] = Round(n / Seconds(puts_done.load() - t0), 1);
    if (lib_done == 0 || raw.done() == 0) {
      out["error"] = absl::StrFormat("timeout: watcher has %d, raw reader %d of %d",
                                     watcher->snapshot()->size(), raw.count(), n);
      out["target"] = Target(">= 0.9x baseline events/s", false);
      return out;
    }
    const double lib_rate = n / Seconds(lib_done - t0);
    const double raw_rate = n / Seconds(raw.done() - t0);
    out["events_per_s"] = Round(lib_rate, 1);
    out["baseline_events_per_s"] = Round(raw_rate, 1);
    out["ratio"] = Round(lib_rate / raw_rate);
    out["lag_after_last_put_ms"] = Round(std::max<int64_t>(0, lib_done - puts_done.load()) / 1e6);
    out["baseline_lag_after_last_put_ms"] =
        Round(std::max<int64_t>(0, raw.done() - puts_done.load()) / 1e6);
    out["target"] = Target(">= 0.9x baseline events/s", lib_rate >= 0.9 * raw_rate);
  }

  // 2. Catch-up: n updates in one MULTI/EXEC (see the file comment).
  {
    redis_log::Conn tx(url);
    const int64_t seq1 = redis_log::StoreSeq(tx);
    if (seq1 < 0 || !tx.Load(discovery::redis::kPutIfUnchangedScript)) {
      out["catchup_error"] = "redis: " + tx.error();
      return out;
    }
    const uint64_t events0 = watcher->stats().events;
    tx.Command({"MULTI"});
    for (int i = 0; i < n; ++i) {
      std::string v = values[i];
      v.insert(v.size() - 1, ",\"bench\":1");  // an unknown field: a real value change
      tx.Eval(discovery::redis::kPutIfUnchangedScript,
              {keys[i], v, lease, std::to_string(mods[i])});
    }
    redis_log::ReplyPtr exec = tx.Command({"EXEC"});
    const int64_t t0 = NowNs();
    const uint64_t at_start = watcher->stats().events - events0;
    int applied = 0;
    if (exec && exec->type == REDIS_REPLY_ARRAY) {
      for (size_t i = 0; i < exec->elements; ++i) {
        if (bench_redis::IntAt(exec->element[i], 0) == 1) ++applied;
      }
    }
    out["catchup_method"] = "n updates in one MULTI/EXEC, no XREAD served until all are logged";
    out["catchup_updates"] = applied;
    out["catchup_events_before_start"] = at_start;
    const bool lib_ok =
        WaitFor([&] { return watcher->stats().events >= events0 + static_cast<uint64_t>(n); },
                absl::Seconds(300));
    const double lib_secs = Seconds(NowNs() - t0);
    redis_log::LogReader raw(url, prefix, seq1, static_cast<uint64_t>(n));
    const int64_t r0 = NowNs();
    const bool raw_ok = raw.Start() && WaitFor([&] { return raw.done() != 0; }, absl::Seconds(300));
    raw.Stop();
    if (lib_ok && raw_ok && applied == n) {
      const double raw_secs = Seconds(raw.done() - r0);
      // Events the Watcher applied before the clock started (while the client still parsed
      // EXEC's reply) are not counted: its rate is over the events applied after t0.
      out["catchup_events_per_s"] = Round((n - static_cast<double>(at_start)) / lib_secs, 1);
      out["catchup_baseline_events_per_s"] = Round(n / raw_secs, 1);
      out["catchup_ratio"] =
          Round(((n - static_cast<double>(at_start)) / lib_secs) / (n / raw_secs));
    } else {
      out["catchup_error"] = absl::StrCat("timeout or failed writes: ", applied, " of ", n);
      out["error"] = out["catchup_error"];
    }
  }
  admin.Eval(discovery::redis::kRevokeScript, {lease});  // the keys go with the lease
  return out;
}

}  // namespace discovery_bench
