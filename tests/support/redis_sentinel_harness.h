// A Redis Sentinel group for tests: one master, N replicas and S sentinels (redis-server
// --sentinel, quorum 2, down-after 1 s), each a RedisServer on a free loopback port with its
// data on tmpfs, stopped by PID. Start() returns once the replicas are in sync and every
// sentinel knows the replicas and the other sentinels.
//
//   auto g = RedisSentinelGroup::Start(1, 3);
//   std::string url = (*g)->Url();  // redis+sentinel://127.0.0.1:a,127.0.0.1:b,.../mymaster
#ifndef DISCOVERY_TESTS_SUPPORT_REDIS_SENTINEL_HARNESS_H_
#define DISCOVERY_TESTS_SUPPORT_REDIS_SENTINEL_HARNESS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "redis_harness.h"

namespace discovery::testing {

class RedisSentinelGroup {
 public:
  static constexpr const char* kMasterName = "mymaster";
  static absl::StatusOr<std::unique_ptr<RedisSentinelGroup>> Start(int replicas, int sentinels);

  std::string Url() const;
  // Data nodes: [0] is the first master, then the replicas.
  RedisServer& node(size_t i) { return *nodes_[i]; }
  size_t nodes() const { return nodes_.size(); }
  RedisServer& sentinel(size_t i) { return *sentinels_[i]; }
  // The master's port as sentinel `i` names it.
  absl::StatusOr<int> MasterPort(size_t i = 0);
  // The data node on `port` (nullptr when none).
  RedisServer* NodeOnPort(int port);

 private:
  RedisSentinelGroup() = default;
  std::vector<std::unique_ptr<RedisServer>> nodes_;
  std::vector<std::unique_ptr<RedisServer>> sentinels_;
};

// The value after `field` in a redis-cli reply of alternating field/value lines ("" if none).
std::string CliField(const std::string& reply, const std::string& field);

}  // namespace discovery::testing

#endif  // DISCOVERY_TESTS_SUPPORT_REDIS_SENTINEL_HARNESS_H_
