// Hostile values under the prefix, table-driven, against every component at once.
//
// A real etcd from the harness; healthy instances registered through the library Registrar
// and by example_game_server processes; then every row of HostileRows() is written with
// `etcdctl put` (value on stdin, so 1 MiB values and NUL bytes go through byte-exact; the one
// key with a NUL byte, which no argv can carry, goes through the raw client). After each row,
// and once more at the end with every row present (plus fresh readers that see them all in
// their initial read), every component is checked:
//  - library Watcher: the cache equals the expected healthy set, the hostile key is absent,
//    `invalid_values` counts exactly the invalid puts, pickers pick exactly the ready
//    healthy set, no subscription event ever carries a hostile instance;
//  - discoveryctl: `list` and `list -o json` show exactly the healthy set (and warn about the
//    skipped keys), `get` of a healthy instance works, `get` of the hostile key exits 1 with
//    one clear `discoveryctl: ...` line, a running `watch` keeps printing only healthy ones;
//  - discoveryd: discover shows exactly the healthy set, GET of the hostile id is a clear
//    4xx error, the SSE stream keeps delivering (and never a hostile instance), /metrics
//    counts the invalid values, /healthz is 200;
//  - the running Registrar: its registrations keep their leases, no lease_lost / error event;
//    every game-server process is still alive.
// Synchronisation: after each row a marker instance changes its customState; every reader
// applies events in revision order, so once it shows the marker's change it has processed the
// row. Nothing sleeps blindly.
//
// A value is valid when it decodes, its type/instanceId match the key and both are names
// ([A-Za-z0-9._-]{1,64}: what a registrar can write and a command can address).
// Rows marked `accepted` are valid instances with unusual content (unicode, BOM, escapes,
// unknown fields): they must show up everywhere, byte-exact.
#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "child_process.h"
#include "discovery/etcd.h"
#include "discovery/instance.h"
#include "discovery/registrar.h"
#include "discovery/watcher.h"
#include "etcd/client.h"
#include "etcd_harness.h"
#include "gateway_fixture.h"
#include "http_test_client.h"
#include "nlohmann/json.hpp"

namespace discovery {
namespace {

using json = nlohmann::json;
using testing::ChildProcess;
using testing::EtcdCluster;
using testing::Http;
using testing::SseClient;
using testing::SseEvent;
using testing::WaitUntil;
namespace pb = ::etcdserverpb;

constexpr char kPrefix[] = "/services/";
const absl::Duration kWait = absl::Seconds(10);

// ---- rows ----

Instance MakeInstance(const std::string& type, const std::string& id) {
  Instance in;
  in.instance_id = id;
  in.type = type;
  in.group = "kr-9";
  in.hostname = "hostile-host";
  in.private_ip = "10.9.9.9";
  in.ports = {{"game", 7001}};
  in.status = InstanceStatus::kReady;
  in.version = "1.0.0";
  return in;
}
json Valid(const std::string& type, const std::string& id) {
  return InstanceToJson(MakeInstance(type, id));
}
std::string ValidText(const std::string& type, const std::string& id) {
  return EncodeInstance(MakeInstance(type, id));
}
json With(json j, const std::string& field, json value) {
  j[field] = std::move(value);
  return j;
}
json Without(json j, const std::string& field) {
  j.erase(field);
  return j;
}
std::string Nested(const std::string& open, const std::string& inner, const std::string& close,
                   int depth) {
  std::string out;
  for (int i = 0; i < depth; ++i) out += open;
  out += inner;
  for (int i = 0; i < depth; ++i) out += close;
  return out;
}

struct Row {
  std::string name;
  std::string key;
  std::string value;
  bool accepted = false;  // a valid instance: must be visible everywhere
};

std::string W(const std::string& id) { return absl::StrCat(kPrefix, "world/", id); }

// Every hostile key's id and every instanceId inside a hostile value start with "h-"; every
// accepted row's with "ok-". So "no instance id starting with h- anywhere" is the leak check.
std::vector<Row> HostileRows() {
  std::vector<Row> rows;
  auto add = [&](std::string name, std::string key, std::string value) {
    rows.push_back({std::move(name), std::move(key), std::move(value), false});
  };
  auto add_json = [&](std::string name, const std::string& id, const json& j) {
    add(std::move(name), W(id), j.dump());
  };
  add("empty value", W("h-empty"), "");
  add("not JSON", W("h-not-json"), "not json at all");
  std::string full = ValidText("world", "h-truncated");
  add("truncated JSON", W("h-truncated"), full.substr(0, full.size() / 2));
  add("JSON null", W("h-null"), "null");
  add("JSON array", W("h-array"), "[1,2,3]");
  add("JSON number", W("h-number"), "42");
  add("JSON string", W("h-string"), "\"world\"");
  add("JSON true", W("h-true"), "true");
  add("empty object", W("h-empty-object"), "{}");
  add_json("missing instanceId", "h-no-id", Without(Valid("world", "h-no-id"), "instanceId"));
  add_json("missing type", "h-no-type", Without(Valid("world", "h-no-type"), "type"));
  add_json("empty instanceId", "h-empty-id-field", With(Valid("world", "x"), "instanceId", ""));
  add_json("ports value as string", "h-port-string",
           With(Valid("world", "h-port-string"), "ports", {{"game", "7001"}}));
  add_json("ports as string", "h-ports-string",
           With(Valid("world", "h-ports-string"), "ports", "game=7001"));
  add_json("port out of range", "h-port-70000",
           With(Valid("world", "h-port-70000"), "ports", {{"game", 70000}}));
  add_json("port zero", "h-port-0", With(Valid("world", "h-port-0"), "ports", {{"game", 0}}));
  add_json("port fraction", "h-port-frac",
           With(Valid("world", "h-port-frac"), "ports", {{"game", 80.5}}));
  add_json("weight negative", "h-weight-neg", With(Valid("world", "h-weight-neg"), "weight", -1));
  add_json("weight huge", "h-weight-huge",
           With(Valid("world", "h-weight-huge"), "weight", 1000000000000LL));
  {
    std::string v = ValidText("world", "h-weight-overflow");
    v.insert(v.size() - 1, ",\"weight\":1e400");  // a later duplicate key wins in nlohmann
    add("weight 1e400", W("h-weight-overflow"), v);
  }
  add_json("weight as string", "h-weight-string",
           With(Valid("world", "h-weight-string"), "weight", "100"));
  add_json("status unknown", "h-status-unknown",
           With(Valid("world", "h-status-unknown"), "status", "running"));
  add_json("status number", "h-status-number",
           With(Valid("world", "h-status-number"), "status", 1));
  add_json("instanceId number", "h-id-number", With(Valid("world", "x"), "instanceId", 123));
  add_json("type number", "h-type-number", With(Valid("world", "h-type-number"), "type", 5));
  add_json("startedAt not a time", "h-started",
           With(Valid("world", "h-started"), "startedAt", "yesterday"));
  add_json("leaseId not hex", "h-lease", With(Valid("world", "h-lease"), "leaseId", "xyz"));
  add_json("performance array", "h-perf", With(Valid("world", "h-perf"), "performance", {1, 2}));
  add_json("meta string", "h-meta", With(Valid("world", "h-meta"), "meta", "k=v"));
  {
    std::string v = ValidText("world", "h-bad-utf8");
    v.replace(v.find("hostile-host"), 12, "bad\xff\xfe\xc3(utf8");
    add("invalid UTF-8 in a string", W("h-bad-utf8"), v);
  }
  add("invalid UTF-8 in the key", W("h-\xff\xfe"), ValidText("world", "h-utf8-key"));
  add("BOM + garbage", W("h-bom-garbage"), "\xEF\xBB\xBFnot json");
  {
    std::string v = ValidText("world", "h-raw-nul");
    v.replace(v.find("hostile-host"), 12, std::string("hos\0tile", 8));
    add("raw NUL inside a string", W("h-raw-nul"), v);
  }
  add("only NUL bytes", W("h-all-nul"), std::string(64, '\0'));
  add("NUL byte in key and id", W(std::string("h-nul\0id", 8)),
      With(Valid("world", ""), "instanceId", std::string("h-nul\0id", 8)).dump());
  add("unicode in key and id", W("h-\xec\x84\x9c\xeb\xb2\x84"),  // h-서버
      ValidText("world", "h-\xec\x84\x9c\xeb\xb2\x84"));
  add("id longer than 64", W("h-" + std::string(70, 'x')),
      ValidText("world", "h-" + std::string(70, 'x')));
  add("type not a name", absl::StrCat(kPrefix, "wo rld/h-space-type"),
      ValidText("wo rld", "h-space-type"));
  add("200k-deep nesting", W("h-deep-200k"), std::string(200000, '['));
  add("deep nesting under the size limit", W("h-deep-objects"), Nested("{\"a\":", "1", "}", 12000));
  add_json(
      "65-deep systemInfo in a valid instance", "h-deep-field",
      With(Valid("world", "h-deep-field"), "systemInfo", json::parse(Nested("[", "1", "]", 65))));
  add("1 MiB of x", W("h-1mib"), std::string(1 << 20, 'x'));
  add_json("1 MiB valid JSON", "h-1mib-json",
           With(Valid("world", "h-1mib-json"), "meta", {{"big", std::string(1 << 20, 'x')}}));
  add_json("type in key != type in value", "h-type-mismatch", Valid("lobby", "h-type-mismatch"));
  add_json("id in key != instanceId in value", "h-id-mismatch", Valid("world", "h-other"));
  add("key with an extra segment", W("h-seg/h-extra"), ValidText("world", "h-extra"));
  add("key with extra segments, id with slashes", W("h-a/h-b/h-c"),
      ValidText("world", "h-a/h-b/h-c"));
  add("key == prefix", kPrefix, ValidText("world", "h-prefix-only"));
  add("key <prefix><type>/ (empty id)", W(""), ValidText("world", "h-empty-key-id"));
  add("key <prefix>/<id> (empty type)", absl::StrCat(kPrefix, "/h-empty-type"),
      ValidText("", "h-empty-type"));
  add("trailing garbage", W("h-trailing"), ValidText("world", "h-trailing") + " garbage");
  add("two JSON documents", W("h-two-docs"),
      ValidText("world", "h-two-docs") + ValidText("world", "h-two-docs"));

  // Valid, unusual: accepted, shown byte-exact.
  json unicode = Valid("world", "ok-unicode");
  unicode["hostname"] = "게임서버-01.예제.kr";
  unicode["customState"] = "매치진행중🎮";
  unicode["meta"] = {{"地图", "森林"}, {"emoji", "😀"}};
  unicode["version"] = "1.0.0-ß";
  rows.push_back({"valid unicode", W("ok-unicode"), unicode.dump(), true});
  rows.push_back({"valid, escaped unicode", W("ok-escaped"),
                  R"({"instanceId":"ok-escaped","type":"world","group":"kr-9",)"
                  R"("hostname":"\u00e9t\u00e9-\ud83c\udfae","status":"ready"})",
                  true});
  rows.push_back(
      {"BOM + valid JSON", W("ok-bom"), "\xEF\xBB\xBF" + ValidText("world", "ok-bom"), true});
  rows.push_back({"unknown fields", W("ok-unknown-fields"),
                  With(Valid("world", "ok-unknown-fields"), "futureField", {{"x", 1}}).dump(),
                  true});
  return rows;
}

// "type/id" when the key is <prefix><type>/<id>; nullopt otherwise.
std::optional<std::pair<std::string, std::string>> SplitKey(const std::string& key) {
  if (!absl::StartsWith(key, kPrefix)) return std::nullopt;
  std::string rest = key.substr(sizeof(kPrefix) - 1);
  size_t slash = rest.find('/');
  if (slash == std::string::npos) return std::nullopt;
  return std::make_pair(rest.substr(0, slash), rest.substr(slash + 1));
}
bool Addressable(const std::string& key) {
  auto parts = SplitKey(key);
  return parts.has_value() && ValidateName("type", parts->first).ok() &&
         ValidateName("id", parts->second).ok();
}

std::string TypeId(const std::string& type, const std::string& id) {
  return absl::StrCat(type, "/", id);
}
std::string TypeId(const json& instance) {
  if (!instance.is_object()) return "?";
  return TypeId(instance.value("type", "?"), instance.value("instanceId", "?"));
}
bool IsHostileId(const std::string& type_id) {
  return absl::StrContains(type_id, "/h-") || absl::StartsWith(type_id, "h-");
}
std::string Join(const std::set<std::string>& s) { return absl::StrJoin(s, ","); }

bool SseHas(const std::vector<SseEvent>& events, const std::string& name,
            const std::string& type_id) {
  for (const SseEvent& e : events) {
    if (e.event == name && TypeId(e.data["instance"]) == type_id) return true;
  }
  return false;
}

struct CtlResult {
  int code = -1;
  std::string out;
  std::string err;
};

// ---- fixture ----

class HostileValuesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto c = EtcdCluster::Start({.members = 1});
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
    auto etcdctl = ChildProcess::FindExecutable("etcdctl");
    ASSERT_TRUE(etcdctl.ok()) << etcdctl.status();
    etcdctl_ = *etcdctl;
    auto dir = testing::MakeTempDir("hostile-");
    ASSERT_TRUE(dir.ok());
    dir_ = *dir;

    EtcdOptions o;
    o.endpoints = cluster_->ClientEndpoints();
    auto conn = Connection::Create(o);
    ASSERT_TRUE(conn.ok()) << conn.status();
    conn_ = *conn;
    auto registrar = Registrar::Create({.connection = conn_, .on_event = [this](const auto& ev) {
                                          std::lock_guard<std::mutex> lock(mu_);
                                          registrar_events_.push_back(ev);
                                        }});
    ASSERT_TRUE(registrar.ok());
    registrar_ = *std::move(registrar);
    for (auto [type, id] : {std::pair{"world", "lib-w1"}, std::pair{"world", "lib-w2"},
                            std::pair{"lobby", "lib-l1"}, std::pair{"world", "marker"}}) {
      Instance in = MakeInstance(type, id);
      in.group = "kr-1";
      in.status = InstanceStatus::kInitializing;
      auto reg = registrar_->Register(in, {.ttl = absl::Seconds(10)});
      ASSERT_TRUE(reg.ok()) << reg.status();
      ASSERT_TRUE(reg->SetStatus(InstanceStatus::kReady).ok());
      leases_[id] = reg->lease_id();
      expected_.insert(TypeId(type, id));
      regs_.emplace(id, *std::move(reg));
    }
    // Game servers: their own processes, registrars of their own.
    StartGameServer({"--type", "world", "--group", "kr-2", "--id", "gs-w", "--count", "2"},
                    {"world/gs-w-0", "world/gs-w-1"});
    StartGameServer({"--type", "lobby", "--group", "kr-1", "--id", "gs-l"}, {"lobby/gs-l"});

    // Readers, all started before the first hostile row.
    auto w = Watcher::Create({.etcd = o, .protect_threshold = 0});
    ASSERT_TRUE(w.ok());
    watcher_ = *std::move(w);
    ASSERT_TRUE(watcher_->WaitForSync(kWait).ok());
    sub_ = watcher_->Subscribe({}, [this](const ChangeEvent& ev) {
      std::lock_guard<std::mutex> lock(mu_);
      events_.push_back(ev);
    });
    rr_ = watcher_->NewPicker("world", "", {.kind = PickerKind::kRoundRobin});
    wrr_ = watcher_->NewPicker("world", "", {.kind = PickerKind::kWeightedRoundRobin});
    StartGateway(&gateway_, &gateway_port_);
    ASSERT_GT(gateway_port_, 0);
    auto sse = SseClient::Connect(gateway_port_, "/sd/v1/subscribe");
    ASSERT_TRUE(sse.ok()) << sse.status();
    sse_ = *std::move(sse);
    // `--initial`: its first lines are the current instances, so once it printed them all it
    // is synced and subscribed, and every later change reaches it.
    watch_ = StartCtl({"watch", "--initial"});
    ASSERT_NE(watch_, nullptr);

    // Everyone sees the healthy set, all ready.
    ASSERT_TRUE(WaitUntil(
        [&] {
          auto snap = watcher_->snapshot();
          return Ids(snap->Select({.status = InstanceStatus::kReady})) == expected_;
        },
        kWait))
        << Join(Ids(watcher_->snapshot()->All()));
    std::set<std::string> initial;
    while (initial.size() < expected_.size()) {
      auto line = watch_->ReadLine(kWait);
      ASSERT_TRUE(line.has_value()) << "discoveryctl watch: " << watch_->ReadStderr();
      watch_lines_.push_back(*line);
      initial.insert(TypeId(json::parse(*line, nullptr, false)["instance"]));
    }
    Sync("setup");
    CheckAll("setup");
  }

  void TearDown() override {
    watch_.reset();
    sse_.reset();
    gateway_.reset();
    sub_.Reset();
    watcher_.reset();
    regs_.clear();
    registrar_.reset();
    game_servers_.clear();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  static std::set<std::string> Ids(const std::vector<InstancePtr>& v) {
    std::set<std::string> out;
    for (const auto& in : v) out.insert(TypeId(in->type, in->instance_id));
    return out;
  }

  void StartGameServer(std::vector<std::string> args, std::vector<std::string> ids) {
    std::vector<std::string> argv = {EXAMPLE_GAME_SERVER, "--ttl", "10"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto child = ChildProcess::Spawn({.argv = argv,
                                      .env = {{"ETCD_ENDPOINTS", cluster_->EndpointsCsv()}},
                                      .unset_env_prefixes = {"ETCD_", "DISCOVERY_"},
                                      .stdout_to_pipe = true});
    ASSERT_TRUE(child.ok()) << child.status();
    for (const std::string& id : ids) {
      auto line = (*child)->ReadLine(kWait);
      ASSERT_TRUE(line.has_value()) << (*child)->ReadStderr();
      EXPECT_EQ(id, absl::StrCat(id.substr(0, id.find('/')), "/", *line));
      expected_.insert(id);
    }
    game_servers_.push_back(*std::move(child));
  }

  void StartGateway(std::unique_ptr<ChildProcess>* proc, int* port) {
    testing::GatewayProc gw =
        testing::SpawnGateway(cluster_->EndpointsCsv(), {}, {}, "127.0.0.1:0", kWait);
    *proc = std::move(gw.proc);
    *port = gw.port;
    ASSERT_GT(*port, 0);
  }

  std::vector<std::string> CtlArgv(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {DISCOVERYCTL};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"--endpoints", cluster_->EndpointsCsv()});
    return argv;
  }
  CtlResult Ctl(const std::vector<std::string>& args) {
    CtlResult r;
    auto child =
        ChildProcess::Spawn({.argv = CtlArgv(args),
                             .unset_env_prefixes = {"ETCD", "DISCOVERY_PREFIX", "DISCOVERY_LOG"}});
    if (!child.ok()) {
      r.err = child.status().ToString();
      return r;
    }
    auto code = (*child)->Wait(absl::Seconds(15));
    r.code = code.ok() ? *code : -1;
    r.out = (*child)->ReadStdout();
    r.err = (*child)->ReadStderr();
    return r;
  }
  std::unique_ptr<ChildProcess> StartCtl(const std::vector<std::string>& args) {
    auto child =
        ChildProcess::Spawn({.argv = CtlArgv(args),
                             .unset_env_prefixes = {"ETCD", "DISCOVERY_PREFIX", "DISCOVERY_LOG"},
                             .stdout_to_pipe = true});
    EXPECT_TRUE(child.ok()) << child.status();
    return child.ok() ? *std::move(child) : nullptr;
  }

  // `etcdctl put` with the value on stdin (byte-exact, no argv size limit). Returns the
  // revision of the put. A key with a NUL byte cannot be an argv element: the raw client puts
  // that one.
  int64_t Put(const std::string& key, const std::string& value) {
    if (key.find('\0') != std::string::npos || value.empty()) {
      if (value.empty() && key.find('\0') == std::string::npos) {
        auto out = cluster_->Etcdctl({"put", "-w", "json", "--", key, ""});
        EXPECT_TRUE(out.ok()) << out.status();
        return out.ok() ? json::parse(*out, nullptr, false)["header"].value("revision", 0) : 0;
      }
      pb::PutRequest req;
      req.set_key(key);
      req.set_value(value);
      auto r = conn_->client()->Put(req);
      EXPECT_TRUE(r.ok()) << r.status();
      return r.ok() ? r->header().revision() : 0;
    }
    std::string file = absl::StrCat(dir_, "/value");
    {
      std::ofstream f(file, std::ios::binary | std::ios::trunc);
      f.write(value.data(), static_cast<std::streamsize>(value.size()));
    }
    auto child = ChildProcess::Spawn(
        {.argv = {"/bin/sh", "-c", "exec \"$0\" --endpoints=\"$1\" put -w json -- \"$2\" < \"$3\"",
                  etcdctl_, cluster_->EndpointsCsv(), key, file},
         .env = {{"ETCDCTL_API", "3"}},
         .unset_env_prefixes = {"ETCD"}});
    EXPECT_TRUE(child.ok()) << child.status();
    if (!child.ok()) return 0;
    auto code = (*child)->Wait(absl::Seconds(10));
    EXPECT_TRUE(code.ok() && *code == 0) << (*child)->ReadStderr();
    json out = json::parse((*child)->ReadStdout(), nullptr, false);
    int64_t rev = out.is_object() ? out["header"].value("revision", int64_t{0}) : 0;
    EXPECT_GT(rev, 0) << "etcdctl put " << key << " failed: " << (*child)->ReadStderr();
    return rev;
  }

  // Changes the marker's customState and waits until every reader shows that change: all
  // of them have then processed everything written before.
  void Sync(const std::string& tag) {
    ++syncs_;
    std::string state = absl::StrCat("sync-", syncs_);
    ASSERT_TRUE(regs_.at("marker").SetStatus(InstanceStatus::kReady, state).ok());
    auto is_marker = [&](const json& instance) {
      return instance.is_object() && instance.value("instanceId", "") == "marker" &&
             instance.value("customState", "") == state;
    };
    int64_t revision = 0;
    ASSERT_TRUE(WaitUntil(
        [&] {
          std::lock_guard<std::mutex> lock(mu_);
          for (const ChangeEvent& ev : events_) {
            if (ev.instance->instance_id == "marker" && ev.instance->custom_state == state) {
              revision = ev.revision;
              return true;
            }
          }
          return false;
        },
        kWait))
        << tag << ": the library watcher did not see the marker";
    ASSERT_TRUE(WaitUntil(
        [&] {
          while (auto line = watch_->ReadLine(absl::Milliseconds(50))) {
            watch_lines_.push_back(*line);
            if (is_marker(json::parse(*line, nullptr, false)["instance"])) return true;
          }
          return false;
        },
        kWait))
        << tag << ": discoveryctl watch did not print the marker; running=" << watch_->Running()
        << " stderr=" << watch_->ReadStderr();
    ASSERT_TRUE(sse_->WaitFor(
        [&](const std::vector<SseEvent>& evs) {
          for (size_t i = sse_seen_; i < evs.size(); ++i) {
            if (evs[i].event == "update" && is_marker(evs[i].data["instance"])) return true;
          }
          return false;
        },
        kWait))
        << tag << ": the SSE stream did not deliver the marker; closed=" << sse_->closed();
    ASSERT_TRUE(WaitUntil(
        [&] {
          auto r = Http(gateway_port_, "GET", "/sd/v1/instances");
          return r.ok() && r->status == 200 && r->Json().value("revision", int64_t{0}) >= revision;
        },
        kWait))
        << tag << ": discoveryd discover did not reach revision " << revision;
  }

  // The whole battery. `context` names the row in failure messages.
  void CheckAll(const std::string& context) {
    SCOPED_TRACE(context);
    // -- library watcher --
    SnapshotPtr snap = watcher_->snapshot();
    EXPECT_EQ(Join(Ids(snap->All())), Join(expected_)) << "watcher cache";
    EXPECT_EQ(watcher_->stats().invalid_values, invalid_puts_) << "watcher invalid_values";
    for (const Row& row : written_) {
      auto parts = SplitKey(row.key);
      if (row.accepted || !parts.has_value()) continue;
      EXPECT_EQ(snap->Find(parts->first, parts->second), nullptr) << row.key;
    }
    std::set<std::string> ready_world;
    for (const auto& in : snap->Select({.type = "world", .status = InstanceStatus::kReady})) {
      ready_world.insert(TypeId(in->type, in->instance_id));
    }
    for (const auto& picker : {rr_, wrr_}) {
      std::set<std::string> picked;
      for (size_t i = 0; i < 4 * ready_world.size() + 4; ++i) {
        if (InstancePtr in = picker->Pick()) picked.insert(TypeId(in->type, in->instance_id));
      }
      EXPECT_EQ(Join(picked), Join(ready_world)) << "picker";
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (; events_seen_ < events_.size(); ++events_seen_) {
        const ChangeEvent& ev = events_[events_seen_];
        std::string id = TypeId(ev.instance->type, ev.instance->instance_id);
        EXPECT_FALSE(IsHostileId(id)) << "subscription event for " << id;
        if (ev.type == ChangeType::kRemoved) {
          EXPECT_EQ(allowed_removals_.count(id), 1u) << "unexpected removal of " << id;
        }
      }
      for (const RegistrationEvent& ev : registrar_events_) {
        EXPECT_TRUE(ev.type == RegistrationEventType::kRegistered)
            << "registrar event " << ToString(ev.type) << " " << ev.instance_id << " " << ev.status;
      }
    }
    // -- the running registrar and the game servers --
    for (const auto& [id, reg] : regs_) {
      EXPECT_EQ(reg.lease_id(), leases_.at(id)) << id;
      EXPECT_FALSE(reg.closed()) << id;
    }
    for (const auto& gs : game_servers_) EXPECT_TRUE(gs->Running()) << gs->ReadStderr();

    // -- discoveryctl --
    CtlResult list = Ctl({"list"});
    EXPECT_EQ(list.code, 0) << list.err;
    std::set<std::string> table_ids;
    std::vector<std::string> lines = absl::StrSplit(list.out, '\n', absl::SkipEmpty());
    for (size_t i = 1; i < lines.size(); ++i) {
      std::vector<std::string> cols = absl::StrSplit(lines[i], ' ', absl::SkipEmpty());
      if (cols.size() >= 3) table_ids.insert(TypeId(cols[0], cols[2]));
    }
    EXPECT_EQ(Join(table_ids), Join(expected_)) << "discoveryctl list\n" << list.out;
    if (invalid_keys_.empty()) {
      EXPECT_EQ(list.err, "") << "discoveryctl list";
    } else {
      EXPECT_TRUE(absl::StrContains(
          list.err,
          absl::StrCat("discoveryctl: skipped ", invalid_keys_.size(), " invalid value(s)")))
          << list.err;
    }
    CtlResult list_json = Ctl({"list", "-o", "json"});
    EXPECT_EQ(list_json.code, 0) << list_json.err;
    json array = json::parse(list_json.out, nullptr, false);
    std::set<std::string> json_ids;
    std::map<std::string, json> by_id;
    if (array.is_array()) {
      for (const json& j : array) {
        json_ids.insert(TypeId(j));
        by_id[TypeId(j)] = j;
      }
    }
    EXPECT_EQ(Join(json_ids), Join(expected_)) << "discoveryctl list -o json";
    CtlResult get = Ctl({"get", "world", "lib-w1"});
    EXPECT_EQ(get.code, 0) << get.err;
    EXPECT_EQ(json::parse(get.out, nullptr, false).value("instanceId", ""), "lib-w1") << get.out;
    for (const auto& gs : game_servers_) EXPECT_TRUE(gs->Running());

    // -- discoveryd --
    auto discover = Http(gateway_port_, "GET", "/sd/v1/instances");
    ASSERT_TRUE(discover.ok()) << discover.status();
    EXPECT_EQ(discover->status, 200);
    std::set<std::string> gw_ids;
    std::map<std::string, json> gw_by_id;
    const json discovered = discover->Json();
    for (const json& j : discovered["instances"]) {
      gw_ids.insert(TypeId(j));
      gw_by_id[TypeId(j)] = j;
    }
    EXPECT_EQ(Join(gw_ids), Join(expected_)) << "discoveryd discover: " << discover->body;
    auto metrics = Http(gateway_port_, "GET", "/metrics");
    ASSERT_TRUE(metrics.ok());
    EXPECT_EQ(MetricValue(metrics->body, "discovery_watch_invalid_values_total"),
              static_cast<double>(invalid_puts_));
    auto healthz = Http(gateway_port_, "GET", "/healthz");
    ASSERT_TRUE(healthz.ok());
    EXPECT_EQ(healthz->status, 200) << healthz->body;
    EXPECT_TRUE(gateway_->Running()) << gateway_->ReadStderr();
    EXPECT_FALSE(sse_->closed()) << "the SSE stream was closed";
    std::vector<SseEvent> sse_events = sse_->Events();
    for (; sse_seen_ < sse_events.size(); ++sse_seen_) {
      const SseEvent& e = sse_events[sse_seen_];
      if (e.event != "update" && e.event != "remove" && e.event != "init") continue;
      std::string id = TypeId(e.data["instance"]);
      EXPECT_FALSE(IsHostileId(id)) << "SSE " << e.event << " of " << id;
      if (e.event == "remove") {
        EXPECT_EQ(allowed_removals_.count(id), 1u) << "SSE remove of " << id;
      }
    }
    // -- discoveryctl watch --
    EXPECT_TRUE(watch_->Running()) << watch_->ReadStderr();
    for (; watch_seen_ < watch_lines_.size(); ++watch_seen_) {
      json line = json::parse(watch_lines_[watch_seen_], nullptr, false);
      ASSERT_TRUE(line.is_object()) << "discoveryctl watch printed: " << watch_lines_[watch_seen_];
      std::string id = TypeId(line["instance"]);
      EXPECT_FALSE(IsHostileId(id)) << "watch line " << watch_lines_[watch_seen_];
      if (line.value("event", "") == "removed") {
        EXPECT_EQ(allowed_removals_.count(id), 1u) << "watch removed " << id;
      }
    }
    // -- accepted rows: byte-exact everywhere --
    for (const Row& row : written_) {
      if (!row.accepted) continue;
      json want = json::parse(row.value, nullptr, false);  // skips a BOM, like the decoder
      ASSERT_TRUE(want.is_object());
      std::string id = TypeId(want);
      InstancePtr cached =
          snap->Find(want["type"].get<std::string>(), want["instanceId"].get<std::string>());
      ASSERT_NE(cached, nullptr) << id;
      EXPECT_EQ(cached->hostname, want.value("hostname", ""));
      EXPECT_EQ(cached->custom_state, want.value("customState", ""));
      for (const auto& [field, value] : want.items()) {
        EXPECT_EQ(by_id[id][field], value) << "discoveryctl list -o json " << id << "." << field;
        EXPECT_EQ(gw_by_id[id][field], value) << "discoveryd " << id << "." << field;
      }
      EXPECT_TRUE(absl::StrContains(list.out, want.value("customState", "-")))
          << "discoveryctl list table:\n"
          << list.out;
      EXPECT_TRUE(absl::StrContains(list.out, want["instanceId"].get<std::string>())) << list.out;
    }
  }

  // The hostile key itself: clear errors, nothing else.
  void CheckHostileKey(const Row& row) {
    SCOPED_TRACE(row.name);
    auto parts = SplitKey(row.key);
    if (!parts.has_value() || row.key.find('\0') != std::string::npos) return;  // not nameable
    CtlResult get = Ctl({"get", parts->first, parts->second});
    EXPECT_EQ(get.code, 1) << get.out << get.err;
    EXPECT_EQ(get.out, "");
    std::vector<std::string> err_lines = absl::StrSplit(get.err, '\n', absl::SkipEmpty());
    ASSERT_EQ(err_lines.size(), 1u) << get.err;
    EXPECT_TRUE(absl::StartsWith(err_lines[0], "discoveryctl: ")) << get.err;
    if (Addressable(row.key)) {
      EXPECT_TRUE(absl::StrContains(get.err, row.key + " holds an invalid value: ")) << get.err;
      // discoveryd: by type (read from etcd) and without (looked up in the cache).
      auto by_type = Http(gateway_port_, "GET",
                          absl::StrCat("/sd/v1/instances/", parts->second, "?type=", parts->first));
      ASSERT_TRUE(by_type.ok());
      // Also a value that decodes but names another instance: never served as this one.
      EXPECT_EQ(by_type->status, 409) << by_type->body;
      EXPECT_EQ(by_type->Json()["error"].value("code", ""), "failed_precondition") << by_type->body;
      auto by_cache = Http(gateway_port_, "GET", absl::StrCat("/sd/v1/instances/", parts->second));
      ASSERT_TRUE(by_cache.ok());
      EXPECT_EQ(by_cache->status, 404) << by_cache->body;
    } else {
      EXPECT_TRUE(absl::StrContains(get.err, "must match [A-Za-z0-9._-]{1,64}")) << get.err;
    }
  }

  static double MetricValue(const std::string& text, const std::string& name) {
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      if (absl::StartsWith(line, name + " ")) {
        double v = -1;
        if (absl::SimpleAtod(line.substr(name.size() + 1), &v)) return v;
      }
    }
    return -1;
  }

  // Writes a row and records what every reader must now show.
  void Write(const Row& row) {
    ASSERT_GT(Put(row.key, row.value), 0) << row.name;
    std::erase_if(written_, [&](const Row& r) { return r.key == row.key; });  // overwritten
    written_.push_back(row);
    if (row.accepted) {
      json j = json::parse(row.value, nullptr, false);
      expected_.insert(TypeId(j));
      invalid_keys_.erase(row.key);
    } else {
      ++invalid_puts_;
      invalid_keys_.insert(row.key);
    }
  }

  std::unique_ptr<EtcdCluster> cluster_;
  std::string etcdctl_;
  std::string dir_;
  std::shared_ptr<Connection> conn_;
  std::unique_ptr<Registrar> registrar_;
  std::map<std::string, Registration> regs_;
  std::map<std::string, int64_t> leases_;
  std::vector<std::unique_ptr<ChildProcess>> game_servers_;
  std::unique_ptr<Watcher> watcher_;
  Subscription sub_;
  std::shared_ptr<Picker> rr_, wrr_;
  std::unique_ptr<ChildProcess> gateway_;
  int gateway_port_ = 0;
  std::unique_ptr<SseClient> sse_;
  std::unique_ptr<ChildProcess> watch_;

  std::mutex mu_;
  std::vector<ChangeEvent> events_;                  // guarded by mu_
  std::vector<RegistrationEvent> registrar_events_;  // guarded by mu_
  size_t events_seen_ = 0;
  size_t sse_seen_ = 0;
  std::vector<std::string> watch_lines_;
  size_t watch_seen_ = 0;
  int syncs_ = 0;

  std::set<std::string> expected_;          // type/id of every instance that must be served
  std::set<std::string> allowed_removals_;  // type/id whose removal a test step causes
  std::vector<Row> written_;
  std::set<std::string> invalid_keys_;  // keys holding an invalid value now
  uint64_t invalid_puts_ = 0;           // invalid values written since the readers started
};

TEST_F(HostileValuesTest, EveryComponentKeepsServingTheHealthyInstances) {
  const std::vector<Row> rows = HostileRows();
  ASSERT_GE(rows.size(), 50u);
  for (const Row& row : rows) {
    SCOPED_TRACE(absl::StrCat("row \"", row.name, "\""));
    ASSERT_NO_FATAL_FAILURE(Write(row));
    ASSERT_NO_FATAL_FAILURE(Sync(row.name));
    CheckAll(row.name);
    if (!row.accepted) CheckHostileKey(row);
    if (HasFatalFailure()) return;
  }
  // All rows present; plus readers that meet all of them in their initial read.
  SCOPED_TRACE("all rows present");
  CheckAll("all rows present");
  auto fresh = Watcher::Create({.connection = conn_});
  ASSERT_TRUE(fresh.ok());
  ASSERT_TRUE((*fresh)->WaitForSync(kWait).ok());
  EXPECT_EQ(Join(Ids((*fresh)->snapshot()->All())), Join(expected_));
  EXPECT_EQ((*fresh)->stats().invalid_values, invalid_keys_.size());
  std::unique_ptr<ChildProcess> gw2;
  int gw2_port = 0;
  StartGateway(&gw2, &gw2_port);
  auto discover = Http(gw2_port, "GET", "/sd/v1/instances");
  ASSERT_TRUE(discover.ok());
  std::set<std::string> gw_ids;
  const json discovered = discover->Json();
  for (const json& j : discovered["instances"]) gw_ids.insert(TypeId(j));
  EXPECT_EQ(Join(gw_ids), Join(expected_)) << "a discoveryd started with every row present";
  auto sse = SseClient::Connect(gw2_port, "/sd/v1/subscribe");
  ASSERT_TRUE(sse.ok());
  ASSERT_TRUE((*sse)->WaitFor(
      [](const std::vector<SseEvent>& evs) {
        return std::any_of(evs.begin(), evs.end(),
                           [](const SseEvent& e) { return e.event == "synced"; });
      },
      kWait));
  std::set<std::string> init_ids;
  for (const SseEvent& e : (*sse)->Events()) {
    if (e.event == "init") init_ids.insert(TypeId(e.data["instance"]));
  }
  EXPECT_EQ(Join(init_ids), Join(expected_)) << "SSE init with every row present";
  auto watch = StartCtl({"watch", "--initial"});
  ASSERT_NE(watch, nullptr);
  std::set<std::string> initial_ids;
  while (initial_ids.size() < expected_.size()) {
    auto line = watch->ReadLine(kWait);
    ASSERT_TRUE(line.has_value()) << watch->ReadStderr();
    initial_ids.insert(TypeId(json::parse(*line, nullptr, false)["instance"]));
  }
  EXPECT_EQ(Join(initial_ids), Join(expected_));
  ASSERT_TRUE(watch->Signal(SIGTERM).ok());
  auto code = watch->Wait(kWait);
  EXPECT_TRUE(code.ok() && *code == 0);
  EXPECT_TRUE(gw2->Running()) << gw2->ReadStderr();
}

TEST_F(HostileValuesTest, GarbageOverAValidInstanceRemovesItAndAFixBringsItBack) {
  // An instance written by hand (no registrar), then garbage over it, then fixed.
  Row valid{"static instance", W("ok-static"), ValidText("world", "ok-static"), true};
  Write(valid);
  Sync("static written");
  CheckAll("static written");
  Row garbage{"garbage over ok-static", W("ok-static"), "{\"instanceId\":\"ok-static\",", false};
  allowed_removals_.insert("world/ok-static");
  ASSERT_GT(Put(garbage.key, garbage.value), 0);
  ++invalid_puts_;
  invalid_keys_.insert(garbage.key);
  expected_.erase("world/ok-static");
  written_.pop_back();
  Sync("garbage over ok-static");
  CheckAll("garbage over ok-static");
  CheckHostileKey(garbage);
  {
    std::lock_guard<std::mutex> lock(mu_);
    bool removed = false;
    for (const ChangeEvent& ev : events_) {
      removed |= ev.type == ChangeType::kRemoved && ev.instance->instance_id == "ok-static";
    }
    EXPECT_TRUE(removed) << "no removed event for the overwritten instance";
  }
  bool watch_removed = false;
  for (const std::string& l : watch_lines_) {
    json j = json::parse(l, nullptr, false);
    watch_removed |=
        j.value("event", "") == "removed" && TypeId(j["instance"]) == "world/ok-static";
  }
  EXPECT_TRUE(watch_removed) << "discoveryctl watch printed no removed line";
  EXPECT_TRUE(SseHas(sse_->Events(), "remove", "world/ok-static"));

  // Fixed: back everywhere.
  Write(valid);
  Sync("ok-static fixed");
  CheckAll("ok-static fixed");

  // A key that starts hostile becomes visible once a valid value replaces it.
  Row hostile{"hostile first", W("ok-later"), "[\"not an instance\"]", false};
  Write(hostile);
  Sync("ok-later hostile");
  CheckAll("ok-later hostile");
  Write({"then valid", W("ok-later"), ValidText("world", "ok-later"), true});
  Sync("ok-later valid");
  CheckAll("ok-later valid");
  EXPECT_TRUE(SseHas(sse_->Events(), "update", "world/ok-later"));
}

// A hostile value written AT a live registration's key. Decided behaviour:
//  - readers treat the instance as removed while its value is not valid (they cannot route
//    to what they cannot read); nothing else is affected;
//  - the registrar owns the key: its next write (SetStatus, UpdateMetadata, the coalesced
//    performance flush) sees the foreign mod_revision, does not adopt anything from a value
//    that is not its instance, and overwrites it under its own lease again, so the instance
//    comes back with its latest state and its key is re-attached to its lease;
//  - graceful Close() writes shutting_down first, so the key is removed even though the
//    foreign `put` had detached it from the lease;
//  - the registrar never re-registers over it (no lease was lost);
//  - a foreign value that sits at a key before Register() makes it kAlreadyExists.
TEST_F(HostileValuesTest, GarbageAtARegistrarsOwnKey) {
  auto key_lease = [&](const std::string& key) -> int64_t {
    pb::RangeRequest req;
    req.set_key(key);
    auto r = conn_->client()->Range(req);
    return r.ok() && r->kvs_size() > 0 ? r->kvs(0).lease() : -1;
  };
  // 1. The library registrar's idle instance lib-w2.
  Registration& w2 = regs_.at("lib-w2");
  Row garbage{"garbage at lib-w2", w2.key(), "{\"garbage\":true}", false};
  allowed_removals_.insert("world/lib-w2");
  Write(garbage);
  written_.pop_back();  // lib-w2 itself is not a hostile row
  expected_.erase("world/lib-w2");
  Sync("garbage at lib-w2");
  CheckAll("garbage at lib-w2");
  CheckHostileKey(garbage);
  EXPECT_EQ(key_lease(w2.key()), 0) << "a plain put detaches the key from the lease";
  // The registrar's next write restores it, with its lease.
  ASSERT_TRUE(w2.SetStatus(InstanceStatus::kReady, "after-garbage").ok());
  invalid_keys_.erase(w2.key());
  expected_.insert("world/lib-w2");
  Sync("lib-w2 rewritten");
  CheckAll("lib-w2 rewritten");
  EXPECT_EQ(key_lease(w2.key()), w2.lease_id());
  EXPECT_EQ(watcher_->snapshot()->Find("world", "lib-w2")->custom_state, "after-garbage");
  EXPECT_EQ(watcher_->snapshot()->Find("world", "lib-w2")->status, InstanceStatus::kReady);

  // 2. A game server's instance heals itself with its next performance flush (<= ~1 s).
  std::string gs_key = W("gs-w-0");
  allowed_removals_.insert("world/gs-w-0");
  ASSERT_GT(Put(gs_key, "not json"), 0);
  ++invalid_puts_;
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto in = watcher_->snapshot()->Find("world", "gs-w-0");
        return in != nullptr && key_lease(gs_key) > 0;
      },
      kWait))
      << "the game server did not restore its value";
  Sync("gs-w-0 healed");
  CheckAll("gs-w-0 healed");

  // 3. Graceful close while garbage sits at the key: the key is removed all the same.
  Instance extra = MakeInstance("world", "lib-closing");
  auto closing = registrar_->Register(extra);
  ASSERT_TRUE(closing.ok());
  expected_.insert("world/lib-closing");
  Sync("lib-closing registered");
  allowed_removals_.insert("world/lib-closing");
  ASSERT_GT(Put(closing->key(), "garbage"), 0);
  ++invalid_puts_;
  invalid_keys_.insert(closing->key());
  expected_.erase("world/lib-closing");
  Sync("garbage at lib-closing");
  CheckAll("garbage at lib-closing");
  ASSERT_TRUE(closing->Close().ok());
  EXPECT_EQ(key_lease(closing->key()), -1) << "the key survived Close()";
  invalid_keys_.erase(closing->key());
  Sync("lib-closing closed");
  CheckAll("lib-closing closed");

  // 4. A foreign value at a key before Register(): kAlreadyExists, never overwritten.
  Row squatter{"garbage before register", W("h-squatted"), "squatter", false};
  Write(squatter);
  Instance late = MakeInstance("world", "h-squatted");
  auto refused = registrar_->Register(late);
  EXPECT_TRUE(absl::IsAlreadyExists(refused.status())) << refused.status();
  Sync("squatter");
  CheckAll("squatter");
  auto value = cluster_->Etcdctl({"get", "--print-value-only", W("h-squatted")});
  ASSERT_TRUE(value.ok());
  EXPECT_EQ(*value, "squatter\n");
  // The operator's way out: discoveryctl deregister deletes whatever sits at the key.
  CtlResult dereg = Ctl({"deregister", "world", "h-squatted"});
  EXPECT_EQ(dereg.code, 0) << dereg.err;
  EXPECT_TRUE(absl::StrContains(dereg.out, "(no lease)")) << dereg.out;
  invalid_keys_.erase(W("h-squatted"));
  Sync("squatter deregistered");
  CheckAll("squatter deregistered");
}

}  // namespace
}  // namespace discovery
