// Unit tests of discoveryctl's helpers: health-check hysteresis, URL parsing, output formats,
// value validation and exit codes. No etcd needed.
#include <gtest/gtest.h>

#include <cstdlib>

#include "absl/strings/str_split.h"
#include "common.h"
#include "health_check.h"
#include "output.h"
#include "store.h"

namespace discoveryctl {
namespace {

using discovery::InstanceStatus;

TEST(HealthTrackerTest, FirstPassIsReady) {
  HealthTracker t;
  EXPECT_EQ(t.status(), InstanceStatus::kInitializing);
  EXPECT_EQ(t.Record(true), InstanceStatus::kReady);
  EXPECT_EQ(t.Record(true), std::nullopt);
}

TEST(HealthTrackerTest, ThreeFailuresToErrorTwoPassesBack) {
  HealthTracker t;
  EXPECT_EQ(t.Record(false), std::nullopt);
  EXPECT_EQ(t.Record(false), std::nullopt);
  EXPECT_EQ(t.status(), InstanceStatus::kInitializing);  // no verdict yet
  EXPECT_EQ(t.Record(false), InstanceStatus::kError);
  EXPECT_EQ(t.Record(false), std::nullopt);
  EXPECT_EQ(t.Record(true), std::nullopt);
  EXPECT_EQ(t.Record(false), std::nullopt);  // a failure resets the passes
  EXPECT_EQ(t.Record(true), std::nullopt);
  EXPECT_EQ(t.Record(true), InstanceStatus::kReady);
  // Two failures are tolerated; a pass resets the count.
  EXPECT_EQ(t.Record(false), std::nullopt);
  EXPECT_EQ(t.Record(false), std::nullopt);
  EXPECT_EQ(t.Record(true), std::nullopt);
  EXPECT_EQ(t.Record(false), std::nullopt);
  EXPECT_EQ(t.Record(false), std::nullopt);
  EXPECT_EQ(t.Record(false), InstanceStatus::kError);
}

TEST(ParseHttpUrlTest, Forms) {
  auto u = ParseHttpUrl("http://127.0.0.1:8080/healthz?full=1");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, "8080");
  EXPECT_EQ(u->path, "/healthz?full=1");
  u = ParseHttpUrl("http://game-01");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->port, "80");
  EXPECT_EQ(u->path, "/");
  u = ParseHttpUrl("http://[::1]:81/x");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, "81");
  for (const char* bad : {"https://x/", "x:80", "http://", "http://:80/", "http://h:0/",
                          "http://h:99999/", "http://h:80/a b"}) {
    EXPECT_FALSE(ParseHttpUrl(bad).ok()) << bad;
  }
}

TEST(ParseHostPortTest, Forms) {
  auto hp = ParseHostPort("10.0.0.5:7001");
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->first, "10.0.0.5");
  EXPECT_EQ(hp->second, "7001");
  EXPECT_TRUE(ParseHostPort("[::1]:7001").ok());
  for (const char* bad : {"host", "host:", ":80", "h:x", "[::1]"}) {
    EXPECT_FALSE(ParseHostPort(bad).ok()) << bad;
  }
}

TEST(OutputTest, AgeAndPorts) {
  EXPECT_EQ(FormatAge(absl::Seconds(45)), "45s");
  EXPECT_EQ(FormatAge(absl::Seconds(192)), "3m12s");
  EXPECT_EQ(FormatAge(absl::Minutes(125)), "2h5m");
  EXPECT_EQ(FormatAge(absl::Hours(99)), "4d3h");
  EXPECT_EQ(FormatAge(-absl::Seconds(1)), "-");
  EXPECT_EQ(FormatPorts({{"game", 8001}, {"grpc", 50051}}), "game=8001,grpc=50051");
  EXPECT_EQ(FormatPorts({}), "-");
}

TEST(OutputTest, TableAlignsColumns) {
  auto a = ParseStored("/services/", "/services/world/a",
                       R"({"instanceId":"a","type":"world","group":"kr-1","privateIp":"10.0.0.5",
                           "ports":{"game":7001},"status":"ready",
                           "startedAt":"2024-01-01T00:00:00.000Z"})");
  ASSERT_TRUE(a.ok()) << a.status();
  a->lease_id = 0x694d;
  a->ttl_left = 7;
  std::string table = FormatTable({*a}, absl::FromUnixSeconds(1704067200 + 65));
  EXPECT_EQ(table,
            "TYPE   GROUP  ID  ADDRESS   PORTS      STATUS  CUSTOM-STATE  VERSION  TTL  AGE\n"
            "world  kr-1   a   10.0.0.5  game=7001  ready   -             -        7s   1m5s\n");
  nlohmann::json j = InstanceWithLease(*a);
  EXPECT_EQ(j["leaseId"], "694d");
  EXPECT_EQ(j["leaseTtlSeconds"], 7);
}

TEST(OutputTest, PrintableEscapesControlsKeepsUnicode) {
  EXPECT_EQ(Printable("plain"), "plain");
  EXPECT_EQ(Printable("\x1b[31mred\r\n"), "\\x1B[31mred\\x0D\\x0A");
  EXPECT_EQ(Printable("\xC2\x85"), "\\x85");  // C1 control NEL
  EXPECT_EQ(Printable("a\xFF"
                      "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(Printable("\xE2\x82"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // truncated sequence
  EXPECT_EQ(Printable("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong '/'
  EXPECT_EQ(Printable("서울-1 🎮"), "서울-1 🎮");
}

TEST(OutputTest, DisplayWidthCountsWideCharactersTwice) {
  EXPECT_EQ(DisplayWidth("kr-1"), 4u);
  EXPECT_EQ(DisplayWidth("서울"), 4u);
  EXPECT_EQ(DisplayWidth("東京x"), 5u);
  EXPECT_EQ(DisplayWidth("é"), 1u);          // precomposed
  EXPECT_EQ(DisplayWidth("e\xCC\x81"), 1u);  // e + combining acute
  EXPECT_EQ(DisplayWidth("🎮"), 2u);
}

TEST(OutputTest, TableAlignsWideAndHostileCells) {
  auto a = ParseStored("/services/", "/services/world/a",
                       R"({"instanceId":"a","type":"world","group":"서울","hostname":"h",
                           "customState":"\u001b[2Jwiped","status":"ready"})");
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = ParseStored("/services/", "/services/world/b",
                       R"({"instanceId":"b","type":"world","group":"kr-1","hostname":"h",
                           "status":"ready"})");
  ASSERT_TRUE(b.ok()) << b.status();
  std::string table = FormatTable({*a, *b}, absl::FromUnixSeconds(0));
  EXPECT_EQ(table.find('\x1b'), std::string::npos) << table;
  EXPECT_NE(table.find("\\x1B[2Jwiped"), std::string::npos) << table;
  // Every row puts ID in the same terminal column.
  std::vector<std::string> lines = absl::StrSplit(table, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  auto id_column = [](const std::string& line, const std::string& id) {
    return DisplayWidth(line.substr(0, line.find("  " + id + "  ") + 2));
  };
  EXPECT_EQ(id_column(lines[1], "a"), id_column(lines[0], "ID"));
  EXPECT_EQ(id_column(lines[2], "b"), id_column(lines[0], "ID"));
}

TEST(StoreTest, ParseStoredAppliesTheWatcherRules) {
  EXPECT_TRUE(ParseStored("/s/", "/s/w/a", R"({"instanceId":"a","type":"w"})").ok());
  EXPECT_FALSE(ParseStored("/s/", "/s/w/a", "nope").ok());
  EXPECT_FALSE(ParseStored("/s/", "/s/w/a", R"({"type":"w"})").ok());
  EXPECT_FALSE(ParseStored("/s/", "/s/w/a", R"({"instanceId":"b","type":"w"})").ok());
  EXPECT_FALSE(ParseStored("/s/", "/s/a", R"({"instanceId":"a","type":"w"})").ok());
  EXPECT_FALSE(ParseStored("/s/", "/s/w/a/b", R"({"instanceId":"a","type":"w"})").ok());
}

TEST(CommonTest, ExitCodesAndKeys) {
  EXPECT_EQ(ExitCodeFor(absl::OkStatus()), 0);
  EXPECT_EQ(ExitCodeFor(absl::InvalidArgumentError("")), 1);
  EXPECT_EQ(ExitCodeFor(absl::NotFoundError("")), 2);
  EXPECT_EQ(ExitCodeFor(absl::UnavailableError("")), 3);
  EXPECT_EQ(ExitCodeFor(absl::DeadlineExceededError("")), 3);
  EXPECT_EQ(ExitCodeFor(absl::UnauthenticatedError("")), 3);
  EXPECT_EQ(ExitCodeFor(absl::PermissionDeniedError("")), 3);
  EXPECT_EQ(InstanceKey("/services/", "world", "a"), "/services/world/a");
  EXPECT_EQ(PrefixEnd("/services/"), "/services0");
  EXPECT_EQ(PrefixEnd("a\xff"), "b");
}

TEST(OutputTest, WatchLineKeepsTheDocumentedKeyOrder) {
  discovery::ChangeEvent ev;
  ev.type = discovery::ChangeType::kStatusChanged;
  ev.revision = 42;
  auto in = std::make_shared<discovery::Instance>();
  in->instance_id = "a";
  in->type = "w";
  ev.instance = in;
  std::string line = WatchLine(ev);
  EXPECT_EQ(line.rfind(R"({"event":"status_changed","revision":42,"instance":{)", 0), 0u) << line;
  EXPECT_EQ(line.find('\n'), std::string::npos);
}

// The transport: the command line wins over the environment; two on either is a usage error.
TEST(ResolveTransportTest, CommandLineWinsTwoOnEitherSideIsAnError) {
  struct Env {
    Env() { Clear(); }
    ~Env() { Clear(); }
    static void Clear() {
      for (const char* n : {"ETCD_ENDPOINTS", "DISCOVERY_GATEWAY", "DISCOVERY_STORE"}) unsetenv(n);
    }
  } env;
  GlobalOptions g;
  ASSERT_TRUE(ResolveTransport(std::nullopt, std::nullopt, std::nullopt, &g).ok());
  EXPECT_FALSE(g.endpoints_given);
  EXPECT_EQ(g.endpoints, GlobalOptions().endpoints);

  setenv("ETCD_ENDPOINTS", "http://e:2379", 1);
  g = GlobalOptions();
  ASSERT_TRUE(ResolveTransport(std::nullopt, std::string("http://gw:8080"), std::nullopt, &g).ok());
  EXPECT_EQ(g.gateway, "http://gw:8080");  // the flag wins over ETCD_ENDPOINTS
  EXPECT_FALSE(g.endpoints_given);
  EXPECT_TRUE(ValidateGlobalOptions(g).ok());

  g = GlobalOptions();
  ASSERT_TRUE(ResolveTransport(std::nullopt, std::nullopt, std::nullopt, &g).ok());
  EXPECT_TRUE(g.endpoints_given);
  EXPECT_EQ(g.endpoints, "http://e:2379");

  setenv("DISCOVERY_STORE", "redis://r:6379", 1);
  g = GlobalOptions();
  absl::Status two_env = ResolveTransport(std::nullopt, std::nullopt, std::nullopt, &g);
  EXPECT_EQ(two_env.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(two_env.message().find("alternatives"), std::string_view::npos) << two_env;
  g = GlobalOptions();
  ASSERT_TRUE(ResolveTransport(std::nullopt, std::nullopt, std::string("redis://x:1"), &g).ok());
  EXPECT_EQ(g.store, "redis://x:1");

  g = GlobalOptions();
  EXPECT_EQ(
      ResolveTransport(std::string("http://e:1"), std::nullopt, std::string("redis://x:1"), &g)
          .code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace discoveryctl
