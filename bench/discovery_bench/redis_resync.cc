// discovery-bench scenario "resync" on --store redis://: a Watcher's initial sync of n
// instances (time, RSS per instance) vs a bare HSCAN + HMGET of the instance hash (pages of
// WatcherOptions::range_page_size, as the Redis watch source reads); then 1 % changed (update,
// delete, add) while the Watcher cannot read them and the change log trimmed below its
// position -> the time until it has converged through a resync, vs the bare HSCAN again.
// "Cannot read them": the Redis watch source has no pause hook, so the changes and an
// `XTRIM log MAXLEN 0` go in ONE MULTI/EXEC (Redis serves no blocked XREAD inside it: the
// records are gone before any reader could see them); one more add after it shows the Watcher
// the gap (first log entry beyond its seq + 1, as the backend's own XADD MAXLEN ~ trim leaves
// behind a slow watcher). The clock starts before that add.

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common.h"
#include "discovery/watcher.h"
#include "redis_log.h"

namespace discovery_bench {

Json RunRedisResync(const Context& cx) {
  const Flags& f = *cx.flags;
  const int n = f.resync_n;
  const std::string& url = f.store;
  const int64_t page = discovery::WatcherOptions{}.range_page_size;
  Json out;
  out["scenario"] = "resync";
  out["backend"] = "redis";
  out["n"] = n;
  out["page_size"] = page;
  const std::string prefix = UniquePrefix("resync", "rs");
  redis_log::Conn admin(url);
  std::string grant_error;
  const std::string lease = redis_log::GrantHourLease(admin, &grant_error);
  if (lease.empty()) {
    out["error"] = grant_error;
    return out;
  }
  const std::string& put = discovery::redis::kPutIfUnchangedScript;
  std::vector<std::string> keys(n), values(n);
  std::vector<int64_t> mods(n, 0);
  for (int i = 0; i < n; ++i) {
    Instance in = MakeInstance(i);
    keys[i] = KeyOf(prefix, in);
    values[i] = discovery::EncodeInstance(in);
  }
  if (int errors = redis_log::ParallelPut(url, keys, values, lease, mods, 16); errors != 0) {
    out["error"] = absl::StrCat(errors, " puts failed");
    return out;
  }

  auto [conn, watcher, sync_secs, rss_before_kib, rss_delta_kib] = cx.SyncWatcher(prefix);
  const double per_instance = rss_delta_kib * 1024.0 / n;
  const int64_t b0 = NowNs();
  const int64_t scanned0 = redis_log::ScanAll(admin, prefix, page);
  const double scan0_secs = Seconds(NowNs() - b0);
  out["initial_sync_s"] = Round(sync_secs);
  out["baseline_initial_scan_s"] = Round(scan0_secs);
  out["initial_ratio"] = Round(sync_secs / scan0_secs, 2);
  out["baseline_initial_keys"] = scanned0;
  out["rss_delta_kib"] = rss_delta_kib;
  out["rss_per_instance_bytes"] = Round(per_instance, 0);

  // 1 % changed and the log trimmed in one transaction, then one add (see the file comment).
  const int changes = std::max(1, n / 100);
  const uint64_t resyncs0 = watcher->stats().resyncs;
  redis_log::Conn tx(url);
  if (!tx.Load(put) || !tx.Load(discovery::redis::kDeleteScript)) {
    out["error"] = "redis: " + tx.error();
    return out;
  }
  tx.Command({"MULTI"});
  for (int i = 0; i < changes; ++i) {
    Instance up = MakeInstance(i);
    up.status = discovery::InstanceStatus::kError;
    tx.Eval(put, {keys[i], discovery::EncodeInstance(up), lease, std::to_string(mods[i])});
    tx.Eval(discovery::redis::kDeleteScript, {keys[n - 1 - i], "0", "0"});
    if (i + 1 < changes) {
      Instance add = MakeInstance(n + i);
      tx.Eval(put, {KeyOf(prefix, add), discovery::EncodeInstance(add), lease, "0"});
    }
  }
  tx.Command({"XTRIM", tx.keys()[6], "MAXLEN", "0"});
  redis_log::ReplyPtr exec = tx.Command({"EXEC"});
  if (!exec || exec->type != REDIS_REPLY_ARRAY) {
    out["error"] = "redis: MULTI/EXEC failed";
    return out;
  }
  Instance last = MakeInstance(n + changes - 1);
  const int64_t t0 = NowNs();
  redis_log::ReplyPtr r =
      tx.Eval(put, {KeyOf(prefix, last), discovery::EncodeInstance(last), lease, "0"});
  const int64_t rev = bench_redis::IntAt(r.get(), 1, 0);
  const bool ok =
      rev > 0 && WaitFor(
                     [&] {
                       auto st = watcher->stats();
                       return st.resyncs > resyncs0 && st.instances == static_cast<size_t>(n) &&
                              st.revision >= rev &&
                              watcher->snapshot()->Find("world", last.instance_id) != nullptr;
                     },
                     absl::Seconds(120), absl::Milliseconds(2));
  const double secs = Seconds(NowNs() - t0);

  const int64_t r0 = NowNs();
  const int64_t scanned = redis_log::ScanAll(admin, prefix, page);
  const double raw_secs = Seconds(NowNs() - r0);

  out["changes"] = changes;
  out["converged"] = ok;
  out["resync_s"] = Round(secs);
  out["resyncs"] = watcher->stats().resyncs - resyncs0;
  out["baseline_scan_s"] = Round(raw_secs);
  out["baseline_keys"] = scanned;
  out["ratio"] = Round(secs / raw_secs, 2);
  out["target"] = Target("converge <= 2 s, <= 2 KiB RSS per instance",
                         ok && secs <= 2.0 && per_instance <= 2048);
  if (!ok) out["error"] = "did not converge";
  admin.Eval(discovery::redis::kRevokeScript, {lease});  // the keys go with the lease
  return out;
}

}  // namespace discovery_bench
