// discoveryctl --gateway (issue 16, label etcd): the built binary through a discoveryd process in
// front of a real etcd, compared with the same commands over --endpoints on the same instances:
// list (table and json), get, watch, register, set-status, deregister; the usage error when two
// transports are given; exit 3 within --timeout when no gateway answers.
#include <gtest/gtest.h>

#include <csignal>
#include <regex>

#include "absl/strings/str_cat.h"
#include "ctl_runner.h"
#include "etcd_harness.h"

namespace discovery::testing {
namespace {

using json = nlohmann::json;

class DiscoveryctlGatewayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto c = EtcdCluster::Start({.members = 1});
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
    auto proc = ChildProcess::Spawn(
        {.argv = {DISCOVERYD, "--listen", "127.0.0.1:0", "--endpoints", cluster_->EndpointsCsv()},
         .unset_env_prefixes = {"ETCD_", "DISCOVERY_"}});
    ASSERT_TRUE(proc.ok()) << proc.status();
    gateway_ = *std::move(proc);
    static const std::regex kServing("discoveryd serving http://127\\.0\\.0\\.1:([0-9]+)/");
    int port = 0;
    ASSERT_TRUE(WaitUntil(
        [&] {
          std::smatch m;
          std::string err = gateway_->ReadStderr();
          if (std::regex_search(err, m, kServing)) port = std::stoi(m[1]);
          return port > 0 || !gateway_->Running();
        },
        absl::Seconds(15)));
    ASSERT_GT(port, 0) << gateway_->ReadStderr();
    url_ = absl::StrCat("http://127.0.0.1:", port);
    etcd_ = std::make_unique<CtlRunner>(
        std::vector<std::string>{"--endpoints", cluster_->EndpointsCsv()});
    gw_ = std::make_unique<CtlRunner>(std::vector<std::string>{"--gateway", url_});
  }

  std::unique_ptr<EtcdCluster> cluster_;
  std::unique_ptr<ChildProcess> gateway_;
  std::string url_;
  std::unique_ptr<CtlRunner> etcd_;
  std::unique_ptr<CtlRunner> gw_;
};

// Registered through the gateway; list / get / watch / set-status / deregister through the
// gateway print what --endpoints prints for the same instances, except what only etcd knows
// (the lease's TTL left: "-" in the table, null in JSON).
TEST_F(DiscoveryctlGatewayTest, CommandsThroughTheGatewayMatchTheEtcdOutput) {
  auto [reg, id] = gw_->Register("gw-1");
  ASSERT_NE(reg, nullptr);
  ASSERT_EQ(id, "gw-1");
  auto [reg2, id2] = etcd_->Register("direct-2", "kr-2");
  ASSERT_NE(reg2, nullptr);

  // list, table: same header, same cells but TTL (and AGE, a clock).
  CtlResult et = etcd_->Run({"list"});
  ASSERT_EQ(et.code, 0) << et.err;
  CtlResult gt = gw_->Run({"list"});
  ASSERT_EQ(gt.code, 0) << gt.err;
  EXPECT_TRUE(gt.err.empty()) << gt.err;  // no library log lines: stderr is for errors
  std::vector<std::string> el = TableLines(et.out), gl = TableLines(gt.out);
  ASSERT_EQ(el.size(), 3u) << et.out;
  ASSERT_EQ(gl.size(), 3u) << gt.out;
  EXPECT_EQ(el[0], gl[0]);
  for (size_t row = 1; row < 3; ++row) {
    std::vector<std::string> e = TableCells(el[row]), g = TableCells(gl[row]);
    ASSERT_EQ(e.size(), 10u) << el[row];
    ASSERT_EQ(g.size(), 10u) << gl[row];
    for (size_t col = 0; col < 8; ++col) EXPECT_EQ(e[col], g[col]) << "column " << col;
    EXPECT_NE(e[8], "-");  // etcd knows the TTL left
    EXPECT_EQ(g[8], "-");  // the gateway does not: unknown, not a wrong number
  }

  // list, json: the same objects.
  CtlResult ej = etcd_->Run({"list", "-o", "json"});
  CtlResult gj = gw_->Run({"list", "-o", "json"});
  ASSERT_EQ(ej.code, 0) << ej.err;
  ASSERT_EQ(gj.code, 0) << gj.err;
  EXPECT_EQ(json::parse(ej.out), json::parse(gj.out));
  EXPECT_EQ(json::parse(gw_->Run({"list", "-o", "json", "--group", "kr-2"}).out).size(), 1u);

  // get: the same object, leaseTtlSeconds null instead of a number.
  CtlResult eg = etcd_->Run({"get", "world", "gw-1"});
  CtlResult gg = gw_->Run({"get", "world", "gw-1"});
  ASSERT_EQ(eg.code, 0) << eg.err;
  ASSERT_EQ(gg.code, 0) << gg.err;
  json e1 = json::parse(eg.out), g1 = json::parse(gg.out);
  EXPECT_TRUE(e1["leaseTtlSeconds"].is_number_integer()) << eg.out;
  EXPECT_TRUE(g1["leaseTtlSeconds"].is_null()) << gg.out;
  e1.erase("leaseTtlSeconds");
  g1.erase("leaseTtlSeconds");
  EXPECT_EQ(e1, g1);
  EXPECT_EQ(gw_->Run({"get", "world", "NO-SUCH"}).code, 2);

  // watch through the gateway: the current state, then a set-status through the gateway.
  auto watch = gw_->Start({"watch", "--initial", "--type", "world", "--group", "kr-1"});
  ASSERT_NE(watch, nullptr);
  auto added = NextWatchLine(*watch, absl::Seconds(10));
  ASSERT_TRUE(added.has_value()) << watch->ReadStderr();
  EXPECT_EQ((*added)["event"], "added");
  EXPECT_EQ((*added)["instance"]["instanceId"], "gw-1");

  CtlResult set = gw_->Run({"set-status", "world", "gw-1", "error", "--custom-state", "maint"});
  ASSERT_EQ(set.code, 0) << set.err;
  EXPECT_TRUE(absl::StrContains(set.out, "ready -> error")) << set.out;
  auto changed = NextWatchLine(*watch, absl::Seconds(10));
  ASSERT_TRUE(changed.has_value());
  EXPECT_EQ((*changed)["event"], "status_changed");
  EXPECT_EQ((*changed)["instance"]["customState"], "maint");
  json after = json::parse(etcd_->Run({"get", "world", "gw-1"}).out);
  EXPECT_EQ(after["status"], "error");
  EXPECT_EQ(after["leaseId"], e1["leaseId"]);  // the lease kept
  EXPECT_EQ(gw_->Run({"set-status", "world", "gw-1", "initializing"}).code, 1);
  EXPECT_EQ(gw_->Run({"set-status", "world", "NO-SUCH", "ready"}).code, 2);

  // deregister through the gateway: the key goes and its lease is revoked (its registrar is
  // killed first, or it would re-register once its lease is revoked).
  ASSERT_TRUE(reg2->Signal(SIGKILL).ok());
  (void)reg2->Wait(absl::Seconds(5));
  CtlResult dereg = gw_->Run({"deregister", "world", "direct-2"});
  ASSERT_EQ(dereg.code, 0) << dereg.err;
  EXPECT_TRUE(absl::StrContains(dereg.out, "revoked")) << dereg.out;
  EXPECT_EQ(etcd_->Run({"get", "world", "direct-2"}).code, 2);
  EXPECT_EQ(gw_->Run({"deregister", "world", "direct-2"}).code, 2);

  // register through the gateway, SIGTERM: removed at once.
  ASSERT_TRUE(reg->Signal(SIGTERM).ok());
  EXPECT_EQ(reg->Wait(absl::Seconds(10)).value_or(-1), 0) << reg->ReadStderr();
  auto down = NextWatchLine(*watch, absl::Seconds(10));
  ASSERT_TRUE(down.has_value());
  auto removed = NextWatchLine(*watch, absl::Seconds(10));
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ((*removed)["event"], "removed");
  EXPECT_EQ(etcd_->Run({"get", "world", "gw-1"}).code, 2);
  ASSERT_TRUE(watch->Signal(SIGTERM).ok());
  EXPECT_EQ(watch->Wait(absl::Seconds(5)).value_or(-1), 0);
}

TEST_F(DiscoveryctlGatewayTest, TwoTransportsAreAUsageError) {
  CtlRunner both({"--gateway", url_, "--endpoints", cluster_->EndpointsCsv()});
  CtlResult r = both.Run({"list"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "alternatives")) << r.err;
  CtlRunner store({"--gateway", url_, "--store", "redis://127.0.0.1:6379"});
  EXPECT_EQ(store.Run({"list"}).code, 1);
  CtlRunner scheme({"--store", "ftp://127.0.0.1:1"});
  EXPECT_EQ(scheme.Run({"list"}).code, 1);
}

// Nothing listening, and a listener that never answers: exit 3 within the timeout, naming the
// gateway.
TEST_F(DiscoveryctlGatewayTest, UnreachableGatewayExitsWith3WithinTheTimeout) {
  for (const std::vector<std::string>& args : {std::vector<std::string>{"list"},
                                               {"get", "world", "x"},
                                               {"watch"},
                                               {"set-status", "world", "x", "ready"},
                                               {"deregister", "world", "x"}}) {
    CtlRunner down({"--gateway", "http://127.0.0.1:1", "--timeout", "1"});
    CtlResult r = down.Run(args);
    EXPECT_EQ(r.code, 3) << args[0] << ": " << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, "unreachable")) << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, "gateway")) << r.err;
    EXPECT_LT(r.took, absl::Seconds(4)) << args[0];
  }
}

}  // namespace
}  // namespace discovery::testing
