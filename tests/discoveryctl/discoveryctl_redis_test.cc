// discoveryctl --store redis:// (issue 17, label redis): the built binary against a real
// redis-server from tests/support: register, list (table and json), get, watch, set-status,
// deregister; the same table and JSON shape as over etcd (what only etcd knows, the lease's TTL
// left, is "-" / null); exit 3 within --timeout when Redis does not answer.
#include <gtest/gtest.h>

#include <csignal>

#include "absl/strings/str_cat.h"
#include "ctl_runner.h"
#include "harness_util.h"
#include "redis_harness.h"

namespace discovery::testing {
namespace {

using json = nlohmann::json;

class DiscoveryctlRedisTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = RedisServer::Start({});
    ASSERT_TRUE(r.ok()) << r.status();
    redis_ = *std::move(r);
    ctl_ = std::make_unique<CtlRunner>(std::vector<std::string>{"--store", redis_->Url()});
  }

  std::unique_ptr<RedisServer> redis_;
  std::unique_ptr<CtlRunner> ctl_;
};

TEST_F(DiscoveryctlRedisTest, CommandsOverRedisPrintTheEtcdShapes) {
  auto [reg, id] = ctl_->Register("r-1");
  ASSERT_NE(reg, nullptr);
  ASSERT_EQ(id, "r-1");
  auto [reg2, id2] = ctl_->Register("r-2", "kr-2");
  ASSERT_NE(reg2, nullptr);

  CtlResult table = ctl_->Run({"list"});
  ASSERT_EQ(table.code, 0) << table.err;
  EXPECT_TRUE(table.err.empty()) << table.err;  // no library log lines: stderr is for errors
  std::vector<std::string> lines = TableLines(table.out);
  ASSERT_EQ(lines.size(), 3u) << table.out;
  EXPECT_EQ(TableCells(lines[0]),
            (std::vector<std::string>{"TYPE", "GROUP", "ID", "ADDRESS", "PORTS", "STATUS",
                                      "CUSTOM-STATE", "VERSION", "TTL", "AGE"}));
  EXPECT_EQ(TableCells(lines[1]).size(), 10u) << lines[1];
  std::vector<std::string> row = TableCells(lines[1]);
  ASSERT_GE(row.size(), 9u);
  EXPECT_EQ((std::vector<std::string>(row.begin(), row.begin() + 9)),
            (std::vector<std::string>{"world", "kr-1", "r-1", "10.0.0.5", "game=7001,grpc=50051",
                                      "ready", "-", "1.4.2", "-"}));

  CtlResult list = ctl_->Run({"list", "-o", "json", "--group", "kr-1"});
  ASSERT_EQ(list.code, 0) << list.err;
  json array = json::parse(list.out);
  ASSERT_EQ(array.size(), 1u);
  EXPECT_EQ(array[0]["instanceId"], "r-1");
  EXPECT_EQ(array[0]["ports"]["grpc"], 50051);
  EXPECT_EQ(array[0]["meta"]["map"], "forest");
  EXPECT_EQ(json::parse(ctl_->Run({"list", "-o", "json", "--status", "error"}).out).size(), 0u);

  CtlResult get = ctl_->Run({"get", "world", "r-1"});
  ASSERT_EQ(get.code, 0) << get.err;
  json one = json::parse(get.out);
  EXPECT_EQ(one["instanceId"], "r-1");
  EXPECT_EQ(one["status"], "ready");
  EXPECT_TRUE(one["leaseId"].is_string()) << get.out;
  EXPECT_TRUE(one["leaseTtlSeconds"].is_null()) << get.out;
  EXPECT_EQ(ctl_->Run({"get", "world", "NO-SUCH"}).code, 2);

  auto watch = ctl_->Start({"watch", "--initial", "--group", "kr-1"});
  ASSERT_NE(watch, nullptr);
  auto added = NextWatchLine(*watch, absl::Seconds(10));
  ASSERT_TRUE(added.has_value()) << watch->ReadStderr();
  EXPECT_EQ((*added)["event"], "added");
  EXPECT_EQ((*added)["instance"]["instanceId"], "r-1");

  CtlResult set = ctl_->Run({"set-status", "world", "r-1", "error", "--custom-state", "maint"});
  ASSERT_EQ(set.code, 0) << set.err;
  EXPECT_TRUE(absl::StrContains(set.out, "ready -> error")) << set.out;
  auto changed = NextWatchLine(*watch, absl::Seconds(10));
  ASSERT_TRUE(changed.has_value());
  EXPECT_EQ((*changed)["event"], "status_changed");
  EXPECT_EQ((*changed)["instance"]["status"], "error");
  EXPECT_EQ((*changed)["instance"]["customState"], "maint");
  json after = json::parse(ctl_->Run({"get", "world", "r-1"}).out);
  EXPECT_EQ(after["leaseId"], one["leaseId"]);  // the lease kept
  EXPECT_EQ(ctl_->Run({"set-status", "world", "r-1", "initializing"}).code, 1);
  EXPECT_EQ(ctl_->Run({"set-status", "world", "NO-SUCH", "ready"}).code, 2);

  // deregister (its registrar killed first, or it would re-register once its lease is revoked).
  ASSERT_TRUE(reg2->Signal(SIGKILL).ok());
  (void)reg2->Wait(absl::Seconds(5));
  CtlResult dereg = ctl_->Run({"deregister", "world", "r-2"});
  ASSERT_EQ(dereg.code, 0) << dereg.err;
  EXPECT_TRUE(absl::StrContains(dereg.out, "revoked")) << dereg.out;
  EXPECT_EQ(ctl_->Run({"get", "world", "r-2"}).code, 2);
  EXPECT_EQ(ctl_->Run({"deregister", "world", "r-2"}).code, 2);

  // SIGTERM on the registering process: shutting_down, then removed at once.
  ASSERT_TRUE(reg->Signal(SIGTERM).ok());
  EXPECT_EQ(reg->Wait(absl::Seconds(10)).value_or(-1), 0) << reg->ReadStderr();
  auto down = NextWatchLine(*watch, absl::Seconds(10));
  ASSERT_TRUE(down.has_value());
  EXPECT_EQ((*down)["instance"]["status"], "shutting_down");
  auto removed = NextWatchLine(*watch, absl::Seconds(10));
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ((*removed)["event"], "removed");
  EXPECT_EQ(ctl_->Run({"get", "world", "r-1"}).code, 2);
  ASSERT_TRUE(watch->Signal(SIGINT).ok());
  EXPECT_EQ(watch->Wait(absl::Seconds(5)).value_or(-1), 0);
}

// Redis stopped (nothing listening) and Redis frozen (SIGSTOP: the port accepts, nothing
// answers): exit 3 within the timeout, naming Redis but never its password.
TEST_F(DiscoveryctlRedisTest, UnreachableRedisExitsWith3WithinTheTimeout) {
  const std::string url = absl::StrCat("redis://user:s3cret@127.0.0.1:", redis_->port());
  for (bool frozen : {true, false}) {
    if (frozen) {
      ASSERT_TRUE(redis_->Pause().ok());
    } else {
      ASSERT_TRUE(redis_->Resume().ok());
      ASSERT_TRUE(redis_->Stop().ok());
    }
    for (const std::vector<std::string>& args : {std::vector<std::string>{"list"},
                                                 {"get", "world", "x"},
                                                 {"watch"},
                                                 {"set-status", "world", "x", "ready"},
                                                 {"deregister", "world", "x"}}) {
      CtlRunner down({"--store", url, "--timeout", "1"});
      CtlResult r = down.Run(args);
      EXPECT_EQ(r.code, 3) << (frozen ? "frozen " : "stopped ") << args[0] << ": " << r.err;
      EXPECT_TRUE(absl::StrContains(r.err, "redis unreachable at 127.0.0.1:")) << r.err;
      EXPECT_FALSE(absl::StrContains(r.err, "s3cret")) << r.err;
      EXPECT_LT(r.took, absl::Seconds(4)) << args[0];
    }
  }
}

TEST_F(DiscoveryctlRedisTest, StoreAndEndpointsTogetherAreAUsageError) {
  CtlRunner both({"--store", redis_->Url(), "--endpoints", "http://127.0.0.1:2379"});
  CtlResult r = both.Run({"list"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "alternatives")) << r.err;
}

}  // namespace
}  // namespace discovery::testing
