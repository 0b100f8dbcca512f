// The SSE fan-out's routing (label unit, no etcd): subscribers indexed by filter so an event
// visits only the ones it matches, frames serialised once and shared by every client, the
// revision's id on each client's last frame of it.
#include "fanout.h"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

namespace discoveryd {
namespace {

FanoutEntry Event(int64_t rev, const std::string& type, const std::string& group,
                  const std::string& body, const std::string& previous_group = "") {
  FanoutEntry e;
  e.revision = rev;
  e.type = type;
  e.group = group;
  e.previous_group = previous_group.empty() ? group : previous_group;
  e.frame = MakeShared("event: update\ndata: " + body + "\n\n");
  return e;
}

// 10,000 subscribers on other groups: an event for group g-0 visits only g-0's subscribers and
// the unfiltered / whole-type ones (the old hub checked every subscriber, under its lock).
TEST(SubscriberIndexTest, AnEventVisitsOnlyTheSubscribersItMatches) {
  SubscriberIndex index;
  uint64_t id = 1;
  for (int g = 1; g <= 1000; ++g) {
    for (int k = 0; k < 10; ++k) index.Add(id++, {"world", "g-" + std::to_string(g)});
  }
  std::set<uint64_t> want;
  for (int k = 0; k < 3; ++k) {
    want.insert(id);
    index.Add(id++, {"world", "g-0"});
  }
  want.insert(id);
  index.Add(id++, {});  // everything
  want.insert(id);
  index.Add(id++, {"world", ""});  // the whole type
  want.insert(id);
  index.Add(id++, {"", "g-0"});  // the group, any type
  index.Add(id++, {"lobby", ""});
  index.Add(id++, {"lobby", "g-0"});
  EXPECT_EQ(index.size(), 10008u);

  std::set<uint64_t> got;
  index.ForEachMatch(Event(5, "world", "g-0", "{}"), [&](uint64_t i) {
    EXPECT_TRUE(got.insert(i).second) << "visited twice: " << i;
  });
  EXPECT_EQ(got, want);
  EXPECT_EQ(index.match_checks(), want.size());

  // Removing drops them from the routing (and empty buckets go away).
  for (uint64_t i : want) {
    if (i == id - 5) index.Remove(i, {});
  }
  got.clear();
  index.ForEachMatch(Event(6, "world", "g-0", "{}"), [&](uint64_t i) { got.insert(i); });
  EXPECT_EQ(got.size(), want.size() - 1);
}

// A move between groups reaches the old group's subscribers (the instance left their view)
// and the new group's, each once.
TEST(SubscriberIndexTest, AGroupMoveReachesBothGroupsOnce) {
  SubscriberIndex index;
  index.Add(1, {"world", "a"});
  index.Add(2, {"world", "b"});
  index.Add(3, {"world", "c"});
  index.Add(4, {"", "a"});
  std::multiset<uint64_t> got;
  index.ForEachMatch(Event(9, "world", "b", "{}", "a"), [&](uint64_t i) { got.insert(i); });
  EXPECT_EQ(got, (std::multiset<uint64_t>{1, 2, 4}));
}

// One serialised buffer per frame, the same object in every client's queue (no per-client
// copy); the revision's id line shared too and placed before each client's last frame.
TEST(RouteRevisionTest, FramesAreSharedAndTheIdGoesOnEachClientsLastFrame) {
  SubscriberIndex index;
  for (uint64_t i = 1; i <= 1000; ++i) index.Add(i, {"world", "a"});
  index.Add(2001, {"world", "b"});
  index.Add(2002, {});
  std::vector<FanoutEntry> rev = {Event(7, "world", "a", "1"), Event(7, "world", "b", "2"),
                                  Event(7, "world", "a", "3")};
  SharedBytes id_line = MakeShared("id: E.7\n");
  std::map<uint64_t, std::vector<SharedBytes>> sent;
  RouteRevision(index, rev, id_line,
                [&](uint64_t id, std::vector<SharedBytes> frames) { sent[id] = frames; });
  ASSERT_EQ(sent.size(), 1002u);
  for (uint64_t i = 1; i <= 1000; ++i) {
    const auto& f = sent[i];
    ASSERT_EQ(f.size(), 3u);
    EXPECT_EQ(f[0].get(), rev[0].frame.get());  // the same bytes object, not a copy
    EXPECT_EQ(f[1].get(), id_line.get());
    EXPECT_EQ(f[2].get(), rev[2].frame.get());
  }
  EXPECT_EQ(sent[2001], (std::vector<SharedBytes>{id_line, rev[1].frame}));
  EXPECT_EQ(sent[2002],
            (std::vector<SharedBytes>{rev[0].frame, rev[1].frame, id_line, rev[2].frame}));
  // rev + 1000 "a" clients + the unfiltered one hold frame 0; nothing else was allocated.
  EXPECT_EQ(rev[0].frame.use_count(), 1 + 1000 + 1);
  EXPECT_EQ(id_line.use_count(), 1 + 1002);
  EXPECT_EQ(index.match_checks(), 1000u + 1 + 1 + 1 + 1000 + 1);

  // The common single-event revision.
  sent.clear();
  std::vector<FanoutEntry> one = {Event(8, "world", "b", "4")};
  RouteRevision(index, one, id_line,
                [&](uint64_t id, std::vector<SharedBytes> frames) { sent[id] = frames; });
  EXPECT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[2001], (std::vector<SharedBytes>{id_line, one[0].frame}));
}

}  // namespace
}  // namespace discoveryd
