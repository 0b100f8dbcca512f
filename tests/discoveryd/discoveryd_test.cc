// discoveryd end to end: real etcd from the harness, discoveryd processes spawned with
// --listen 127.0.0.1:0 (the port is read from the "serving http://..." log line), and HTTP /
// SSE clients in the test. The dashboard test drives a real headless Chromium over the
// DevTools protocol.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <csignal>
#include <fstream>
#include <functional>
#include <regex>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gateway_fixture.h"

namespace discovery {
namespace {

using testing::ChildProcess;
using testing::DiscoverydTest;
using testing::EpochOfId;
using testing::GatewayProc;
using testing::HasEvent;
using testing::Headers;
using testing::Http;
using testing::IdIs;
using testing::json;
using testing::kWorldTtlSeconds;
using testing::Must;
using testing::Response;
using testing::RevisionOfId;
using testing::SseClient;
using testing::SseEvent;
using testing::TestSocket;
using testing::TimeScale;
using testing::WaitUntil;
using testing::WorldBody;

TEST_F(DiscoverydTest, RestRegisterDiscoverHeartbeatPatchDelete) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);

  Response reg = Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody("").dump()));
  ASSERT_EQ(reg.status, 201) << reg.body;
  json r = reg.Json();
  std::string id = r["instanceId"];
  EXPECT_EQ(id.size(), 26u);  // a generated ULID
  EXPECT_EQ(r["ttlSeconds"], kWorldTtlSeconds);
  ASSERT_TRUE(r["leaseId"].is_string());
  std::string key = "/services/world/" + id;
  json stored = Value(key);
  EXPECT_EQ(stored["status"], "initializing");
  EXPECT_EQ(stored["leaseId"], r["leaseId"]);
  // The same id with other fields: 409, the stored value untouched. (The same body again is a
  // retried POST: 200 with the same leaseId; tests/chaos/retried_writes_test.cc.)
  Response dup = Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody(id, "ready").dump()));
  EXPECT_EQ(dup.status, 409) << dup.body;
  EXPECT_EQ(dup.Json()["error"]["code"], "already_exists");

  // Discover (served from the watch cache).
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto l = Http(gw.port, "GET", "/sd/v1/instances?type=world");
        return l.ok() && l->status == 200 && l->Json()["instances"].size() == 1;
      },
      absl::Seconds(5)));
  Response list = Must(Http(gw.port, "GET", "/sd/v1/instances?type=world&group=kr-1"));
  EXPECT_EQ(list.Json()["instances"][0]["instanceId"], id);
  EXPECT_GT(list.Json()["revision"].get<int64_t>(), 0);
  EXPECT_EQ(Must(Http(gw.port, "GET", "/sd/v1/instances?type=world&status=ready"))
                .Json()["instances"]
                .size(),
            0u);
  EXPECT_EQ(Must(Http(gw.port, "GET", "/sd/v1/instances?type=world&status=bogus")).status, 400);
  // Active health check: nothing listens on 127.0.0.1:8001, so the instance is skipped.
  EXPECT_EQ(Must(Http(gw.port, "GET", "/sd/v1/instances?type=world&healthCheck=true"))
                .Json()["instances"]
                .size(),
            0u);

  Response get = Must(Http(gw.port, "GET", "/sd/v1/instances/" + id + "?type=world"));
  EXPECT_EQ(get.status, 200);
  EXPECT_EQ(get.Json()["hostname"], "game-01");

  // Heartbeat with a status change and performance figures.
  Response hb = Must(Http(gw.port, "POST", "/sd/v1/instances/" + id + "/heartbeat?type=world",
                          R"({"status":"ready","performance":{"tps":1200,"load":0.5}})"));
  ASSERT_EQ(hb.status, 200) << hb.body;
  EXPECT_EQ(hb.Json()["ttlSeconds"], kWorldTtlSeconds);
  stored = Value(key);
  EXPECT_EQ(stored["status"], "ready");
  EXPECT_EQ(stored["performance"]["tps"], 1200);
  EXPECT_EQ(stored["leaseId"], r["leaseId"]);  // same lease
  // A plain heartbeat does not rewrite the value.
  auto before = cluster_->Etcdctl({"get", key, "-w", "json"});
  ASSERT_EQ(Must(Http(gw.port, "POST", "/sd/v1/instances/" + id + "/heartbeat?type=world")).status,
            200);
  auto after = cluster_->Etcdctl({"get", key, "-w", "json"});
  ASSERT_TRUE(before.ok() && after.ok());
  EXPECT_EQ(json::parse(*before)["kvs"][0]["mod_revision"],
            json::parse(*after)["kvs"][0]["mod_revision"]);

  // PATCH keeps the lease; bad transitions are refused.
  Response patch = Must(Http(gw.port, "PATCH", "/sd/v1/instances/" + id + "?type=world",
                             R"({"customState":"lobby","meta":{"map":"forest"}})"));
  ASSERT_EQ(patch.status, 200) << patch.body;
  stored = Value(key);
  EXPECT_EQ(stored["customState"], "lobby");
  EXPECT_EQ(stored["meta"]["map"], "forest");
  EXPECT_EQ(stored["leaseId"], r["leaseId"]);
  Response bad = Must(Http(gw.port, "PATCH", "/sd/v1/instances/" + id + "?type=world",
                           R"({"status":"initializing"})"));
  EXPECT_EQ(bad.status, 400);
  EXPECT_TRUE(absl::StrContains(bad.body, "status")) << bad.body;
  Response unknown =
      Must(Http(gw.port, "PATCH", "/sd/v1/instances/" + id + "?type=world", R"({"hostname":"x"})"));
  EXPECT_EQ(unknown.status, 400);
  EXPECT_TRUE(absl::StrContains(unknown.body, "hostname")) << unknown.body;

  // HTTP/1.1 keep-alive: two requests on one connection.
  {
    auto sock = testing::TestSocket::Connect(gw.port, absl::Seconds(5));
    ASSERT_TRUE(sock.ok());
    std::string req = "GET /sd/v1/instances/" + id + "?type=world HTTP/1.1\r\nHost: x\r\n\r\n";
    ASSERT_TRUE((*sock)->SendAll(req + req).ok());
    auto first = (*sock)->ReadResponse();
    auto second = (*sock)->ReadResponse();
    ASSERT_TRUE(first.ok() && second.ok());
    EXPECT_EQ(first->status, 200);
    EXPECT_EQ(second->status, 200);
  }

  // DELETE removes the key and revokes the lease; a second DELETE is 404.
  Response del = Must(Http(gw.port, "DELETE", "/sd/v1/instances/" + id + "?type=world"));
  EXPECT_EQ(del.status, 200) << del.body;
  EXPECT_EQ(del.Json()["leaseRevoked"], true);
  EXPECT_FALSE(KeyExists(key));
  EXPECT_EQ(Must(Http(gw.port, "DELETE", "/sd/v1/instances/" + id + "?type=world")).status, 404);
  EXPECT_EQ(Must(Http(gw.port, "GET", "/sd/v1/instances/" + id + "?type=world")).status, 404);
  auto leases = cluster_->Etcdctl({"lease", "list"});
  ASSERT_TRUE(leases.ok());
  EXPECT_FALSE(absl::StrContains(*leases, r["leaseId"].get<std::string>())) << *leases;

  // SIGTERM: clean exit 0.
  ASSERT_TRUE(gw.proc->Signal(SIGTERM).ok());
  auto rc = gw.proc->Wait(absl::Seconds(10));
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(*rc, 0) << gw.proc->ReadStderr();
}

// Calls that name an instance without ?type= find its type in the cache's id index (O(1), not
// a walk of every cached instance); an id registered under two types is refused (400, both
// named) rather than resolved to whichever type sorts first, as it was before the index.
TEST_F(DiscoverydTest, InstanceWithoutTypeIsFoundByIdAndAnAmbiguousIdIsRefused) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  json lobby = WorldBody("twin-1");
  lobby["type"] = "lobby";
  ASSERT_EQ(Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody("twin-1").dump())).status,
            201);
  ASSERT_EQ(Must(Http(gw.port, "POST", "/sd/v1/instances", lobby.dump())).status, 201);
  ASSERT_EQ(Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody("solo-1").dump())).status,
            201);
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto a = Http(gw.port, "GET", "/sd/v1/instances?type=world");
        auto b = Http(gw.port, "GET", "/sd/v1/instances?type=lobby");
        return a.ok() && b.ok() && a->Json()["instances"].size() == 2 &&
               b->Json()["instances"].size() == 1;
      },
      absl::Seconds(5)));
  Response solo = Must(Http(gw.port, "GET", "/sd/v1/instances/solo-1"));
  EXPECT_EQ(solo.status, 200) << solo.body;
  EXPECT_EQ(solo.Json()["type"], "world");
  Response twin = Must(Http(gw.port, "GET", "/sd/v1/instances/twin-1"));
  EXPECT_EQ(twin.status, 400) << twin.body;
  EXPECT_TRUE(absl::StrContains(twin.body, "lobby, world")) << twin.body;
  EXPECT_EQ(Must(Http(gw.port, "DELETE", "/sd/v1/instances/twin-1")).status, 400);
  EXPECT_TRUE(KeyExists("/services/world/twin-1"));
  EXPECT_TRUE(KeyExists("/services/lobby/twin-1"));
  EXPECT_EQ(Must(Http(gw.port, "GET", "/sd/v1/instances/nobody")).status, 404);
  // With one of the two gone (deleted by its type), the id is the other one's again.
  ASSERT_EQ(Must(Http(gw.port, "DELETE", "/sd/v1/instances/twin-1?type=lobby")).status, 200);
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto r = Http(gw.port, "GET", "/sd/v1/instances/twin-1");
        return r.ok() && r->status == 200 && r->Json()["type"] == "world";
      },
      absl::Seconds(5)));
  ASSERT_EQ(Must(Http(gw.port, "POST", "/sd/v1/instances/twin-1/heartbeat")).status, 200);
  ASSERT_EQ(Must(Http(gw.port, "DELETE", "/sd/v1/instances/twin-1")).status, 200);
  EXPECT_FALSE(KeyExists("/services/world/twin-1"));
}

TEST_F(DiscoverydTest, HeartbeatOnAnyGatewayAndExpiry) {
  GatewayProc a = StartGateway();
  GatewayProc b = StartGateway();
  ASSERT_GT(a.port, 0);
  ASSERT_GT(b.port, 0);
  Response reg =
      Must(Http(a.port, "POST", "/sd/v1/instances", WorldBody("hb-1", "ready", 2).dump()));
  ASSERT_EQ(reg.status, 201) << reg.body;
  std::string key = "/services/world/hb-1";

  // Heartbeats through gateway B keep the 2 s lease granted by gateway A alive for 3.5 s.
  absl::Time until = absl::Now() + TimeScale(absl::Milliseconds(3500));
  while (absl::Now() < until) {
    Response hb = Must(Http(b.port, "POST", "/sd/v1/instances/hb-1/heartbeat?type=world"));
    ASSERT_EQ(hb.status, 200) << hb.body;
    EXPECT_EQ(hb.Json()["ttlSeconds"], 2);
    ASSERT_TRUE(KeyExists(key));
    absl::SleepFor(absl::Milliseconds(400));  // the heartbeat period of this client
  }
  // Stop heartbeating: the instance expires, later heartbeats are 404.
  ASSERT_TRUE(WaitUntil([&] { return !KeyExists(key); }, absl::Seconds(5)));
  Response late = Must(Http(b.port, "POST", "/sd/v1/instances/hb-1/heartbeat?type=world"));
  EXPECT_EQ(late.status, 404) << late.body;
  EXPECT_EQ(late.Json()["error"]["code"], "not_found");
  EXPECT_EQ(Must(Http(a.port, "POST", "/sd/v1/instances/hb-1/heartbeat?type=world")).status, 404);
  // Unknown instance: 404 as well.
  EXPECT_EQ(Must(Http(a.port, "POST", "/sd/v1/instances/nope/heartbeat?type=world")).status, 404);
}

TEST_F(DiscoverydTest, SseSeesChangesFromOtherGatewayAndRegistrar) {
  GatewayProc a = StartGateway();
  GatewayProc b = StartGateway();
  ASSERT_GT(a.port, 0);
  ASSERT_GT(b.port, 0);
  // An instance that exists before the subscription shows up as init.
  ASSERT_EQ(
      Must(Http(b.port, "POST", "/sd/v1/instances", WorldBody("early", "ready").dump())).status,
      201);
  ASSERT_TRUE(WaitUntil(
      [&] {
        return Must(Http(a.port, "GET", "/sd/v1/instances?type=world"))
                   .Json()["instances"]
                   .size() == 1;
      },
      absl::Seconds(5)));
  auto sse = SseClient::Connect(a.port, "/sd/v1/subscribe?type=world");
  ASSERT_TRUE(sse.ok()) << sse.status();
  SseClient& c = **sse;
  ASSERT_TRUE(c.WaitFor(
      [](const std::vector<SseEvent>& ev) {
        return HasEvent(ev, "synced", [](auto&) { return true; });
      },
      absl::Seconds(5)));
  EXPECT_EQ(c.status(), 200);
  std::vector<SseEvent> first = c.Events();
  ASSERT_GE(first.size(), 2u);
  EXPECT_EQ(first[0].event, "init");
  EXPECT_EQ(first[0].data["instance"]["instanceId"], "early");
  EXPECT_EQ(first[0].id, "") << "init frames carry no id (a partial init must not resume)";
  EXPECT_EQ(first[1].event, "synced");
  EXPECT_EQ(RevisionOfId(first[1].id), first[1].data["revision"].get<int64_t>());
  EXPECT_EQ(EpochOfId(first[1].id).size(), 8u) << first[1].id;

  // A change made through gateway B.
  ASSERT_EQ(Must(Http(b.port, "POST", "/sd/v1/instances", WorldBody("via-b").dump())).status, 201);
  ASSERT_EQ(Must(Http(b.port, "PATCH", "/sd/v1/instances/via-b?type=world",
                      R"({"status":"ready","customState":"open"})"))
                .status,
            200);
  ASSERT_TRUE(c.WaitFor(
      [](const std::vector<SseEvent>& ev) {
        return HasEvent(ev, "update", IdIs("via-b", "added")) &&
               HasEvent(ev, "update", IdIs("via-b", "status_changed"));
      },
      absl::Seconds(5)));
  // Other types are filtered out.
  json lobby = WorldBody("lobby-1");
  lobby["type"] = "lobby";
  ASSERT_EQ(Must(Http(b.port, "POST", "/sd/v1/instances", lobby.dump())).status, 201);

  // A game server using the registrar library.
  auto game = ChildProcess::Spawn({.argv = {EXAMPLE_GAME_SERVER, "--type", "world", "--ttl", "5"},
                                   .env = {{"ETCD_ENDPOINTS", cluster_->EndpointsCsv()}},
                                   .unset_env_prefixes = {"DISCOVERY_"},
                                   .stdout_to_pipe = true});
  ASSERT_TRUE(game.ok()) << game.status();
  auto gid = (*game)->ReadLine(absl::Seconds(10));
  ASSERT_TRUE(gid.has_value()) << (*game)->ReadStderr();
  ASSERT_TRUE(c.WaitFor(
      [&](const std::vector<SseEvent>& ev) {
        return HasEvent(ev, "update", IdIs(*gid, "added")) &&
               HasEvent(ev, "update", [&](const json& d) {
                 return IdIs(*gid)(d) && d["instance"]["status"] == "ready";
               });
      },
      absl::Seconds(5)));
  ASSERT_TRUE((*game)->Signal(SIGTERM).ok());
  ASSERT_TRUE(c.WaitFor(
      [&](const std::vector<SseEvent>& ev) {
        return HasEvent(ev, "remove", IdIs(*gid, "removed"));
      },
      absl::Seconds(5)));
  EXPECT_EQ((*game)->Wait(absl::Seconds(5)).value_or(-1), 0);
  // Removal through gateway B.
  ASSERT_EQ(Must(Http(b.port, "DELETE", "/sd/v1/instances/via-b?type=world")).status, 200);
  ASSERT_TRUE(c.WaitFor(
      [](const std::vector<SseEvent>& ev) { return HasEvent(ev, "remove", IdIs("via-b")); },
      absl::Seconds(5)));

  std::vector<SseEvent> all = c.Events();
  int64_t last = 0;
  for (const SseEvent& e : all) {
    EXPECT_FALSE(absl::StrContains(e.data.dump(), "lobby-1")) << "type filter leaked";
    if (e.id.empty()) continue;
    int64_t rev = RevisionOfId(e.id);
    EXPECT_GE(rev, last) << "ids go backwards";
    last = rev;
  }
  // The subscriber gauge counts this client.
  EXPECT_TRUE(
      absl::StrContains(Must(Http(a.port, "GET", "/metrics")).body, "discovery_sse_subscribers 1"));
}

TEST_F(DiscoverydTest, SseResumeWithLastEventIdLosesNothing) {
  GatewayProc a = StartGateway();
  GatewayProc b = StartGateway();
  ASSERT_GT(a.port, 0);
  ASSERT_GT(b.port, 0);
  std::string resume_from;
  {
    auto sse = SseClient::Connect(a.port, "/sd/v1/subscribe");
    ASSERT_TRUE(sse.ok());
    ASSERT_TRUE((*sse)->WaitFor(
        [](const std::vector<SseEvent>& ev) {
          return HasEvent(ev, "synced", [](auto&) { return true; });
        },
        absl::Seconds(5)));
    ASSERT_EQ(Must(Http(a.port, "POST", "/sd/v1/instances", WorldBody("x").dump())).status, 201);
    ASSERT_TRUE((*sse)->WaitFor(
        [](const std::vector<SseEvent>& ev) { return HasEvent(ev, "update", IdIs("x", "added")); },
        absl::Seconds(5)));
    resume_from = (*sse)->Events().back().id;
  }  // disconnected
  // Changes while the client is away.
  ASSERT_EQ(Must(Http(a.port, "POST", "/sd/v1/instances", WorldBody("y").dump())).status, 201);
  ASSERT_EQ(
      Must(Http(a.port, "PATCH", "/sd/v1/instances/x?type=world", R"({"customState":"full"})"))
          .status,
      200);
  ASSERT_EQ(Must(Http(a.port, "DELETE", "/sd/v1/instances/x?type=world")).status, 200);

  // Resume on the OTHER gateway: revisions are etcd's, valid everywhere.
  auto resumed = SseClient::Connect(b.port, "/sd/v1/subscribe", {{"Last-Event-ID", resume_from}});
  ASSERT_TRUE(resumed.ok());
  ASSERT_TRUE((*resumed)->WaitFor(
      [](const std::vector<SseEvent>& ev) {
        return HasEvent(ev, "update", IdIs("y", "added")) &&
               HasEvent(ev, "update",
                        [](const json& d) {
                          return IdIs("x", "updated")(d) && d["instance"]["customState"] == "full";
                        }) &&
               HasEvent(ev, "remove", IdIs("x"));
      },
      absl::Seconds(5)))
      << "resumed from " << resume_from;
  std::vector<SseEvent> ev = (*resumed)->Events();
  for (const SseEvent& e : ev) {
    EXPECT_NE(e.event, "init") << "resume must not restart with init";
    if (e.event != "synced") {
      EXPECT_GT(RevisionOfId(e.id), RevisionOfId(resume_from));
    } else {
      EXPECT_EQ(e.data["resumed"], true);
    }
  }
  // Order: added y, updated x, removed x.
  std::vector<std::string> order;
  for (const SseEvent& e : ev) {
    if (e.event == "update" || e.event == "remove") {
      order.push_back(e.data["type"].get<std::string>() + ":" +
                      e.data["instance"]["instanceId"].get<std::string>());
    }
  }
  EXPECT_EQ(order, (std::vector<std::string>{"added:y", "updated:x", "removed:x"}));

  // An id from the future (or garbage) falls back to a fresh init.
  auto fresh = SseClient::Connect(b.port, "/sd/v1/subscribe", {{"Last-Event-ID", "99999999"}});
  ASSERT_TRUE(fresh.ok());
  ASSERT_TRUE((*fresh)->WaitFor(
      [](const std::vector<SseEvent>& ev) {
        return HasEvent(ev, "init", IdIs("y")) &&
               HasEvent(ev, "synced", [](const json& d) { return d["resumed"] == false; });
      },
      absl::Seconds(5)));
}

int ThreadsOf(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "Threads:")) return std::stoi(line.substr(8));
  }
  return -1;
}

// Subscribers cost memory, not threads: the io threads multiplex every stream.
TEST_F(DiscoverydTest, ManySubscribersOnAFewThreads) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  const int threads_before = ThreadsOf(gw.proc->pid());
  constexpr int kClients = 200;
  std::vector<std::unique_ptr<SseClient>> clients;
  for (int i = 0; i < kClients; ++i) {
    auto c = SseClient::Connect(gw.port, "/sd/v1/subscribe?type=world");
    ASSERT_TRUE(c.ok()) << c.status();
    clients.push_back(*std::move(c));
  }
  auto all_see = [&](const std::function<bool(const std::vector<SseEvent>&)>& pred) {
    return WaitUntil(
        [&] {
          for (auto& c : clients) {
            if (!pred(c->Events())) return false;
          }
          return true;
        },
        absl::Seconds(10));
  };
  ASSERT_TRUE(all_see([](const std::vector<SseEvent>& ev) {
    return HasEvent(ev, "synced", [](auto&) { return true; });
  }));
  ASSERT_EQ(Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody("fan-out").dump())).status,
            201);
  EXPECT_TRUE(all_see([](const std::vector<SseEvent>& ev) {
    return HasEvent(ev, "update", IdIs("fan-out", "added"));
  }));
  EXPECT_TRUE(absl::StrContains(Must(Http(gw.port, "GET", "/metrics")).body,
                                absl::StrCat("discovery_sse_subscribers ", kClients)));
  EXPECT_LE(ThreadsOf(gw.proc->pid()), threads_before + 2)
      << "threads grew with subscribers (before: " << threads_before << ")";
  clients.clear();
  EXPECT_TRUE(WaitUntil(
      [&] {
        return absl::StrContains(Must(Http(gw.port, "GET", "/metrics")).body,
                                 "discovery_sse_subscribers 0");
      },
      absl::Seconds(5)));
}

// A subscriber that stops reading must not make the gateway queue events for it without
// bound: once it is --sse-max-backlog behind, its stream is closed; the others keep up.
TEST_F(DiscoverydTest, SlowSseClientIsCutOffOthersKeepUp) {
  // 1 MiB: the fast subscriber's reader thread may be descheduled for a few events' time on a
  // loaded host (with 64 KiB, two 30 KiB events, CI saw it cut off too); the slow one is far
  // behind anyway (the updates below are 18 MiB, its socket takes at most ~4 MiB, tcp_wmem).
  GatewayProc gw = StartGateway({"--sse-max-backlog", "1048576"});
  ASSERT_GT(gw.port, 0);
  ASSERT_EQ(Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody("big").dump())).status, 201);
  auto fast = SseClient::Connect(gw.port, "/sd/v1/subscribe?type=world");
  ASSERT_TRUE(fast.ok()) << fast.status();
  // The slow one: subscribes, takes the response head, then never reads again (with a small
  // receive buffer, so the kernel absorbs little on its side).
  auto slow = TestSocket::Connect(gw.port, absl::Seconds(5));
  ASSERT_TRUE(slow.ok()) << slow.status();
  int small = 4096;
  setsockopt((*slow)->fd(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  ASSERT_TRUE((*slow)->SendAll("GET /sd/v1/subscribe?type=world HTTP/1.1\r\nHost: x\r\n\r\n").ok());
  auto head = (*slow)->ReceiveSome(256);
  ASSERT_TRUE(head.ok() && absl::StartsWith(*head, "HTTP/1.1 200")) << head.status();
  ASSERT_TRUE(WaitUntil(
      [&] {
        return absl::StrContains(Must(Http(gw.port, "GET", "/metrics")).body,
                                 "discovery_sse_subscribers 2");
      },
      absl::Seconds(5)));

  // ~18 MiB of events: 600 updates carrying 30 KiB of metadata each.
  const std::string filler(30 * 1024, 'x');
  constexpr int kUpdates = 600;
  for (int i = 0; i < kUpdates; ++i) {
    json patch = {{"meta", {{"n", std::to_string(i)}, {"filler", filler}}}};
    ASSERT_EQ(Must(Http(gw.port, "PATCH", "/sd/v1/instances/big?type=world", patch.dump())).status,
              200)
        << i;
  }
  EXPECT_TRUE(WaitUntil(
      [&] {
        return absl::StrContains(Must(Http(gw.port, "GET", "/metrics")).body,
                                 "discovery_sse_subscribers 1");
      },
      absl::Seconds(10)))
      << "the slow subscriber was not cut off";  // its stream's on_close ran: socket closed
  EXPECT_TRUE(absl::StrContains(gw.proc->ReadStderr(), "too slow")) << gw.proc->ReadStderr();
  // The fast subscriber saw every update through the last one.
  EXPECT_TRUE((*fast)->WaitFor(
      [&](const std::vector<SseEvent>& ev) {
        return HasEvent(ev, "update", [&](const json& d) {
          return d.contains("instance") &&
                 d["instance"]["meta"].value("n", "") == std::to_string(kUpdates - 1);
        });
      },
      absl::Seconds(20)));
  EXPECT_FALSE((*fast)->closed());
  EXPECT_TRUE(gw.proc->Running());
  EXPECT_EQ(Must(Http(gw.port, "GET", "/healthz")).status, 200);
}

TEST_F(DiscoverydTest, AuthAndBadInputLeaveRegistryUnchanged) {
  auto dir = testing::MakeTempDir("discoveryd-tokens-");
  ASSERT_TRUE(dir.ok());
  std::string token_file = *dir + "/tokens";
  std::ofstream(token_file) << "# test tokens\nrw-token rw\nro-token ro\n\n";
  GatewayProc gw = StartGateway({"--api-token-file", token_file, "--read-timeout", "1"},
                                {{"DISCOVERY_API_TOKEN", "env-token"}});
  ASSERT_GT(gw.port, 0);
  const Headers rw = {{"X-API-Token", "rw-token"}};
  const Headers ro = {{"X-API-Token", "ro-token"}};
  const Headers env = {{"X-API-Token", "env-token"}};
  const Headers wrong = {{"X-API-Token", "rw-tokeN"}};
  const std::string body = WorldBody("auth-1").dump();
  const std::string keys_before = Keys();

  struct Case {
    std::string what, method, path, body;
    Headers headers;
    int want;
    std::string mention;  // the error message must name this (a field)
  };
  std::string big =
      "{\"type\":\"world\",\"group\":\"g\",\"pad\":\"" + std::string(70 * 1024, 'a') + "\"}";
  // Both fit the 64 KiB body limit but would store a value every reader of the registry
  // (watchers, this gateway's GET) refuses: nested deeper than 64, or over kMaxInstanceBytes
  // once the gateway adds timestamps and the lease (found by tests/fuzz/http_fuzz.cc).
  std::string deep = R"({"type":"world","group":"g","performance":{"a":)" + std::string(70, '[') +
                     std::string(70, ']') + "}}";
  std::string near_limit = R"({"type":"world","group":"g","performance":{"pad":")" +
                           std::string(64 * 1024 - 200, 'x') + "\"}}";
  std::vector<Case> cases = {
      {"no token", "POST", "/sd/v1/instances", body, {}, 401, ""},
      {"wrong token", "POST", "/sd/v1/instances", body, wrong, 401, ""},
      {"ro token writes", "POST", "/sd/v1/instances", body, ro, 403, ""},
      {"ro heartbeat", "POST", "/sd/v1/instances/auth-1/heartbeat?type=world", "", ro, 403, ""},
      {"ro patch", "PATCH", "/sd/v1/instances/auth-1?type=world", R"({"status":"ready"})", ro, 403,
       ""},
      {"ro delete", "DELETE", "/sd/v1/instances/auth-1?type=world", "", ro, 403, ""},
      {"no token read", "GET", "/sd/v1/instances", "", {}, 401, ""},
      {"no token subscribe", "GET", "/sd/v1/subscribe", "", {}, 401, ""},
      {"oversized body", "POST", "/sd/v1/instances", big, rw, 413, ""},
      {"malformed JSON", "POST", "/sd/v1/instances", "{\"type\": \"world\",", rw, 400, "JSON"},
      {"not an object", "POST", "/sd/v1/instances", "[1,2]", rw, 400, "object"},
      {"missing type", "POST", "/sd/v1/instances", R"({"group":"g"})", rw, 400, "type"},
      {"bad type", "POST", "/sd/v1/instances", R"({"type":"a/b","group":"g"})", rw, 400, "type"},
      {"bad ttl", "POST", "/sd/v1/instances", R"({"type":"w","group":"g","ttlSeconds":0})", rw, 400,
       "ttlSeconds"},
      {"bad port", "POST", "/sd/v1/instances", R"({"type":"w","group":"g","ports":{"game":70000}})",
       rw, 400, "ports"},
      {"bad status", "POST", "/sd/v1/instances", R"({"type":"w","group":"g","status":"up"})", rw,
       400, "status"},
      {"bad weight", "POST", "/sd/v1/instances", R"({"type":"w","group":"g","weight":"x"})", rw,
       400, "weight"},
      {"nested too deep", "POST", "/sd/v1/instances", deep, rw, 400, "deeper than 64"},
      {"value over the readers' limit", "POST", "/sd/v1/instances", near_limit, rw, 400, "limit"},
      {"unknown route", "GET", "/sd/v1/nothing", "", rw, 404, ""},
      {"wrong method", "PUT", "/sd/v1/instances", body, rw, 405, ""},
      {"patch absent", "PATCH", "/sd/v1/instances/auth-1?type=world", R"({"status":"ready"})", rw,
       404, ""},
  };
  for (const Case& c : cases) {
    Response r = Must(Http(gw.port, c.method, c.path, c.body, c.headers));
    EXPECT_EQ(r.status, c.want) << c.what << ": " << r.body;
    json j = r.Json();
    EXPECT_TRUE(j.is_object() && j["error"]["code"].is_string() &&
                j["error"]["message"].is_string())
        << c.what << ": not the error format: " << r.body;
    if (!c.mention.empty()) {
      EXPECT_TRUE(absl::StrContains(j["error"]["message"].get<std::string>(), c.mention))
          << c.what << ": " << r.body;
    }
    EXPECT_EQ(Keys(), keys_before) << c.what << " changed the registry";
  }
  // Reads with a ro token (or the env token) work; writes with rw / env tokens work.
  EXPECT_EQ(Must(Http(gw.port, "GET", "/sd/v1/instances", "", ro)).status, 200);
  EXPECT_EQ(Must(Http(gw.port, "GET", "/sd/v1/instances", "", env)).status, 200);
  EXPECT_EQ(Must(Http(gw.port, "POST", "/sd/v1/instances", body, env)).status, 201);
  EXPECT_TRUE(KeyExists("/services/world/auth-1"));
  EXPECT_EQ(Must(Http(gw.port, "DELETE", "/sd/v1/instances/auth-1?type=world", "", rw)).status,
            200);
  // Dashboard, metrics and healthz are open by default.
  EXPECT_EQ(Must(Http(gw.port, "GET", "/")).status, 200);
  EXPECT_EQ(Must(Http(gw.port, "GET", "/metrics")).status, 200);
  EXPECT_EQ(Must(Http(gw.port, "GET", "/healthz")).status, 200);
  // Browsers' EventSource cannot send headers: ?token= works for GETs.
  auto sse = SseClient::Connect(gw.port, "/sd/v1/subscribe?token=ro-token");
  ASSERT_TRUE(sse.ok());
  EXPECT_TRUE((*sse)->WaitFor(
      [](const std::vector<SseEvent>& ev) {
        return HasEvent(ev, "synced", [](auto&) { return true; });
      },
      absl::Seconds(5)));

  // A client that starts a request and goes quiet is dropped after --read-timeout (1 s).
  {
    auto sock = testing::TestSocket::Connect(gw.port, absl::Seconds(5));
    ASSERT_TRUE(sock.ok());
    ASSERT_TRUE((*sock)->SendAll("GET /healthz HTTP/1.1\r\nHost: x\r\n").ok());
    absl::Time start = absl::Now();
    auto got = (*sock)->ReceiveSome();
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, "") << "expected the server to close the half-sent request";
    EXPECT_LT(absl::Now() - start, TimeScale(absl::Seconds(4)));
  }

  // --protect-dashboard: / and /metrics need a token too (header or ?token=).
  GatewayProc guarded = StartGateway({"--api-token-file", token_file, "--protect-dashboard"});
  ASSERT_GT(guarded.port, 0);
  EXPECT_EQ(Must(Http(guarded.port, "GET", "/")).status, 401);
  EXPECT_EQ(Must(Http(guarded.port, "GET", "/metrics")).status, 401);
  EXPECT_EQ(Must(Http(guarded.port, "GET", "/?token=ro-token")).status, 200);
  EXPECT_EQ(Must(Http(guarded.port, "GET", "/metrics", "", ro)).status, 200);
  EXPECT_EQ(Must(Http(guarded.port, "GET", "/healthz")).status, 200);
}

TEST_F(DiscoverydTest, HealthzFollowsEtcdAndMetricsAreExported) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  ASSERT_TRUE(WaitUntil([&] { return Must(Http(gw.port, "GET", "/healthz")).status == 200; },
                        absl::Seconds(5)));
  ASSERT_EQ(
      Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody("m-1", "ready").dump())).status,
      201);
  ASSERT_TRUE(WaitUntil(
      [&] {
        return absl::StrContains(Must(Http(gw.port, "GET", "/metrics")).body,
                                 R"(discovery_instances{status="ready",type="world"} 1)");
      },
      absl::Seconds(5)));
  Response m = Must(Http(gw.port, "GET", "/metrics"));
  EXPECT_TRUE(absl::StartsWith(m.headers["content-type"], "text/plain"));
  for (const char* name :
       {"discovery_instances", "discovery_watch_events_total", "discovery_resyncs_total",
        "discovery_http_requests_total{", "discovery_http_request_duration_seconds_bucket{",
        "discovery_sse_subscribers", "route=\"/sd/v1/instances\""}) {
    EXPECT_TRUE(absl::StrContains(m.body, name)) << name << " missing in\n" << m.body;
  }

  // etcd frozen: 503 (within the ~1 s ping cache + 1 s ping timeout); back: 200.
  ASSERT_TRUE(cluster_->Stop(0).ok());
  EXPECT_TRUE(WaitUntil([&] { return Must(Http(gw.port, "GET", "/healthz")).status == 503; },
                        absl::Seconds(6)));
  Response down = Must(Http(gw.port, "GET", "/healthz"));
  EXPECT_EQ(down.Json()["status"], "unavailable") << down.body;
  // The cache keeps serving discovery while etcd is away.
  EXPECT_EQ(Must(Http(gw.port, "GET", "/sd/v1/instances?type=world")).Json()["instances"].size(),
            1u);
  ASSERT_TRUE(cluster_->Cont(0).ok());
  EXPECT_TRUE(WaitUntil([&] { return Must(Http(gw.port, "GET", "/healthz")).status == 200; },
                        absl::Seconds(10)));
}

}  // namespace
}  // namespace discovery
