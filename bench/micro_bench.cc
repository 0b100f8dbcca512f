// Micro benchmarks of the library's hot paths, each next to a raw baseline in the same binary:
//
//   BM_EncodeInstance / BM_Baseline_JsonDump     Instance -> JSON text (baseline: dump of an
//                                                already built nlohmann value)
//   BM_DecodeInstance / BM_Baseline_JsonParse    JSON text -> Instance (baseline: nlohmann's
//                                                parse into a tree, nothing taken out)
//   BM_WatchEventApply / BM_Baseline_MapUpsert   one watch event into a 10,000-instance cache
//   BM_Pick/<kind>    / BM_Baseline_AtomicModulo Pick() over 1,000 candidates, 1 and 2 threads
//   BM_FanOut100      / BM_Baseline_FanOut100    one event to 100 subscribers
//   BM_TypeSetUpdateOne/<n>                      the watcher's real publish step
//                                                (cache_typeset.h): one instance of a type
//                                                of n replaced, new set published, old dropped
//   BM_SnapshotPatch/<n> / BM_SnapshotFromMap/<n> a publish's new Snapshot among n types
//   BM_EntryIndexFind/<n> / BM_Baseline_UnorderedMapFind/<n>   the watcher's per-key index:
//                                                one lookup among n, caches cold
//
// The watch-event and fan-out benchmarks re-implement what Watcher::Impl does in
// src/watcher.cc (ApplyEvents -> Decode, Set, Publish, UpdatePickers, Dispatch), because the
// real Watcher needs etcd; `discovery-bench --scenario watch-throughput` and `pick` measure
// the real Watcher end to end against etcd.
#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "cache_typeset.h"
#include "discovery/instance.h"
#include "discovery/picker.h"
#include "discovery/watcher.h"
#include "sample_instance.h"

namespace {

using discovery::Instance;
using discovery::InstancePtr;

// A realistic instance (bench/sample_instance.h) with metadata, fixed timestamps and a lease.
Instance MakeInstance(int i, const std::string& type = "world") {
  Instance in = discovery_bench::SampleInstance(i, type);
  in.meta = {{"k", "v"}};
  in.updated_at = absl::FromUnixSeconds(1700000000 + i);
  in.lease_id = 0x694d7a1c2f3b4c01 + i;
  return in;
}

// ---- JSON codec ----

void BM_EncodeInstance(benchmark::State& state) {
  const Instance in = MakeInstance(1);
  size_t bytes = 0;
  for (auto _ : state) {
    std::string s = discovery::EncodeInstance(in);
    bytes += s.size();
    benchmark::DoNotOptimize(s);
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
}
BENCHMARK(BM_EncodeInstance);

// Baseline: nlohmann::json::dump() of the same object, already built.
void BM_Baseline_JsonDump(benchmark::State& state) {
  const nlohmann::json j = discovery::InstanceToJson(MakeInstance(1));
  size_t bytes = 0;
  for (auto _ : state) {
    std::string s = j.dump();
    bytes += s.size();
    benchmark::DoNotOptimize(s);
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
}
BENCHMARK(BM_Baseline_JsonDump);

void BM_DecodeInstance(benchmark::State& state) {
  const std::string text = discovery::EncodeInstance(MakeInstance(1));
  for (auto _ : state) {
    auto in = discovery::DecodeInstance(text);
    if (!in.ok()) state.SkipWithError("decode failed");
    benchmark::DoNotOptimize(in);
  }
  state.SetBytesProcessed(static_cast<int64_t>(text.size() * state.iterations()));
}
BENCHMARK(BM_DecodeInstance);

// Baseline: nlohmann::json::parse() of the same text (no field mapping, no validation).
void BM_Baseline_JsonParse(benchmark::State& state) {
  const std::string text = discovery::EncodeInstance(MakeInstance(1));
  for (auto _ : state) {
    nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    benchmark::DoNotOptimize(j);
  }
  state.SetBytesProcessed(static_cast<int64_t>(text.size() * state.iterations()));
}
BENCHMARK(BM_Baseline_JsonParse);

// ---- one watch event into a 10,000-instance cache ----

// The watcher's loop-thread state and its per-event work, as in src/watcher.cc:
// ApplyEvents() decodes the value, Set() updates `current` and `by_type`, Publish() rebuilds
// the touched type's sorted vector and a new Snapshot, UpdatePickers() recomputes the
// candidates of every picker of that type (Candidates()) and calls Picker::Update().
class CacheModel {
 public:
  CacheModel(int n, int pickers) {
    for (int i = 0; i < n; ++i) {
      Instance in = MakeInstance(i);
      std::string key = Key(in);
      auto ptr = std::make_shared<const Instance>(std::move(in));
      by_type_[ptr->type][SortKey(*ptr)] = ptr;
      current_[key] = ptr;
    }
    for (int i = 0; i < pickers; ++i) {
      pickers_.push_back(discovery::NewPicker({.kind = discovery::PickerKind::kRoundRobin}));
    }
    Publish("world");
  }

  static std::string Key(const Instance& in) {
    return absl::StrCat("/services/", in.type, "/", in.instance_id);
  }
  static std::string SortKey(const Instance& in) {
    return absl::StrCat(in.group, "\x1f", in.instance_id);
  }

  // One PUT event (value = JSON text) as ApplyEvents handles it.
  void ApplyPut(const std::string& key, const std::string& value) {
    auto decoded = discovery::DecodeInstance(value);
    if (!decoded.ok()) return;
    InstancePtr next = std::make_shared<const Instance>(*std::move(decoded));
    auto it = current_.find(key);
    InstancePtr prev = it == current_.end() ? nullptr : it->second;
    if (prev != nullptr) by_type_[prev->type].erase(SortKey(*prev));
    current_[key] = next;
    by_type_[next->type][SortKey(*next)] = next;
    Publish(next->type);
  }

  size_t size() const { return snap_->size(); }

 private:
  void Publish(const std::string& type) {
    const auto& sorted = by_type_[type];
    std::vector<InstancePtr> flat;
    flat.reserve(sorted.size());
    for (const auto& [sk, in] : sorted) flat.push_back(in);
    published_[type] = discovery::Snapshot::TypeSet::FromSorted(flat);
    snap_ = std::make_shared<const discovery::Snapshot>(++revision_, published_);
    for (auto& picker : pickers_) {
      // Candidates(): ready instances of the type, with a std::set of ids for protection.
      std::vector<InstancePtr> out;
      std::set<std::string> ids;
      for (const auto& [sk, in] : sorted) {
        if (in->status == discovery::InstanceStatus::kReady) {
          out.push_back(in);
          ids.insert(in->instance_id);
        }
      }
      picker->Update(std::move(out));
    }
  }

  std::unordered_map<std::string, InstancePtr> current_;
  std::map<std::string, std::map<std::string, InstancePtr>> by_type_;
  std::map<std::string, std::shared_ptr<const discovery::Snapshot::TypeSet>, std::less<>>
      published_;
  std::shared_ptr<const discovery::Snapshot> snap_;
  std::vector<std::unique_ptr<discovery::Picker>> pickers_;
  int64_t revision_ = 0;
};

// Arg 0: pickers following the type (0 = a watcher used only for snapshots/subscriptions).
void BM_WatchEventApply(benchmark::State& state) {
  constexpr int kInstances = 10000;
  CacheModel cache(kInstances, static_cast<int>(state.range(0)));
  // Pre-encoded updates of existing instances (the common event: a status or load change).
  std::vector<std::pair<std::string, std::string>> events;
  for (int i = 0; i < 256; ++i) {
    Instance in = MakeInstance(i * 37 % kInstances);
    in.performance["load"] = i / 256.0;
    events.emplace_back(CacheModel::Key(in), discovery::EncodeInstance(in));
  }
  size_t i = 0;
  for (auto _ : state) {
    const auto& [key, value] = events[i++ % events.size()];
    cache.ApplyPut(key, value);
  }
  if (cache.size() != kInstances) state.SkipWithError("cache size changed");
}
BENCHMARK(BM_WatchEventApply)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

// Baseline: the same update as a std::map erase + insert of a shared_ptr (no decode, no
// snapshot).
void BM_Baseline_MapUpsert(benchmark::State& state) {
  constexpr int kInstances = 10000;
  std::map<std::string, InstancePtr> map;
  for (int i = 0; i < kInstances; ++i) {
    Instance in = MakeInstance(i);
    std::string key = CacheModel::Key(in);
    map[key] = std::make_shared<const Instance>(std::move(in));
  }
  std::vector<std::pair<std::string, InstancePtr>> events;
  for (int i = 0; i < 256; ++i) {
    Instance in = MakeInstance(i * 37 % kInstances);
    events.emplace_back(CacheModel::Key(in), std::make_shared<const Instance>(in));
  }
  size_t i = 0;
  for (auto _ : state) {
    const auto& [key, value] = events[i++ % events.size()];
    map.erase(key);
    map.emplace(key, value);
  }
  benchmark::DoNotOptimize(map);
}
BENCHMARK(BM_Baseline_MapUpsert)->Unit(benchmark::kMicrosecond);

// ---- Pick() over 1,000 candidates ----

std::vector<InstancePtr> Candidates(int n) {
  std::vector<InstancePtr> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) {
    Instance in = MakeInstance(i);
    in.weight = 50 + (i % 4) * 50;  // 50..200: a non-trivial smooth WRR schedule
    out.push_back(std::make_shared<const Instance>(std::move(in)));
  }
  return out;
}

discovery::Picker* SharedPicker(discovery::PickerKind kind) {
  static std::mutex mu;
  static std::map<discovery::PickerKind, std::unique_ptr<discovery::Picker>> pickers;
  std::lock_guard lock(mu);
  auto& picker = pickers[kind];
  if (picker == nullptr) {
    picker = discovery::NewPicker({.kind = kind});
    picker->Update(Candidates(1000));
  }
  return picker.get();
}

void BM_Pick(benchmark::State& state, discovery::PickerKind kind) {
  discovery::Picker* picker = SharedPicker(kind);
  std::vector<std::string> keys;
  for (int i = 0; i < 1024; ++i) keys.push_back(absl::StrCat("player-", i * 7919));
  size_t i = static_cast<size_t>(state.thread_index()) * 512;
  for (auto _ : state) {
    InstancePtr p = picker->Pick(keys[i++ & 1023]);
    benchmark::DoNotOptimize(p);
  }
}
BENCHMARK_CAPTURE(BM_Pick, round_robin, discovery::PickerKind::kRoundRobin)->Threads(1)->Threads(2);
BENCHMARK_CAPTURE(BM_Pick, weighted_round_robin, discovery::PickerKind::kWeightedRoundRobin)
    ->Threads(1)
    ->Threads(2);
BENCHMARK_CAPTURE(BM_Pick, random, discovery::PickerKind::kRandom)->Threads(1)->Threads(2);
BENCHMARK_CAPTURE(BM_Pick, least_load, discovery::PickerKind::kLeastLoad)->Threads(1)->Threads(2);
BENCHMARK_CAPTURE(BM_Pick, consistent_hash, discovery::PickerKind::kConsistentHash)
    ->Threads(1)
    ->Threads(2);

// Baseline: a shared atomic counter modulo a vector, returning the shared_ptr copy like Pick().
void BM_Baseline_AtomicModulo(benchmark::State& state) {
  static const std::vector<InstancePtr> candidates = Candidates(1000);
  static std::atomic<uint64_t> next{0};
  for (auto _ : state) {
    InstancePtr p = candidates[next.fetch_add(1, std::memory_order_relaxed) % candidates.size()];
    benchmark::DoNotOptimize(p);
  }
}
BENCHMARK(BM_Baseline_AtomicModulo)->Threads(1)->Threads(2);

// ---- one event to 100 subscribers ----

// As Watcher::Impl::Dispatch(): copy the subscriber table under its mutex, then for every
// subscriber evaluate the filter on the new and previous state and invoke the callback.
struct Sub {
  discovery::Filter filter;
  std::function<void(const discovery::ChangeEvent&)> callback;
};

void BM_FanOut100(benchmark::State& state) {
  std::mutex subs_mu;
  std::map<uint64_t, std::shared_ptr<Sub>> subs;
  std::atomic<uint64_t> delivered{0};
  for (uint64_t i = 0; i < 100; ++i) {
    auto sub = std::make_shared<Sub>();
    sub->filter.type = "world";
    sub->callback = [&delivered](const discovery::ChangeEvent&) {
      delivered.fetch_add(1, std::memory_order_relaxed);
    };
    subs[i] = std::move(sub);
  }
  discovery::ChangeEvent ev;
  ev.type = discovery::ChangeType::kUpdated;
  ev.instance = std::make_shared<const Instance>(MakeInstance(1));
  ev.previous = std::make_shared<const Instance>(MakeInstance(1));
  const std::vector<discovery::ChangeEvent> changes = {ev};
  for (auto _ : state) {
    std::vector<std::pair<uint64_t, std::shared_ptr<Sub>>> targets;
    {
      std::lock_guard lock(subs_mu);
      targets.assign(subs.begin(), subs.end());
    }
    for (const discovery::ChangeEvent& e : changes) {
      for (auto& [id, sub] : targets) {
        bool match = sub->filter.Matches(*e.instance) ||
                     (e.previous != nullptr && sub->filter.Matches(*e.previous));
        if (match) sub->callback(e);
      }
    }
  }
  if (delivered.load() != 100 * static_cast<uint64_t>(state.iterations())) {
    state.SkipWithError("lost deliveries");
  }
}
BENCHMARK(BM_FanOut100);

// Baseline: 100 std::function calls with the event (no table copy, no filter).
void BM_Baseline_FanOut100(benchmark::State& state) {
  std::atomic<uint64_t> delivered{0};
  std::vector<std::function<void(const discovery::ChangeEvent&)>> callbacks(
      100, [&delivered](const discovery::ChangeEvent&) {
        delivered.fetch_add(1, std::memory_order_relaxed);
      });
  discovery::ChangeEvent ev;
  ev.instance = std::make_shared<const Instance>(MakeInstance(1));
  for (auto _ : state) {
    for (auto& cb : callbacks) cb(ev);
  }
  benchmark::DoNotOptimize(delivered.load());
}
BENCHMARK(BM_Baseline_FanOut100);

// The watcher's publish step for one update (src/watcher_cache.cc Publish): a builder from
// the published set, the instance replaced, the new set published and the previous one dropped
// (its copied chunk released), as one watch event of a type of n instances costs. The
// instances are pre-built: decode is BM_DecodeInstance.
void BM_TypeSetUpdateOne(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  discovery::cache::TypeSetBuilder build(nullptr);
  for (int i = 0; i < n; ++i) {
    build.Upsert(std::make_shared<const Instance>(MakeInstance(i * 7919 % n)));
  }
  std::shared_ptr<const discovery::Snapshot::TypeSet> set = build.Finish();
  std::vector<InstancePtr> updates;
  for (int i = 0; i < 256; ++i) {
    Instance in = MakeInstance(i * 37 % n);
    in.weight = 1;
    updates.push_back(std::make_shared<const Instance>(std::move(in)));
  }
  size_t i = 0;
  for (auto _ : state) {
    discovery::cache::TypeSetBuilder b(set);
    b.Upsert(updates[i++ % updates.size()]);
    set = b.Finish();
  }
  if (set->size() != static_cast<size_t>(n)) state.SkipWithError("set size changed");
  state.counters["chunks"] = static_cast<double>(set->chunk_count());
  state.counters["segments"] = static_cast<double>(set->segments.size());
}
BENCHMARK(BM_TypeSetUpdateOne)->Arg(100)->Arg(1000)->Arg(10000)->Arg(100000);

// The snapshot a publish builds around the type sets, with n types of 100 instances and one
// of them changed (src/watcher_cache.cc Publish): BM_SnapshotPatch is Snapshot::Patch (the
// type directory's untouched blocks shared with the previous snapshot); BM_SnapshotFromMap
// is what a publish did before it, a new Snapshot over a copy of the whole type -> set map.
using TypeMap =
    std::map<std::string, std::shared_ptr<const discovery::Snapshot::TypeSet>, std::less<>>;
TypeMap Types(int n) {
  TypeMap types;
  for (int t = 0; t < n; ++t) {
    std::vector<InstancePtr> sorted;
    for (int i = 0; i < 100; ++i)
      sorted.push_back(std::make_shared<const Instance>(MakeInstance(i)));
    types[absl::StrFormat("type-%03d", t)] = discovery::Snapshot::TypeSet::FromSorted(sorted);
  }
  return types;
}
void BM_SnapshotPatch(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  TypeMap types = Types(n);
  std::shared_ptr<const discovery::Snapshot> snap =
      std::make_shared<const discovery::Snapshot>(1, types, 1);
  std::vector<std::pair<std::string, std::shared_ptr<const discovery::Snapshot::TypeSet>>> changed(
      1);
  const std::vector<std::pair<std::string, std::shared_ptr<const discovery::Snapshot::TypeSet>>>
      each(types.begin(), types.end());
  int64_t revision = 1;
  for (auto _ : state) {
    changed[0] = each[static_cast<size_t>(revision * 7919 % n)];
    snap = discovery::Snapshot::Patch(snap.get(), ++revision, 1, changed);
  }
  if (snap->size() != static_cast<size_t>(n) * 100) state.SkipWithError("size");
}
BENCHMARK(BM_SnapshotPatch)->Arg(1)->Arg(10)->Arg(100)->Arg(1000);
void BM_SnapshotFromMap(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  TypeMap types = Types(n);
  std::shared_ptr<const discovery::Snapshot> snap;
  int64_t revision = 0;
  for (auto _ : state) snap = std::make_shared<const discovery::Snapshot>(++revision, types, 1);
  if (snap->size() != static_cast<size_t>(n) * 100) state.SkipWithError("size");
}
BENCHMARK(BM_SnapshotFromMap)->Arg(1)->Arg(10)->Arg(100)->Arg(1000);

// The watcher's per-key index (cache_typeset.h EntryIndex; src/watcher_cache.cc Set): one
// lookup of a cached instance by the (type, instanceId) views of its etcd key, as every watch
// event does, over n entries in a scattered order (a fleet's updates do not come in key
// order). Between lookups (untimed: manual time around the lookup alone), 256 KiB are
// written so that the index is as cold as it is on a busy watch thread (etcd and gRPC run
// between two events); each lookup reads the instance's weight, as Set reads its status. Baseline:
// a std::unordered_map from the full key string to the instance, the plain way to hold the same
// index.
std::vector<std::string> IndexKeys(int n) {
  std::vector<std::string> keys;
  for (int i = 0; i < n; ++i) keys.push_back(absl::StrCat("world/", MakeInstance(i).instance_id));
  return keys;
}
// Times `lookup(key)` (returns the instance's weight) alone, with 256 KiB written before each.
template <class Lookup>
void ColdLookups(benchmark::State& state, const std::vector<std::string>& keys, Lookup lookup) {
  std::vector<char> junk(256 << 10);
  size_t i = 0;
  int64_t sum = 0;
  for (auto _ : state) {
    for (size_t j = 0; j < junk.size(); j += 64) junk[j] = static_cast<char>(i + j);
    benchmark::ClobberMemory();
    const std::string& key = keys[(i++ * 7919) % keys.size()];
    const auto t0 = std::chrono::steady_clock::now();
    sum += lookup(key);
    state.SetIterationTime(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  benchmark::DoNotOptimize(sum);
}
void BM_EntryIndexFind(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  discovery::cache::EntryIndex index;
  for (int i = 0; i < n; ++i) {
    index.insert({std::make_shared<const Instance>(MakeInstance(i)), i});
  }
  ColdLookups(state, IndexKeys(n), [&](const std::string& key) {
    return index.find(discovery::cache::SplitKey(key))->in->weight;
  });
}
BENCHMARK(BM_EntryIndexFind)->Arg(1000)->Arg(100000)->UseManualTime();

void BM_Baseline_UnorderedMapFind(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  std::unordered_map<std::string, InstancePtr> index;
  const std::vector<std::string> keys = IndexKeys(n);
  for (int i = 0; i < n; ++i) index[keys[i]] = std::make_shared<const Instance>(MakeInstance(i));
  ColdLookups(state, keys, [&](const std::string& key) { return index.find(key)->second->weight; });
}
BENCHMARK(BM_Baseline_UnorderedMapFind)->Arg(1000)->Arg(100000)->UseManualTime();

}  // namespace

BENCHMARK_MAIN();
