// discover over HTTP (label etcd): ETag / If-None-Match -> 304, gzip of the cached body, and
// blocking queries (?waitIndex=&wait=) that wake on a change of the MATCHING set only, answer
// at `wait`, and are capped (503). Real etcd from the harness, discoveryd as a process,
// instances written straight to etcd.
#include <gtest/gtest.h>
#include <zlib.h>

#include <future>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "discovery/etcd.h"
#include "discovery/instance.h"
#include "etcd/client.h"
#include "gateway_fixture.h"
#include "harness_util.h"
#include "http_test_client.h"

namespace discovery::testing {
namespace {

namespace pb = ::etcdserverpb;

std::string Gunzip(const std::string& in) {
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 16) != Z_OK) return "<inflateInit failed>";
  std::string out;
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  char buf[65536];
  int rc = Z_OK;
  while (rc == Z_OK) {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof(buf);
    rc = inflate(&zs, Z_NO_FLUSH);
    out.append(buf, sizeof(buf) - zs.avail_out);
  }
  inflateEnd(&zs);
  return rc == Z_STREAM_END ? out : "<inflate failed>";
}

class DiscoverHttpTest : public DiscoverydTest {
 protected:
  void SetUp() override {
    DiscoverydTest::SetUp();
    if (HasFatalFailure()) return;
    EtcdOptions o;
    o.endpoints = cluster_->ClientEndpoints();
    auto conn = Connection::Create(o);
    ASSERT_TRUE(conn.ok()) << conn.status();
    conn_ = *std::move(conn);
  }

  void Put(const std::string& group, const std::string& id, size_t filler = 0) {
    Instance in;
    in.instance_id = id;
    in.type = "world";
    in.group = group;
    in.hostname = "game-" + id;
    in.private_ip = "127.0.0.1";
    in.ports = {{"game", 8001}};
    in.status = InstanceStatus::kReady;
    if (filler > 0) in.meta["filler"] = std::string(filler, 'x');
    pb::PutRequest req;
    req.set_key("/services/world/" + id);
    req.set_value(EncodeInstance(in));
    auto r = conn_->client()->Put(req);
    ASSERT_TRUE(r.ok()) << r.status();
  }

  // The discover answer once it holds `n` instances (the gateway's cache has caught up).
  Response DiscoverWhen(int port, const std::string& query, size_t n) {
    Response last;
    bool ok = WaitUntil(
        [&] {
          last = Must(Http(port, "GET", "/sd/v1/instances?" + query));
          return last.status == 200 && last.Json()["instances"].size() == n;
        },
        TimeScale(absl::Seconds(10)));
    EXPECT_TRUE(ok) << query << " never had " << n << " instances: " << last.body;
    return last;
  }

  static int64_t IndexOf(const Response& r) {
    int64_t index = -1;
    auto it = r.headers.find("x-discovery-index");
    if (it == r.headers.end() || !absl::SimpleAtoi(it->second, &index)) return -1;
    return index;
  }

  static double Metric(int port, const std::string& name) {
    Response r = Must(Http(port, "GET", "/metrics"));
    for (absl::string_view line : absl::StrSplit(r.body, '\n')) {
      if (absl::StartsWith(line, name + " ")) {
        double v = 0;
        if (absl::SimpleAtod(line.substr(name.size() + 1), &v)) return v;
      }
    }
    return -1;
  }

  // A blocking GET on its own thread.
  std::future<absl::StatusOr<Response>> Wait(int port, const std::string& query) {
    return std::async(std::launch::async, [port, query] {
      return Http(port, "GET", "/sd/v1/instances?" + query, "", {}, absl::Seconds(120));
    });
  }

  std::shared_ptr<Connection> conn_;
};

TEST_F(DiscoverHttpTest, SameETagIs304AChangeIs200) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  Put("kr-1", "a");
  Response first = DiscoverWhen(gw.port, "type=world", 1);
  const std::string etag = first.headers["etag"];
  ASSERT_FALSE(etag.empty());
  EXPECT_EQ(etag.front(), '"');  // strong, quoted "<epoch>-<revision>"
  EXPECT_TRUE(absl::StrContains(etag, absl::StrCat("-", first.Json()["revision"].get<int64_t>())))
      << etag;
  EXPECT_EQ(first.headers["cache-control"], "no-cache");
  EXPECT_EQ(first.headers["vary"], "Accept-Encoding");

  Response again =
      Must(Http(gw.port, "GET", "/sd/v1/instances?type=world", "", {{"If-None-Match", etag}}));
  EXPECT_EQ(again.status, 304);
  EXPECT_TRUE(again.body.empty());
  EXPECT_EQ(again.headers["etag"], etag);
  Response listed = Must(Http(gw.port, "GET", "/sd/v1/instances?type=world", "",
                              {{"If-None-Match", "\"other\", " + etag}}));
  EXPECT_EQ(listed.status, 304);

  Put("kr-1", "b");
  DiscoverWhen(gw.port, "type=world", 2);
  Response changed =
      Must(Http(gw.port, "GET", "/sd/v1/instances?type=world", "", {{"If-None-Match", etag}}));
  EXPECT_EQ(changed.status, 200);
  EXPECT_EQ(changed.Json()["instances"].size(), 2u);
  EXPECT_NE(changed.headers["etag"], etag);
  EXPECT_GE(Metric(gw.port, "discovery_http_discover_cache_hits_total"), 1);
  EXPECT_GE(Metric(gw.port, "discovery_http_discover_cache_misses_total"), 2);
}

TEST_F(DiscoverHttpTest, GzipBodyDecompressesToTheSameJson) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  // "tiny" first: once the 20 are visible nothing else is pending, so both answers below are
  // of one revision (with tiny last, the gzip answer could carry its newer revision).
  Put("tiny", "t");
  for (int i = 0; i < 20; ++i) Put("kr-1", absl::StrCat("big", i), 200);
  Response plain = DiscoverWhen(gw.port, "type=world&group=kr-1", 20);
  Response gz = Must(Http(gw.port, "GET", "/sd/v1/instances?type=world&group=kr-1", "",
                          {{"Accept-Encoding", "br;q=1.0, gzip;q=0.8"}}));
  ASSERT_EQ(gz.status, 200);
  EXPECT_EQ(gz.headers["content-encoding"], "gzip");
  EXPECT_EQ(gz.headers["vary"], "Accept-Encoding");
  EXPECT_LT(gz.body.size(), plain.body.size());
  EXPECT_EQ(Gunzip(gz.body), plain.body);
  // The gzip representation has its own strong ETag, and If-None-Match with it is a 304.
  EXPECT_NE(gz.headers["etag"], plain.headers["etag"]);
  Response again = Must(Http(gw.port, "GET", "/sd/v1/instances?type=world&group=kr-1", "",
                             {{"Accept-Encoding", "gzip"}, {"If-None-Match", gz.headers["etag"]}}));
  EXPECT_EQ(again.status, 304);
  // Refused gzip (q=0) and tiny bodies are sent as they are.
  Response no = Must(Http(gw.port, "GET", "/sd/v1/instances?type=world&group=kr-1", "",
                          {{"Accept-Encoding", "gzip;q=0"}}));
  EXPECT_EQ(no.headers.count("content-encoding"), 0u);
  EXPECT_EQ(no.body, plain.body);
  Response tiny = Must(Http(gw.port, "GET", "/sd/v1/instances?type=world&group=tiny", "",
                            {{"Accept-Encoding", "gzip"}}));
  EXPECT_EQ(tiny.headers.count("content-encoding"), 0u);
  EXPECT_EQ(tiny.Json()["instances"].size(), 1u);
  EXPECT_EQ(Metric(gw.port, "discovery_http_discover_gzip_encoded_total"), 1);
}

TEST_F(DiscoverHttpTest, BlockingQueryWakesOnItsGroupOnly) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  Put("kr-1", "a");
  Put("kr-2", "b");
  Response first = DiscoverWhen(gw.port, "type=world&group=kr-1", 1);
  DiscoverWhen(gw.port, "type=world&group=kr-2", 1);
  const int64_t index = IndexOf(first);
  ASSERT_GT(index, 0);

  auto waiting =
      Wait(gw.port, absl::StrCat("type=world&group=kr-1&waitIndex=", index, "&wait=60s"));
  ASSERT_TRUE(WaitUntil([&] { return Metric(gw.port, "discovery_http_blocking_waiting") == 1; },
                        TimeScale(absl::Seconds(10))));
  // A change to another group: the gateway sees it, the waiter stays.
  Put("kr-2", "c");
  DiscoverWhen(gw.port, "type=world&group=kr-2", 2);
  EXPECT_EQ(waiting.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout)
      << "a blocking query for kr-1 returned on a change to kr-2";
  EXPECT_EQ(Metric(gw.port, "discovery_http_blocking_waiting"), 1);
  // The same index again is still unchanged (not a wake-up): the kr-1 set is the same.
  EXPECT_EQ(IndexOf(Must(Http(gw.port, "GET", "/sd/v1/instances?type=world&group=kr-1"))), index);

  // A change to its group: answered within the deadline, with the new set and index.
  absl::Time put_at = absl::Now();
  Put("kr-1", "d");
  ASSERT_EQ(waiting.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  absl::StatusOr<Response> r = waiting.get();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->Json()["instances"].size(), 2u);
  EXPECT_GT(IndexOf(*r), index);
  EXPECT_LT(absl::Now() - put_at, absl::Seconds(5));
  // discoveryd counts the answer right after writing it: wait for the count, not the answer.
  EXPECT_TRUE(
      WaitUntil([&] { return Metric(gw.port, "discovery_http_blocking_changed_total") == 1; },
                TimeScale(absl::Seconds(5))));
}

TEST_F(DiscoverHttpTest, BlockingQueryAnswersAtWaitUnchanged) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  Put("kr-1", "a");
  Response first = DiscoverWhen(gw.port, "type=world", 1);
  const int64_t index = IndexOf(first);
  absl::Time start = absl::Now();
  Response r = Must(Http(
      gw.port, "GET", absl::StrCat("/sd/v1/instances?type=world&waitIndex=", index, "&wait=1s")));
  EXPECT_EQ(r.status, 200);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(900));
  EXPECT_EQ(IndexOf(r), index);
  EXPECT_EQ(r.body, first.body);
  // discoveryd counts the answer right after writing it: wait for the count, not the answer.
  EXPECT_TRUE(
      WaitUntil([&] { return Metric(gw.port, "discovery_http_blocking_timeouts_total") == 1; },
                TimeScale(absl::Seconds(5))));
  // A waitIndex the gateway has not reached (another history / replica): answered at once.
  Response ahead = Must(Http(gw.port, "GET", "/sd/v1/instances?type=world&waitIndex=999999"));
  EXPECT_EQ(ahead.status, 200);
  // Bad input: a clear 400.
  EXPECT_EQ(Must(Http(gw.port, "GET", "/sd/v1/instances?waitIndex=abc")).status, 400);
  EXPECT_EQ(Must(Http(gw.port, "GET", "/sd/v1/instances?waitIndex=1&wait=soon")).status, 400);
  EXPECT_EQ(Must(Http(gw.port, "GET", "/sd/v1/instances?waitIndex=1&healthCheck=true")).status,
            400);
}

TEST_F(DiscoverHttpTest, WaitingCapRefusesWith503) {
  GatewayProc gw = StartGateway({"--max-blocking-queries", "2"});
  ASSERT_GT(gw.port, 0);
  Put("kr-1", "a");
  const int64_t index = IndexOf(DiscoverWhen(gw.port, "type=world", 1));
  const std::string q = absl::StrCat("type=world&waitIndex=", index, "&wait=60s");
  auto w1 = Wait(gw.port, q);
  auto w2 = Wait(gw.port, q);
  ASSERT_TRUE(WaitUntil([&] { return Metric(gw.port, "discovery_http_blocking_waiting") == 2; },
                        TimeScale(absl::Seconds(10))));
  Response refused = Must(Http(gw.port, "GET", "/sd/v1/instances?" + q));
  EXPECT_EQ(refused.status, 503);
  EXPECT_EQ(refused.headers["retry-after"], "1");
  EXPECT_EQ(Metric(gw.port, "discovery_http_blocking_refused_total"), 1);
  // The waiters are answered by a change (and the cap frees).
  Put("kr-1", "b");
  ASSERT_EQ(w1.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  ASSERT_EQ(w2.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(Must(w1.get()).status, 200);
  EXPECT_EQ(Must(w2.get()).status, 200);
  EXPECT_TRUE(WaitUntil([&] { return Metric(gw.port, "discovery_http_blocking_waiting") == 0; },
                        TimeScale(absl::Seconds(10))));
}

// discovery_watch_lag_seconds (WatcherStats::watch_lag): exposed, and back to 0 once the
// watcher has applied everything etcd sent (here: after a burst of puts is visible).
TEST_F(DiscoverHttpTest, WatchLagMetricIsZeroWhenCaughtUp) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  for (int i = 0; i < 50; ++i) Put("kr-1", absl::StrCat("lag", i));
  DiscoverWhen(gw.port, "type=world", 50);
  EXPECT_TRUE(WaitUntil([&] { return Metric(gw.port, "discovery_watch_lag_seconds") == 0; },
                        TimeScale(absl::Seconds(10))))
      << "discovery_watch_lag_seconds missing or stuck";
}

}  // namespace
}  // namespace discovery::testing
