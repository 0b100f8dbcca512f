// Chaos suite fixture: the fleet, what the test reads from it, and the checks.
#include "chaos_fixture.h"

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <system_error>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "etcd/client.h"
#include "util/clock.h"

namespace discovery::chaos {

using json = nlohmann::json;

std::string ViewValue(const json& instance) {
  if (!instance.is_object()) return "?";
  return absl::StrCat(instance.value("status", "?"), " ", instance.value("leaseId", "?"));
}

bool IsReady(const std::string& view_value) { return absl::StartsWith(view_value, "ready "); }

bool EtcdRevokesFromStaleLeader(const std::string& version) {
  int major = 0, minor = 0, patch = 0;
  if (sscanf(version.c_str(), "%d.%d.%d", &major, &minor, &patch) != 3) return true;
  if (major != 3) return major < 3;
  if (minor < 4) return true;
  if (minor == 4) return patch < 28;
  if (minor == 5) return patch < 11;
  return false;
}

std::string InstanceKey(const json& instance) {
  return absl::StrCat(kPrefix, instance.value("type", ""), "/", instance.value("instanceId", ""));
}

std::string Diff(const View& want, const View& got) {
  std::vector<std::string> out;
  for (const auto& [k, v] : want) {
    auto it = got.find(k);
    if (it == got.end()) {
      out.push_back(absl::StrCat("missing ", k));
    } else if (it->second != v) {
      out.push_back(absl::StrCat(k, " is ", it->second, " not ", v));
    }
  }
  for (const auto& [k, v] : got) {
    if (!want.count(k)) out.push_back(absl::StrCat("stale ", k, " (", v, ")"));
  }
  if (out.size() > 8) {
    size_t more = out.size() - 8;
    out.resize(8);
    out.push_back(absl::StrCat("... and ", more, " more"));
  }
  return absl::StrCat("want ", want.size(), " got ", got.size(), ": ", absl::StrJoin(out, "; "));
}

// ---- WatchProcess ----

absl::StatusOr<std::unique_ptr<WatchProcess>> WatchProcess::Spawn(
    const std::string& endpoints, std::vector<std::pair<std::string, std::string>> env) {
  auto proc = ChildProcess::Spawn(
      {.argv = {DISCOVERYCTL, "watch", "--initial", "--endpoints", endpoints, "--timeout", "3"},
       .env = std::move(env),
       .unset_env_prefixes = {"ETCD_", "DISCOVERY_"},
       .stdout_to_pipe = true});
  if (!proc.ok()) return proc.status();
  return std::unique_ptr<WatchProcess>(new WatchProcess(*std::move(proc)));
}

WatchProcess::WatchProcess(std::unique_ptr<ChildProcess> proc) : proc_(std::move(proc)) {
  reader_ = std::thread([this] { Read(); });
}

WatchProcess::~WatchProcess() {
  stop_ = true;
  reader_.join();
}

View WatchProcess::view() {
  std::lock_guard<std::mutex> lock(mu_);
  return view_;
}

std::vector<WatchProcess::Event> WatchProcess::events() {
  std::lock_guard<std::mutex> lock(mu_);
  return events_;
}

int64_t WatchProcess::last_revision() {
  std::lock_guard<std::mutex> lock(mu_);
  return events_.empty() ? 0 : events_.back().revision;
}

std::vector<std::string> WatchProcess::anomalies() {
  std::lock_guard<std::mutex> lock(mu_);
  return anomalies_;
}

void WatchProcess::Read() {
  while (!stop_) {
    std::optional<std::string> line = proc_->ReadLine(absl::Milliseconds(200));
    if (!line) {
      if (!proc_->Running()) return;
      continue;
    }
    Apply(*line);
  }
}

void WatchProcess::Apply(const std::string& line) {
  json j = json::parse(line, nullptr, false);
  std::lock_guard<std::mutex> lock(mu_);
  if (j.is_discarded() || !j.is_object() || !j.contains("instance") || !j["instance"].is_object() ||
      !j.contains("revision") || !j["revision"].is_number()) {
    anomalies_.push_back("bad line: " + line.substr(0, 200));
    return;
  }
  Event ev{j.value("event", ""), j["revision"].get<int64_t>(), InstanceKey(j["instance"])};
  const bool present = view_.count(ev.key) > 0;
  if (ev.type == "removed") {
    if (!present) anomalies_.push_back("removed but absent: " + ev.key);
    view_.erase(ev.key);
  } else {
    if (ev.type == "added" && present) anomalies_.push_back("added twice: " + ev.key);
    if (ev.type != "added" && !present) anomalies_.push_back(ev.type + " of absent " + ev.key);
    view_[ev.key] = ViewValue(j["instance"]);
  }
  events_.push_back(std::move(ev));
}

// ---- ChaosTest: the fleet ----

void ChaosTest::SetUp() {
  std::vector<std::string> args = {"--heartbeat-interval", "100", "--election-timeout", "1000"};
  // deploy/etcd/*.yml: simple tokens, idle for 3 s at most.
  if (auth_) args.insert(args.end(), {"--auth-token-ttl", "3"});
  auto cluster = EtcdCluster::Start({.members = 3, .extra_args = args});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  cluster_ = *std::move(cluster);
  auto dir = testing::MakeTempDir("chaos-snapshots-");
  ASSERT_TRUE(dir.ok()) << dir.status();
  snapshot_dir_ = *dir;
  if (auth_) {
    ASSERT_NO_FATAL_FAILURE(ApplyRbac());
    // Auth is really on: no anonymous read, and the reader role cannot write.
    EXPECT_FALSE(cluster_->EtcdctlAs("", {"get", "--prefix", kPrefix}).ok());
    EXPECT_FALSE(cluster_
                     ->EtcdctlAs(absl::StrCat(kReaderUser, ":", kReaderPassword),
                                 {"put", "/services/world/intruder", "{}"})
                     .ok());
  }

  EtcdOptions& o = conn_options_;
  o.endpoints = cluster_->ClientEndpoints();
  o.call_timeout = TimeScale(absl::Seconds(3));
  if (auth_) {
    o.user = "root";
    o.password = kRootPassword;
  }
  ASSERT_NO_FATAL_FAILURE(ReconnectTestClient());

  for (int m = 0; m < 3; ++m) {
    auto proxy = TcpProxy::Start(cluster_->ClientPort(m));
    ASSERT_TRUE(proxy.ok()) << proxy.status();
    proxies_.push_back(*std::move(proxy));
    auto wproxy = TcpProxy::Start(cluster_->ClientPort(m));
    ASSERT_TRUE(wproxy.ok()) << wproxy.status();
    watcher_proxies_.push_back(*std::move(wproxy));
  }

  gateway_port_ = testing::PickFreePort();
  auto gw = ChildProcess::Spawn(
      {.argv = {DISCOVERYD, "--listen", absl::StrCat("127.0.0.1:", gateway_port_), "--endpoints",
                Endpoints(0)},
       .env = AuthEnv(kRegistrarUser),
       .unset_env_prefixes = {"ETCD_", "DISCOVERY_"}});
  ASSERT_TRUE(gw.ok()) << gw.status();
  gateway_ = *std::move(gw);

  for (int w = 0; w < kWatchers; ++w) {
    auto watcher =
        WatchProcess::Spawn(w == kProxiedWatcher ? ProxyEndpoints(watcher_proxies_) : Endpoints(w),
                            AuthEnv(kReaderUser));
    ASSERT_TRUE(watcher.ok()) << watcher.status();
    watchers_.push_back(*std::move(watcher));
  }
  for (int r = 0; r < kRegistrars; ++r) {
    ASSERT_NO_FATAL_FAILURE(
        StartRegistrar(r, r == kProxiedRegistrar ? ProxyEndpoints(proxies_) : Endpoints(r)));
  }
  ASSERT_TRUE(AllRegistered(absl::Seconds(30)))
      << "the fleet did not come up: " << ReadTruth().status();
  ASSERT_NO_FATAL_FAILURE(ExpectConverged("after start"));
}

void ChaosTest::TearDown() {
  if (HasFailure() && cluster_ != nullptr) {
    for (auto& [r, proc] : registrars_) {
      ADD_FAILURE() << "registrar " << r << " stderr " << proc->stderr_path() << ":\n"
                    << testing::TailFile(proc->stderr_path(), 1500);
    }
    if (gateway_ != nullptr) {
      ADD_FAILURE() << "discoveryd stderr:\n" << testing::TailFile(gateway_->stderr_path(), 1500);
    }
    for (auto& w : watchers_) {
      ADD_FAILURE() << "watcher stderr:\n" << testing::TailFile(w->proc().stderr_path(), 1500);
    }
  }
  if (!snapshot_dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(snapshot_dir_, ec);
  }
}

std::string ChaosTest::Endpoints(int first) const {
  std::vector<std::string> e;
  for (int i = 0; i < 3; ++i) e.push_back(cluster_->ClientEndpoint((first + i) % 3));
  return absl::StrJoin(e, ",");
}

std::string ChaosTest::ProxyEndpoints(const std::vector<std::unique_ptr<TcpProxy>>& proxies) {
  std::vector<std::string> e;
  for (const auto& p : proxies) e.push_back(p->endpoint());
  return absl::StrJoin(e, ",");
}

std::vector<std::pair<std::string, std::string>> ChaosTest::AuthEnv(const std::string& user) const {
  if (!auth_) return {};
  return {{"ETCD_USER", user},
          {"ETCD_PASSWORD", user == kReaderUser ? kReaderPassword : kRegistrarPassword}};
}

std::vector<testing::EtcdUser> ChaosTest::RbacUsers() {
  using testing::EtcdPermission;
  using Type = EtcdPermission::Type;
  return {
      {.name = kRegistrarUser,
       .password = kRegistrarPassword,
       .permissions = {EtcdPermission::Prefix(kPrefix, Type::kReadWrite),
                       EtcdPermission::Key(kEpochKey, Type::kReadWrite)}},
      {.name = kReaderUser,
       .password = kReaderPassword,
       .permissions = {EtcdPermission::Prefix(kPrefix, Type::kRead)}},
  };
}

void ChaosTest::ApplyRbac() {
  absl::Status s = cluster_->EnableAuthWithUsers(kRootPassword, RbacUsers());
  ASSERT_TRUE(s.ok()) << "rbac: " << s;
}

void ChaosTest::ReconnectTestClient() {
  auto conn = Connection::Create(conn_options_);
  ASSERT_TRUE(conn.ok()) << conn.status();
  conn_ = *conn;
}

void ChaosTest::StartRegistrar(int r, const std::string& endpoints) {
  std::vector<std::pair<std::string, std::string>> env = AuthEnv(kRegistrarUser);
  env.emplace_back("ETCD_ENDPOINTS", endpoints);
  auto proc =
      ChildProcess::Spawn({.argv = {EXAMPLE_GAME_SERVER, "--type", r % 2 == 0 ? "world" : "lobby",
                                    "--group", absl::StrCat("g", r), "--id", absl::StrCat("r", r),
                                    "--count", std::to_string(kPerRegistrar), "--ttl",
                                    std::to_string(kTtlSeconds), "--perf-interval", "2"},
                           .env = std::move(env),
                           .unset_env_prefixes = {"ETCD_", "DISCOVERY_"}});
  ASSERT_TRUE(proc.ok()) << proc.status();
  registrars_[r] = *std::move(proc);
}

void ChaosTest::StopRegistrar(int r) {
  ASSERT_TRUE(registrars_[r]->Signal(SIGTERM).ok());
  auto exit = registrars_[r]->Wait(absl::Seconds(10));
  ASSERT_TRUE(exit.ok() && *exit == 0)
      << "registrar " << r << ": " << exit.status() << " " << exit.value_or(-1);
  registrars_.erase(r);
}

int ChaosTest::RegistrarEvents(int r, const std::string& event) {
  auto it = registrars_.find(r);
  if (it == registrars_.end()) return 0;
  std::string err = it->second->ReadStderr();
  int n = 0;
  for (size_t pos = 0; (pos = err.find("event " + event + " ", pos)) != std::string::npos; ++pos) {
    ++n;
  }
  return n;
}

int ChaosTest::AllRegistrarEvents(const std::string& event) {
  int n = 0;
  for (auto& [r, proc] : registrars_) n += RegistrarEvents(r, event);
  return n;
}

ChaosTest::EventCounts ChaosTest::CountEvents() {
  return {.lease_lost = AllRegistrarEvents("lease_lost"),
          .re_registered = AllRegistrarEvents("re_registered")};
}

// ---- reading the fleet ----

absl::StatusOr<Truth> ChaosTest::ReadTruth() {
  auto out = cluster_->Etcdctl({"get", "--prefix", kPrefix, "-w", "json"}, absl::Seconds(5));
  if (!out.ok()) return out.status();
  json j = json::parse(*out, nullptr, false);
  if (j.is_discarded()) return absl::InternalError("etcdctl printed no JSON");
  Truth t;
  t.revision = j["header"].value("revision", int64_t{0});
  for (const json& kv : j.value("kvs", json::array())) {
    std::string key, value;
    if (!absl::Base64Unescape(kv.value("key", ""), &key) ||
        !absl::Base64Unescape(kv.value("value", ""), &value)) {
      return absl::InternalError("bad base64 from etcdctl");
    }
    json v = json::parse(value, nullptr, false);
    t.view[key] = ViewValue(v);
    t.lease[key] = kv.value("lease", int64_t{0});
  }
  return t;
}

absl::StatusOr<View> ChaosTest::GatewayView() {
  auto r = testing::HttpGet(gateway_port_, "/sd/v1/instances", absl::Seconds(2));
  if (!r.ok()) return r.status();
  if (r->status != 200) return absl::UnavailableError(absl::StrCat("HTTP ", r->status));
  json j = json::parse(r->body, nullptr, false);
  if (j.is_discarded() || !j.contains("instances")) return absl::InternalError("bad answer");
  View v;
  for (const json& in : j["instances"]) v[InstanceKey(in)] = ViewValue(in);
  return v;
}

int ChaosTest::Healthz() {
  auto r = testing::HttpGet(gateway_port_, "/healthz", absl::Seconds(3));
  return r.ok() ? r->status : 0;
}

std::set<std::string> ChaosTest::FleetKeys() {
  std::set<std::string> keys;
  for (const auto& [r, proc] : registrars_) {
    for (int i = 0; i < kPerRegistrar; ++i) {
      keys.insert(absl::StrCat(kPrefix, r % 2 == 0 ? "world" : "lobby", "/r", r, "-", i));
    }
  }
  return keys;
}

bool ChaosTest::AllRegistered(absl::Duration timeout) {
  return WaitUntil(
      [&] {
        auto t = ReadTruth();
        if (!t.ok() || static_cast<int>(t->view.size()) != kInstances) return false;
        return std::all_of(t->view.begin(), t->view.end(),
                           [](const auto& kv) { return IsReady(kv.second); });
      },
      timeout, absl::Milliseconds(200));
}

bool ChaosTest::FleetRegistered(absl::Duration timeout) {
  const std::set<std::string> want = FleetKeys();
  return WaitUntil(
      [&] {
        auto t = ReadTruth();
        if (!t.ok() || t->view.size() != want.size()) return false;
        return std::all_of(t->view.begin(), t->view.end(), [&](const auto& kv) {
          return want.count(kv.first) && IsReady(kv.second);
        });
      },
      timeout, absl::Milliseconds(200));
}

// ---- checks ----

void ChaosTest::ExpectConverged(const std::string& when, absl::Duration timeout) {
  std::string last;
  bool ok = WaitUntil(
      [&] {
        auto truth = ReadTruth();
        if (!truth.ok()) {
          last = std::string(truth.status().message());
          return false;
        }
        for (int w = 0; w < kWatchers; ++w) {
          View v = watchers_[w]->view();
          if (v != truth->view) {
            last = absl::StrCat("watcher ", w, ": ", Diff(truth->view, v));
            return false;
          }
        }
        auto g = GatewayView();
        if (!g.ok() || *g != truth->view) {
          last = g.ok() ? absl::StrCat("discoveryd: ", Diff(truth->view, *g))
                        : absl::StrCat("discoveryd: ", g.status().ToString());
          return false;
        }
        return true;
      },
      timeout, absl::Milliseconds(250));
  EXPECT_TRUE(ok) << when << ": not converged within " << absl::FormatDuration(timeout) << ": "
                  << last;
  for (int w = 0; w < kWatchers; ++w) {
    auto anomalies = watchers_[w]->anomalies();
    EXPECT_TRUE(anomalies.empty()) << when << ": watcher " << w << ": " << anomalies.size()
                                   << " anomalies, first " << anomalies.front();
  }
}

void ChaosTest::ExpectAllAlive(const std::string& when) {
  for (auto& [r, proc] : registrars_) {
    EXPECT_TRUE(proc->Running()) << when << ": registrar " << r << " exited "
                                 << proc->ExitValue().value_or(-1);
  }
  for (int w = 0; w < kWatchers; ++w) {
    EXPECT_TRUE(watchers_[w]->proc().Running()) << when << ": watcher " << w << " exited";
  }
  EXPECT_TRUE(gateway_->Running()) << when << ": discoveryd exited";
}

// Orphans from a grant whose answer was lost expire within a TTL, hence the wait.
void ChaosTest::ExpectNoLeakedLeases(const std::string& when) {
  std::string last;
  bool ok = WaitUntil(
      [&] {
        auto leases = conn_->client()->LeaseLeases();
        auto truth = ReadTruth();
        if (!leases.ok() || !truth.ok()) {
          last = !leases.ok() ? leases.status().ToString() : truth.status().ToString();
          return false;
        }
        std::set<int64_t> held, attached;
        for (const auto& l : leases->leases()) held.insert(l.id());
        for (const auto& [k, id] : truth->lease) attached.insert(id);
        if (held == attached) return true;
        last = absl::StrCat(held.size(), " leases in etcd, ", attached.size(), " attached");
        return false;
      },
      kTtl + absl::Seconds(5), absl::Milliseconds(250));
  EXPECT_TRUE(ok) << when << ": leaked leases: " << last;
}

void ChaosTest::ExpectNothingLost(const std::string& when, const Truth& before,
                                  const EventCounts& counts) {
  ExpectSameLeases(when, before);
  EventCounts now = CountEvents();
  EXPECT_EQ(now.lease_lost - counts.lease_lost, 0) << when;
  EXPECT_EQ(now.re_registered - counts.re_registered, 0) << when;
}

void ChaosTest::ExpectSameLeases(const std::string& when, const Truth& before) {
  auto now = ReadTruth();
  ASSERT_TRUE(now.ok()) << now.status();
  int changed = 0;
  std::string example;
  for (const auto& [k, lease] : before.lease) {
    auto it = now->lease.find(k);
    if (it == now->lease.end() || it->second != lease) {
      if (changed++ == 0) example = k;
    }
  }
  EXPECT_EQ(changed, 0) << when << ": " << changed << " registrations lost or re-created, e.g. "
                        << example;
}

void ChaosTest::WaitForNewLeader(int old) {
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto l = cluster_->LeaderIndex();
        return l.ok() && *l != old;
      },
      absl::Seconds(10)))
      << "no new leader";
}

void ChaosTest::HoldFault(absl::Time until, const std::function<void()>& check) {
  while (util::MonoNow() < until && !HasFatalFailure()) {
    check();
    absl::SleepFor(std::min(absl::Milliseconds(250), until - util::MonoNow()));
  }
}

void ChaosTest::ExpectAllPresent(const std::string& when) {
  auto t = ReadTruth();
  ASSERT_TRUE(t.ok()) << when << ": " << t.status();
  EXPECT_EQ(static_cast<int>(t->view.size()), kInstances) << when << ": an instance vanished";
}

void ChaosTest::ExpectHealthyFleet(const std::string& when) {
  ExpectConverged(when);
  ExpectAllAlive(when);
  ExpectNoLeakedLeases(when);
  EXPECT_EQ(Healthz(), 200) << when;
}

}  // namespace discovery::chaos
