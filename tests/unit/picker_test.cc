// Tests for discovery/picker.h: one shared suite that every picker kind runs (correctness,
// reachability, picking while the set changes), then per-kind fairness and stability checks.
#include "discovery/picker.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <ostream>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace discovery {
namespace {

InstancePtr MakeInstance(std::string id, int weight = 100,
                         nlohmann::json performance = nlohmann::json::object()) {
  auto instance = std::make_shared<Instance>();
  instance->instance_id = std::move(id);
  instance->type = "world";
  instance->group = "kr-1";
  instance->status = InstanceStatus::kReady;
  instance->weight = weight;
  instance->performance = std::move(performance);
  return instance;
}

std::vector<InstancePtr> MakeInstances(int count, const std::string& prefix = "inst-") {
  std::vector<InstancePtr> instances;
  for (int i = 0; i < count; ++i) instances.push_back(MakeInstance(prefix + std::to_string(i)));
  return instances;
}

std::vector<InstancePtr> WithWeights(const std::vector<int>& weights) {
  std::vector<InstancePtr> instances;
  for (size_t i = 0; i < weights.size(); ++i) {
    instances.push_back(MakeInstance("w-" + std::to_string(i), weights[i]));
  }
  return instances;
}

std::unique_ptr<Picker> NewPickerOf(PickerKind kind) { return NewPicker({.kind = kind}); }

// How often each instance id was picked in `picks` key-less picks.
std::map<std::string, int> CountPicks(Picker& picker, int picks) {
  std::map<std::string, int> counts;
  for (int i = 0; i < picks; ++i) {
    InstancePtr picked = picker.Pick();
    if (picked == nullptr) {
      ADD_FAILURE() << "nullptr at pick " << i;
      return counts;
    }
    ++counts[picked->instance_id];
  }
  return counts;
}

// nginx's smooth weighted round robin, written out as the reference: indices into `weights`.
std::vector<size_t> ReferenceSmoothSequence(const std::vector<int>& weights, size_t picks) {
  std::vector<int64_t> current(weights.size(), 0);
  int64_t total = 0;
  for (int weight : weights) total += weight;
  std::vector<size_t> sequence;
  for (size_t step = 0; step < picks; ++step) {
    size_t best = 0;
    for (size_t i = 0; i < weights.size(); ++i) {
      current[i] += weights[i];
      if (current[i] > current[best]) best = i;
    }
    current[best] -= total;
    sequence.push_back(best);
  }
  return sequence;
}

std::string KindName(PickerKind kind) {
  switch (kind) {
    case PickerKind::kRoundRobin:
      return "RoundRobin";
    case PickerKind::kWeightedRoundRobin:
      return "WeightedRoundRobin";
    case PickerKind::kRandom:
      return "Random";
    case PickerKind::kLeastLoad:
      return "LeastLoad";
    case PickerKind::kConsistentHash:
      return "ConsistentHash";
  }
  return "Unknown";
}

}  // namespace

// gtest prints parameters with this (found by ADL, so outside the unnamed namespace).
void PrintTo(PickerKind kind, std::ostream* os) { *os << KindName(kind); }

namespace {

// ---------------------------------------------------------------------------------------------
// The shared suite.

class PickerSuite : public ::testing::TestWithParam<PickerKind> {};

INSTANTIATE_TEST_SUITE_P(AllKinds, PickerSuite,
                         ::testing::Values(PickerKind::kRoundRobin, PickerKind::kWeightedRoundRobin,
                                           PickerKind::kRandom, PickerKind::kLeastLoad,
                                           PickerKind::kConsistentHash),
                         [](const ::testing::TestParamInfo<PickerKind>& info) {
                           return KindName(info.param);
                         });

TEST_P(PickerSuite, EmptyBeforeFirstUpdate) {
  std::unique_ptr<Picker> picker = NewPickerOf(GetParam());
  EXPECT_EQ(picker->size(), 0u);
  EXPECT_EQ(picker->Pick(), nullptr);
  EXPECT_EQ(picker->Pick("player-1"), nullptr);
}

TEST_P(PickerSuite, EmptyAfterUpdateWithEmptySet) {
  std::unique_ptr<Picker> picker = NewPickerOf(GetParam());
  picker->Update(MakeInstances(3));
  ASSERT_NE(picker->Pick("player-1"), nullptr);
  picker->Update({});
  EXPECT_EQ(picker->size(), 0u);
  EXPECT_EQ(picker->Pick(), nullptr);
  EXPECT_EQ(picker->Pick("player-1"), nullptr);
}

TEST_P(PickerSuite, SingleCandidateIsAlwaysReturned) {
  std::unique_ptr<Picker> picker = NewPickerOf(GetParam());
  InstancePtr only = MakeInstance("only");
  picker->Update({only});
  EXPECT_EQ(picker->size(), 1u);
  for (int i = 0; i < 1000; ++i) {
    ASSERT_EQ(picker->Pick(), only);
    ASSERT_EQ(picker->Pick("player-" + std::to_string(i)), only);
  }
}

TEST_P(PickerSuite, EveryCandidateIsReachable) {
  std::unique_ptr<Picker> picker = NewPickerOf(GetParam());
  std::vector<InstancePtr> instances = MakeInstances(10);
  picker->Update(instances);
  EXPECT_EQ(picker->size(), 10u);
  std::set<std::string> all;
  for (const InstancePtr& instance : instances) all.insert(instance->instance_id);
  std::set<std::string> without_key;
  for (int i = 0; i < 10000; ++i) without_key.insert(picker->Pick()->instance_id);
  EXPECT_EQ(without_key, all);
  std::set<std::string> with_key;
  for (int i = 0; i < 10000; ++i) {
    with_key.insert(picker->Pick("player-" + std::to_string(i))->instance_id);
  }
  EXPECT_EQ(with_key, all);
}

TEST_P(PickerSuite, PicksOnlyFromTheLatestSet) {
  std::unique_ptr<Picker> picker = NewPickerOf(GetParam());
  picker->Update(MakeInstances(5, "old-"));
  std::vector<InstancePtr> latest = MakeInstances(3, "new-");
  picker->Update(latest);
  EXPECT_EQ(picker->size(), 3u);
  const std::set<InstancePtr> allowed(latest.begin(), latest.end());
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(allowed.contains(picker->Pick()));
    ASSERT_TRUE(allowed.contains(picker->Pick("player-" + std::to_string(i))));
  }
}

// Pickers may reuse work (ring, weighted schedule) when only non-id fields change; what they
// hand out must still be the latest objects.
TEST_P(PickerSuite, UpdateWithSameIdsHandsOutTheNewObjects) {
  std::unique_ptr<Picker> picker = NewPickerOf(GetParam());
  picker->Update(MakeInstances(4));
  std::vector<InstancePtr> fresh;
  for (int i = 0; i < 4; ++i) {
    fresh.push_back(MakeInstance("inst-" + std::to_string(i), 100, {{"load", 0.25}}));
  }
  picker->Update(fresh);
  const std::set<InstancePtr> allowed(fresh.begin(), fresh.end());
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(allowed.contains(picker->Pick()));
    ASSERT_TRUE(allowed.contains(picker->Pick("player-" + std::to_string(i))));
  }
}

TEST_P(PickerSuite, NullCandidatesAreIgnored) {
  std::unique_ptr<Picker> picker = NewPickerOf(GetParam());
  InstancePtr real = MakeInstance("real");
  picker->Update({nullptr, real, nullptr});
  EXPECT_EQ(picker->size(), 1u);
  for (int i = 0; i < 100; ++i) {
    ASSERT_EQ(picker->Pick(), real);
    ASSERT_EQ(picker->Pick("player-" + std::to_string(i)), real);
  }
}

// brpc's "update while selecting": pickers run while another thread replaces the set in a loop.
// Set B has long-period weights (so kWeightedRoundRobin switches between its precomputed and
// its locked path) and different loads. Must stay clean under TSan.
TEST_P(PickerSuite, PickWhileAnotherThreadUpdates) {
  std::unique_ptr<Picker> picker = NewPickerOf(GetParam());
  std::vector<InstancePtr> set_a = MakeInstances(5, "a-");
  std::vector<InstancePtr> set_b;
  const int kPrimeWeights[] = {9973, 9967, 9949, 9941, 9931, 9929, 9923};
  for (int i = 0; i < 7; ++i) {
    set_b.push_back(MakeInstance("b-" + std::to_string(i), kPrimeWeights[i], {{"load", 0.1 * i}}));
  }
  std::set<const Instance*> allowed;
  for (const InstancePtr& instance : set_a) allowed.insert(instance.get());
  for (const InstancePtr& instance : set_b) allowed.insert(instance.get());
  picker->Update(set_a);

  std::atomic<bool> done{false};
  std::atomic<int> updates{0};
  std::thread updater([&] {
    while (!done.load(std::memory_order_acquire)) {
      picker->Update(set_b);
      picker->Update(set_a);
      updates.fetch_add(2, std::memory_order_relaxed);
    }
  });

  constexpr int kThreads = 4;
  constexpr int kPicksPerThread = 20000;
  std::atomic<int> null_picks{0};
  std::atomic<int> foreign_picks{0};
  std::vector<std::thread> pickers;
  for (int t = 0; t < kThreads; ++t) {
    pickers.emplace_back([&, t] {
      for (int i = 0; i < kPicksPerThread; ++i) {
        InstancePtr picked =
            (i % 2 == 0) ? picker->Pick() : picker->Pick("player-" + std::to_string(t * i));
        if (picked == nullptr) {
          null_picks.fetch_add(1, std::memory_order_relaxed);
        } else if (!allowed.contains(picked.get())) {
          foreign_picks.fetch_add(1, std::memory_order_relaxed);
        }
        const size_t size = picker->size();
        if (size != set_a.size() && size != set_b.size()) {
          foreign_picks.fetch_add(1, std::memory_order_relaxed);
        }
      }
    });
  }
  for (std::thread& thread : pickers) thread.join();
  done.store(true, std::memory_order_release);
  updater.join();

  EXPECT_EQ(null_picks.load(), 0);
  EXPECT_EQ(foreign_picks.load(), 0);
  EXPECT_GT(updates.load(), 0);
}

// ---------------------------------------------------------------------------------------------
// kRoundRobin

TEST(RoundRobinPickerTest, ExactFairnessOverWholeRounds) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kRoundRobin);
  std::vector<InstancePtr> instances = MakeInstances(7);
  picker->Update(instances);
  constexpr int kRounds = 1000;
  std::vector<InstancePtr> sequence;
  for (int i = 0; i < 7 * kRounds; ++i) sequence.push_back(picker->Pick());
  std::map<InstancePtr, int> counts;
  for (const InstancePtr& picked : sequence) ++counts[picked];
  ASSERT_EQ(counts.size(), 7u);
  for (const auto& [instance, count] : counts) EXPECT_EQ(count, kRounds) << instance->instance_id;
  for (size_t i = 7; i < sequence.size(); ++i) ASSERT_EQ(sequence[i], sequence[i - 7]);
}

TEST(RoundRobinPickerTest, RotationContinuesAcrossUpdatesOfTheSameSet) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kRoundRobin);
  std::vector<InstancePtr> instances = MakeInstances(5);
  std::map<InstancePtr, int> counts;
  for (int i = 0; i < 5 * 200; ++i) {
    picker->Update(instances);
    ++counts[picker->Pick()];
  }
  ASSERT_EQ(counts.size(), 5u);
  for (const auto& [instance, count] : counts) EXPECT_EQ(count, 200) << instance->instance_id;
}

// ---------------------------------------------------------------------------------------------
// kWeightedRoundRobin

TEST(WeightedRoundRobinPickerTest, SharesFollowWeights) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kWeightedRoundRobin);
  picker->Update(WithWeights({100, 200, 700}));
  constexpr int kPicks = 100000;
  std::map<std::string, int> counts = CountPicks(*picker, kPicks);
  EXPECT_NEAR(counts["w-0"] / double{kPicks}, 0.1, 0.02);
  EXPECT_NEAR(counts["w-1"] / double{kPicks}, 0.2, 0.02);
  EXPECT_NEAR(counts["w-2"] / double{kPicks}, 0.7, 0.02);
}

// Compares `picks` picks of a picker over `weights` with the reference sequence; when
// `update_every_pick`, the same set is re-published before every pick.
void ExpectNginxSequence(const std::vector<int>& weights, size_t picks, bool update_every_pick) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kWeightedRoundRobin);
  std::vector<InstancePtr> instances = WithWeights(weights);
  picker->Update(instances);
  const std::vector<size_t> expected = ReferenceSmoothSequence(weights, picks);
  for (size_t i = 0; i < picks; ++i) {
    if (update_every_pick) picker->Update(instances);
    ASSERT_EQ(picker->Pick(), instances[expected[i]]) << "pick " << i;
  }
}

TEST(WeightedRoundRobinPickerTest, SmoothForOneOneEight) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kWeightedRoundRobin);
  std::vector<InstancePtr> instances = WithWeights({1, 1, 8});
  picker->Update(instances);
  std::vector<size_t> picked;
  for (int i = 0; i < 1000; ++i) {
    InstancePtr instance = picker->Pick();
    picked.push_back(std::find(instances.begin(), instances.end(), instance) - instances.begin());
  }
  EXPECT_EQ(picked, ReferenceSmoothSequence({1, 1, 8}, 1000));
  // Each period of 10 has the light ones exactly once, interleaved with the heavy one ...
  for (size_t start = 0; start < picked.size(); start += 10) {
    EXPECT_EQ(std::count(picked.begin() + start, picked.begin() + start + 10, 0u), 1);
    EXPECT_EQ(std::count(picked.begin() + start, picked.begin() + start + 10, 1u), 1);
  }
  // ... so the heavy one runs at most 6 times in a row (3 at the end of a period, 3 at the
  // start of the next), never 8.
  size_t longest_run = 0;
  size_t run = 0;
  for (size_t index : picked) {
    run = (index == 2) ? run + 1 : 0;
    longest_run = std::max(longest_run, run);
  }
  EXPECT_EQ(longest_run, 6u);
}

TEST(WeightedRoundRobinPickerTest, MatchesNginxWithShortPeriod) {
  ExpectNginxSequence({100, 200, 700}, 10000, /*update_every_pick=*/false);
  ExpectNginxSequence({5, 1, 1, 3, 0, 2}, 10000, /*update_every_pick=*/false);
}

// Ten distinct primes near 10000: a period of about 99,000 picks, too long to precompute, so
// this runs the locked O(n) path.
const std::vector<int> kLongPeriodWeights = {9973, 9967, 9949, 9941, 9931,
                                             9929, 9923, 9907, 9901, 9887};

TEST(WeightedRoundRobinPickerTest, MatchesNginxWithLongPeriod) {
  ExpectNginxSequence(kLongPeriodWeights, 150000, /*update_every_pick=*/false);
}

TEST(WeightedRoundRobinPickerTest, SequenceContinuesAcrossUpdatesOfTheSameSet) {
  ExpectNginxSequence({100, 200, 700}, 2000, /*update_every_pick=*/true);
  ExpectNginxSequence(kLongPeriodWeights, 2000, /*update_every_pick=*/true);
}

TEST(WeightedRoundRobinPickerTest, LongPeriodSharesFollowWeights) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kWeightedRoundRobin);
  picker->Update(WithWeights({1, 20000, 3, 40000, 7}));
  constexpr int kPicks = 100000;
  std::map<std::string, int> counts = CountPicks(*picker, kPicks);
  const double total = 1 + 20000 + 3 + 40000 + 7;
  EXPECT_NEAR(counts["w-1"] / double{kPicks}, 20000 / total, 0.02);
  EXPECT_NEAR(counts["w-3"] / double{kPicks}, 40000 / total, 0.02);
  EXPECT_GT(counts["w-0"], 0);
}

TEST(WeightedRoundRobinPickerTest, NewWeightsForTheSameIdsTakeEffect) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kWeightedRoundRobin);
  picker->Update(WithWeights({1, 1, 8}));
  CountPicks(*picker, 7);
  picker->Update(WithWeights({8, 1, 1}));
  // Whole periods of 10 from any starting point: exact counts.
  std::map<std::string, int> counts = CountPicks(*picker, 1000);
  EXPECT_EQ(counts["w-0"], 800);
  EXPECT_EQ(counts["w-1"], 100);
  EXPECT_EQ(counts["w-2"], 100);
}

TEST(WeightedRoundRobinPickerTest, ZeroWeightIsNeverPicked) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kWeightedRoundRobin);
  picker->Update(WithWeights({0, 100, 0, 50, -5}));
  EXPECT_EQ(picker->size(), 5u);
  std::map<std::string, int> counts = CountPicks(*picker, 15000);
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_EQ(counts["w-1"], 10000);
  EXPECT_EQ(counts["w-3"], 5000);
}

TEST(WeightedRoundRobinPickerTest, AllZeroWeightsPickNothing) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kWeightedRoundRobin);
  picker->Update(WithWeights({0, 0, 0}));
  EXPECT_EQ(picker->size(), 3u);
  EXPECT_EQ(picker->Pick(), nullptr);
}

// ---------------------------------------------------------------------------------------------
// kRandom

TEST(RandomPickerTest, RoughlyUniform) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kRandom);
  picker->Update(MakeInstances(10));
  std::map<std::string, int> counts = CountPicks(*picker, 100000);
  ASSERT_EQ(counts.size(), 10u);
  // Mean 10,000, standard deviation about 95: ±10 % is more than 10 sigma.
  for (const auto& [id, count] : counts) {
    EXPECT_GE(count, 9000) << id;
    EXPECT_LE(count, 11000) << id;
  }
}

TEST(RandomPickerTest, ThreadsDrawDifferentSequences) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kRandom);
  std::vector<InstancePtr> instances = MakeInstances(100);
  picker->Update(instances);
  auto draw = [&] {
    std::vector<InstancePtr> picks;
    for (int i = 0; i < 32; ++i) picks.push_back(picker->Pick());
    return picks;
  };
  std::vector<InstancePtr> first;
  std::vector<InstancePtr> second;
  std::thread([&] { first = draw(); }).join();
  std::thread([&] { second = draw(); }).join();
  EXPECT_NE(first, second);
}

// ---------------------------------------------------------------------------------------------
// kLeastLoad

TEST(LeastLoadPickerTest, LowerLoadWinsBetweenTwo) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kLeastLoad);
  InstancePtr idle = MakeInstance("idle", 100, {{"load", 0.1}});
  InstancePtr busy = MakeInstance("busy", 100, {{"load", 0.9}});
  picker->Update({busy, idle});
  for (int i = 0; i < 10000; ++i) ASSERT_EQ(picker->Pick(), idle);
}

TEST(LeastLoadPickerTest, HighestLoadIsNeverPickedAmongTen) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kLeastLoad);
  std::vector<InstancePtr> instances;
  for (int i = 0; i < 10; ++i) {
    instances.push_back(MakeInstance("load-" + std::to_string(i), 100, {{"load", 0.1 * i}}));
  }
  picker->Update(instances);
  constexpr int kPicks = 100000;
  std::map<std::string, int> counts = CountPicks(*picker, kPicks);
  // Any pair that contains the busiest one has a less loaded partner.
  EXPECT_EQ(counts["load-9"], 0);
  // The idlest one wins every pair it is in: 1 - C(9,2)/C(10,2) = 0.2 of the picks.
  EXPECT_NEAR(counts["load-0"] / double{kPicks}, 0.2, 0.02);
  // Pick probability falls with load: the i-th idlest wins the pairs with the 9 - i busier ones.
  for (int i = 0; i < 9; ++i) {
    EXPECT_NEAR(counts["load-" + std::to_string(i)] / double{kPicks}, (9 - i) / 45.0, 0.02) << i;
  }
}

TEST(LeastLoadPickerTest, MissingOrNonNumericLoadCountsAsZero) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kLeastLoad);
  InstancePtr text = MakeInstance("text", 100, {{"load", "high"}});
  InstancePtr missing = MakeInstance("missing");
  InstancePtr loaded = MakeInstance("loaded", 100, {{"load", 0.5}});
  picker->Update({loaded, text, missing});
  std::map<std::string, int> counts = CountPicks(*picker, 10000);
  EXPECT_EQ(counts["loaded"], 0);
  EXPECT_GT(counts["text"], 0);
  EXPECT_GT(counts["missing"], 0);
}

TEST(LeastLoadPickerTest, UsesTheConfiguredLoadField) {
  std::unique_ptr<Picker> picker = NewPicker({.kind = PickerKind::kLeastLoad, .load_field = "cpu"});
  InstancePtr cool = MakeInstance("cool", 100, {{"cpu", 0.1}, {"load", 0.9}});
  InstancePtr hot = MakeInstance("hot", 100, {{"cpu", 0.9}, {"load", 0.0}});
  picker->Update({hot, cool});
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(picker->Pick(), cool);
}

TEST(LeastLoadPickerTest, EqualLoadsSpreadEvenly) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kLeastLoad);
  picker->Update(MakeInstances(4));
  std::map<std::string, int> counts = CountPicks(*picker, 40000);
  ASSERT_EQ(counts.size(), 4u);
  for (const auto& [id, count] : counts) {
    EXPECT_GE(count, 9000) << id;
    EXPECT_LE(count, 11000) << id;
  }
}

// ---------------------------------------------------------------------------------------------
// kConsistentHash

std::string PlayerKey(int i) { return "player-" + std::to_string(i); }

// instance_id picked for each of `keys` keys.
std::vector<std::string> Route(Picker& picker, int keys) {
  std::vector<std::string> owners;
  for (int i = 0; i < keys; ++i) owners.push_back(picker.Pick(PlayerKey(i))->instance_id);
  return owners;
}

TEST(ConsistentHashPickerTest, SameKeySameInstance) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kConsistentHash);
  picker->Update(MakeInstances(10));
  const std::vector<std::string> first = Route(*picker, 1000);
  for (int round = 0; round < 5; ++round) EXPECT_EQ(Route(*picker, 1000), first);
}

TEST(ConsistentHashPickerTest, RingIsStableAcrossPickersAndCandidateOrder) {
  std::unique_ptr<Picker> one = NewPickerOf(PickerKind::kConsistentHash);
  std::unique_ptr<Picker> two = NewPickerOf(PickerKind::kConsistentHash);
  one->Update(MakeInstances(10));
  std::vector<InstancePtr> reversed = MakeInstances(10);  // separate objects, same ids
  std::reverse(reversed.begin(), reversed.end());
  two->Update(reversed);
  EXPECT_EQ(Route(*one, 10000), Route(*two, 10000));
}

// Pins the ring hash (FNV-1a 64 + fmix64) and point labels (id + "#" + i): other processes and
// other versions must route these keys the same way. If this fails, sticky sessions move.
TEST(ConsistentHashPickerTest, GoldenRoutes) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kConsistentHash);
  picker->Update(MakeInstances(5, "game-"));
  // Cross-checked against an independent Python implementation of the same ring.
  const std::map<std::string, std::string> golden = {
      {"player-1", "game-1"},
      {"player-2", "game-3"},
      {"player-3", "game-2"},
      {"session-abc", "game-2"},
      {"guild:42", "game-4"},
      {"x", "game-4"},
      {"01HZXK3M7Q8R9S0T1V2W3X4Y5Z", "game-2"},
  };
  for (const auto& [key, id] : golden) EXPECT_EQ(picker->Pick(key)->instance_id, id) << key;
}

TEST(ConsistentHashPickerTest, ReorderingTheSameIdsKeepsRoutes) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kConsistentHash);
  std::vector<InstancePtr> instances = MakeInstances(10);
  picker->Update(instances);
  const std::vector<std::string> before = Route(*picker, 5000);
  std::rotate(instances.begin(), instances.begin() + 3, instances.end());
  picker->Update(instances);
  EXPECT_EQ(Route(*picker, 5000), before);
}

TEST(ConsistentHashPickerTest, RemovingOneInstanceMovesOnlyItsKeys) {
  constexpr int kInstances = 10;
  constexpr int kKeys = 10000;
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kConsistentHash);
  std::vector<InstancePtr> instances = MakeInstances(kInstances);
  picker->Update(instances);
  const std::vector<std::string> before = Route(*picker, kKeys);
  const std::string removed = instances[3]->instance_id;
  instances.erase(instances.begin() + 3);
  picker->Update(instances);
  const std::vector<std::string> after = Route(*picker, kKeys);
  int moved = 0;
  for (int i = 0; i < kKeys; ++i) {
    if (before[i] == after[i]) continue;
    ++moved;
    EXPECT_EQ(before[i], removed) << PlayerKey(i) << " moved from " << before[i];
  }
  EXPECT_GT(moved, 0);
  EXPECT_LE(moved / double{kKeys}, 1.0 / kInstances + 0.05);
}

TEST(ConsistentHashPickerTest, AddingOneInstanceMovesKeysOnlyToIt) {
  constexpr int kKeys = 10000;
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kConsistentHash);
  std::vector<InstancePtr> instances = MakeInstances(10);
  picker->Update(instances);
  const std::vector<std::string> before = Route(*picker, kKeys);
  instances.push_back(MakeInstance("newcomer"));
  picker->Update(instances);
  const std::vector<std::string> after = Route(*picker, kKeys);
  int moved = 0;
  for (int i = 0; i < kKeys; ++i) {
    if (before[i] == after[i]) continue;
    ++moved;
    EXPECT_EQ(after[i], "newcomer") << PlayerKey(i);
  }
  EXPECT_GT(moved, 0);
  EXPECT_LE(moved / double{kKeys}, 1.0 / 11 + 0.05);
}

TEST(ConsistentHashPickerTest, KeysSpreadAcrossInstances) {
  std::unique_ptr<Picker> picker = NewPickerOf(PickerKind::kConsistentHash);
  picker->Update(MakeInstances(10));
  std::map<std::string, int> counts;
  for (const std::string& id : Route(*picker, 100000)) ++counts[id];
  ASSERT_EQ(counts.size(), 10u);
  for (const auto& [id, count] : counts) {
    EXPECT_GE(count, 7000) << id;
    EXPECT_LE(count, 13000) << id;
  }
}

TEST(ConsistentHashPickerTest, NonPositiveVirtualNodesStillRoute) {
  std::unique_ptr<Picker> picker =
      NewPicker({.kind = PickerKind::kConsistentHash, .virtual_nodes = 0});
  picker->Update(MakeInstances(4));
  const std::vector<std::string> first = Route(*picker, 100);
  EXPECT_EQ(Route(*picker, 100), first);
}

}  // namespace
}  // namespace discovery
