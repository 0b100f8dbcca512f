// Wall-clock steps: a host's CLOCK_REALTIME may step by minutes at any moment (NTP correcting
// a drifted clock, a VM resuming from a pause). Durations, timers and deadlines run on the
// monotonic clock, so a step must neither cost a registration its lease nor make a watcher
// replace a healthy stream.
//
// The processes under test run under libfaketime (LD_PRELOAD) with a timestamp file
// (FAKETIME_TIMESTAMP_FILE, FAKETIME_NO_CACHE=1: re-read on every call) that the test rewrites
// mid-run from "+0" to "-60" or "+60" seconds; FAKETIME_DONT_FAKE_MONOTONIC=1 leaves
// CLOCK_MONOTONIC alone, as a real step does. etcd and this test binary keep the real clock.
//
//  - Registrar (examples/example_game_server, lease TTL 3 s, a performance write every second):
//    for 10 s after the step, etcd is read every 100 ms: the key is never absent and keeps its
//    lease; the value's updatedAt (written with the process's wall clock) shows the step; the
//    process reports no lease_at_risk / lease_lost / re_registered and replaces no stream.
//  - Watcher (`discoveryctl watch`, reaching etcd through a TcpProxy first, then directly): for
//    7 s after the step, values written 2.5 s apart (so the stream idles past its liveness
//    probe interval) are each printed within 1 s; etcd's count of Watch streams ever opened
//    does not move; the log shows no stream replacement. Step forward: taken while a liveness
//    probe waits in the paused proxy (answered 2.5 s later, inside the 3 s probe timeout).
//    Step back: afterwards the proxy is paused for good, and the silent stream must still be
//    replaced (liveness timers keep running) so that a value written meanwhile shows.
//
// Before util::MonoNow() (the parent of commit "One monotonic clock ..."), all four fail: a
// step back stopped keepalives for 60 s (the key vanished ~3 s after the step, no event) and
// the watcher's liveness checks with them (a silent stream went unnoticed); a step forward
// reported lease_at_risk at once and replaced a watch stream whose probe had been out for 0.5 s
// ("unanswered for 1m0.5s").
//
// Label `clock`; 11-15 s per test. See tests/clock/CMakeLists.txt for the environment variables
// that swap the binaries under test.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "discovery/etcd.h"
#include "discovery/instance.h"
#include "etcd/client.h"
#include "etcd_harness.h"
#include "tcp_proxy.h"

namespace discovery {
namespace {

using ::discovery::testing::ChildProcess;
using ::discovery::testing::EtcdCluster;
using ::discovery::testing::TimeScale;
using ::discovery::testing::WaitUntil;
namespace pb = ::etcdserverpb;

constexpr int kStepSeconds = 60;
constexpr int kTtlSeconds = 3;
// How long the step's effects are watched: the registrar for more than three TTLs, the
// watcher for more than its stream's liveness probe interval + timeout (2 s + 3 s).
const absl::Duration kRegistrarObserve = absl::Seconds(10);
const absl::Duration kWatcherObserve = absl::Seconds(7);

// Log lines of a replaced stream (LeaseKeeper: "stalled ...; reconnecting", WatchHub:
// "unanswered ...; reconnecting") and registrar events a healthy lease must not produce.
const char* const kReplacedStream[] = {"reconnecting", "unanswered", "stalled"};
const char* const kFalseAlarms[] = {"event lease_at_risk ", "event lease_lost ",
                                    "event re_registered "};

// `env` when set and non-empty, else `fallback`.
std::string FromEnv(const char* env, const char* fallback) {
  const char* v = std::getenv(env);
  return v != nullptr && *v != '\0' ? std::string(v) : std::string(fallback);
}

// The first of `needles` found in `haystack`, or "".
std::string FindAny(const std::string& haystack, const char* const* begin, const char* const* end) {
  for (const char* const* n = begin; n != end; ++n) {
    if (absl::StrContains(haystack, *n)) return *n;
  }
  return "";
}

// Bytes received and not yet read on the ESTABLISHED sockets of 127.0.0.1:`port` (their Recv-Q
// in /proc/net/tcp): what a client sent through a paused TcpProxy.
int64_t UnreadBytes(int port) {
  std::ifstream in("/proc/net/tcp");
  std::string line;
  std::getline(in, line);  // header
  int64_t total = 0;
  while (std::getline(in, line)) {
    // sl local_address rem_address st tx_queue:rx_queue ...
    std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.size() < 5 || f[3] != "01") continue;
    if (f[1] != absl::StrFormat("0100007F:%04X", port)) continue;
    size_t colon = f[4].find(':');
    if (colon == std::string::npos) continue;
    total += std::strtoll(f[4].c_str() + colon + 1, nullptr, 16);
  }
  return total;
}

// A wall clock for child processes: libfaketime reading an offset from a file we rewrite.
class SteppedClock {
 public:
  static absl::StatusOr<std::unique_ptr<SteppedClock>> Create() {
    std::string lib = FromEnv("DISCOVERY_TEST_LIBFAKETIME", LIBFAKETIME);
    if (lib.empty() || access(lib.c_str(), R_OK) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("libfaketime.so.1 not found ('", lib,
                       "'): install the Debian package faketime (scripts/install-deps) or set "
                       "DISCOVERY_TEST_LIBFAKETIME"));
    }
    auto dir = testing::MakeTempDir("clock-");
    if (!dir.ok()) return dir.status();
    auto clock = std::unique_ptr<SteppedClock>(new SteppedClock(lib, *dir));
    if (absl::Status s = clock->Set(0); !s.ok()) return s;
    return clock;
  }
  ~SteppedClock() {
    std::remove(file_.c_str());
    std::remove(absl::StrCat(file_, ".new").c_str());
    rmdir(dir_.c_str());
  }

  std::vector<std::pair<std::string, std::string>> Env() const {
    return {{"LD_PRELOAD", lib_},
            {"FAKETIME_TIMESTAMP_FILE", file_},
            {"FAKETIME_NO_CACHE", "1"},
            {"FAKETIME_DONT_FAKE_MONOTONIC", "1"}};
  }

  // Sets the children's CLOCK_REALTIME to real time + `offset_seconds`, atomically (rename),
  // so no reader ever sees a half-written file.
  absl::Status Set(int offset_seconds) {
    const std::string tmp = absl::StrCat(file_, ".new");
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << (offset_seconds < 0 ? "-" : "+") << std::abs(offset_seconds) << "\n";
      if (!out.flush()) return absl::InternalError(absl::StrCat("cannot write ", tmp));
    }
    if (std::rename(tmp.c_str(), file_.c_str()) != 0) {
      return absl::InternalError(absl::StrCat("cannot rename ", tmp));
    }
    return absl::OkStatus();
  }

  // What a child sees right now: `date +%s.%N` under Env(), minus the real time.
  absl::StatusOr<absl::Duration> Measure() const {
    auto date = ChildProcess::Spawn(
        {.argv = {"date", "+%s.%N"}, .env = Env(), .unset_env_prefixes = {"FAKETIME"}});
    if (!date.ok()) return date.status();
    const absl::Time real = absl::Now();
    auto code = (*date)->Wait(absl::Seconds(10));
    if (!code.ok()) return code.status();
    double seen = 0;
    if (*code != 0 || !absl::SimpleAtod(absl::StripAsciiWhitespace((*date)->ReadStdout()), &seen)) {
      return absl::InternalError(
          absl::StrCat("date under libfaketime failed: ", (*date)->ReadStderr()));
    }
    return absl::FromUnixNanos(static_cast<int64_t>(seen * 1e9)) - real;
  }

 private:
  SteppedClock(std::string lib, const std::string& dir)
      : lib_(std::move(lib)), dir_(dir), file_(absl::StrCat(dir, "/faketime")) {}

  const std::string lib_;
  const std::string dir_;
  const std::string file_;
};

class ClockStepTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto clock = SteppedClock::Create();
    ASSERT_TRUE(clock.ok()) << clock.status();
    clock_ = *std::move(clock);
    auto cluster = EtcdCluster::Start();
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = *std::move(cluster);
    EtcdOptions o;
    o.endpoints = cluster_->ClientEndpoints();
    o.call_timeout = TimeScale(absl::Seconds(2));
    auto conn = Connection::Create(o);
    ASSERT_TRUE(conn.ok()) << conn.status();
    conn_ = *conn;
  }

  void TearDown() override {
    if (HasFailure() && child_ != nullptr) {
      ADD_FAILURE() << child_->argv()[0] << " stderr:\n"
                    << testing::TailFile(child_->stderr_path());
    }
    child_.reset();
  }

  // Spawns a process under test with the stepped clock.
  void Spawn(std::vector<std::string> argv, bool pipe) {
    std::vector<std::pair<std::string, std::string>> env = clock_->Env();
    env.emplace_back("ETCD_ENDPOINTS", cluster_->EndpointsCsv());
    if (const char* level = std::getenv("DISCOVERY_LOG_LEVEL")) {
      env.emplace_back("DISCOVERY_LOG_LEVEL", level);  // e.g. debug, to look into a failure
    }
    auto child = ChildProcess::Spawn({.argv = std::move(argv),
                                      .env = std::move(env),
                                      .unset_env_prefixes = {"ETCD_", "DISCOVERY_", "FAKETIME"},
                                      .stdout_to_pipe = pipe});
    ASSERT_TRUE(child.ok()) << child.status();
    child_ = *std::move(child);
  }

  // Steps the children's wall clock to real + `offset_seconds` and checks that it took.
  void Step(int offset_seconds) {
    ASSERT_TRUE(clock_->Set(offset_seconds).ok());
    auto seen = clock_->Measure();
    ASSERT_TRUE(seen.ok()) << seen.status();
    ASSERT_LT(absl::AbsDuration(*seen - absl::Seconds(offset_seconds)), absl::Seconds(5))
        << "libfaketime did not step the clock: offset " << *seen;
  }

  std::optional<mvccpb::KeyValue> Read(const std::string& key) {
    pb::RangeRequest req;
    req.set_key(key);
    auto r = conn_->client()->Range(req);
    if (!r.ok() || r->kvs_size() == 0) return std::nullopt;
    return r->kvs(0);
  }

  absl::Status Put(const std::string& key, const std::string& value) {
    pb::PutRequest req;
    req.set_key(key);
    req.set_value(value);
    return conn_->client()->Put(req).status();
  }

  // etcd's count of Watch streams ever opened (grpc_server_started_total on /metrics).
  int64_t WatchStreamsOpened() {
    auto r = testing::HttpGet(cluster_->ClientPort(0), "/metrics", absl::Seconds(3));
    if (!r.ok() || r->status != 200) return -1;
    const std::string line =
        "grpc_server_started_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\","
        "grpc_type=\"bidi_stream\"} ";
    size_t pos = r->body.find(line);
    if (pos == std::string::npos) return -1;
    pos += line.size();
    int64_t n = -1;
    if (!absl::SimpleAtoi(r->body.substr(pos, r->body.find('\n', pos) - pos), &n)) return -1;
    return n;
  }

  void RegistrarSurvivesStep(int offset_seconds);
  void WatcherSurvivesStep(int offset_seconds);

  std::unique_ptr<SteppedClock> clock_;
  std::unique_ptr<EtcdCluster> cluster_;
  std::shared_ptr<Connection> conn_;
  std::unique_ptr<ChildProcess> child_;
};

void ClockStepTest::RegistrarSurvivesStep(int offset_seconds) {
  const std::string key = "/services/world/clock-1";
  ASSERT_NO_FATAL_FAILURE(Spawn({FromEnv("DISCOVERY_TEST_EXAMPLE_GAME_SERVER", EXAMPLE_GAME_SERVER),
                                 "--type", "world", "--group", "clock", "--id", "clock-1", "--ttl",
                                 std::to_string(kTtlSeconds), "--perf-interval", "1"},
                                false));
  std::optional<mvccpb::KeyValue> kv;
  ASSERT_TRUE(WaitUntil(
      [&] {
        kv = Read(key);
        return kv.has_value() && absl::StrContains(kv->value(), "\"status\":\"ready\"");
      },
      absl::Seconds(10)))
      << "not registered";
  const int64_t lease = kv->lease();
  ASSERT_NE(lease, 0);

  ASSERT_NO_FATAL_FAILURE(Step(offset_seconds));
  const absl::Time stepped = absl::Now();
  // Sample etcd every 100 ms; stop early at the first sign of trouble.
  int samples = 0;
  std::string broken;
  bool saw_step = false;  // a value written with the stepped clock
  int64_t writes = 0;     // values written since the step
  int64_t mod_revision = kv->mod_revision();
  absl::Duration last_skew = absl::ZeroDuration();  // updatedAt - real time of the last value
  WaitUntil(
      [&] {
        ++samples;
        std::optional<mvccpb::KeyValue> now = Read(key);
        const absl::Duration at = absl::Now() - stepped;
        if (!now.has_value()) {
          broken = absl::StrCat("key absent ", absl::FormatDuration(at), " after the step");
        } else if (now->lease() != lease) {
          broken = absl::StrCat("lease changed to ", now->lease(), " ", absl::FormatDuration(at),
                                " after the step");
        } else if (auto in = DecodeInstance(now->value());
                   in.ok() && now->mod_revision() != mod_revision) {
          mod_revision = now->mod_revision();
          ++writes;
          last_skew = in->updated_at - absl::Now();
          if (absl::AbsDuration(last_skew - absl::Seconds(offset_seconds)) < absl::Seconds(5)) {
            saw_step = true;
          }
        }
        std::string err = child_->ReadStderr();
        std::string alarm = FindAny(err, std::begin(kFalseAlarms), std::end(kFalseAlarms));
        if (alarm.empty()) {
          alarm = FindAny(err, std::begin(kReplacedStream), std::end(kReplacedStream));
        }
        if (!alarm.empty() && broken.empty()) {
          broken = absl::StrCat("registrar logged '", alarm, "' ", absl::FormatDuration(at),
                                " after the step");
        }
        if (!child_->Running() && broken.empty()) broken = "registrar exited";
        return !broken.empty();
      },
      kRegistrarObserve, absl::Milliseconds(100));
  EXPECT_EQ(broken, "") << "(sample " << samples << ")";
  EXPECT_TRUE(saw_step || !broken.empty())
      << "no performance write carried the stepped clock (" << writes
      << " writes since the step, the last one's updatedAt " << last_skew << " off real time)";
}

void ClockStepTest::WatcherSurvivesStep(int offset_seconds) {
  const std::string key = "/services/world/clock-w";
  auto value = [](const std::string& marker) {
    return absl::StrCat(R"({"instanceId":"clock-w","type":"world","group":"clock",)",
                        R"("status":"ready","customState":")", marker, R"("})");
  };
  // The watcher reaches etcd through a proxy first (so the test can silence its stream), then
  // directly.
  auto proxy = testing::TcpProxy::Start(cluster_->ClientPort(0));
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  ASSERT_NO_FATAL_FAILURE(
      Spawn({FromEnv("DISCOVERY_TEST_DISCOVERYCTL", DISCOVERYCTL), "watch", "--endpoints",
             absl::StrCat((*proxy)->endpoint(), ",", cluster_->EndpointsCsv())},
            true));
  // Writes `marker` and waits up to `within` for the watcher to print it.
  auto seen = [&](const std::string& marker, absl::Duration within) {
    if (!Put(key, value(marker)).ok()) return false;
    const absl::Time deadline = absl::Now() + TimeScale(within);
    const std::string needle = absl::StrCat("\"customState\":\"", marker, "\"");
    while (absl::Now() < deadline) {
      std::optional<std::string> line = child_->ReadLine(deadline - absl::Now());
      if (line.has_value() && absl::StrContains(*line, needle)) return true;
      if (!line.has_value() && !child_->Running()) return false;
    }
    return false;
  };
  // Waits until `until`; false (and `broken` says why) when the watcher replaces its stream or
  // exits meanwhile.
  std::string broken;
  auto quiet_until = [&](absl::Time until) {
    WaitUntil(
        [&] {
          std::string alarm =
              FindAny(child_->ReadStderr(), std::begin(kReplacedStream), std::end(kReplacedStream));
          if (!alarm.empty()) broken = absl::StrCat("watcher logged '", alarm, "'");
          if (!child_->Running()) broken = "watcher exited";
          return !broken.empty() || absl::Now() >= until;
        },
        until - absl::Now() + absl::Seconds(1), absl::Milliseconds(50));
    return broken.empty();
  };
  // The watch is up once a write shows (values written before its first sync are not printed).
  int warmup = 0;
  ASSERT_TRUE(WaitUntil([&] { return seen(absl::StrCat("warmup-", ++warmup), absl::Seconds(1)); },
                        absl::Seconds(15), absl::Milliseconds(1)))
      << "discoveryctl watch printed nothing";
  ASSERT_GT((*proxy)->connections(), 0) << "the watcher does not use the first endpoint";
  const int64_t streams = WatchStreamsOpened();
  ASSERT_GT(streams, 0) << "no Watch stream count on etcd's /metrics";

  if (offset_seconds > 0) {
    // Step forward while a liveness probe is unanswered: after 2 s of silence the watcher
    // sends a progress request, which waits in the paused proxy; the clock steps at once and
    // the proxy resumes 2.5 s later, within the probe timeout (3 s) on a monotonic clock. (A
    // wall clock sees a probe unanswered for a minute: absl::Now() follows a step within ~2 s.)
    ASSERT_TRUE(seen("before-probe", absl::Seconds(1)));
    ASSERT_TRUE(quiet_until(absl::Now() + absl::Milliseconds(500))) << broken;  // acks pass
    (*proxy)->Pause();
    ASSERT_TRUE(WaitUntil([&] { return UnreadBytes((*proxy)->port()) > 0; }, absl::Seconds(4)))
        << "no liveness probe after 3.5 s of silence";
    const absl::Time probe = absl::Now();
    ASSERT_NO_FATAL_FAILURE(Step(offset_seconds));
    ASSERT_TRUE(quiet_until(probe + absl::Milliseconds(2500))) << broken << " (probe in flight)";
    (*proxy)->Resume();
  } else {
    ASSERT_NO_FATAL_FAILURE(Step(offset_seconds));
  }
  const absl::Time stepped = absl::Now();
  for (int i = 0; absl::Now() - stepped < kWatcherObserve && broken.empty(); ++i) {
    const std::string marker = absl::StrCat("after-step-", i);
    if (!seen(marker, absl::Seconds(1))) {
      broken = absl::StrCat(marker, " (written ", absl::FormatDuration(absl::Now() - stepped),
                            " after the step) not printed within 1 s");
      break;
    }
    // Idle past the liveness probe interval; stop at a replaced stream.
    quiet_until(absl::Now() + absl::Milliseconds(2500));
  }
  EXPECT_EQ(broken, "");
  EXPECT_EQ(WatchStreamsOpened(), streams) << "the watcher opened a new Watch stream";

  if (offset_seconds < 0 && broken.empty()) {
    // Liveness still works on the stepped-back clock: a stream that goes silent is replaced
    // (probe after 2 s idle, 3 s timeout, then the direct endpoint), and what was written
    // meanwhile shows.
    (*proxy)->Pause();
    EXPECT_TRUE(seen("behind-dead-stream", absl::Seconds(10)))
        << "a silent Watch stream was not replaced within 10 s";
    EXPECT_GT(WatchStreamsOpened(), streams);
    (*proxy)->Resume();
  }
}

TEST_F(ClockStepTest, RegistrarKeepsLeaseWhenWallClockStepsBack) {
  RegistrarSurvivesStep(-kStepSeconds);
}

TEST_F(ClockStepTest, RegistrarKeepsLeaseWhenWallClockStepsForward) {
  RegistrarSurvivesStep(kStepSeconds);
}

TEST_F(ClockStepTest, WatcherKeepsStreamAndLivenessWhenWallClockStepsBack) {
  WatcherSurvivesStep(-kStepSeconds);
}

TEST_F(ClockStepTest, WatcherKeepsStreamWhenWallClockStepsForwardDuringAProbe) {
  WatcherSurvivesStep(kStepSeconds);
}

}  // namespace
}  // namespace discovery
