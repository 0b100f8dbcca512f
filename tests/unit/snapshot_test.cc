// The watcher cache's chunked per-type sets (src/cache_typeset.h) and the Snapshot views over
// them: O(changed) publishing (a new set shares every untouched chunk with the previous one),
// views equal to a sorted model after random changes, group ranges.
#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cache_typeset.h"
#include "discovery/watcher.h"
#include "gtest/gtest.h"

namespace discovery {
namespace {

using Types = std::map<std::string, std::shared_ptr<const Snapshot::TypeSet>, std::less<>>;

InstancePtr Make(int i, int group_size = 100, int version = 0) {
  auto in = std::make_shared<Instance>();
  in->instance_id = absl::StrFormat("01JCYFZQ7D4NB4MZ5S6Z%06d", i);
  in->type = "world";
  in->group = absl::StrFormat("g-%05d", i / group_size);
  in->weight = version;
  return in;
}

std::string Key(const Instance& in) { return absl::StrCat(in.group, "\x1f", in.instance_id); }

// How many chunks of `b` are not shared (by pointer) with `a`.
size_t FreshChunks(const Snapshot::TypeSet& a, const Snapshot::TypeSet& b) {
  std::set<const Snapshot::Chunk*> old;
  a.ForEachChunk([&](const Snapshot::Chunk& c) { old.insert(&c); });
  size_t fresh = 0;
  b.ForEachChunk([&](const Snapshot::Chunk& c) { fresh += old.count(&c) == 0; });
  return fresh;
}
// How many segments of `b` are not shared (by pointer) with `a`.
size_t FreshSegments(const Snapshot::TypeSet& a, const Snapshot::TypeSet& b) {
  std::set<const Snapshot::Segment*> old;
  for (const auto& s : a.segments) old.insert(s.ptr.get());
  size_t fresh = 0;
  for (const auto& s : b.segments) fresh += old.count(s.ptr.get()) == 0;
  return fresh;
}
// Every published invariant of a set: non-empty chunks and segments within `limit`, each
// `ends` the running count, each `lasts` the last instance of its chunk or segment.
void ExpectWellFormed(const Snapshot::TypeSet& set, size_t limit, const std::string& where) {
  size_t total = 0;
  for (size_t s = 0; s < set.segments.size(); ++s) {
    const Snapshot::Segment& seg = *set.segments[s].ptr;
    ASSERT_FALSE(seg.chunks.empty()) << where << " segment " << s;
    ASSERT_LE(seg.chunks.size(), limit) << where << " segment " << s;
    size_t in_seg = 0;
    for (size_t c = 0; c < seg.chunks.size(); ++c) {
      const auto& items = seg.chunks[c].ptr->items;
      ASSERT_FALSE(items.empty()) << where << " chunk " << s << "/" << c;
      ASSERT_LE(items.size(), limit) << where << " chunk " << s << "/" << c;
      in_seg += items.size();
      ASSERT_EQ(seg.chunks[c].end, in_seg) << where << " chunk " << s << "/" << c;
      ASSERT_EQ(seg.chunks[c].last, items.back().get()) << where << " chunk " << s << "/" << c;
    }
    total += in_seg;
    ASSERT_EQ(set.segments[s].end, total) << where << " segment " << s;
    ASSERT_EQ(set.segments[s].last, seg.chunks.back().last) << where << " segment " << s;
  }
}

std::shared_ptr<const Snapshot::TypeSet> Build(int n) {
  cache::TypeSetBuilder b(nullptr);
  for (int i = 0; i < n; ++i) b.Upsert(Make(i));
  return b.Finish();
}

TEST(SnapshotTypeSet, OneChangeInALargeTypeCopiesOneChunk) {
  constexpr int kN = 100000;
  std::shared_ptr<const Snapshot::TypeSet> base = Build(kN);
  ASSERT_EQ(base->size(), static_cast<size_t>(kN));
  ExpectWellFormed(*base, cache::ChunkLimit(kN), "base");

  // An update in place: one chunk and its segment copied, every other pointer shared.
  cache::TypeSetBuilder update(base);
  update.Upsert(Make(54321, 100, 1));
  auto updated = update.Finish();
  EXPECT_EQ(updated->size(), base->size());
  EXPECT_EQ(update.chunks_copied(), 1u);
  EXPECT_EQ(FreshChunks(*base, *updated), 1u);
  EXPECT_EQ(FreshSegments(*base, *updated), 1u);
  // What a publish copies: the changed chunk, its segment's chunk pointers and the segment
  // index, ~3 x cbrt(n) pointers (a single-level index of sqrt(n) chunks was ~790 here).
  const size_t chunk = 64, per_segment = 64;
  EXPECT_EQ(cache::ChunkLimit(kN), chunk);
  EXPECT_LE(updated->segments.size(), 2 * kN / (chunk * per_segment / 4));
  ExpectWellFormed(*updated, cache::ChunkLimit(kN), "updated");

  // An insert (may split its chunk) and a removal: at most two fresh chunks each.
  cache::TypeSetBuilder insert(updated);
  insert.Upsert(Make(kN + 7, 1000000));
  auto inserted = insert.Finish();
  EXPECT_EQ(inserted->size(), base->size() + 1);
  EXPECT_LE(FreshChunks(*updated, *inserted), 2u);
  EXPECT_LE(FreshSegments(*updated, *inserted), 2u);
  cache::TypeSetBuilder remove(inserted);
  remove.Erase(*Make(777));
  auto removed = remove.Finish();
  EXPECT_EQ(removed->size(), base->size());
  EXPECT_LE(FreshChunks(*inserted, *removed), 2u);
  EXPECT_LE(FreshSegments(*inserted, *removed), 2u);

  // Through the public API: the unchanged instances of the new snapshot are the very same
  // pointer objects as in the previous one (shared storage), not copies.
  Snapshot before(1, Types{{"world", base}}), after(2, Types{{"world", updated}});
  EXPECT_EQ(&before.OfType("world")[0], &after.OfType("world")[0]);
  EXPECT_EQ(&before.OfType("world")[kN - 1], &after.OfType("world")[kN - 1]);
  EXPECT_NE(after.OfType("world")[54321], before.OfType("world")[54321]);
  EXPECT_EQ(after.OfType("world")[54321]->weight, 1);
}

// Instances inserted in key order (a sync of one group: etcd returns keys sorted) fill each
// chunk and segment before starting the next, where halving splits would leave them all half
// empty; removing most of a type joins the small chunks and segments left behind.
TEST(SnapshotTypeSet, AppendsFillChunksAndRemovalsJoinThem) {
  constexpr int kN = 100000;
  std::shared_ptr<const Snapshot::TypeSet> set = Build(kN);  // (in key order)
  ExpectWellFormed(*set, cache::ChunkLimit(kN), "appended");
  // Full at the limit of the size when each was made: 16 up to 4,096 instances, 32 up to
  // 32,768, 64 after: ~2,200 chunks in ~60 segments (halving: ~4,400 in ~240).
  EXPECT_LE(set->chunk_count(), 2300u);
  EXPECT_LE(set->segments.size(), 70u);

  std::map<std::string, InstancePtr> model;
  for (const InstancePtr& in : Snapshot(1, Types{{"world", set}}).OfType("world")) {
    model[Key(*in)] = in;
  }
  cache::TypeSetBuilder b(set);
  for (int i = 0; i < kN; ++i) {
    if (i % 500 == 0) continue;
    b.Erase(*Make(i));
    model.erase(Key(*Make(i)));
  }
  auto kept = b.Finish();
  ASSERT_EQ(kept->size(), model.size());
  ExpectWellFormed(*kept, 2 * cache::ChunkLimit(kN), "kept");
  // 200 instances left, one per ~8 former chunks: joined into few chunks and segments.
  EXPECT_LE(kept->chunk_count(), 60u);
  EXPECT_LE(kept->segments.size(), 10u);
  Snapshot snap(2, Types{{"world", kept}});
  auto it = model.begin();
  for (const InstancePtr& in : snap.OfType("world")) ASSERT_EQ(in, (it++)->second);
}

// Replace finds the previous instance by its address (no key comparison inside the chunk) and
// copies only its chunk; an instance the set does not hold falls back to Upsert.
TEST(SnapshotTypeSet, ReplaceFindsThePreviousInstanceByAddress) {
  constexpr int kN = 1000;
  std::shared_ptr<const Snapshot::TypeSet> base = Build(kN);
  InstancePtr held = Snapshot(1, Types{{"world", base}}).OfType("world")[345];
  cache::TypeSetBuilder b(base);
  InstancePtr next = Make(345, 100, 7);
  b.Replace(*held, next);
  auto replaced = b.Finish();
  EXPECT_EQ(b.chunks_copied(), 1u);
  EXPECT_EQ(FreshChunks(*base, *replaced), 1u);
  Snapshot after(2, Types{{"world", replaced}});
  ASSERT_EQ(after.size(), static_cast<size_t>(kN));
  EXPECT_EQ(after.OfType("world")[345], next);

  // A stranger with the same key (not the object the set holds): replaced by key.
  cache::TypeSetBuilder b2(replaced);
  InstancePtr stranger = Make(345, 100, 8), again = Make(345, 100, 9);
  b2.Replace(*stranger, again);
  // A key the set does not hold at all: inserted.
  InstancePtr extra = Make(kN + 5, 100, 1);
  b2.Replace(*Make(kN + 5), extra);
  Snapshot last(3, Types{{"world", b2.Finish()}});
  ASSERT_EQ(last.size(), static_cast<size_t>(kN + 1));
  EXPECT_EQ(last.OfType("world")[345], again);
  EXPECT_EQ(last.OfType("world")[kN], extra);
  for (size_t i = 1; i < last.size(); ++i) {
    ASSERT_TRUE(cache::SortsBefore(*last.OfType("world")[i - 1], *last.OfType("world")[i]));
  }
}

TEST(SnapshotTypeSet, ViewsEqualASortedModelAfterRandomChanges) {
  std::mt19937 rng(12345);
  std::map<std::string, InstancePtr> model;
  std::shared_ptr<const Snapshot::TypeSet> set;
  for (int round = 0; round < 200; ++round) {
    cache::TypeSetBuilder b(set);
    const int ops = round % 10 == 0 ? 500 : static_cast<int>(rng() % 20) + 1;
    for (int k = 0; k < ops; ++k) {
      const int i = static_cast<int>(rng() % 3000);
      const int group_size = 1 + static_cast<int>(rng() % 3) * 40;  // moves between groups
      InstancePtr in = Make(i, group_size, round);
      if (rng() % 3 == 0) {
        // Remove whatever instance i is now (its group may differ from `in`'s).
        for (auto it = model.begin(); it != model.end(); ++it) {
          if (it->second->instance_id == in->instance_id) {
            b.Erase(*it->second);
            model.erase(it);
            break;
          }
        }
      } else {
        if (auto it = model.find(Key(*in)); it == model.end()) {
          // Same id in another group: the watcher removes the old entry first.
          for (auto jt = model.begin(); jt != model.end(); ++jt) {
            if (jt->second->instance_id == in->instance_id) {
              b.Erase(*jt->second);
              model.erase(jt);
              break;
            }
          }
          b.Upsert(in);
        } else if (rng() % 2 == 0) {
          b.Replace(*it->second, in);  // as the watcher does for an update in place
        } else {
          b.Upsert(in);
        }
        model[Key(*in)] = in;
      }
    }
    set = b.Finish();
    Snapshot snap(round, set == nullptr ? Types{} : Types{{"world", set}});
    Snapshot::TypeView view = snap.OfType("world");
    ASSERT_EQ(view.size(), model.size());
    ASSERT_EQ(snap.size(), model.size());
    size_t i = 0;
    for (const InstancePtr& in : view) {
      ASSERT_EQ(in, std::next(model.begin(), static_cast<long>(i))->second) << "round " << round;
      ASSERT_EQ(view[i], in);
      ++i;
    }
    if (set != nullptr) {
      // The builder keeps ends and lasts incrementally: each must still be the count up to
      // and including its chunk or segment, and the last instance of it. (2 x the limit: a
      // type that shrank keeps larger chunks until they change.)
      ExpectWellFormed(*set, 2 * cache::ChunkLimit(3000), absl::StrCat("round ", round));
    }
    // Group views and Select(type, group) hold exactly the model's members of the group.
    for (const std::string group : {"g-00000", "g-00010", "g-00042", "g-99999"}) {
      std::vector<InstancePtr> want;
      for (const auto& [k, in] : model) {
        if (in->group == group) want.push_back(in);
      }
      ASSERT_EQ(snap.OfGroup("world", group).ToVector(), want) << group;
      ASSERT_EQ(snap.Select({.type = "world", .group = group}), want) << group;
    }
  }
}

// SortsBefore compares group + '\x1f' + instanceId byte-wise (unsigned) without building the
// keys: the same order as the built keys, also where one group is a prefix of the other and
// the next byte is below, equal to or above the separator.
TEST(SnapshotTypeSet, SortsBeforeIsTheByteOrderOfTheBuiltKey) {
  const std::vector<std::string> parts = {"",
                                          "a",
                                          "ab",
                                          "a\x1e",
                                          "a\x1f",
                                          "a\x20",
                                          "a\xff",
                                          "\x1f",
                                          "b",
                                          "a\x1f"
                                          "b",
                                          "ab\x1f"};
  std::vector<Instance> all;
  for (const std::string& g : parts) {
    for (const std::string& id : parts) {
      Instance in;
      in.group = g;
      in.instance_id = id;
      all.push_back(in);
    }
  }
  for (const Instance& a : all) {
    for (const Instance& b : all) {
      const std::string ka = Key(a), kb = Key(b);
      ASSERT_EQ(cache::SortsBefore(a, b), ka < kb)
          << absl::CHexEscape(ka) << " vs " << absl::CHexEscape(kb);
      const int c = cache::CompareSortKey(a, kb);
      ASSERT_EQ(c < 0, ka < kb);
      ASSERT_EQ(c == 0, ka == kb);
    }
  }
}

// The split limit follows the type's size (cbrt, 16..kChunkMax), and a type that shrank
// cuts its oversized chunks and segments down as they change.
TEST(SnapshotTypeSet, ChunkLimitFollowsTheTypeSize) {
  EXPECT_EQ(cache::ChunkLimit(0), 16u);
  EXPECT_EQ(cache::ChunkLimit(1000), 16u);
  EXPECT_EQ(cache::ChunkLimit(10000), 32u);
  EXPECT_EQ(cache::ChunkLimit(100000), 64u);
  EXPECT_EQ(cache::ChunkLimit(100000000), Snapshot::kChunkMax);

  auto small = Build(1000);
  ExpectWellFormed(*small, 16, "small");
  auto big = Build(100000);
  size_t largest = 0;
  big->ForEachChunk([&](const Snapshot::Chunk& c) { largest = std::max(largest, c.items.size()); });
  EXPECT_GT(largest, 32u);  // built at the size's own limit, not the small one

  // Shrink the big type to 500 instances, then update each remaining one: every chunk is cut
  // to at most twice the small limit.
  cache::TypeSetBuilder shrink(big);
  for (int i = 500; i < 100000; ++i) shrink.Erase(*Make(i));
  auto shrunk = shrink.Finish();
  ASSERT_EQ(shrunk->size(), 500u);
  cache::TypeSetBuilder touch(shrunk);
  for (int i = 0; i < 500; ++i) touch.Upsert(Make(i, 100, 1));
  auto touched = touch.Finish();
  ASSERT_EQ(touched->size(), 500u);
  ExpectWellFormed(*touched, 2 * cache::ChunkLimit(500), "touched");
  Snapshot snap(1, Types{{"world", touched}});
  for (int i = 0; i < 500; ++i) {
    ASSERT_EQ(snap.OfType("world")[static_cast<size_t>(i)]->instance_id, Make(i)->instance_id);
    ASSERT_EQ(snap.OfType("world")[static_cast<size_t>(i)]->weight, 1);
  }
}

TEST(SnapshotTypeSet, EmptyAndMissingTypes) {
  Snapshot snap(1, Types{});
  EXPECT_TRUE(snap.OfType("world").empty());
  EXPECT_EQ(snap.OfType("world").size(), 0u);
  EXPECT_TRUE(snap.OfGroup("world", "kr-1").empty());
  for (const InstancePtr& in : snap.OfType("world")) ADD_FAILURE() << in->instance_id;
  EXPECT_EQ(snap.Find("world", "x"), nullptr);

  cache::TypeSetBuilder b(Build(10));
  for (int i = 0; i < 10; ++i) b.Erase(*Make(i));
  EXPECT_EQ(b.Finish(), nullptr);

  auto set = Snapshot::TypeSet::FromSorted({Make(1), Make(2), Make(3)});
  Snapshot three(2, Types{{"world", set}});
  EXPECT_EQ(three.OfType("world").size(), 3u);
  EXPECT_EQ(three.Find("world", Make(2)->instance_id)->instance_id, Make(2)->instance_id);
  EXPECT_EQ(three.All().size(), 3u);
}

}  // namespace
// Find(type, id) (the group not given): it finds every instance of a type of many groups of
// different sizes, and nothing for ids that are absent, between two present ones, or present
// in another type.
TEST(SnapshotTypeSet, FindLooksThroughEveryGroup) {
  std::vector<InstancePtr> sorted;
  for (int i = 0; i < 3000; ++i) {
    if (i % 7 == 3) continue;                // holes between present ids
    sorted.push_back(Make(i, 1 + i / 500));  // groups of 1, 2, ... instances
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const InstancePtr& a, const InstancePtr& b) { return Key(*a) < Key(*b); });
  Types types;
  types["world"] = Snapshot::TypeSet::FromSorted(sorted);
  Snapshot snap(1, types);
  for (int i = 0; i < 3000; ++i) {
    const std::string id = Make(i)->instance_id;
    InstancePtr found = snap.Find("world", id);
    if (i % 7 == 3) {
      EXPECT_EQ(found, nullptr) << id;
    } else {
      ASSERT_NE(found, nullptr) << id;
      EXPECT_EQ(found->instance_id, id);
    }
  }
  EXPECT_EQ(snap.Find("world", ""), nullptr);
  EXPECT_EQ(snap.Find("world", "zzz"), nullptr);
  EXPECT_EQ(snap.Find("lobby", Make(1)->instance_id), nullptr);
}

// Snapshot::Patch (the publish step over the type directory): after random additions,
// replacements and removals of types (enough to split blocks and empty them), every
// snapshot's types, sets and size equal a model, and every earlier snapshot is unchanged.
TEST(SnapshotTypeDirectory, PatchEqualsAModelAfterRandomChangesAndKeepsOlderSnapshots) {
  std::mt19937 rng(7);
  std::vector<std::string> names;
  for (int t = 0; t < 300; ++t) names.push_back(absl::StrFormat("type-%03d", (t * 7919) % 300));
  auto fresh_set = [&](int k) {
    std::vector<InstancePtr> sorted;
    for (int i = 0; i < k; ++i) sorted.push_back(Make(i));
    return k == 0 ? std::make_shared<const Snapshot::TypeSet>()
                  : Snapshot::TypeSet::FromSorted(sorted);
  };
  auto check = [&](const Snapshot& snap, const Types& model, int round) {
    std::vector<std::string> want;
    size_t size = 0;
    for (const auto& [name, set] : model) {
      want.push_back(name);
      size += set->size();
    }
    ASSERT_EQ(snap.Types(), want) << "round " << round;
    ASSERT_EQ(snap.size(), size) << "round " << round;
    ASSERT_EQ(snap.All().size(), size) << "round " << round;
    for (const std::string& name : names) {
      auto it = model.find(name);
      ASSERT_EQ(snap.type_set(name), it == model.end() ? nullptr : it->second.get())
          << "round " << round << " type " << name;
    }
    ASSERT_EQ(snap.type_set("type-"), nullptr);
    ASSERT_EQ(snap.type_set("zzz"), nullptr);
  };
  std::vector<std::pair<SnapshotPtr, Types>> history;
  Types model;
  SnapshotPtr snap = Snapshot::Patch(nullptr, 0, 1, {});
  check(*snap, model, -1);
  for (int round = 0; round < 1500; ++round) {
    // Grow to all 300 types in the first third, then churn (removals as likely as adds).
    const int changes = 1 + static_cast<int>(rng() % 4);
    std::vector<std::pair<std::string, std::shared_ptr<const Snapshot::TypeSet>>> changed;
    std::set<std::string> seen;
    for (int c = 0; c < changes; ++c) {
      const std::string& name = names[rng() % names.size()];
      if (!seen.insert(name).second) continue;
      const bool remove = round > 500 && rng() % 2 == 0;
      const int k = remove ? 0 : static_cast<int>(rng() % 4);  // 0: an empty set is a removal
      auto set = remove && rng() % 2 == 0 ? nullptr : fresh_set(k);
      if (set == nullptr || set->size() == 0) {
        model.erase(name);
      } else {
        model[name] = set;
      }
      changed.emplace_back(name, set);
    }
    snap = Snapshot::Patch(snap.get(), round + 1, 1, changed);
    ASSERT_EQ(snap->revision(), round + 1);
    check(*snap, model, round);
    if (round % 50 == 0) history.emplace_back(snap, model);
  }
  EXPECT_GT(model.size(), 40u);  // (several blocks at the end too)
  for (const auto& [old, old_model] : history) check(*old, old_model, -2);
}

}  // namespace discovery
