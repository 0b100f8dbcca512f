// The Redis lease holder refreshes all leases of a process in one keepalive script call per
// tick (issue 17), however the leases were spread out when they were registered. Real
// redis-server; calls counted with INFO commandstats (no watcher runs, so the only scripts after
// CONFIG RESETSTAT are the holder's keepalives until a lease is re-registered).
#include <gtest/gtest.h>

#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "harness_util.h"
#include "lease_holder.h"
#include "lease_holder_redis.h"
#include "redis_harness.h"
#include "redis_test_util.h"
#include "store_backend.h"
#include "util/clock.h"

namespace discovery {
namespace {

using testing::RedisServer;
using testing::WaitUntil;

// Script calls (EVALSHA + EVAL) since the last CONFIG RESETSTAT; -1 when INFO is unreadable.
int64_t ScriptCalls(RedisServer& r) {
  auto info = r.Cli({"INFO", "commandstats"});
  if (!info.ok()) return -1;
  int64_t total = 0;
  for (absl::string_view line : absl::StrSplit(*info, absl::ByAnyChar("\r\n"), absl::SkipEmpty())) {
    if (!absl::StartsWith(line, "cmdstat_evalsha:calls=") &&
        !absl::StartsWith(line, "cmdstat_eval:calls=")) {
      continue;
    }
    absl::string_view v = line.substr(line.find('=') + 1);
    v = v.substr(0, v.find(','));
    int64_t n = 0;
    if (!absl::SimpleAtoi(v, &n)) return -1;
    total += n;
  }
  return total;
}

int64_t RedisNowMs(RedisServer& r) {
  auto t = r.Cli({"TIME"});
  if (!t.ok()) return -1;
  std::vector<std::string> parts = absl::StrSplit(*t, '\n', absl::SkipEmpty());
  int64_t s = 0, us = 0;
  if (parts.size() < 2 || !absl::SimpleAtoi(parts[0], &s) || !absl::SimpleAtoi(parts[1], &us)) {
    return -1;
  }
  return s * 1000 + us / 1000;
}

class RedisLeaseTickTest : public RedisTestBase {
 protected:
  void SetUp() override {
    auto r = RedisServer::Start({});
    ASSERT_TRUE(r.ok()) << r.status();
    redis_ = *std::move(r);
  }
  std::unique_ptr<RedisServer> redis_;
};

TEST_F(RedisLeaseTickTest, LeasesAddedOverAnIntervalAreRefreshedInOneCallPerInterval) {
  constexpr int kGroups = 10;
  constexpr int kPerGroup = 100;
  const absl::Duration ttl = absl::Seconds(6);
  const absl::Duration interval = absl::Seconds(2);
  auto conn = ConnectUrl(redis_->Url());
  ASSERT_NE(conn, nullptr);
  EventLog log;
  auto registrar = NewRegistrar(conn, &log);
  ASSERT_NE(registrar, nullptr);

  // 1,000 leases in 10 groups spread over one interval.
  std::vector<Registration> regs;
  const absl::Time t0 = util::MonoNow();
  for (int g = 0; g < kGroups; ++g) {
    const absl::Time start = t0 + interval * g / kGroups;
    WaitUntil([&] { return util::MonoNow() >= start; }, absl::Seconds(5), absl::Milliseconds(5));
    for (int i = 0; i < kPerGroup; ++i) {
      auto reg = registrar->Register(World(absl::StrCat("w-", g, "-", i)),
                                     {.ttl = ttl, .keepalive_interval = interval});
      ASSERT_TRUE(reg.ok()) << reg.status();
      regs.push_back(*std::move(reg));
    }
  }

  // Three intervals of keepalives: about one script call per interval for all 1,000 leases.
  ASSERT_TRUE(redis_->Cli({"CONFIG", "RESETSTAT"}).ok());
  const RedisLeaseCounters before = GetRedisLeaseCounters();
  const absl::Time counted_from = util::MonoNow();
  WaitUntil([&] { return util::MonoNow() - counted_from >= 3 * interval; }, absl::Seconds(30),
            absl::Milliseconds(20));
  const int64_t calls = ScriptCalls(*redis_);
  const RedisLeaseCounters after = GetRedisLeaseCounters();
  const absl::Duration elapsed = util::MonoNow() - counted_from;
  const int64_t intervals = absl::Ceil(elapsed, interval) / interval;
  std::cout << "keepalive script calls: " << calls << " in " << elapsed << "\n";
  EXPECT_GE(calls, 2) << "no keepalives at all?";
  EXPECT_LE(calls, intervals + 2) << "keepalive script calls in " << elapsed;
  // The holder's own counters agree (a call in flight at either end may differ by one).
  EXPECT_LE(after.bursts - before.bursts, static_cast<uint64_t>(intervals + 2));
  EXPECT_NEAR(static_cast<double>(after.calls - before.calls), static_cast<double>(calls), 1.0);

  // Every lease is alive: its deadline lies in the future by Redis' clock.
  const int64_t now_ms = RedisNowMs(*redis_);
  ASSERT_GT(now_ms, 0);
  auto live = redis_->Cli({"ZCOUNT", "{sd}:dl", absl::StrCat(now_ms), "+inf"});
  ASSERT_TRUE(live.ok()) << live.status();
  EXPECT_EQ(std::string(absl::StripAsciiWhitespace(*live)), absl::StrCat(kGroups * kPerGroup));
  EXPECT_EQ(log.Count(RegistrationEventType::kLeaseLost), 0);
  EXPECT_EQ(log.Count(RegistrationEventType::kLeaseAtRisk), 0);

  // A lease revoked behind the holder's back (another process, as `etcdctl lease revoke`) is
  // reported gone and re-registered.
  const int64_t old_lease = regs[kPerGroup * 5 + 7].lease_id();
  auto other = ConnectUrl(redis_->Url());
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(other->backend()->NewLeaseHolder()->Revoke(old_lease).ok());
  EXPECT_TRUE(WaitUntil([&] { return log.Count(RegistrationEventType::kReRegistered) >= 1; },
                        3 * interval));
  EXPECT_EQ(log.Count(RegistrationEventType::kLeaseLost), 1);
  EXPECT_EQ(GetRedisLeaseCounters().lost - before.lost, 1u);
  EXPECT_NE(regs[kPerGroup * 5 + 7].lease_id(), old_lease);
  auto score = redis_->Cli({"ZSCORE", "{sd}:dl", absl::StrCat(regs[kPerGroup * 5 + 7].lease_id())});
  ASSERT_TRUE(score.ok());
  EXPECT_FALSE(absl::StripAsciiWhitespace(*score).empty());
}

}  // namespace
}  // namespace discovery
