// Gateway mode over TLS (issue 16, label etcd): discoveryd started with --tls-cert/--tls-key
// (and --tls-client-ca for mTLS) in front of a real etcd, certificates made with the openssl
// CLI in a temp dir; the unchanged Registrar and Watcher over https:// URLs; wrong CA, wrong
// scheme and missing client certificates fail clearly and within the call timeout; the token
// rules (none -> 401, read-only -> 403) over https and no token ever in discoveryd's log.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/ssl/context.hpp"
#include "discovery/gateway_client.h"
#include "discovery/registrar.h"
#include "discovery/watcher.h"
#include "gateway/http_client.h"
#include "gateway/transport.h"
#include "gateway_fixture.h"
#include "util/clock.h"

namespace discovery::testing {
namespace {

absl::Status Shell(const std::string& cmd) {
  int rc = std::system(cmd.c_str());
  return rc == 0 ? absl::OkStatus() : absl::InternalError(absl::StrCat(cmd, " -> ", rc));
}

// <name>.pem/.key signed by <ca>.pem (made first when `ca` is itself), valid for 127.0.0.1.
absl::Status MakeCert(const std::string& d, const std::string& name, const std::string& ca) {
  const std::string q = " >/dev/null 2>&1";
  if (name == ca) {
    return Shell(absl::StrCat("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=", ca,
                              " -keyout ", d, "/", ca, ".key -out ", d, "/", ca, ".pem", q));
  }
  std::ofstream(d + "/san.cnf") << "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
  if (absl::Status s =
          Shell(absl::StrCat("openssl req -newkey rsa:2048 -nodes -subj /CN=", name, " -keyout ", d,
                             "/", name, ".key -out ", d, "/", name, ".csr", q));
      !s.ok()) {
    return s;
  }
  return Shell(absl::StrCat("openssl x509 -req -in ", d, "/", name, ".csr -CA ", d, "/", ca,
                            ".pem -CAkey ", d, "/", ca, ".key -CAcreateserial -days 2 -extfile ", d,
                            "/san.cnf -out ", d, "/", name, ".pem", q));
}

class GatewayTlsTest : public DiscoverydTest {
 protected:
  void SetUp() override {
    DiscoverydTest::SetUp();
    auto dir = MakeTempDir("discovery-gw-tls");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = *dir;
    // ca signs the server and the client; "other" is a CA nobody trusts.
    for (auto [name, ca] :
         {std::pair{"ca", "ca"}, std::pair{"server", "ca"}, std::pair{"client", "ca"},
          std::pair{"other", "other"}, std::pair{"rogue", "other"}}) {
      ASSERT_TRUE(MakeCert(dir_, name, ca).ok()) << name;
    }
  }
  std::string F(const std::string& name) const { return absl::StrCat(dir_, "/", name); }

  GatewayProc StartHttps(std::vector<std::string> extra = {}, const std::string& cert = "server",
                         std::vector<std::pair<std::string, std::string>> env = {}) {
    std::vector<std::string> args = {"--tls-cert", F(cert + ".pem"), "--tls-key", F(cert + ".key")};
    args.insert(args.end(), extra.begin(), extra.end());
    return StartGateway(args, std::move(env));
  }
  static std::string Https(const GatewayProc& gw) {
    return absl::StrCat("https://127.0.0.1:", gw.port);
  }
  static std::string Plain(const GatewayProc& gw) {
    return absl::StrCat("http://127.0.0.1:", gw.port);
  }

  std::shared_ptr<Connection> Gateway(std::vector<std::string> urls, const std::string& ca,
                                      const std::string& token = "",
                                      const std::string& client = "") {
    GatewayClientOptions o;
    o.urls = std::move(urls);
    o.api_token = token;
    o.call_timeout = kCallTimeout;
    if (!ca.empty()) o.ca_file = F(ca + ".pem");
    if (!client.empty()) {
      o.cert_file = F(client + ".pem");
      o.key_file = F(client + ".key");
    }
    auto conn = ConnectGateway(o);
    EXPECT_TRUE(conn.ok()) << conn.status();
    return conn.ok() ? *conn : nullptr;
  }
  static std::unique_ptr<Registrar> RegistrarOn(std::shared_ptr<Connection> conn) {
    auto r = Registrar::Create({.connection = std::move(conn)});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *std::move(r) : nullptr;
  }
  static std::unique_ptr<Watcher> WatcherOn(std::shared_ptr<Connection> conn) {
    WatcherOptions wo;
    wo.connection = std::move(conn);
    auto w = Watcher::Create(std::move(wo));
    EXPECT_TRUE(w.ok()) << w.status();
    return w.ok() ? *std::move(w) : nullptr;
  }
  // One GET through the library's own client (a fresh connection each time).
  absl::StatusOr<gateway::HttpResult> Get(const std::string& url, const std::string& path) {
    auto u = gateway::ParseUrl(url);
    if (!u.ok()) return u.status();
    if (u->tls && tls_ == nullptr) {
      auto ctx = gateway::MakeClientTlsContext({.ca_file = F("ca.pem")});
      if (!ctx.ok()) return ctx.status();
      tls_ = *ctx;
    }
    gateway::HttpClient client({*u}, "", kCallTimeout, u->tls ? tls_ : nullptr);
    return client.Call("GET", path, "");
  }

  static constexpr absl::Duration kCallTimeout = absl::Seconds(2);
  std::string dir_;
  std::shared_ptr<boost::asio::ssl::context> tls_;  // Get()'s, loaded once
};

// Registrar + Watcher over https:// with the right CA: register, the watcher sees it, Close
// removes it (etcd and the watcher), heartbeats on one keep-alive TLS connection.
TEST_F(GatewayTlsTest, RegistrarAndWatcherOverHttpsWorkEndToEnd) {
  GatewayProc gw = StartHttps();
  ASSERT_GT(gw.port, 0);
  EXPECT_TRUE(absl::StrContains(gw.proc->ReadStderr(), "serving https://127.0.0.1:"))
      << gw.proc->ReadStderr();
  auto conn = Gateway({Https(gw)}, "ca");
  ASSERT_NE(conn, nullptr);
  auto watcher = WatcherOn(conn);
  ASSERT_NE(watcher, nullptr);
  ASSERT_TRUE(watcher->WaitForSync(absl::Seconds(5)).ok());
  auto registrar = RegistrarOn(conn);
  ASSERT_NE(registrar, nullptr);
  auto reg = registrar->Register(WorldInstance("tls-a"), {.ttl = absl::Seconds(2)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  EXPECT_TRUE(KeyExists("/services/world/tls-a"));
  EXPECT_TRUE(WaitUntil([&] { return watcher->snapshot()->Find("world", "tls-a") != nullptr; },
                        absl::Seconds(5)));
  // Past two TTLs: the heartbeats over TLS keep it.
  EXPECT_FALSE(WaitUntil([&] { return !KeyExists("/services/world/tls-a"); }, absl::Seconds(5),
                         absl::Milliseconds(250)));
  ASSERT_TRUE(reg->Close().ok());
  EXPECT_TRUE(WaitUntil([&] { return !KeyExists("/services/world/tls-a"); }, absl::Seconds(3)));
  EXPECT_TRUE(WaitUntil([&] { return watcher->snapshot()->Find("world", "tls-a") == nullptr; },
                        absl::Seconds(5)));
  // Keep-alive over TLS: several calls, one connection.
  auto u = gateway::ParseUrl(Https(gw));
  ASSERT_TRUE(u.ok());
  auto ctx = gateway::MakeClientTlsContext({.ca_file = F("ca.pem")});
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  gateway::HttpClient client({*u}, "", kCallTimeout, *ctx);
  for (int i = 0; i < 5; ++i) {
    auto r = client.Call("GET", "/healthz", "");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_EQ(client.dials(), 1u);
}

// An SSE stream over TLS lives past the read timeout (idle between events) and carries every
// event: the stream's read of the client's close and the writes' deadlines do not interfere.
TEST_F(GatewayTlsTest, SseStreamOverHttpsOutlivesTheReadTimeout) {
  GatewayProc gw = StartHttps({"--read-timeout", "1"});
  ASSERT_GT(gw.port, 0);
  auto conn = Gateway({Https(gw)}, "ca");
  auto watcher = WatcherOn(conn);
  ASSERT_NE(watcher, nullptr);
  ASSERT_TRUE(watcher->WaitForSync(absl::Seconds(5)).ok());
  auto registrar = RegistrarOn(conn);
  ASSERT_NE(registrar, nullptr);
  auto reg = registrar->Register(WorldInstance("sse-1"));
  ASSERT_TRUE(reg.ok()) << reg.status();
  for (int i = 0; i < 3; ++i) {
    const std::string state = absl::StrCat("round-", i);
    ASSERT_TRUE(reg->SetStatus(InstanceStatus::kReady, state).ok());
    ASSERT_TRUE(WaitUntil(
        [&] {
          InstancePtr in = watcher->snapshot()->Find("world", "sse-1");
          return in != nullptr && in->custom_state == state;
        },
        absl::Seconds(5)))
        << state;
    // Idle for longer than --read-timeout before the next event.
    EXPECT_FALSE(
        WaitUntil([&] { return watcher->stats().resync_backoffs > 0; }, absl::Milliseconds(1500)));
  }
  EXPECT_EQ(watcher->stats().resync_backoffs, 0u) << "the SSE stream over TLS was replaced";
}

// A CA that did not sign the gateway's certificate: kUnavailable naming the URL and
// "certificate verify failed", within the call timeout; the next URL (a good gateway) is tried.
TEST_F(GatewayTlsTest, WrongCaFailsClearlyWithinTheCallTimeoutAndFailsOver) {
  GatewayProc gw = StartHttps();
  ASSERT_GT(gw.port, 0);
  auto registrar = RegistrarOn(Gateway({Https(gw)}, "other"));
  ASSERT_NE(registrar, nullptr);
  const absl::Time start = util::MonoNow();
  auto reg = registrar->Register(WorldInstance("tls-wrong-ca"));
  const absl::Duration took = util::MonoNow() - start;
  ASSERT_FALSE(reg.ok());
  EXPECT_EQ(reg.status().code(), absl::StatusCode::kUnavailable) << reg.status();
  EXPECT_TRUE(absl::StrContains(reg.status().message(), Https(gw))) << reg.status();
  EXPECT_TRUE(absl::StrContains(reg.status().message(), "certificate verify failed"))
      << reg.status();
  EXPECT_LT(took, kCallTimeout + absl::Seconds(1));
  auto watcher = WatcherOn(Gateway({Https(gw)}, "other"));
  ASSERT_NE(watcher, nullptr);
  absl::Status sync = watcher->WaitForSync(absl::Seconds(3));
  EXPECT_FALSE(sync.ok());
  EXPECT_FALSE(KeyExists("/services/world/tls-wrong-ca"));

  // A gateway whose certificate is signed by an untrusted CA, then a good one: failover.
  GatewayProc rogue = StartHttps({}, "rogue");
  ASSERT_GT(rogue.port, 0);
  auto both = Gateway({Https(rogue), Https(gw)}, "ca");
  auto keep = RegistrarOn(both);  // alive to the end: its destructor closes the registration
  auto ok = keep->Register(WorldInstance("tls-failover"));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_TRUE(KeyExists("/services/world/tls-failover"));
  auto w = WatcherOn(both);
  ASSERT_NE(w, nullptr);
  EXPECT_TRUE(w->WaitForSync(absl::Seconds(10)).ok());
}

// The wrong scheme on either side: a clear error, no hang.
TEST_F(GatewayTlsTest, WrongSchemeOnEitherSideFailsClearly) {
  GatewayProc plain = StartGateway();
  GatewayProc tls = StartHttps();
  ASSERT_GT(plain.port, 0);
  ASSERT_GT(tls.port, 0);
  const absl::Time start = util::MonoNow();
  auto a = RegistrarOn(Gateway({Https(plain)}, "ca"))->Register(WorldInstance("tls-x1"));
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kUnavailable) << a.status();
  EXPECT_TRUE(absl::StrContains(a.status().message(), "TLS handshake")) << a.status();
  auto b = RegistrarOn(Gateway({Plain(tls)}, ""))->Register(WorldInstance("tls-x2"));
  ASSERT_FALSE(b.ok());
  EXPECT_TRUE(absl::StrContains(b.status().message(), "speaks https")) << b.status();
  auto w = WatcherOn(Gateway({Plain(tls)}, ""));
  ASSERT_NE(w, nullptr);
  absl::Status sync = w->WaitForSync(absl::Seconds(3));
  EXPECT_TRUE(absl::StrContains(sync.message(), "speaks https")) << sync;
  EXPECT_LT(util::MonoNow() - start, 2 * kCallTimeout + absl::Seconds(4));
}

// mTLS: without a client certificate signed by --tls-client-ca the handshake is refused; with
// one, everything works.
TEST_F(GatewayTlsTest, MutualTlsRefusesClientsWithoutACertificate) {
  GatewayProc gw = StartHttps({"--tls-client-ca", F("ca.pem")});
  ASSERT_GT(gw.port, 0);
  EXPECT_TRUE(absl::StrContains(gw.proc->ReadStderr(), "client certificates required"));
  for (const std::string& client : {std::string(), std::string("rogue")}) {
    auto r = RegistrarOn(Gateway({Https(gw)}, "ca", "", client))->Register(WorldInstance("m0"));
    ASSERT_FALSE(r.ok()) << client;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  }
  EXPECT_FALSE(KeyExists("/services/world/m0"));
  auto conn = Gateway({Https(gw)}, "ca", "", "client");
  auto registrar = RegistrarOn(conn);
  auto reg = registrar->Register(WorldInstance("m1"));
  ASSERT_TRUE(reg.ok()) << reg.status();
  auto w = WatcherOn(conn);
  ASSERT_NE(w, nullptr);
  ASSERT_TRUE(w->WaitForSync(absl::Seconds(5)).ok());
  EXPECT_TRUE(
      WaitUntil([&] { return w->snapshot()->Find("world", "m1") != nullptr; }, absl::Seconds(5)));
}

// A stranger that connects and sends nothing holds a connection (in the cap) for the read
// timeout at most; a failed handshake is counted in /metrics.
TEST_F(GatewayTlsTest, SilentStrangersAreDroppedAndCountInTheConnectionCap) {
  GatewayProc gw = StartHttps({"--read-timeout", "1", "--max-connections", "2"});
  ASSERT_GT(gw.port, 0);
  std::vector<std::unique_ptr<TestSocket>> silent;
  for (int i = 0; i < 2; ++i) {
    auto s = TestSocket::Connect(gw.port, absl::Seconds(2));
    ASSERT_TRUE(s.ok()) << s.status();
    silent.push_back(*std::move(s));
  }
  // Both slots are taken by silent connections: a third one is refused at once (503).
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto third = TestSocket::Connect(gw.port, absl::Seconds(2));
        if (!third.ok()) return false;
        auto got = (*third)->ReceiveSome();
        return got.ok() && absl::StrContains(*got, "503");
      },
      absl::Seconds(3)));
  // The silent ones are dropped after --read-timeout (EOF or reset), freeing the slots.
  for (auto& s : silent) {
    const absl::Time start = util::MonoNow();
    auto got = s->ReceiveSome();
    EXPECT_TRUE(!got.ok() || got->empty());
    EXPECT_LT(util::MonoNow() - start, absl::Seconds(3));
  }
  absl::StatusOr<gateway::HttpResult> metrics;
  ASSERT_TRUE(WaitUntil(
      [&] {
        metrics = Get(Https(gw), "/metrics");
        return metrics.ok() && metrics->status == 200;
      },
      absl::Seconds(5)))
      << metrics.status();
  // Two silent strangers at least (a third attempt may have been accepted before the cap).
  const std::string name = "\ndiscovery_http_tls_handshake_failures_total ";
  const size_t at = metrics->body.find(name);
  ASSERT_NE(at, std::string::npos) << metrics->body;
  EXPECT_GE(std::stod(metrics->body.substr(at + name.size())), 2.0) << metrics->body;
}

// Bad TLS flags stop discoveryd at start-up with a clear message.
TEST_F(GatewayTlsTest, BadTlsFlagsFailAtStartUp) {
  std::ofstream(F("garbage.pem")) << "not a certificate\n";
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"--tls-cert", F("server.pem")}, "--tls-cert and --tls-key go together"},
      {{"--tls-key", F("server.key")}, "--tls-cert and --tls-key go together"},
      {{"--tls-client-ca", F("ca.pem")}, "--tls-client-ca needs --tls-cert"},
      {{"--tls-cert", F("missing.pem"), "--tls-key", F("server.key")}, "cannot read"},
      {{"--tls-cert", F("garbage.pem"), "--tls-key", F("server.key")}, "not a PEM certificate"},
      {{"--tls-cert", F("server.pem"), "--tls-key", F("client.key")}, "does not match"},
      {{"--tls-cert", F("server.pem"), "--tls-key", F("server.key"), "--tls-client-ca",
        F("garbage.pem")},
       "not a PEM CA"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> argv = {DISCOVERYD, "--listen", "127.0.0.1:0", "--endpoints",
                                     cluster_->EndpointsCsv()};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    auto proc = ChildProcess::Spawn({.argv = argv, .unset_env_prefixes = {"ETCD_", "DISCOVERY_"}});
    ASSERT_TRUE(proc.ok()) << proc.status();
    auto rc = (*proc)->Wait(absl::Seconds(5));
    ASSERT_TRUE(rc.ok()) << "discoveryd still running with " << c.args[0];
    EXPECT_NE(*rc, 0);
    EXPECT_TRUE(absl::StrContains((*proc)->ReadStderr(), c.says)) << c.says << "\n"
                                                                  << (*proc)->ReadStderr();
  }
  GatewayClientOptions o;
  o.urls = {"https://127.0.0.1:1"};
  o.ca_file = F("missing.pem");
  auto conn = ConnectGateway(o);
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kInvalidArgument) << conn.status();
}

// Token rules over https: no token -> kUnauthenticated (401), read-only -> watches but cannot
// register (kPermissionDenied, 403), read-write -> registers. No token, good or bad, ever
// appears in discoveryd's log, even at debug level.
TEST_F(GatewayTlsTest, TokenRulesAndNoTokenInTheLog) {
  const std::string rw = "rwTok-7f3a9c1e5b", ro = "roTok-2d8e4b6a0c", bad = "badTok-91c7e5a3f";
  std::ofstream(F("tokens")) << rw << " rw\n" << ro << " ro\n";
  GatewayProc gw =
      StartHttps({"--api-token-file", F("tokens")}, "server", {{"DISCOVERY_LOG_LEVEL", "debug"}});
  ASSERT_GT(gw.port, 0);
  auto none = RegistrarOn(Gateway({Https(gw)}, "ca"))->Register(WorldInstance("t0"));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnauthenticated) << none.status();
  EXPECT_TRUE(absl::StrContains(none.status().message(), "401")) << none.status();
  auto wrong = RegistrarOn(Gateway({Https(gw)}, "ca", bad))->Register(WorldInstance("t1"));
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kUnauthenticated) << wrong.status();
  auto ro_conn = Gateway({Https(gw)}, "ca", ro);
  auto denied = RegistrarOn(ro_conn)->Register(WorldInstance("t2"));
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied) << denied.status();
  EXPECT_TRUE(absl::StrContains(denied.status().message(), "403")) << denied.status();
  auto watcher = WatcherOn(ro_conn);
  ASSERT_NE(watcher, nullptr);
  ASSERT_TRUE(watcher->WaitForSync(absl::Seconds(5)).ok());
  auto registrar = RegistrarOn(Gateway({Https(gw)}, "ca", rw));
  auto reg = registrar->Register(WorldInstance("t3"));
  ASSERT_TRUE(reg.ok()) << reg.status();
  EXPECT_TRUE(WaitUntil([&] { return watcher->snapshot()->Find("world", "t3") != nullptr; },
                        absl::Seconds(5)));
  ASSERT_TRUE(reg->Close().ok());
  EXPECT_FALSE(KeyExists("/services/world/t0"));
  EXPECT_FALSE(KeyExists("/services/world/t2"));
  const std::string log = gw.proc->ReadStderr() + gw.proc->ReadStdout();
  EXPECT_FALSE(log.empty());
  for (const std::string& token : {rw, ro, bad}) {
    EXPECT_FALSE(absl::StrContains(log, token)) << token << " in discoveryd's log:\n" << log;
  }
}

// What a TLS handshake costs: 100 sequential fresh connections (connect + handshake + one
// GET /healthz) over https vs http on loopback. Printed, not asserted (a shared CI machine).
TEST_F(GatewayTlsTest, HandshakeCostOnLoopback) {
  GatewayProc plain = StartGateway();
  GatewayProc tls = StartHttps();
  ASSERT_GT(plain.port, 0);
  ASSERT_GT(tls.port, 0);
  for (const std::string& url : {Plain(plain), Https(tls)}) {
    ASSERT_TRUE(WaitUntil(
        [&] {
          auto r = Get(url, "/healthz");
          return r.ok();
        },
        absl::Seconds(5)));
    const absl::Time start = util::MonoNow();
    for (int i = 0; i < 100; ++i) {
      auto r = Get(url, "/healthz");
      ASSERT_TRUE(r.ok()) << r.status();
    }
    const absl::Duration took = util::MonoNow() - start;
    std::cout << "[ cost     ] 100 sequential fresh connections + GET /healthz to " << url << ": "
              << absl::FormatDuration(took) << " (" << absl::FormatDuration(took / 100)
              << " each)\n";
    RecordProperty(absl::StartsWith(url, "https") ? "https_100_ms" : "http_100_ms",
                   static_cast<int>(absl::ToInt64Milliseconds(took)));
  }
}

}  // namespace
}  // namespace discovery::testing
