// discovery-bench scenario "resync".

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
// resync

Json RunResync(const Context& cx) {
  const Flags& f = *cx.flags;
  const int n = f.resync_n;
  Json out;
  out["scenario"] = "resync";
  out["n"] = n;
  const std::string prefix = UniquePrefix("resync", "rs");
  Bare bare(cx.endpoints[0]);
  if (int errors = BulkPut(bare, prefix, n, 16); errors != 0) {
    out["error"] = absl::StrCat(errors, " puts failed");
    return out;
  }

  auto [conn, watcher, sync_secs, rss_before_kib, rss_delta_kib] = cx.SyncWatcher(prefix);
  out["initial_sync_s"] = Round(sync_secs);
  out["rss_delta_kib"] = rss_delta_kib;
  const double per_instance = rss_delta_kib * 1024.0 / n;
  out["rss_per_instance_bytes"] = Round(per_instance, 0);

  // Pause the watch, change 1% (update, delete, add), compact, resume.
  auto& hub = conn->client()->watch_hub();
  hub.SetPausedForTest(true);
  WaitFor([&] { return conn->watch_streams() == 0; }, absl::Seconds(5));
  const int changes = std::max(1, n / 100);
  for (int i = 0; i < changes; ++i) {
    Instance up = MakeInstance(i);
    up.status = discovery::InstanceStatus::kError;
    (void)bare.Put(KeyOf(prefix, up), discovery::EncodeInstance(up));
    (void)bare.Delete(KeyOf(prefix, MakeInstance(n - 1 - i)));
    Instance add = MakeInstance(n + i);
    (void)bare.Put(KeyOf(prefix, add), discovery::EncodeInstance(add));
  }
  auto rev = bare.Revision();
  if (!rev.ok() || !bare.Compact(*rev).ok()) {
    out["error"] = "compaction failed";
    return out;
  }
  const uint64_t resyncs0 = watcher->stats().resyncs;
  const std::string added_id = MakeInstance(n + changes - 1).instance_id;
  const int64_t t0 = NowNs();
  hub.SetPausedForTest(false);
  const bool ok = WaitFor(
      [&] {
        auto st = watcher->stats();
        return st.resyncs > resyncs0 && st.instances == static_cast<size_t>(n) &&
               st.revision >= *rev && watcher->snapshot()->Find("world", added_id) != nullptr;
      },
      absl::Seconds(120), absl::Milliseconds(2));
  const double secs = Seconds(NowNs() - t0);

  // Baseline: the bare paged Range of the same prefix (page size as the watcher's).
  const int64_t r0 = NowNs();
  auto count = bare.RangeAll(prefix, 1000);
  const double raw_secs = Seconds(NowNs() - r0);

  out["converged"] = ok;
  out["resync_s"] = Round(secs);
  out["resyncs"] = watcher->stats().resyncs - resyncs0;
  out["baseline_range_s"] = Round(raw_secs);
  out["baseline_keys"] = count.ok() ? *count : -1;
  out["ratio"] = Round(secs / raw_secs, 2);
  out["target"] = Target("converge <= 2 s, <= 2 KiB RSS per instance",
                         ok && secs <= 2.0 && per_instance <= 2048);
  return out;
}

}  // namespace discovery_bench
