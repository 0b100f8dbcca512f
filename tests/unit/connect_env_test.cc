// ConnectTo / ConnectFromEnv: the transport is chosen by configuration only, and a bad choice
// is a clear kInvalidArgument, never a silent fallback to the default etcd.
#include <cstdlib>

#include "discovery/etcd.h"
#include "gtest/gtest.h"

namespace discovery {
namespace {

TEST(ConnectToTest, BadChoicesAreInvalidArgument) {
  auto both = ConnectTo("http://127.0.0.1:8080", "redis://127.0.0.1:6379");
  ASSERT_FALSE(both.ok());
  EXPECT_EQ(both.status().code(), absl::StatusCode::kInvalidArgument) << both.status();
  auto scheme = ConnectTo("", "mysql://127.0.0.1:3306");
  ASSERT_FALSE(scheme.ok());
  EXPECT_EQ(scheme.status().code(), absl::StatusCode::kInvalidArgument) << scheme.status();
  EXPECT_NE(scheme.status().message().find("redis://"), std::string::npos) << scheme.status();
}

TEST(ConnectToTest, EachTransportGivesItsBackend) {
  // None of these contacts its store at creation.
  auto etcd = ConnectTo("", "etcd://127.0.0.1:1,127.0.0.1:2");
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  EXPECT_NE((*etcd)->client(), nullptr);
  auto gateway = ConnectTo("http://127.0.0.1:1", "");
  ASSERT_TRUE(gateway.ok()) << gateway.status();
  EXPECT_EQ((*gateway)->client(), nullptr);  // not etcd
  auto sentinel = ConnectTo("", "redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster");
  ASSERT_TRUE(sentinel.ok()) << sentinel.status();
  EXPECT_EQ((*sentinel)->client(), nullptr);  // Redis, not etcd
}

TEST(ConnectToTest, FromEnvReadsTheSameVariables) {
  ::setenv("DISCOVERY_GATEWAY", "http://127.0.0.1:1", 1);
  ::setenv("DISCOVERY_STORE", "redis://127.0.0.1:1", 1);
  auto both = ConnectFromEnv();
  EXPECT_EQ(both.status().code(), absl::StatusCode::kInvalidArgument) << both.status();
  ::unsetenv("DISCOVERY_GATEWAY");
  ::unsetenv("DISCOVERY_STORE");
  ::setenv("ETCD_ENDPOINTS", "http://127.0.0.1:1", 1);
  auto etcd = ConnectFromEnv();
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  EXPECT_NE((*etcd)->client(), nullptr);
  ::unsetenv("ETCD_ENDPOINTS");
}

}  // namespace
}  // namespace discovery
