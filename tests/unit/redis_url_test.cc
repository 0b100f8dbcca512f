// redis://[user:pass@]host:port[/db] parsing of the Redis backend (src/redis/client.h).
#include <gtest/gtest.h>

#include "redis/client.h"

namespace discovery::redis {
namespace {

TEST(RedisUrlTest, ParsesEveryPart) {
  auto u = ParseUrl("redis://game:s3cr:et@10.0.0.7:6380/2");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->user, "game");
  EXPECT_EQ(u->password, "s3cr:et");
  EXPECT_EQ(u->host, "10.0.0.7");
  EXPECT_EQ(u->port, 6380);
  EXPECT_EQ(u->db, 2);
}

TEST(RedisUrlTest, DefaultsAndPasswordOnly) {
  auto u = ParseUrl("redis://localhost");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->port, 6379);
  EXPECT_EQ(u->db, 0);
  EXPECT_TRUE(u->user.empty());
  auto p = ParseUrl("redis://:pw@h:1");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->user, "");
  EXPECT_EQ(p->password, "pw");
  EXPECT_EQ(p->port, 1);
}

TEST(RedisUrlTest, BadInputIsAClearError) {
  for (const char* bad : {"http://h:1", "redis://", "redis://h:0", "redis://h:99999", "redis://h:x",
                          "redis://h:1/-1", "redis://h:1/db", "redis://:1"}) {
    auto u = ParseUrl(bad);
    EXPECT_EQ(u.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(u.status().message().find("redis URL"), std::string::npos) << bad;
  }
}

}  // namespace
}  // namespace discovery::redis
