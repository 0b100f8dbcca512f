// discoveryd --store (env DISCOVERY_STORE): etcd:// is --endpoints by another name; redis:// (and
// redis+sentinel://) selects the Redis store (the end-to-end tests on Redis are in
// redis_store_test.cc); --store with --endpoints, another scheme or a malformed Redis URL is a
// usage error with the reason.
#include "store_flag.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"

namespace discoveryd {
namespace {

TEST(StoreFlagTest, EtcdUrlSetsTheEndpoints) {
  std::optional<discovery::RedisOptions> redis;
  discovery::EtcdOptions etcd;
  ASSERT_TRUE(
      ApplyStoreUrl({.store_flag = "etcd://10.0.0.1:2379,10.0.0.2:2379"}, &etcd, &redis).ok());
  EXPECT_EQ(etcd.endpoints,
            (std::vector<std::string>{"http://10.0.0.1:2379", "http://10.0.0.2:2379"}));
  discovery::EtcdOptions untouched;
  ASSERT_TRUE(ApplyStoreUrl({.endpoints_flag = true}, &untouched, &redis).ok());
  EXPECT_EQ(untouched.endpoints, discovery::EtcdOptions().endpoints);
  // --endpoints wins over DISCOVERY_STORE; --store wins over ETCD_ENDPOINTS.
  ASSERT_TRUE(
      ApplyStoreUrl({.store_env = "redis://r:1", .endpoints_flag = true}, &untouched, &redis).ok());
  EXPECT_EQ(untouched.endpoints, discovery::EtcdOptions().endpoints);
  discovery::EtcdOptions flag_wins;
  ASSERT_TRUE(
      ApplyStoreUrl({.store_flag = "etcd://s:1", .endpoints_env = true}, &flag_wins, &redis).ok());
  EXPECT_EQ(flag_wins.endpoints, std::vector<std::string>{"http://s:1"});
  EXPECT_FALSE(redis.has_value());
}

TEST(StoreFlagTest, RedisUrlSelectsRedis) {
  for (const char* url :
       {"redis://127.0.0.1:6379/2", "redis+sentinel://127.0.0.1:26379/mymaster"}) {
    discovery::EtcdOptions etcd;
    std::optional<discovery::RedisOptions> redis;
    ASSERT_TRUE(ApplyStoreUrl({.store_flag = url}, &etcd, &redis).ok()) << url;
    ASSERT_TRUE(redis.has_value()) << url;
    EXPECT_EQ(redis->url, url);
    EXPECT_EQ(redis->ns, "sd");
    EXPECT_EQ(etcd.endpoints, discovery::EtcdOptions().endpoints);
  }
  discovery::EtcdOptions etcd;
  std::optional<discovery::RedisOptions> from_env;
  ASSERT_TRUE(ApplyStoreUrl({.store_env = "redis://r:1"}, &etcd, &from_env).ok());
  EXPECT_TRUE(from_env.has_value());
}

TEST(StoreFlagTest, BadUrlsAreRefusedWithTheReason) {
  discovery::EtcdOptions etcd;
  std::optional<discovery::RedisOptions> redis;
  absl::Status bad = ApplyStoreUrl({.store_flag = "redis://host:notaport"}, &etcd, &redis);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument) << bad;
  EXPECT_TRUE(absl::StrContains(bad.message(), "redis://host:notaport")) << bad;
  EXPECT_FALSE(redis.has_value());
  EXPECT_EQ(
      ApplyStoreUrl({.store_flag = "etcd://h:1", .endpoints_flag = true}, &etcd, &redis).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ApplyStoreUrl({.store_env = "etcd://h:1", .endpoints_env = true}, &etcd, &redis).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ApplyStoreUrl({.store_flag = "ftp://h:1"}, &etcd, &redis).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ApplyStoreUrl({.store_flag = "etcd://"}, &etcd, &redis).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace discoveryd
