// discoveryctl end to end: the built binary against a real etcd from the test harness.
// register in the background -> list / get / watch see it; SIGTERM deregisters at once, SIGKILL
// after the TTL; --check-http / --check-tcp drive status; set-status keeps the lease and refuses
// invalid transitions; deregister; garbage values are skipped; exit codes 1 / 2 / 3.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "child_process.h"
#include "discovery/etcd.h"
#include "etcd/client.h"
#include "etcd_harness.h"
#include "nlohmann/json.hpp"

namespace discovery {
namespace {

using testing::ChildProcess;
using testing::EtcdCluster;
using testing::TimeScale;
using testing::WaitUntil;
namespace pb = ::etcdserverpb;

struct Result {
  int code = -1;
  std::string out;
  std::string err;
  absl::Duration took;
};

// A tiny HTTP server on 127.0.0.1 whose answer the test switches: a status code, or closing
// the connection without a word.
class TestHttpServer {
 public:
  static constexpr int kClose = 0;

  TestHttpServer() {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(fd_, 64);
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~TestHttpServer() {
    stop_ = true;
    thread_.join();
    close(fd_);
  }
  int port() const { return port_; }
  void set_answer(int code) { answer_ = code; }
  int requests() const { return requests_; }

 private:
  void Serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      // Read the request head (bounded wait).
      std::string req;
      char buf[1024];
      while (req.find("\r\n\r\n") == std::string::npos) {
        pollfd q{c, POLLIN, 0};
        if (poll(&q, 1, 1000) <= 0) break;
        ssize_t n = read(c, buf, sizeof(buf));
        if (n <= 0) break;
        req.append(buf, static_cast<size_t>(n));
      }
      int answer = answer_;
      if (answer != kClose) {
        std::string resp = absl::StrCat("HTTP/1.1 ", answer, " X\r\nContent-Length: 2\r\n",
                                        "Connection: close\r\n\r\nok");
        (void)!write(c, resp.data(), resp.size());
      }
      ++requests_;
      close(c);
    }
  }

  int fd_ = -1;
  int port_ = 0;
  std::atomic<int> answer_{200};
  std::atomic<int> requests_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

class DiscoveryctlTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto c = EtcdCluster::Start();
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = c->release();
    EtcdOptions o;
    o.endpoints = cluster_->ClientEndpoints();
    o.call_timeout = TimeScale(absl::Seconds(3));
    auto conn = Connection::Create(o);
    ASSERT_TRUE(conn.ok()) << conn.status();
    conn_ = new std::shared_ptr<Connection>(*conn);
  }
  static void TearDownTestSuite() {
    delete conn_;
    conn_ = nullptr;
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(cluster_, nullptr);
    prefix_ =
        absl::StrCat("/t-", ::testing::UnitTest::GetInstance()->current_test_info()->name(), "/");
  }

  std::vector<std::string> Argv(const std::vector<std::string>& args,
                                const std::string& endpoints = "") {
    std::vector<std::string> argv = {DISCOVERYCTL};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(),
                {"--endpoints", endpoints.empty() ? cluster_->EndpointsCsv() : endpoints,
                 "--prefix", prefix_});
    return argv;
  }
  static testing::ChildProcessOptions Opts(std::vector<std::string> argv, bool pipe) {
    return {.argv = std::move(argv),
            .unset_env_prefixes = {"ETCD", "DISCOVERY_PREFIX", "DISCOVERY_LOG"},
            .stdout_to_pipe = pipe};
  }

  // Runs discoveryctl to completion.
  Result Run(const std::vector<std::string>& args, const std::string& endpoints = "") {
    Result r;
    absl::Time start = absl::Now();
    auto child = ChildProcess::Spawn(Opts(Argv(args, endpoints), false));
    if (!child.ok()) {
      r.err = child.status().ToString();
      return r;
    }
    auto code = (*child)->Wait(absl::Seconds(15));
    r.took = absl::Now() - start;
    r.code = code.ok() ? *code : -1;
    r.out = (*child)->ReadStdout();
    r.err = (*child)->ReadStderr();
    return r;
  }

  // Starts a long-running discoveryctl (register / watch) with stdout on a pipe.
  std::unique_ptr<ChildProcess> Start(const std::vector<std::string>& args) {
    auto child = ChildProcess::Spawn(Opts(Argv(args), true));
    EXPECT_TRUE(child.ok()) << child.status();
    return child.ok() ? *std::move(child) : nullptr;
  }

  // Starts `register` of a `type` instance in `group` and returns (process, instance id).
  std::pair<std::unique_ptr<ChildProcess>, std::string> Register(
      std::vector<std::string> extra, const std::string& type = "world",
      const std::string& group = "kr-1") {
    std::vector<std::string> args = {"register",  "--type",  type,           "--group",  group,
                                     "--host",    "game-01", "--private-ip", "10.0.0.5", "--port",
                                     "game=7001", "--port",  "grpc=50051"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto child = Start(args);
    if (child == nullptr) return {nullptr, ""};
    std::optional<std::string> id = child->ReadLine(absl::Seconds(10));
    EXPECT_TRUE(id.has_value()) << child->ReadStderr();
    return {std::move(child), id.value_or("")};
  }

  std::string Key(const std::string& type, const std::string& id) {
    return absl::StrCat(prefix_, type, "/", id);
  }
  std::optional<::mvccpb::KeyValue> Read(const std::string& key) {
    pb::RangeRequest req;
    req.set_key(key);
    auto r = (*conn_)->client()->Range(req);
    if (!r.ok() || r->kvs_size() == 0) return std::nullopt;
    return r->kvs(0);
  }
  // The stored status, or "" when the key is absent.
  std::string StatusOf(const std::string& key) {
    auto kv = Read(key);
    if (!kv.has_value()) return "";
    auto j = nlohmann::json::parse(kv->value(), nullptr, false);
    return j.is_object() ? j.value("status", "?") : "?";
  }
  int64_t LeaseTtl(int64_t lease) {
    pb::LeaseTimeToLiveRequest req;
    req.set_id(lease);
    auto r = (*conn_)->client()->LeaseTimeToLive(req);
    return r.ok() ? r->ttl() : -2;
  }
  void Put(const std::string& key, const std::string& value, int64_t lease = 0) {
    pb::PutRequest req;
    req.set_key(key);
    req.set_value(value);
    req.set_lease(lease);
    ASSERT_TRUE((*conn_)->client()->Put(req).ok());
  }
  int64_t Grant(int64_t ttl) {
    pb::LeaseGrantRequest req;
    req.set_ttl(ttl);
    auto r = (*conn_)->client()->LeaseGrant(req);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->id() : 0;
  }
  std::string ValidJson(const std::string& type, const std::string& id) {
    return absl::StrCat(R"({"instanceId":")", id, R"(","type":")", type,
                        R"(","group":"g","hostname":"h","ports":{"game":1},"status":"ready"})");
  }

  static EtcdCluster* cluster_;
  static std::shared_ptr<Connection>* conn_;
  std::string prefix_;
};

EtcdCluster* DiscoveryctlTest::cluster_ = nullptr;
std::shared_ptr<Connection>* DiscoveryctlTest::conn_ = nullptr;

// Next JSON line of a `watch` process (nullopt on timeout).
std::optional<nlohmann::json> NextEvent(ChildProcess& watch, absl::Duration timeout) {
  std::optional<std::string> line = watch.ReadLine(timeout);
  if (!line.has_value()) return std::nullopt;
  auto j = nlohmann::json::parse(*line, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << *line;
  return j;
}

TEST_F(DiscoveryctlTest, RegisteredInstanceShowsInListGetAndWatch) {
  auto [reg, id] = Register({"--ttl", "3", "--meta", "map=forest", "--server-version", "1.4.2"});
  ASSERT_NE(reg, nullptr);
  const std::string key = Key("world", id);
  // The id is printed once the requested status (ready) is written.
  EXPECT_EQ(StatusOf(key), "ready");

  Result table = Run({"list"});
  ASSERT_EQ(table.code, 0) << table.err;
  std::vector<std::string> lines = absl::StrSplit(table.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << table.out;
  EXPECT_TRUE(absl::StartsWith(lines[0], "TYPE")) << lines[0];
  for (const char* col : {"GROUP", "ADDRESS", "PORTS", "STATUS", "CUSTOM-STATE", "TTL", "AGE"}) {
    EXPECT_TRUE(absl::StrContains(lines[0], col)) << col;
  }
  for (const std::string& cell :
       {std::string("world"), std::string("kr-1"), id, std::string("10.0.0.5"),
        std::string("game=7001,grpc=50051"), std::string("ready"), std::string("1.4.2")}) {
    EXPECT_TRUE(absl::StrContains(lines[1], cell)) << cell << " not in " << lines[1];
  }
  EXPECT_TRUE(table.err.empty()) << table.err;

  Result json = Run({"list", "-o", "json"});
  ASSERT_EQ(json.code, 0) << json.err;
  auto array = nlohmann::json::parse(json.out, nullptr, false);
  ASSERT_TRUE(array.is_array()) << json.out;
  ASSERT_EQ(array.size(), 1u);
  EXPECT_EQ(array[0]["instanceId"], id);
  EXPECT_EQ(array[0]["ports"]["grpc"], 50051);
  EXPECT_EQ(array[0]["meta"]["map"], "forest");

  // Filters.
  EXPECT_EQ(nlohmann::json::parse(Run({"list", "-o", "json", "--type", "lobby"}).out).size(), 0u);
  EXPECT_EQ(nlohmann::json::parse(Run({"list", "-o", "json", "--group", "kr-2"}).out).size(), 0u);
  EXPECT_EQ(nlohmann::json::parse(Run({"list", "-o", "json", "--status", "error"}).out).size(), 0u);
  EXPECT_EQ(nlohmann::json::parse(Run({"-o", "json", "list", "--status", "ready"}).out).size(), 1u);

  Result get = Run({"get", "world", id});
  ASSERT_EQ(get.code, 0) << get.err;
  auto one = nlohmann::json::parse(get.out, nullptr, false);
  ASSERT_TRUE(one.is_object()) << get.out;
  EXPECT_EQ(one["instanceId"], id);
  EXPECT_EQ(one["status"], "ready");
  auto kv = Read(key);
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(one["leaseId"], absl::StrCat(absl::Hex(kv->lease())));
  ASSERT_TRUE(one["leaseTtlSeconds"].is_number_integer());
  EXPECT_GE(one["leaseTtlSeconds"].get<int>(), 1);
  EXPECT_LE(one["leaseTtlSeconds"].get<int>(), 3);

  // watch --initial: the current state first, then changes.
  auto watch = Start({"watch", "--initial", "--type", "world"});
  ASSERT_NE(watch, nullptr);
  auto added = NextEvent(*watch, absl::Seconds(5));
  ASSERT_TRUE(added.has_value()) << watch->ReadStderr();
  EXPECT_EQ((*added)["event"], "added");
  EXPECT_EQ((*added)["instance"]["instanceId"], id);
  EXPECT_GT((*added)["revision"].get<int64_t>(), 0);

  Result set = Run({"set-status", "world", id, "error", "--custom-state", "maintenance"});
  ASSERT_EQ(set.code, 0) << set.err;
  auto changed = NextEvent(*watch, absl::Seconds(5));
  ASSERT_TRUE(changed.has_value());
  EXPECT_EQ((*changed)["event"], "status_changed");
  EXPECT_EQ((*changed)["instance"]["status"], "error");
  EXPECT_EQ((*changed)["instance"]["customState"], "maintenance");
  EXPECT_GT((*changed)["revision"].get<int64_t>(), (*added)["revision"].get<int64_t>());

  // A second instance of another group shows up; SIGTERM on it: shutting_down, then removed.
  auto [reg2, id2] = Register({"--ttl", "3"}, "world", "kr-2");
  ASSERT_NE(reg2, nullptr);
  // registered (initializing), then ready: added + status_changed.
  auto a2 = NextEvent(*watch, absl::Seconds(5));
  ASSERT_TRUE(a2.has_value());
  EXPECT_EQ((*a2)["event"], "added");
  EXPECT_EQ((*a2)["instance"]["instanceId"], id2);
  auto r2 = NextEvent(*watch, absl::Seconds(5));
  ASSERT_TRUE(r2.has_value());
  EXPECT_EQ((*r2)["event"], "status_changed");
  EXPECT_EQ((*r2)["instance"]["status"], "ready");
  ASSERT_TRUE(reg2->Signal(SIGTERM).ok());
  EXPECT_EQ(reg2->Wait(absl::Seconds(5)).value_or(-1), 0) << reg2->ReadStderr();
  auto down = NextEvent(*watch, absl::Seconds(5));
  ASSERT_TRUE(down.has_value());
  EXPECT_EQ((*down)["event"], "status_changed");
  EXPECT_EQ((*down)["instance"]["status"], "shutting_down");
  auto removed = NextEvent(*watch, absl::Seconds(5));
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ((*removed)["event"], "removed");
  EXPECT_EQ((*removed)["instance"]["instanceId"], id2);

  // watch --group filters.
  auto watch_g = Start({"watch", "--initial", "--group", "kr-2"});
  ASSERT_NE(watch_g, nullptr);
  auto [reg3, id3] = Register({"--ttl", "3", "--status", "initializing"}, "world", "kr-2");
  ASSERT_NE(reg3, nullptr);
  auto a3 = NextEvent(*watch_g, absl::Seconds(5));
  ASSERT_TRUE(a3.has_value());
  EXPECT_EQ((*a3)["instance"]["instanceId"], id3);  // not the kr-1 instance

  ASSERT_TRUE(watch->Signal(SIGINT).ok());
  EXPECT_EQ(watch->Wait(absl::Seconds(5)).value_or(-1), 0);
  ASSERT_TRUE(watch_g->Signal(SIGTERM).ok());
  EXPECT_EQ(watch_g->Wait(absl::Seconds(5)).value_or(-1), 0);
}

TEST_F(DiscoveryctlTest, SigtermRemovesTheKeyAtOnce) {
  auto [reg, id] = Register({"--ttl", "10"});
  ASSERT_NE(reg, nullptr);
  const std::string key = Key("world", id);
  auto kv = Read(key);
  ASSERT_TRUE(kv.has_value());
  absl::Time start = absl::Now();
  ASSERT_TRUE(reg->Signal(SIGTERM).ok());
  auto code = reg->Wait(absl::Seconds(5));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0) << reg->ReadStderr();
  EXPECT_LT(absl::Now() - start, TimeScale(absl::Seconds(2)));
  EXPECT_FALSE(Read(key).has_value());   // gone now, not after the 10 s TTL
  EXPECT_EQ(LeaseTtl(kv->lease()), -1);  // lease revoked
}

TEST_F(DiscoveryctlTest, SigkillRemovesTheKeyAfterTheTtl) {
  auto [reg, id] = Register({"--ttl", "2"});
  ASSERT_NE(reg, nullptr);
  const std::string key = Key("world", id);
  ASSERT_TRUE(Read(key).has_value());
  absl::Time killed = absl::Now();
  ASSERT_TRUE(reg->Signal(SIGKILL).ok());
  ASSERT_TRUE(WaitUntil([&] { return !Read(key).has_value(); }, absl::Seconds(2 + 2)));
  // Kept alive until the kill, so it lasted close to a TTL after it.
  EXPECT_GT(absl::Now() - killed, absl::Seconds(1));
}

TEST_F(DiscoveryctlTest, HttpCheckDrivesStatus) {
  TestHttpServer server;
  server.set_answer(500);
  // Follow every status change through `watch` to see there is no flapping.
  auto watch = Start({"watch"});
  ASSERT_NE(watch, nullptr);
  // Sync point: the watch prints a marker instance written after it started... but it only
  // sees changes after its first sync, so write markers until one shows up.
  ASSERT_TRUE(WaitUntil(
      [&] {
        Put(Key("marker", "m"), ValidJson("marker", "m"));
        return watch->ReadLine(absl::Milliseconds(100)).has_value();
      },
      absl::Seconds(5)));
  while (watch->ReadLine(absl::Milliseconds(200)).has_value()) {
  }

  const std::string url = absl::StrCat("http://127.0.0.1:", server.port(), "/healthz");
  auto [reg, id] =
      Register({"--ttl", "3", "--check-http", url, "--check-interval", "0.1"}, "legacy");
  ASSERT_NE(reg, nullptr);
  const std::string key = Key("legacy", id);
  {
    // Until 3 checks have failed there is no verdict: initializing.
    std::string status = StatusOf(key);
    if (server.requests() < 3) {
      EXPECT_EQ(status, "initializing");
    }
  }
  ASSERT_TRUE(WaitUntil([&] { return StatusOf(key) == "error"; }, absl::Seconds(5)));
  EXPECT_GE(server.requests(), 3);

  server.set_answer(200);
  ASSERT_TRUE(WaitUntil([&] { return StatusOf(key) == "ready"; }, absl::Seconds(5)));

  server.set_answer(TestHttpServer::kClose);  // connection closed without an answer
  ASSERT_TRUE(WaitUntil([&] { return StatusOf(key) == "error"; }, absl::Seconds(5)));

  server.set_answer(302);  // 3xx passes
  ASSERT_TRUE(WaitUntil([&] { return StatusOf(key) == "ready"; }, absl::Seconds(5)));

  ASSERT_TRUE(reg->Signal(SIGTERM).ok());
  EXPECT_EQ(reg->Wait(absl::Seconds(5)).value_or(-1), 0) << reg->ReadStderr();
  EXPECT_FALSE(Read(key).has_value());

  // Exactly one status write per verdict (hysteresis, no flapping).
  std::vector<std::string> seen;
  while (auto ev = NextEvent(*watch, absl::Seconds(2))) {
    if ((*ev)["instance"]["instanceId"] != id) continue;
    seen.push_back(absl::StrCat((*ev)["event"].get<std::string>(), ":",
                                (*ev)["instance"]["status"].get<std::string>()));
    if ((*ev)["event"] == "removed") break;
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"added:initializing", "status_changed:error",
                                            "status_changed:ready", "status_changed:error",
                                            "status_changed:ready", "status_changed:shutting_down",
                                            "removed:shutting_down"}));
  ASSERT_TRUE(watch->Signal(SIGTERM).ok());
  EXPECT_EQ(watch->Wait(absl::Seconds(5)).value_or(-1), 0);
}

TEST_F(DiscoveryctlTest, TcpCheckDrivesStatus) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 128), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const std::string target = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));

  auto [reg, id] = Register({"--ttl", "3", "--check-tcp", target, "--check-interval", "0.1"});
  ASSERT_NE(reg, nullptr);
  const std::string key = Key("world", id);
  ASSERT_TRUE(WaitUntil([&] { return StatusOf(key) == "ready"; }, absl::Seconds(5)));
  close(fd);  // connection refused from now on
  ASSERT_TRUE(WaitUntil([&] { return StatusOf(key) == "error"; }, absl::Seconds(5)));
  ASSERT_TRUE(reg->Signal(SIGINT).ok());
  EXPECT_EQ(reg->Wait(absl::Seconds(5)).value_or(-1), 0) << reg->ReadStderr();
  EXPECT_FALSE(Read(key).has_value());
}

TEST_F(DiscoveryctlTest, SetStatusKeepsTheLeaseAndRefusesInvalidTransitions) {
  auto [reg, id] = Register({"--ttl", "3"});
  ASSERT_NE(reg, nullptr);
  const std::string key = Key("world", id);
  auto before = Read(key);
  ASSERT_TRUE(before.has_value());
  ASSERT_NE(before->lease(), 0);
  auto value0 = nlohmann::json::parse(before->value());

  Result r = Run({"set-status", "world", id, "error", "--custom-state", "maintenance"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "ready -> error")) << r.out;
  auto after = Read(key);
  ASSERT_TRUE(after.has_value());
  EXPECT_EQ(after->lease(), before->lease());
  auto value = nlohmann::json::parse(after->value());
  EXPECT_EQ(value["status"], "error");
  EXPECT_EQ(value["customState"], "maintenance");
  EXPECT_EQ(value["startedAt"], value0["startedAt"]);
  EXPECT_NE(value["updatedAt"], value0["updatedAt"]);

  // error -> initializing is not a valid transition: exit 1, value untouched.
  r = Run({"set-status", "world", id, "initializing"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(absl::StartsWith(r.err, "discoveryctl: ")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "not allowed")) << r.err;
  EXPECT_EQ(Read(key)->mod_revision(), after->mod_revision());

  // error -> ready is; customState is kept when not given.
  r = Run({"set-status", "world", id, "ready"});
  ASSERT_EQ(r.code, 0) << r.err;
  value = nlohmann::json::parse(Read(key)->value());
  EXPECT_EQ(value["status"], "ready");
  EXPECT_EQ(value["customState"], "maintenance");
  EXPECT_EQ(Read(key)->lease(), before->lease());

  EXPECT_EQ(Run({"set-status", "world", "NO-SUCH-ID", "ready"}).code, 2);
  EXPECT_EQ(Run({"set-status", "world", id, "sleeping"}).code, 1);

  // The register process still keeps that lease alive.
  EXPECT_GT(LeaseTtl(before->lease()), 0);
}

TEST_F(DiscoveryctlTest, DeregisterDeletesAndRevokes) {
  const int64_t lease = Grant(30);
  Put(Key("world", "a"), ValidJson("world", "a"), lease);
  Result r = Run({"deregister", "world", "a"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "revoked")) << r.out;
  EXPECT_FALSE(Read(Key("world", "a")).has_value());
  EXPECT_EQ(LeaseTtl(lease), -1);

  r = Run({"deregister", "world", "a"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(absl::StrContains(r.err, "not found")) << r.err;
  EXPECT_EQ(Run({"get", "world", "a"}).code, 2);

  // A lease shared by two instances is kept for the other one.
  const int64_t shared = Grant(30);
  Put(Key("world", "b"), ValidJson("world", "b"), shared);
  Put(Key("world", "c"), ValidJson("world", "c"), shared);
  r = Run({"deregister", "world", "b"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "kept")) << r.out;
  EXPECT_FALSE(Read(Key("world", "b")).has_value());
  EXPECT_TRUE(Read(Key("world", "c")).has_value());
  EXPECT_GT(LeaseTtl(shared), 0);
}

TEST_F(DiscoveryctlTest, GarbageValuesAreReportedAndSkipped) {
  auto [reg, id] = Register({"--ttl", "3"});
  ASSERT_NE(reg, nullptr);
  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
           {Key("world", "garbage"), "not json {"},
           {Key("world", "noid"), R"({"type":"world"})"},
           {Key("world", "other"), ValidJson("world", "mismatch")},
           {prefix_ + "stray", ValidJson("stray", "x")}}) {
    auto out = cluster_->Etcdctl({"put", key, value});
    ASSERT_TRUE(out.ok()) << out.status();
  }
  Result r = Run({"list"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, id)) << r.out;
  EXPECT_EQ(std::vector<std::string>(absl::StrSplit(r.out, '\n', absl::SkipEmpty())).size(), 2u)
      << r.out;
  EXPECT_TRUE(absl::StartsWith(r.err, "discoveryctl: skipped 4 invalid value(s): ")) << r.err;
  for (const std::string& key :
       {Key("world", "garbage"), Key("world", "noid"), Key("world", "other"), prefix_ + "stray"}) {
    EXPECT_TRUE(absl::StrContains(r.err, key + ": ")) << key << " not in " << r.err;
  }
  EXPECT_TRUE(absl::StrContains(r.err, "not valid JSON")) << r.err;

  Result json = Run({"list", "-o", "json"});
  ASSERT_EQ(json.code, 0);
  EXPECT_EQ(nlohmann::json::parse(json.out).size(), 1u);

  Result get = Run({"get", "world", "garbage"});
  EXPECT_EQ(get.code, 1);
  EXPECT_TRUE(absl::StrContains(get.err, "invalid value")) << get.err;
}

TEST_F(DiscoveryctlTest, UnreachableEtcdExitsWith3WithinTheTimeout) {
  // Nothing listening (connection refused) and a listener that never speaks HTTP/2 (a hung
  // member): both must end within --timeout (+1 s).
  int hung = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(hung, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(hung, 128), 0);
  socklen_t len = sizeof(addr);
  getsockname(hung, reinterpret_cast<sockaddr*>(&addr), &len);
  const std::vector<std::string> endpoints = {
      absl::StrCat("http://127.0.0.1:", testing::PickFreePort()),
      absl::StrCat("http://127.0.0.1:", ntohs(addr.sin_port))};
  const std::vector<std::vector<std::string>> commands = {
      {"list"},
      {"get", "world", "x"},
      {"watch"},
      {"deregister", "world", "x"},
      {"set-status", "world", "x", "ready"},
      {"register", "--type", "world", "--group", "g", "--host", "h", "--port", "game=1"}};
  for (const std::string& endpoint : endpoints) {
    for (std::vector<std::string> args : commands) {
      args.insert(args.end(), {"--timeout", "1"});
      Result r = Run(args, endpoint);
      EXPECT_EQ(r.code, 3) << args[0] << " " << endpoint << ": " << r.err;
      EXPECT_LT(r.took, TimeScale(absl::Seconds(2))) << args[0] << " " << endpoint;
      EXPECT_TRUE(absl::StartsWith(r.err, "discoveryctl: ")) << r.err;
      EXPECT_TRUE(absl::StrContains(r.err, "unreachable")) << r.err;
    }
  }
  close(hung);
}

TEST_F(DiscoveryctlTest, UsageErrorsExitWith1) {
  Result r = Run({"get", "bad/type", "x"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "discoveryctl: type \"bad/type\": must match [A-Za-z0-9._-]{1,64}\n");
  EXPECT_EQ(Run({"list", "--type", "a b"}).code, 1);
  EXPECT_EQ(Run({"watch", "--group", "x/y"}).code, 1);
  EXPECT_EQ(Run({"deregister", "world", "a/b"}).code, 1);
  EXPECT_EQ(Run({"list", "--status", "sleeping"}).code, 1);
  EXPECT_EQ(
      Run({"register", "--type", "bad/type", "--group", "g", "--host", "h", "--port", "game=1"})
          .code,
      1);
  EXPECT_EQ(Run({"register", "--type", "w", "--group", "g", "--host", "h", "--port", "game"}).code,
            1);
  EXPECT_EQ(
      Run({"register", "--type", "w", "--group", "g", "--host", "h", "--port", "game=70000"}).code,
      1);
  EXPECT_EQ(Run({"register", "--type", "w", "--group", "g", "--host", "h", "--port", "game=1",
                 "--check-http", "https://x/"})
                .code,
            1);
  EXPECT_EQ(Run({"register", "--type", "w", "--group", "g", "--host", "h", "--port", "game=1",
                 "--check-http", "http://x/", "--check-tcp", "x:1"})
                .code,
            1);
  EXPECT_EQ(Run({"register", "--type", "w", "--group", "g", "--port", "game=1"}).code, 1);
  EXPECT_EQ(Run({"list", "-o", "yaml"}).code, 1);
  EXPECT_EQ(Run({"list", "--no-such-flag"}).code, 1);
  EXPECT_EQ(Run({"get", "world"}).code, 1);
  EXPECT_EQ(Run({"frobnicate"}).code, 1);
  EXPECT_EQ(Run({}).code, 1);
  EXPECT_EQ(Run({"list"}, "ftp://127.0.0.1:1").code, 1);
  for (const char* cmd : {"list", "get", "watch", "register", "deregister", "set-status"}) {
    Result help = Run({cmd, "--help"});
    EXPECT_EQ(help.code, 0) << cmd;
    EXPECT_TRUE(absl::StrContains(help.out, "Usage")) << cmd << ": " << help.out;
  }
}

}  // namespace
}  // namespace discovery
