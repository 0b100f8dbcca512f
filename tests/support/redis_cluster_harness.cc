#include "redis_cluster_harness.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "harness_util.h"

namespace discovery::testing {

absl::StatusOr<std::unique_ptr<RedisCluster>> RedisCluster::Start(int masters) {
  std::unique_ptr<RedisCluster> c(new RedisCluster());
  for (int i = 0; i < masters; ++i) {
    auto n = RedisServer::Start({.cluster = true});
    if (!n.ok()) return n.status();
    c->nodes_.push_back(*std::move(n));
  }
  std::vector<std::string> create = {"--cluster", "create"};
  for (auto& n : c->nodes_) create.push_back(absl::StrCat("127.0.0.1:", n->port()));
  create.insert(create.end(), {"--cluster-replicas", "0", "--cluster-yes"});
  auto out = c->nodes_[0]->Cli(create);
  if (!out.ok()) return out.status();
  // Every node agrees that the cluster is up (cluster_state:ok after the gossip settles).
  auto up = [&] {
    for (auto& n : c->nodes_) {
      auto info = n->Cli({"CLUSTER", "INFO"});
      if (!info.ok() || info->find("cluster_state:ok") == std::string::npos) return false;
    }
    return true;
  };
  if (!WaitUntil(up, absl::Seconds(20), absl::Milliseconds(100))) {
    return absl::DeadlineExceededError("redis cluster did not reach cluster_state:ok");
  }
  return c;
}

int RedisCluster::OwnerOfKey(const std::string& key) {
  auto slot = nodes_[0]->Cli({"CLUSTER", "KEYSLOT", key});
  int s = -1;
  if (!slot.ok() || !absl::SimpleAtoi(*slot, &s)) return -1;
  // Each node's CLUSTER NODES line marked `myself` ends with the slot ranges it serves.
  for (size_t i = 0; i < nodes_.size(); ++i) {
    auto nodes = nodes_[i]->Cli({"CLUSTER", "NODES"});
    if (!nodes.ok()) continue;
    for (absl::string_view line : absl::StrSplit(*nodes, '\n', absl::SkipEmpty())) {
      if (line.find("myself") == absl::string_view::npos) continue;
      std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
      for (size_t j = 8; j < f.size(); ++j) {
        std::vector<absl::string_view> range = absl::StrSplit(f[j], '-');
        int lo = 0, hi = 0;
        if (!absl::SimpleAtoi(range[0], &lo)) continue;
        hi = lo;
        if (range.size() > 1 && !absl::SimpleAtoi(range[1], &hi)) continue;
        if (s >= lo && s <= hi) return static_cast<int>(i);
      }
    }
  }
  return -1;
}

}  // namespace discovery::testing
