// DiscoverCache (tools/discoveryd/discover_cache.h) in-process, no etcd: one encoding per
// (snapshot, filter), the matching set's index kept across snapshots that do not change it,
// the LRU bound on filters, gzip once, If-None-Match and Accept-Encoding parsing.
#include "discover_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "discovery/instance.h"
#include "discovery/watcher.h"

namespace discoveryd {
namespace {

using discovery::Filter;
using discovery::Instance;
using discovery::InstancePtr;
using discovery::Snapshot;
using discovery::SnapshotPtr;

InstancePtr Make(const std::string& group, const std::string& id, size_t filler = 0) {
  auto in = std::make_shared<Instance>();
  in->instance_id = id;
  in->type = "world";
  in->group = group;
  in->hostname = "game-" + id;
  in->status = discovery::InstanceStatus::kReady;
  if (filler > 0) in->meta["filler"] = std::string(filler, 'x');
  return in;
}

// A snapshot of type "world" holding `ins` (sorted here by (group, id)).
SnapshotPtr Snap(int64_t revision, std::vector<InstancePtr> ins, uint64_t history = 1) {
  std::sort(ins.begin(), ins.end(), [](const InstancePtr& a, const InstancePtr& b) {
    return std::tie(a->group, a->instance_id) < std::tie(b->group, b->instance_id);
  });
  std::map<std::string, std::shared_ptr<const Snapshot::TypeSet>, std::less<>> types;
  if (!ins.empty()) types["world"] = Snapshot::TypeSet::FromSorted(ins);
  return std::make_shared<const Snapshot>(revision, std::move(types), history);
}

TEST(DiscoverCacheTest, EncodesOncePerSnapshotAndFilter) {
  DiscoverCache cache({});
  SnapshotPtr s = Snap(5, {Make("kr-1", "a"), Make("kr-2", "b")});
  auto e1 = cache.Get(s, "ep", {.type = "world", .group = "kr-1"});
  auto e2 = cache.Get(s, "ep", {.type = "world", .group = "kr-1"});
  EXPECT_EQ(e1, e2);
  EXPECT_EQ(e1->body, e2->body);  // the same buffer, not a copy
  EXPECT_EQ(e1->etag, "\"ep-5\"");
  EXPECT_EQ(e1->gzip_etag, "\"ep-5-gzip\"");
  EXPECT_EQ(*e1->body, std::string("{\"instances\":[") +
                           discovery::InstanceToJson(*Make("kr-1", "a")).dump() +
                           "],\"revision\":5}");
  EXPECT_EQ(cache.stats().misses, 1u);
  EXPECT_EQ(cache.stats().hits, 1u);
  // The same revision in another history is another snapshot.
  EXPECT_EQ(cache.Find(Snap(5, {}, 2), {.type = "world", .group = "kr-1"}), nullptr);
}

TEST(DiscoverCacheTest, IndexMovesOnlyWhenTheMatchingSetChanges) {
  DiscoverCache cache({});
  const Filter kr1{.type = "world", .group = "kr-1"};
  InstancePtr a = Make("kr-1", "a"), b = Make("kr-2", "b");
  EXPECT_EQ(cache.Get(Snap(5, {a, b}), "ep", kr1)->index, 5);
  // kr-2 changed at 6: kr-1's set is the same, its index stays 5 (the body's revision moves).
  auto e6 = cache.Get(Snap(6, {a, Make("kr-2", "b", 10)}), "ep", kr1);
  EXPECT_EQ(e6->index, 5);
  EXPECT_EQ(e6->revision, 6);
  // kr-1 changed at 7.
  EXPECT_EQ(cache.Get(Snap(7, {a, Make("kr-1", "c")}), "ep", kr1)->index, 7);
  // A removal from kr-1 at 8 moves it too.
  EXPECT_EQ(cache.Get(Snap(8, {Make("kr-1", "c")}), "ep", kr1)->index, 8);
  // A new history never keeps an index of the old one.
  EXPECT_EQ(cache.Get(Snap(3, {Make("kr-1", "c")}, 2), "ep", kr1)->index, 3);
}

TEST(DiscoverCacheTest, BoundedByFiltersLeastRecentlyUsedFirst) {
  DiscoverCache cache({.max_entries = 2});
  SnapshotPtr s = Snap(5, {Make("kr-1", "a")});
  cache.Get(s, "ep", {.group = "g1"});
  cache.Get(s, "ep", {.group = "g2"});
  cache.Get(s, "ep", {.group = "g1"});  // g1 recent, g2 oldest
  cache.Get(s, "ep", {.group = "g3"});  // evicts g2
  EXPECT_EQ(cache.stats().entries, 2u);
  EXPECT_EQ(cache.stats().evictions, 1u);
  EXPECT_NE(cache.Find(s, {.group = "g1"}), nullptr);
  EXPECT_EQ(cache.Find(s, {.group = "g2"}), nullptr);
  EXPECT_NE(cache.Find(s, {.group = "g3"}), nullptr);
}

// The byte bound: bodies of ~4 KB in a cache of 10 KB hold two; a new one pushes out the
// least recently used; a replaced entry gives its bytes back; an answer over the bound on its
// own is served (the same bytes as a cached one) but not kept, and pushes nothing out.
TEST(DiscoverCacheTest, BoundedByBytesLeastRecentlyUsedFirst) {
  DiscoverCache cache({.max_bytes = 10'000});
  SnapshotPtr s = Snap(5, {Make("g1", "a", 4000), Make("g2", "b", 4000), Make("g3", "c", 4000),
                           Make("big", "d", 12'000)});
  cache.Get(s, "ep", {.group = "g1"});
  cache.Get(s, "ep", {.group = "g2"});
  EXPECT_EQ(cache.stats().entries, 2u);
  EXPECT_GT(cache.stats().bytes, 8'000u);
  cache.Get(s, "ep", {.group = "g1"});  // g1 recent, g2 oldest
  cache.Get(s, "ep", {.group = "g3"});  // 3 x 4 KB > 10 KB: evicts g2
  EXPECT_EQ(cache.stats().entries, 2u);
  EXPECT_EQ(cache.stats().evictions, 1u);
  EXPECT_NE(cache.Find(s, {.group = "g1"}), nullptr);
  EXPECT_EQ(cache.Find(s, {.group = "g2"}), nullptr);
  EXPECT_NE(cache.Find(s, {.group = "g3"}), nullptr);

  // A newer snapshot replaces g3's entry: its old bytes are given back, nothing else goes.
  SnapshotPtr s6 = Snap(6, {Make("g1", "a", 4000), Make("g3", "c", 4000)});
  cache.Get(s6, "ep", {.group = "g3"});
  EXPECT_EQ(cache.stats().entries, 2u);
  EXPECT_EQ(cache.stats().evictions, 1u);
  EXPECT_LE(cache.stats().bytes, 10'000u);

  auto big = cache.Get(s, "ep", {.group = "big"});
  ASSERT_NE(big, nullptr);
  EXPECT_GT(big->body->size(), 10'000u);
  EXPECT_NE(big->body->find("\"instanceId\":\"d\""), std::string::npos);
  EXPECT_EQ(cache.stats().too_large, 1u);
  EXPECT_EQ(cache.Find(s, {.group = "big"}), nullptr);
  EXPECT_EQ(cache.stats().entries, 2u);  // nothing pushed out for it
  EXPECT_EQ(cache.stats().evictions, 1u);
}

TEST(DiscoverCacheTest, GzipOnceAndNeverForTinyBodies) {
  DiscoverCache cache({});
  SnapshotPtr s = Snap(5, {Make("kr-1", "a", 4000), Make("kr-2", "b")});
  auto big = cache.Get(s, "ep", {.group = "kr-1"});
  auto tiny = cache.Get(s, "ep", {.group = "kr-2"});
  EXPECT_FALSE(big->gzip_ready());
  SharedBody z = big->Gzip();
  ASSERT_NE(z, nullptr);
  EXPECT_LT(z->size(), big->body->size());
  EXPECT_EQ(big->Gzip(), z);  // compressed once, then shared
  EXPECT_TRUE(big->gzip_ready());
  EXPECT_EQ(tiny->Gzip(), nullptr);
  EXPECT_TRUE(tiny->gzip_ready());
  EXPECT_EQ(cache.stats().gzip_encoded, 1u);
}

TEST(DiscoverCacheTest, IfNoneMatchAndAcceptEncoding) {
  DiscoverCache cache({});
  auto e = cache.Get(Snap(5, {Make("kr-1", "a")}), "ep", {});
  EXPECT_TRUE(e->Matches("\"ep-5\""));
  EXPECT_TRUE(e->Matches("W/\"ep-5\""));
  EXPECT_TRUE(e->Matches("\"x\", \"ep-5-gzip\""));
  EXPECT_TRUE(e->Matches("*"));
  EXPECT_FALSE(e->Matches("\"ep-4\""));
  EXPECT_FALSE(e->Matches("ep-5"));
  EXPECT_FALSE(e->Matches(""));
  EXPECT_TRUE(AcceptsGzip("gzip"));
  EXPECT_TRUE(AcceptsGzip("br, GZIP;q=0.5"));
  EXPECT_TRUE(AcceptsGzip("*"));
  EXPECT_FALSE(AcceptsGzip("gzip;q=0"));
  EXPECT_FALSE(AcceptsGzip("identity"));
  EXPECT_FALSE(AcceptsGzip("gzip;q=abc"));
  EXPECT_FALSE(AcceptsGzip(""));
}

}  // namespace
}  // namespace discoveryd
