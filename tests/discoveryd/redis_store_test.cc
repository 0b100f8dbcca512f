// discoveryd on Redis (issue 17, label redis): `discoveryd --store redis://...` against a real
// redis-server from tests/support serves what it serves on etcd: REST writes land in Redis
// ({sd}:inst is the truth here), discover and SSE follow registrations and TTL expiry, a
// gateway-mode Registrar registers / heartbeats / re-registers through it, the SSE epoch
// changes (reset frame) when Redis loses its data, and /healthz follows Redis.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <regex>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "discovery/gateway_client.h"
#include "discovery/redis.h"
#include "discovery/registrar.h"
#include "gateway_fixture.h"
#include "lease_holder.h"
#include "redis_harness.h"
#include "store_backend.h"
#include "util/clock.h"

namespace discovery::testing {
namespace {

class DiscoverydRedisTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = RedisServer::Start({});
    ASSERT_TRUE(r.ok()) << r.status();
    redis_ = *std::move(r);
  }

  GatewayProc StartGateway(std::vector<std::string> extra = {}) {
    return SpawnGateway(redis_->Url(), std::move(extra));
  }
  // The value stored at `key` in Redis (null when absent).
  json Value(const std::string& key) {
    auto v = redis_->Cli({"HGET", "{sd}:inst", key});
    if (!v.ok() || v->empty()) return json();
    return json::parse(*v, nullptr, false);
  }
  bool KeyExists(const std::string& key) {
    auto v = redis_->Cli({"HEXISTS", "{sd}:inst", key});
    return v.ok() && *v == "1";
  }
  std::string Cli(const std::vector<std::string>& args) {
    auto v = redis_->Cli(args);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : "<error>";
  }
  // A lease id in hex (as the API answers it) -> the decimal member of {sd}:dl.
  static std::string LeaseDecimal(const json& hex) {
    return absl::StrCat(std::strtoll(hex.get<std::string>().c_str(), nullptr, 16));
  }
  std::shared_ptr<Connection> Direct() {
    RedisOptions o;
    o.url = redis_->Url();
    o.call_timeout = absl::Seconds(2);
    auto c = ConnectRedis(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : nullptr;
  }
  static std::string HealthEpoch(int port) {
    auto h = Http(port, "GET", "/healthz");
    if (!h.ok() || h->status != 200) return "";
    return h->Json().value("epoch", "");
  }

  std::unique_ptr<RedisServer> redis_;
};

TEST_F(DiscoverydRedisTest, RestWritesLandInRedisAndReadsAnswerAsOnEtcd) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  EXPECT_TRUE(absl::StrContains(gw.proc->ReadStderr(), "; redis redis://127.0.0.1:"))
      << gw.proc->ReadStderr();

  Response reg = Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody("").dump()));
  ASSERT_EQ(reg.status, 201) << reg.body;
  json r = reg.Json();
  const std::string id = r["instanceId"];
  EXPECT_EQ(r["ttlSeconds"], kWorldTtlSeconds);
  const std::string key = "/services/world/" + id;
  json stored = Value(key);
  EXPECT_EQ(stored["status"], "initializing") << stored.dump();
  EXPECT_EQ(stored["leaseId"], r["leaseId"]);
  EXPECT_EQ(Cli({"HGET", "{sd}:owner", key}), LeaseDecimal(r["leaseId"]));
  Response dup = Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody(id, "ready").dump()));
  EXPECT_EQ(dup.status, 409) << dup.body;
  // The same body again (a retried POST): 200 with the first attempt's lease.
  Response again = Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody(id).dump()));
  EXPECT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(again.Json()["leaseId"], r["leaseId"]);

  ASSERT_TRUE(WaitUntil(
      [&] {
        auto l = Http(gw.port, "GET", "/sd/v1/instances?type=world");
        return l.ok() && l->status == 200 && l->Json()["instances"].size() == 1;
      },
      absl::Seconds(5)));
  Response get = Must(Http(gw.port, "GET", "/sd/v1/instances/" + id + "?type=world"));
  EXPECT_EQ(get.status, 200) << get.body;
  EXPECT_EQ(get.Json()["hostname"], "game-01");
  EXPECT_EQ(get.Json()["leaseId"], r["leaseId"]);
  EXPECT_EQ(Must(Http(gw.port, "GET", "/sd/v1/instances/nope?type=world")).status, 404);

  Response hb = Must(Http(gw.port, "POST", "/sd/v1/instances/" + id + "/heartbeat?type=world",
                          R"({"status":"ready","performance":{"tps":1200}})"));
  ASSERT_EQ(hb.status, 200) << hb.body;
  EXPECT_EQ(hb.Json()["ttlSeconds"], kWorldTtlSeconds);
  EXPECT_EQ(hb.Json()["leaseId"], r["leaseId"]);
  stored = Value(key);
  EXPECT_EQ(stored["status"], "ready");
  EXPECT_EQ(stored["performance"]["tps"], 1200);
  // A plain heartbeat refreshes the lease without rewriting the value.
  const std::string mod_before = Cli({"HGET", "{sd}:mod", key});
  ASSERT_EQ(Must(Http(gw.port, "POST", "/sd/v1/instances/" + id + "/heartbeat")).status, 200);
  EXPECT_EQ(Cli({"HGET", "{sd}:mod", key}), mod_before);

  Response patch = Must(Http(gw.port, "PATCH", "/sd/v1/instances/" + id + "?type=world",
                             R"({"customState":"lobby"})"));
  ASSERT_EQ(patch.status, 200) << patch.body;
  EXPECT_EQ(Value(key)["customState"], "lobby");
  EXPECT_EQ(Must(Http(gw.port, "PATCH", "/sd/v1/instances/" + id + "?type=world",
                      R"({"status":"initializing"})"))
                .status,
            400);

  // DELETE with another lease named: 412, nothing deleted; then a plain DELETE revokes.
  EXPECT_EQ(
      Must(Http(gw.port, "DELETE", "/sd/v1/instances/" + id + "?type=world&leaseId=abc")).status,
      412);
  EXPECT_TRUE(KeyExists(key));
  Response del = Must(Http(gw.port, "DELETE", "/sd/v1/instances/" + id + "?type=world"));
  EXPECT_EQ(del.status, 200) << del.body;
  EXPECT_EQ(del.Json()["leaseRevoked"], true) << del.body;
  EXPECT_FALSE(KeyExists(key));
  EXPECT_EQ(Cli({"ZSCORE", "{sd}:dl", LeaseDecimal(r["leaseId"])}), "");
  EXPECT_EQ(Must(Http(gw.port, "DELETE", "/sd/v1/instances/" + id + "?type=world")).status, 404);
  // A heartbeat of a deleted instance: 404 (its client re-registers).
  EXPECT_EQ(Must(Http(gw.port, "POST", "/sd/v1/instances/" + id + "/heartbeat?type=world")).status,
            404);
}

TEST_F(DiscoverydRedisTest, DiscoverAndSseFollowRegistrationsRemovalsAndTtlExpiry) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  auto sse = SseClient::Connect(gw.port, "/sd/v1/subscribe?type=world");
  ASSERT_TRUE(sse.ok()) << sse.status();
  ASSERT_TRUE((*sse)->WaitFor(
      [](const std::vector<SseEvent>& ev) {
        return HasEvent(ev, "synced", [](const json&) { return true; });
      },
      absl::Seconds(10)));

  // A Registrar straight on Redis: discoveryd sees it.
  auto direct = Direct();
  ASSERT_NE(direct, nullptr);
  auto registrar = Registrar::Create({.connection = direct});
  ASSERT_TRUE(registrar.ok()) << registrar.status();
  auto reg = (*registrar)->Register(WorldInstance("direct-1"), {.ttl = absl::Seconds(3)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  EXPECT_TRUE((*sse)->WaitFor(
      [](const std::vector<SseEvent>& ev) { return HasEvent(ev, "update", IdIs("direct-1")); },
      absl::Seconds(5)));
  // REST registration with a 1 s TTL and no heartbeat: it expires (the reaper of discoveryd's
  // own watcher removes it) and SSE says so.
  ASSERT_EQ(
      Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody("short", "ready", 1).dump())).status,
      201);
  EXPECT_TRUE((*sse)->WaitFor(
      [](const std::vector<SseEvent>& ev) { return HasEvent(ev, "update", IdIs("short")); },
      absl::Seconds(5)));
  EXPECT_TRUE((*sse)->WaitFor(
      [](const std::vector<SseEvent>& ev) { return HasEvent(ev, "remove", IdIs("short")); },
      absl::Seconds(8)))
      << "the 1 s registration did not expire";
  EXPECT_FALSE(KeyExists("/services/world/short"));
  // Discover: the live one only; every SSE id carries one epoch and increasing revisions.
  auto ids = [&] {
    std::set<std::string> out;
    auto l = Http(gw.port, "GET", "/sd/v1/instances?type=world");
    if (!l.ok() || l->status != 200) return out;
    const json body = l->Json();  // (a temporary's element would dangle in the loop)
    for (const json& in : body["instances"]) out.insert(in.value("instanceId", ""));
    return out;
  };
  EXPECT_TRUE(
      WaitUntil([&] { return ids() == std::set<std::string>{"direct-1"}; }, absl::Seconds(5)))
      << Must(Http(gw.port, "GET", "/sd/v1/instances?type=world")).body;
  ASSERT_TRUE(reg->Close().ok());
  EXPECT_TRUE((*sse)->WaitFor(
      [](const std::vector<SseEvent>& ev) { return HasEvent(ev, "remove", IdIs("direct-1")); },
      absl::Seconds(5)));
  EXPECT_TRUE(WaitUntil([&] { return ids().empty(); }, absl::Seconds(5)));
  std::string epoch;
  int64_t last = -1;
  for (const SseEvent& e : (*sse)->Events()) {
    if (e.id.empty()) continue;
    if (epoch.empty()) epoch = EpochOfId(e.id);
    EXPECT_EQ(EpochOfId(e.id), epoch) << e.id;
    EXPECT_GT(RevisionOfId(e.id), last) << e.id;
    last = RevisionOfId(e.id);
  }
  EXPECT_FALSE(epoch.empty());
  EXPECT_EQ(HealthEpoch(gw.port), epoch);
}

TEST_F(DiscoverydRedisTest, GatewayModeRegistrarRegistersHeartbeatsAndReRegisters) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  GatewayClientOptions o;
  o.urls = {absl::StrCat("http://127.0.0.1:", gw.port)};
  o.call_timeout = absl::Seconds(2);
  auto conn = ConnectGateway(o);
  ASSERT_TRUE(conn.ok()) << conn.status();
  std::atomic<int> re_registered{0};
  auto registrar =
      Registrar::Create({.connection = *conn, .on_event = [&](const RegistrationEvent& e) {
                           if (e.type == RegistrationEventType::kReRegistered) {
                             re_registered.fetch_add(1);
                           }
                         }});
  ASSERT_TRUE(registrar.ok()) << registrar.status();
  auto reg = (*registrar)->Register(WorldInstance("gw-1"), {.ttl = absl::Seconds(2)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  const std::string key = "/services/world/gw-1";
  ASSERT_TRUE(KeyExists(key));
  // Three TTLs: without the batch heartbeats (kept alive by discoveryd's Redis lease holder)
  // the key would be gone after one.
  EXPECT_FALSE(
      WaitUntil([&] { return !KeyExists(key); }, absl::Seconds(6), absl::Milliseconds(250)))
      << "the registration expired although its process heartbeats through discoveryd";
  EXPECT_TRUE(absl::StrContains(Must(Http(gw.port, "GET", "/metrics")).body,
                                "discovery_gateway_leases_kept 1"));

  // The lease revoked behind its back (straight on Redis): discoveryd answers it gone, the
  // registrar registers the same id again under a new lease.
  const int64_t old_lease = reg->lease_id();
  auto direct = Direct();
  ASSERT_NE(direct, nullptr);
  ASSERT_TRUE(direct->backend()->NewLeaseHolder()->Revoke(old_lease).ok());
  ASSERT_TRUE(WaitUntil([&] { return re_registered.load() > 0; }, absl::Seconds(10)))
      << "no re-registration after the lease was revoked";
  EXPECT_TRUE(WaitUntil([&] { return KeyExists(key); }, absl::Seconds(3)));
  EXPECT_NE(reg->lease_id(), old_lease);
  EXPECT_EQ(Value(key).value("instanceId", ""), "gw-1");
  EXPECT_EQ(Cli({"HGET", "{sd}:owner", key}), absl::StrCat(reg->lease_id()));

  ASSERT_TRUE(reg->Close().ok());
  EXPECT_TRUE(WaitUntil([&] { return !KeyExists(key); }, absl::Seconds(3)));
  EXPECT_EQ(Cli({"ZSCORE", "{sd}:dl", absl::StrCat(reg->lease_id())}), "");
}

TEST_F(DiscoverydRedisTest, SseEpochChangesAfterFlushAllAndRestartWithoutPersistence) {
  GatewayProc a = StartGateway();
  GatewayProc b = StartGateway();
  ASSERT_GT(a.port, 0);
  ASSERT_GT(b.port, 0);
  ASSERT_EQ(Must(Http(a.port, "POST", "/sd/v1/instances", WorldBody("old", "ready").dump())).status,
            201);
  // The 201 means Redis has it, not that a's cache does yet: a subscriber attached before
  // a's watcher saw the write gets "synced" with 0 instances and then an "added" event (a CI
  // run failed so). Attach once a serves the instance.
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto l = Http(a.port, "GET", "/sd/v1/instances?type=world");
        return l.ok() && l->status == 200 && l->Json()["instances"].size() == 1;
      },
      absl::Seconds(10)));
  auto sse = SseClient::Connect(a.port, "/sd/v1/subscribe");
  ASSERT_TRUE(sse.ok()) << sse.status();
  ASSERT_TRUE((*sse)->WaitFor(
      [](const std::vector<SseEvent>& ev) {
        return HasEvent(ev, "synced", [](const json& d) { return d.value("instances", 0) == 1; });
      },
      absl::Seconds(10)));
  // Both replicas of one Redis agree on the epoch.
  std::string first;
  ASSERT_TRUE(WaitUntil(
      [&] {
        first = HealthEpoch(a.port);
        return !first.empty() && HealthEpoch(b.port) == first;
      },
      absl::Seconds(10)));

  auto resets = [&] {
    int n = 0;
    for (const SseEvent& e : (*sse)->Events()) n += e.event == "reset";
    return n;
  };
  auto settled_epoch = [&](const std::string& previous) {
    std::string now;
    bool agreed = WaitUntil(
        [&] {
          now = HealthEpoch(a.port);
          return !now.empty() && now != previous && HealthEpoch(b.port) == now;
        },
        absl::Seconds(15));
    EXPECT_TRUE(agreed) << "a " << HealthEpoch(a.port) << " b " << HealthEpoch(b.port);
    return now;
  };

  ASSERT_TRUE(redis_->FlushAll().ok());
  EXPECT_TRUE(WaitUntil([&] { return resets() == 1; }, absl::Seconds(10)))
      << "no reset frame after FLUSHALL";
  const std::string second = settled_epoch(first);
  // The record names the epoch it replaced (the agree/replace protocol of epoch.h).
  json record = json::parse(Cli({"HGET", "{sd}:records", "/services.epoch"}), nullptr, false);
  EXPECT_EQ(record.value("epoch", ""), second) << record.dump();
  EXPECT_EQ(record.value("replaces", ""), first) << record.dump();
  // No ghost: the new state is empty, and new writes flow under the new epoch.
  ASSERT_EQ(Must(Http(a.port, "POST", "/sd/v1/instances", WorldBody("new", "ready").dump())).status,
            201);
  EXPECT_TRUE((*sse)->WaitFor(
      [&](const std::vector<SseEvent>& ev) {
        for (const SseEvent& e : ev) {
          if (e.event == "update" && IdIs("new")(e.data)) return true;
        }
        return false;
      },
      absl::Seconds(10)));
  EXPECT_TRUE(WaitUntil(
      [&] {
        auto l = Http(b.port, "GET", "/sd/v1/instances");
        return l.ok() && l->status == 200 && l->Json()["instances"].size() == 1;
      },
      absl::Seconds(5)));

  // A restart without persistence: the same again.
  ASSERT_TRUE(redis_->Restart().ok());
  EXPECT_TRUE(WaitUntil([&] { return resets() == 2; }, absl::Seconds(15)))
      << "no reset frame after a restart without persistence";
  const std::string third = settled_epoch(second);
  EXPECT_NE(third, first);
  EXPECT_TRUE(WaitUntil(
      [&] {
        auto l = Http(b.port, "GET", "/sd/v1/instances");
        return l.ok() && l->status == 200 && l->Json()["instances"].empty();
      },
      absl::Seconds(10)));
}

TEST_F(DiscoverydRedisTest, HealthzIs503WhileRedisIsFrozenOrDown) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  ASSERT_TRUE(WaitUntil([&] { return Must(Http(gw.port, "GET", "/healthz")).status == 200; },
                        absl::Seconds(5)));
  ASSERT_EQ(Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody("h", "ready").dump())).status,
            201);
  ASSERT_TRUE(WaitUntil(
      [&] {
        return Must(Http(gw.port, "GET", "/sd/v1/instances")).Json()["instances"].size() == 1;
      },
      absl::Seconds(5)));

  ASSERT_TRUE(redis_->Pause().ok());  // SIGSTOP: connections stay open, nothing answers
  EXPECT_TRUE(WaitUntil([&] { return Must(Http(gw.port, "GET", "/healthz")).status == 503; },
                        absl::Seconds(10)));
  Response frozen = Must(Http(gw.port, "GET", "/healthz"));
  EXPECT_EQ(frozen.Json()["status"], "unavailable") << frozen.body;
  // The cache keeps serving discovery meanwhile.
  EXPECT_EQ(Must(Http(gw.port, "GET", "/sd/v1/instances")).Json()["instances"].size(), 1u);
  ASSERT_TRUE(redis_->Resume().ok());
  EXPECT_TRUE(WaitUntil([&] { return Must(Http(gw.port, "GET", "/healthz")).status == 200; },
                        absl::Seconds(10)));

  ASSERT_TRUE(redis_->Stop().ok());  // down: connection refused
  EXPECT_TRUE(WaitUntil([&] { return Must(Http(gw.port, "GET", "/healthz")).status == 503; },
                        absl::Seconds(10)));
  ASSERT_TRUE(redis_->StartAgain().ok());
  EXPECT_TRUE(WaitUntil([&] { return Must(Http(gw.port, "GET", "/healthz")).status == 200; },
                        absl::Seconds(15)));
}

// Redis down: discoveryd's poll of the SSE epoch record backs off (1, 2, 4 s, jittered) and
// counts each failure in discovery_sse_epoch_failures_total, instead of failing every second;
// with Redis back it serves again. At a fixed 1 s period 4 failures took ~4 s; now >= 5.6 s.
TEST_F(DiscoverydRedisTest, EpochPollBacksOffWhileRedisIsDown) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  ASSERT_TRUE(WaitUntil([&] { return Must(Http(gw.port, "GET", "/healthz")).status == 200; },
                        absl::Seconds(5)));
  // The epoch is settled (the keeper's first read done, the poll running): /healthz does not
  // wait for it, and a keeper still on its first read when Redis stops retries on its own,
  // faster backoff (200 ms, 400 ms, ...), which counts in the same metric (seen in CI on a
  // loaded machine: 4 failures in 1.5 s).
  ASSERT_TRUE(WaitUntil([&] { return absl::StrContains(gw.proc->ReadStderr(), "] SSE epoch "); },
                        absl::Seconds(10)))
      << gw.proc->ReadStderr();
  auto failures = [&]() -> double {
    const std::string name = "\ndiscovery_sse_epoch_failures_total ";
    Response m = Must(Http(gw.port, "GET", "/metrics"));
    size_t at = m.body.find(name);
    return at == std::string::npos ? -1 : std::stod(m.body.substr(at + name.size()));
  };
  const double before = failures();
  ASSERT_GE(before, 0);
  ASSERT_TRUE(redis_->Stop().ok());  // connection refused: every poll fails at once
  const absl::Time down = ::discovery::util::MonoNow();
  double now = before;
  ASSERT_TRUE(WaitUntil(
      [&] {
        now = failures();
        return now >= before + 4;
      },
      absl::Seconds(30), absl::Milliseconds(50)))
      << "epoch failures " << before << " -> " << now;
  EXPECT_GE(::discovery::util::MonoNow() - down, absl::Seconds(5))
      << "4 failed polls within 5 s: no backoff";
  ASSERT_TRUE(redis_->StartAgain().ok());
  EXPECT_TRUE(WaitUntil([&] { return Must(Http(gw.port, "GET", "/healthz")).status == 200; },
                        absl::Seconds(15)));
}

// DISCOVERY_STORE=redis://... works as --store does (this replaced the start-up refusal).
TEST_F(DiscoverydRedisTest, StartsOnRedisFromTheEnvironment) {
  auto proc = ChildProcess::Spawn({.argv = {DISCOVERYD, "--listen", "127.0.0.1:0"},
                                   .env = {{"DISCOVERY_STORE", redis_->Url()}},
                                   .unset_env_prefixes = {"ETCD_", "DISCOVERY_"}});
  ASSERT_TRUE(proc.ok()) << proc.status();
  static const std::regex kServing("discoveryd serving http://127\\.0\\.0\\.1:([0-9]+)/");
  int port = 0;
  ASSERT_TRUE(WaitUntil(
      [&] {
        std::smatch m;
        std::string err = (*proc)->ReadStderr();
        if (std::regex_search(err, m, kServing)) port = std::stoi(m[1]);
        return port > 0 || !(*proc)->Running();
      },
      absl::Seconds(15)));
  ASSERT_GT(port, 0) << (*proc)->ReadStderr();
  EXPECT_TRUE(absl::StrContains((*proc)->ReadStderr(), "; redis redis://"));
  EXPECT_TRUE(WaitUntil([&] { return Must(Http(port, "GET", "/healthz")).status == 200; },
                        absl::Seconds(5)));
}

}  // namespace
}  // namespace discovery::testing
