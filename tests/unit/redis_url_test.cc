// redis://[user:pass@]host:port[/db] and
// redis+sentinel://[user:pass@]host:port[,host:port...]/<master-name>[/db] parsing of the Redis
// backend (src/redis/client.h).
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

TEST(RedisUrlTest, SentinelUrlListsTheSentinelsAndTheMasterName) {
  auto u = ParseUrl("redis+sentinel://game:pw@10.0.0.1:26379,10.0.0.2,10.0.0.3:26380/mymaster/3");
  ASSERT_TRUE(u.ok()) << u.status();
  ASSERT_EQ(u->sentinels.size(), 3u);
  EXPECT_EQ(u->sentinels[0], std::make_pair(std::string("10.0.0.1"), 26379));
  EXPECT_EQ(u->sentinels[1], std::make_pair(std::string("10.0.0.2"), 26379));  // default port
  EXPECT_EQ(u->sentinels[2], std::make_pair(std::string("10.0.0.3"), 26380));
  EXPECT_EQ(u->master_name, "mymaster");
  EXPECT_EQ(u->db, 3);
  EXPECT_EQ(u->user, "game");
  EXPECT_EQ(u->password, "pw");
  EXPECT_TRUE(u->host.empty());  // found by asking the sentinels
  auto one = ParseUrl("redis+sentinel://s:26379/m");
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->sentinels.size(), 1u);
  EXPECT_EQ(one->master_name, "m");
  EXPECT_EQ(one->db, 0);
  // A plain URL has no sentinels.
  EXPECT_TRUE(ParseUrl("redis://h:1")->sentinels.empty());
}

TEST(RedisUrlTest, BadSentinelUrlIsAClearError) {
  for (const char* bad :
       {"redis+sentinel://h:26379", "redis+sentinel://h:26379/", "redis+sentinel://h:1,,h:2/m",
        "redis+sentinel://h:0/m", "redis+sentinel://h:x/m", "redis+sentinel:///m",
        "redis+sentinel://h:1/m/x", "redis+sentinel://h:1/m/-2", "redis+sentinel://h:1/my master",
        "sentinel://h:1/m"}) {
    auto u = ParseUrl(bad);
    EXPECT_EQ(u.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(u.status().message().find("redis URL"), std::string::npos) << bad;
  }
}

}  // namespace
}  // namespace discovery::redis
