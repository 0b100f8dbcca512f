// discovery-bench scenario "pick": picker cost over a live snapshot.
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
// pick

Json RunPick(const Context& cx) {
  const Flags& f = *cx.flags;
  const int n = f.pick_n;
  Json out;
  out["scenario"] = "pick";
  out["n"] = n;
  out["changes_per_s"] = f.pick_rate;
  out["seconds"] = f.pick_seconds;
  const std::string prefix = UniquePrefix("pick", "pk");
  Bare bare(cx.endpoints[0]);
  BulkPut(bare, prefix, n, 16);
  auto conn = cx.Connect();
  auto watcher = cx.NewWatcher(conn, prefix);

  struct Kind {
    const char* name;
    discovery::PickerKind kind;
  };
  const std::vector<Kind> kinds = {
      {"round_robin", discovery::PickerKind::kRoundRobin},
      {"weighted_round_robin", discovery::PickerKind::kWeightedRoundRobin},
      {"random", discovery::PickerKind::kRandom},
      {"least_load", discovery::PickerKind::kLeastLoad},
      {"consistent_hash", discovery::PickerKind::kConsistentHash},
  };
  std::vector<std::shared_ptr<discovery::Picker>> pickers;
  for (const Kind& k : kinds) pickers.push_back(watcher->NewPicker("world", "", {.kind = k.kind}));
  const std::vector<InstancePtr> plain = watcher->snapshot()->OfType("world").ToVector();

  // Changes: `pick_rate` per second; mostly load updates, every 10th flips status
  // ready <-> error (so the candidate set changes).
  std::atomic<bool> stop{false};
  std::atomic<int> changes{0};
  std::thread changer([&] {
    const int64_t period = static_cast<int64_t>(1e9 / f.pick_rate);
    int64_t next = NowNs();
    for (int c = 0; !stop.load(); ++c) {
      next += period;
      std::this_thread::sleep_for(std::chrono::nanoseconds(std::max<int64_t>(0, next - NowNs())));
      Instance in = MakeInstance((c * 7) % n);
      in.performance["load"] = (c % 97) / 97.0;
      if (c % 10 == 0 && (c / 10) % 2 == 0) in.status = discovery::InstanceStatus::kError;
      if (bare.Put(KeyOf(prefix, in), discovery::EncodeInstance(in)).ok()) changes.fetch_add(1);
    }
  });

  // Clock overhead: back-to-back steady_clock reads.
  std::vector<uint32_t> overhead;
  for (int i = 0; i < 100000; ++i) {
    const int64_t a = NowNs();
    const int64_t b = NowNs();
    overhead.push_back(static_cast<uint32_t>(b - a));
  }
  const double clock_ns = Percentile(overhead, 50);

  std::vector<std::vector<uint32_t>> samples(kinds.size() + 1);
  std::vector<std::string> keys;
  for (int i = 0; i < 4096; ++i) keys.push_back(absl::StrCat("player-", i * 7919));
  std::atomic<uint64_t> counter{0};
  const size_t kChunk = 20000;
  const size_t kMaxSamples = 4000000;
  const int64_t end = NowNs() + static_cast<int64_t>(f.pick_seconds * 1e9);
  size_t nulls = 0;
  while (NowNs() < end) {
    for (size_t k = 0; k <= kinds.size(); ++k) {
      auto& s = samples[k];
      if (s.size() >= kMaxSamples) continue;
      for (size_t i = 0; i < kChunk; ++i) {
        const std::string& key = keys[i & 4095];
        int64_t a, b;
        InstancePtr p;
        if (k < kinds.size()) {
          a = NowNs();
          p = pickers[k]->Pick(key);
          b = NowNs();
        } else {
          // Baseline: a plain atomic counter modulo a vector.
          a = NowNs();
          p = plain[counter.fetch_add(1, std::memory_order_relaxed) % plain.size()];
          b = NowNs();
        }
        asm volatile("" : : "r"(p.get()) : "memory");
        nulls += p == nullptr;
        s.push_back(static_cast<uint32_t>(b - a));
      }
    }
  }
  stop.store(true);
  changer.join();

  out["changes_applied"] = changes.load();
  out["clock_overhead_ns"] = clock_ns;
  out["null_picks"] = nulls;
  auto corrected = [&](double v) { return Round(std::max(0.0, v - clock_ns), 1); };
  Json per_kind = Json::object();
  double worst_p50 = 0;
  for (size_t k = 0; k < kinds.size(); ++k) {
    Json j;
    j["p50_ns"] = corrected(Percentile(samples[k], 50));
    j["p99_ns"] = corrected(Percentile(samples[k], 99));
    j["samples"] = samples[k].size();
    worst_p50 = std::max(worst_p50, j["p50_ns"].get<double>());
    per_kind[kinds[k].name] = j;
  }
  out["pickers"] = per_kind;
  out["baseline_p50_ns"] = corrected(Percentile(samples.back(), 50));
  out["baseline_p99_ns"] = corrected(Percentile(samples.back(), 99));
  out["worst_p50_ns"] = worst_p50;
  out["target"] = Target("p50 <= 100 ns (every kind)", worst_p50 <= 100);
  return out;
}

}  // namespace discovery_bench
