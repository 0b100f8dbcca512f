// discoveryd --store (env DISCOVERY_STORE): etcd:// is --endpoints by another name; redis:// is
// refused at start-up with the reason (discoveryd's epochs, REST and lease API still use the etcd
// client directly), never run half-broken; --store with --endpoints is a usage error.
#include "store_flag.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "child_process.h"

namespace discoveryd {
namespace {

using discovery::testing::ChildProcess;

TEST(StoreFlagTest, EtcdUrlSetsTheEndpoints) {
  discovery::EtcdOptions etcd;
  ASSERT_TRUE(ApplyStoreUrl({.store_flag = "etcd://10.0.0.1:2379,10.0.0.2:2379"}, &etcd).ok());
  EXPECT_EQ(etcd.endpoints,
            (std::vector<std::string>{"http://10.0.0.1:2379", "http://10.0.0.2:2379"}));
  discovery::EtcdOptions untouched;
  ASSERT_TRUE(ApplyStoreUrl({.endpoints_flag = true}, &untouched).ok());
  EXPECT_EQ(untouched.endpoints, discovery::EtcdOptions().endpoints);
  // --endpoints wins over DISCOVERY_STORE; --store wins over ETCD_ENDPOINTS.
  ASSERT_TRUE(ApplyStoreUrl({.store_env = "redis://r:1", .endpoints_flag = true}, &untouched).ok());
  EXPECT_EQ(untouched.endpoints, discovery::EtcdOptions().endpoints);
  discovery::EtcdOptions flag_wins;
  ASSERT_TRUE(ApplyStoreUrl({.store_flag = "etcd://s:1", .endpoints_env = true}, &flag_wins).ok());
  EXPECT_EQ(flag_wins.endpoints, std::vector<std::string>{"http://s:1"});
}

TEST(StoreFlagTest, RedisAndBadUrlsAreRefusedWithTheReason) {
  discovery::EtcdOptions etcd;
  absl::Status redis = ApplyStoreUrl({.store_flag = "redis://127.0.0.1:6379"}, &etcd);
  EXPECT_EQ(redis.code(), absl::StatusCode::kUnimplemented) << redis;
  EXPECT_TRUE(absl::StrContains(redis.message(), "does not run on Redis")) << redis;
  EXPECT_EQ(ApplyStoreUrl({.store_flag = "etcd://h:1", .endpoints_flag = true}, &etcd).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ApplyStoreUrl({.store_env = "etcd://h:1", .endpoints_env = true}, &etcd).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ApplyStoreUrl({.store_flag = "ftp://h:1"}, &etcd).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ApplyStoreUrl({.store_flag = "etcd://"}, &etcd).code(),
            absl::StatusCode::kInvalidArgument);
}

// The binary: refuses to start on Redis (exit 2, one clear line), from the flag and from the
// environment, before it listens.
TEST(StoreFlagTest, DiscoverydRefusesRedisAtStartUp) {
  for (bool from_env : {false, true}) {
    std::vector<std::string> argv = {DISCOVERYD, "--listen", "127.0.0.1:0"};
    std::vector<std::pair<std::string, std::string>> env;
    if (from_env) {
      env.emplace_back("DISCOVERY_STORE", "redis://127.0.0.1:1");
    } else {
      argv.insert(argv.end(), {"--store", "redis://127.0.0.1:1"});
    }
    auto proc = ChildProcess::Spawn(
        {.argv = argv, .env = env, .unset_env_prefixes = {"ETCD_", "DISCOVERY_"}});
    ASSERT_TRUE(proc.ok()) << proc.status();
    auto code = (*proc)->Wait(absl::Seconds(10));
    ASSERT_TRUE(code.ok()) << code.status();
    EXPECT_EQ(*code, 2) << (*proc)->ReadStderr();
    EXPECT_TRUE(absl::StrContains((*proc)->ReadStderr(), "does not run on Redis"))
        << (*proc)->ReadStderr();
    EXPECT_FALSE(absl::StrContains((*proc)->ReadStderr(), "serving")) << (*proc)->ReadStderr();
  }
}

}  // namespace
}  // namespace discoveryd
