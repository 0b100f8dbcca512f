// Shared fixture of the discoveryd end-to-end tests: a one-member etcd from the harness and
// discoveryd processes spawned with --listen 127.0.0.1:0 (the real port is read from the
// "discoveryd serving http://127.0.0.1:PORT/" log line).
#ifndef DISCOVERY_TESTS_DISCOVERYD_GATEWAY_FIXTURE_H_
#define DISCOVERY_TESTS_DISCOVERYD_GATEWAY_FIXTURE_H_

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "child_process.h"
#include "discovery/instance.h"
#include "etcd_harness.h"
#include "http_test_client.h"
#include "nlohmann/json.hpp"

namespace discovery::testing {

using json = nlohmann::json;

struct GatewayProc {
  std::unique_ptr<ChildProcess> proc;
  int port = 0;
};

// A ready `world` instance in group kr-1 on 127.0.0.1 with port game=8001: the tests' sample.
inline Instance WorldInstance(const std::string& id) {
  Instance in;
  in.instance_id = id;
  in.type = "world";
  in.group = "kr-1";
  in.hostname = "game-" + id;
  in.private_ip = "127.0.0.1";
  in.ports = {{"game", 8001}};
  in.status = InstanceStatus::kReady;
  return in;
}

// The TTL of a WorldBody registration unless a test asks for another. Nothing heartbeats
// these: a registration that must live through the test needs a TTL longer than the test may
// take on a loaded CI host (10 s was not: a page load after chromium started outlived it).
// Tests of expiry pass a short TTL of their own.
inline constexpr int kWorldTtlSeconds = 60;

inline json WorldBody(const std::string& id, const std::string& status = "initializing",
                      int ttl = kWorldTtlSeconds) {
  json j = {{"type", "world"},          {"group", "kr-1"},           {"hostname", "game-01"},
            {"privateIp", "127.0.0.1"}, {"ports", {{"game", 8001}}}, {"version", "1.4.2"},
            {"status", status},         {"ttlSeconds", ttl}};
  if (!id.empty()) j["instanceId"] = id;
  return j;
}

inline bool HasEvent(const std::vector<SseEvent>& events, const std::string& name,
                     const std::function<bool(const json&)>& pred) {
  for (const SseEvent& e : events) {
    if (e.event == name && e.data.is_object() && pred(e.data)) return true;
  }
  return false;
}

inline std::function<bool(const json&)> IdIs(const std::string& id, const std::string& type = "") {
  return [id, type](const json& d) {
    return d.contains("instance") && d["instance"].value("instanceId", "") == id &&
           (type.empty() || d.value("type", "") == type);
  };
}

// The revision of an SSE event id "<epoch>.<revision>"; -1 when `id` is empty or not one.
inline int64_t RevisionOfId(const std::string& id) {
  size_t dot = id.find('.');
  if (dot == std::string::npos) return -1;
  return std::stoll(id.substr(dot + 1));
}
// The epoch of an SSE event id; empty when none.
inline std::string EpochOfId(const std::string& id) {
  size_t dot = id.find('.');
  return dot == std::string::npos ? std::string() : id.substr(0, dot);
}

// Spawns discoveryd (the DISCOVERYD binary) against `endpoints_csv` (etcd endpoints, or a
// redis:// URL: then --store) and waits up to `timeout` for its "serving
// http://127.0.0.1:PORT/" line. On failure (non-fatal) the returned port is 0.
inline GatewayProc SpawnGateway(const std::string& endpoints_csv,
                                std::vector<std::string> extra = {},
                                std::vector<std::pair<std::string, std::string>> env = {},
                                const std::string& listen = "127.0.0.1:0",
                                absl::Duration timeout = absl::Seconds(15),
                                std::vector<std::string> launcher = {}) {
  // `launcher`: a command that execs discoveryd, e.g. {"prlimit", "--nofile=64:64", "--"}.
  std::vector<std::string> argv = std::move(launcher);
  const bool redis = absl::StartsWith(endpoints_csv, "redis");
  for (const std::string& a : {std::string(DISCOVERYD), std::string("--listen"), listen,
                               std::string(redis ? "--store" : "--endpoints"), endpoints_csv}) {
    argv.push_back(a);
  }
  argv.insert(argv.end(), extra.begin(), extra.end());
  GatewayProc gw;
  auto proc = ChildProcess::Spawn(
      {.argv = argv, .env = env, .unset_env_prefixes = {"ETCD_", "DISCOVERY_"}});
  EXPECT_TRUE(proc.ok()) << proc.status();
  if (!proc.ok()) return gw;
  gw.proc = *std::move(proc);
  static const std::regex kServing("discoveryd serving https?://127\\.0\\.0\\.1:([0-9]+)/");
  bool ready = WaitUntil(
      [&] {
        std::smatch m;
        std::string err = gw.proc->ReadStderr();
        if (std::regex_search(err, m, kServing)) {
          gw.port = std::stoi(m[1]);
          return true;
        }
        return !gw.proc->Running();
      },
      timeout);
  EXPECT_TRUE(ready && gw.port > 0) << "discoveryd did not start:\n" << gw.proc->ReadStderr();
  return gw;
}

class DiscoverydTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto c = EtcdCluster::Start({.members = 1});
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
  }

  GatewayProc StartGateway(std::vector<std::string> extra = {},
                           std::vector<std::pair<std::string, std::string>> env = {},
                           const std::string& listen = "127.0.0.1:0") {
    return SpawnGateway(cluster_->EndpointsCsv(), std::move(extra), std::move(env), listen);
  }

  std::string Keys() {
    auto out = cluster_->Etcdctl({"get", "/services/", "--prefix", "--keys-only"});
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : "<error>";
  }
  bool KeyExists(const std::string& key) {
    auto out = cluster_->Etcdctl({"get", key, "--keys-only"});
    return out.ok() && absl::StrContains(*out, key);
  }
  json Value(const std::string& key) {
    auto out = cluster_->Etcdctl({"get", key, "--print-value-only"});
    if (!out.ok() || out->empty()) return json();
    return json::parse(*out, nullptr, false);
  }

  std::unique_ptr<EtcdCluster> cluster_;
};

inline Response Must(absl::StatusOr<Response> r) {
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *std::move(r) : Response{};
}

}  // namespace discovery::testing

#endif  // DISCOVERY_TESTS_DISCOVERYD_GATEWAY_FIXTURE_H_
