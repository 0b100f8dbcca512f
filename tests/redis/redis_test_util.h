// Shared by the Redis backend tests (redis_backend_test, redis_history_test,
// redis_failover_test): a sample instance, a registration event log, and a fixture base that
// connects Registrars and Watchers to a Redis URL.
#ifndef DISCOVERY_TESTS_REDIS_REDIS_TEST_UTIL_H_
#define DISCOVERY_TESTS_REDIS_REDIS_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "discovery/redis.h"
#include "discovery/registrar.h"
#include "discovery/watcher.h"
#include "harness_util.h"
#include "redis_harness.h"
#include "registration_event_log.h"

namespace discovery {

inline Instance World(const std::string& id) {
  Instance in;
  in.instance_id = id;
  in.type = "world";
  in.group = "kr-1";
  in.hostname = "game-01";
  in.private_ip = "10.0.0.5";
  in.ports = {{"game", 8001}};
  in.version = "1.4.2";
  return in;
}

using EventLog = ::discovery::testing::RegistrationEventLog;

class RedisTestBase : public ::testing::Test {
 protected:
  std::shared_ptr<Connection> ConnectUrl(const std::string& url,
                                         absl::Duration grace = absl::Seconds(3)) {
    RedisOptions o;
    o.url = url;
    o.call_timeout = testing::TimeScale(absl::Seconds(2));
    o.reaper_grace = grace;
    auto c = ConnectRedis(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : nullptr;
  }
  std::unique_ptr<Registrar> NewRegistrar(std::shared_ptr<Connection> conn, EventLog* log) {
    auto r = Registrar::Create({.connection = conn, .on_event = log->Callback()});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *std::move(r) : nullptr;
  }
  std::unique_ptr<Watcher> NewWatcher(std::shared_ptr<Connection> conn) {
    auto w = Watcher::Create({.connection = conn});
    EXPECT_TRUE(w.ok()) << w.status();
    if (!w.ok()) return nullptr;
    EXPECT_TRUE((*w)->WaitForSync(testing::TimeScale(absl::Seconds(10))).ok());
    return *std::move(w);
  }
  static bool Visible(Watcher& w, const std::string& id) {
    return w.snapshot()->Find("world", id) != nullptr;
  }
  // The ids of the "world" instances in a watcher's cache / in a server's {sd}:inst.
  static std::set<std::string> CacheIds(Watcher& w) {
    std::set<std::string> ids;
    for (const auto& in : w.snapshot()->OfType("world")) ids.insert(in->instance_id);
    return ids;
  }
  static std::set<std::string> StoreIds(testing::RedisServer& r) {
    std::set<std::string> ids;
    auto keys = r.Cli({"HKEYS", "{sd}:inst"});
    if (!keys.ok()) return ids;
    for (absl::string_view k : absl::StrSplit(*keys, '\n', absl::SkipEmpty())) {
      ids.insert(std::string(k.substr(k.rfind('/') + 1)));
    }
    return ids;
  }
};

}  // namespace discovery

#endif  // DISCOVERY_TESTS_REDIS_REDIS_TEST_UTIL_H_
