// A Redis Cluster for tests: N masters (redis-server --cluster-enabled yes, no replicas) on
// free loopback ports, data on tmpfs, joined with `redis-cli --cluster create`; stopped by PID.
//
//   auto c = RedisCluster::Start(3);
//   int owner = (*c)->OwnerOfKey("{sd}");   // the node serving that key's slot
#ifndef DISCOVERY_TESTS_SUPPORT_REDIS_CLUSTER_HARNESS_H_
#define DISCOVERY_TESTS_SUPPORT_REDIS_CLUSTER_HARNESS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "redis_harness.h"

namespace discovery::testing {

class RedisCluster {
 public:
  static absl::StatusOr<std::unique_ptr<RedisCluster>> Start(int masters);

  RedisServer& node(size_t i) { return *nodes_[i]; }
  size_t nodes() const { return nodes_.size(); }
  // The index of the node that serves `key`'s slot (-1 when unknown).
  int OwnerOfKey(const std::string& key);

 private:
  RedisCluster() = default;
  std::vector<std::unique_ptr<RedisServer>> nodes_;
};

}  // namespace discovery::testing

#endif  // DISCOVERY_TESTS_SUPPORT_REDIS_CLUSTER_HARNESS_H_
