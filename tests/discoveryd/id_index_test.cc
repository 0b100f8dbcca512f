// IdIndex (tools/discoveryd/id_index.h) in-process, no etcd: the REST calls' instanceId -> type
// lookup, fed by change events, checked against a model after random adds, updates and removals.
#include "id_index.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "discovery/instance.h"

namespace discoveryd {
namespace {

using discovery::ChangeEvent;
using discovery::ChangeType;
using discovery::Instance;
using discovery::InstancePtr;

InstancePtr Make(const std::string& type, const std::string& id, int load) {
  auto in = std::make_shared<Instance>();
  in->type = type;
  in->instance_id = id;
  in->group = "g";
  in->performance = {{"load", load}};
  return in;
}

ChangeEvent Event(ChangeType type, InstancePtr in, InstancePtr previous = nullptr) {
  ChangeEvent ev;
  ev.type = type;
  ev.instance = std::move(in);
  ev.previous = std::move(previous);
  return ev;
}

TEST(IdIndex, FindsTheTypesOfAnIdAndForgetsRemovedOnes) {
  IdIndex ids;
  EXPECT_TRUE(ids.TypesOf("a").empty());
  InstancePtr world = Make("world", "a", 1);
  ids.Apply(Event(ChangeType::kAdded, world));
  EXPECT_EQ(ids.TypesOf("a"), std::vector<std::string>{"world"});
  ids.Apply(Event(ChangeType::kAdded, Make("lobby", "a", 1)));
  EXPECT_EQ(ids.TypesOf("a"), (std::vector<std::string>{"lobby", "world"}));  // sorted
  EXPECT_EQ(ids.size(), 2u);
  // An update replaces the slot of its type (no second slot).
  ids.Apply(Event(ChangeType::kUpdated, Make("world", "a", 2), world));
  EXPECT_EQ(ids.size(), 2u);
  ids.Apply(Event(ChangeType::kRemoved, Make("lobby", "a", 1)));
  EXPECT_EQ(ids.TypesOf("a"), std::vector<std::string>{"world"});
  // Removing what is not there changes nothing.
  ids.Apply(Event(ChangeType::kRemoved, Make("lobby", "a", 1)));
  ids.Apply(Event(ChangeType::kRemoved, Make("world", "zz", 1)));
  EXPECT_EQ(ids.size(), 1u);
  ids.Apply(Event(ChangeType::kRemoved, world));
  EXPECT_TRUE(ids.TypesOf("a").empty());
  EXPECT_EQ(ids.size(), 0u);
  EXPECT_TRUE(ids.TypesOf("").empty());
}

TEST(IdIndex, EqualsAModelAfterRandomChanges) {
  IdIndex ids;
  std::map<std::pair<std::string, std::string>, InstancePtr> model;  // (type, id) -> instance
  std::mt19937 rng(14);
  const std::vector<std::string> types = {"world", "lobby", "match"};
  for (int round = 0; round < 20000; ++round) {
    const std::string type = types[rng() % types.size()];
    const std::string id = "id-" + std::to_string(rng() % 200);
    auto it = model.find({type, id});
    if (it == model.end()) {
      InstancePtr in = Make(type, id, round);
      model[{type, id}] = in;
      ids.Apply(Event(ChangeType::kAdded, in));
    } else if (rng() % 2 == 0) {
      InstancePtr next = Make(type, id, round);
      ids.Apply(Event(ChangeType::kUpdated, next, it->second));
      it->second = next;
    } else {
      ids.Apply(Event(ChangeType::kRemoved, it->second));
      model.erase(it);
    }
  }
  ASSERT_EQ(ids.size(), model.size());
  for (int i = 0; i < 200; ++i) {
    const std::string id = "id-" + std::to_string(i);
    std::vector<std::string> want;
    for (const std::string& t : std::set<std::string>(types.begin(), types.end())) {
      if (model.count({t, id}) != 0) want.push_back(t);
    }
    EXPECT_EQ(ids.TypesOf(id), want) << id;
  }
}

}  // namespace
}  // namespace discoveryd
