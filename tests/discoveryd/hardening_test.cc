// discoveryd against strangers at its port (label etcd): made-up methods and paths without a
// token must not grow /metrics or memory, a connection flood past --max-connections is refused
// without a spinning thread, and running out of file descriptors pauses accepting instead of
// busy-looping. Real etcd from the harness, discoveryd spawned as a child process (its CPU
// time and RSS are read from /proc/<pid>).
#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>

#include <fstream>
#include <random>
#include <regex>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gateway_fixture.h"
#include "util/clock.h"

namespace discovery {
namespace {

using testing::ChildProcess;
using testing::DiscoverydTest;
using testing::GatewayProc;
using testing::Http;
using testing::Response;
using testing::TestSocket;
using testing::TimeScale;
using testing::WaitUntil;

// utime + stime of `pid`, in seconds.
double CpuSeconds(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Fields after "(comm)": state is field 3; utime and stime are fields 14 and 15.
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  std::vector<std::string> f = absl::StrSplit(stat.substr(close + 2), ' ');
  if (f.size() < 13) return -1;
  double utime = 0, stime = 0;
  if (!absl::SimpleAtod(f[11], &utime) || !absl::SimpleAtod(f[12], &stime)) return -1;
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// VmRSS of `pid` in KiB (-1 when unreadable).
int64_t RssKiB(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (!absl::StartsWith(line, "VmRSS:")) continue;
    std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    int64_t kib = -1;
    if (f.size() >= 2 && absl::SimpleAtoi(f[1], &kib)) return kib;
  }
  return -1;
}

// The CPU share of one core `pid` used over `window` of wall time. The window is a
// measurement interval (what the process does while nothing happens), not a synchronisation:
// WaitUntil only serves as the deadline-bounded wait.
double CpuShareOver(pid_t pid, absl::Duration window) {
  double cpu0 = CpuSeconds(pid);
  absl::Time t0 = util::MonoNow();
  absl::Time end = t0 + window;
  WaitUntil([&] { return util::MonoNow() >= end; }, window + absl::Seconds(1),
            absl::Milliseconds(100));
  double cpu1 = CpuSeconds(pid);
  return (cpu1 - cpu0) / absl::ToDoubleSeconds(util::MonoNow() - t0);
}

// The value of an unlabelled sample in a Prometheus text body (-1 when absent).
double Sample(const std::string& body, const std::string& name) {
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (!absl::StartsWith(line, name + " ")) continue;
    double v = -1;
    if (absl::SimpleAtod(line.substr(name.size() + 1), &v)) return v;
  }
  return -1;
}

std::string MetricsBody(int port) {
  auto r = Http(port, "GET", "/metrics");
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok()) return "";
  EXPECT_EQ(r->status, 200);
  return r->body;
}

bool Healthy(int port) {
  auto r = Http(port, "GET", "/healthz", "", {}, absl::Seconds(2));
  return r.ok() && r->status == 200;
}

// Opens `n` connections and keeps them; connections the server refuses are kept too.
std::vector<std::unique_ptr<TestSocket>> OpenMany(int port, int n) {
  std::vector<std::unique_ptr<TestSocket>> out;
  for (int i = 0; i < n; ++i) {
    auto s = TestSocket::Connect(port, absl::Seconds(5));
    if (s.ok()) out.push_back(*std::move(s));
  }
  return out;
}

// How many of `socks` have something to read (a response, EOF or a reset) right now.
int Readable(const std::vector<std::unique_ptr<TestSocket>>& socks) {
  std::vector<pollfd> fds;
  for (const auto& s : socks) fds.push_back({s->fd(), POLLIN, 0});
  if (::poll(fds.data(), fds.size(), 0) < 0) return -1;
  int n = 0;
  for (const pollfd& p : fds) n += (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0 ? 1 : 0;
  return n;
}

// discoveryd under `prlimit --nofile=SOFT:HARD` (the limit is set before exec).
GatewayProc SpawnLimited(const std::string& endpoints, const std::string& nofile,
                         std::vector<std::string> extra) {
  return testing::SpawnGateway(endpoints, std::move(extra), {}, "127.0.0.1:0", absl::Seconds(15),
                               {"prlimit", "--nofile=" + nofile, "--"});
}

class HardeningTest : public DiscoverydTest {};

// The issue: 3,000 requests with made-up methods grew /metrics by 5 MB (a counter and a
// histogram per method string). Labels now come from fixed sets.
TEST_F(HardeningTest, MadeUpMethodsAndPathsLeaveMetricsAndMemoryBounded) {
  GatewayProc gw = StartGateway({}, {{"DISCOVERY_API_TOKEN", "s3cret"}});
  ASSERT_GT(gw.port, 0);
  std::mt19937 rng(42);
  auto word = [&](int min_len, int max_len, const char* alphabet) {
    std::string s(std::uniform_int_distribution<int>(min_len, max_len)(rng), 'A');
    size_t n = std::strlen(alphabet);
    for (char& c : s) c = alphabet[std::uniform_int_distribution<size_t>(0, n - 1)(rng)];
    return s;
  };
  const char* kMethodChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ_-";
  const char* kPathChars = "abcdefghijklmnopqrstuvwxyz0123456789-_.";
  const std::vector<std::string> kPrefixes = {"/", "/sd/v1/", "/sd/v1/instances/", "/metrics/"};
  auto flood = [&](int n) {
    int answered = 0;
    for (int i = 0; i < n; ++i) {
      std::string method = i % 10 == 0 ? "GET" : word(3, 12, kMethodChars);
      std::string path = kPrefixes[static_cast<size_t>(i) % kPrefixes.size()] +
                         word(1, 24, kPathChars) + (i % 3 == 0 ? "/" + word(1, 8, kPathChars) : "");
      auto r = Http(gw.port, method, path, "", {}, absl::Seconds(5));
      if (r.ok() && r->status >= 400) ++answered;
    }
    // Requests the parser refuses outright (the on_protocol_error path).
    for (int i = 0; i < n / 100; ++i) {
      auto s = TestSocket::Connect(gw.port, absl::Seconds(5));
      if (!s.ok()) continue;
      (void)(*s)->SendAll(absl::StrCat(word(3, 8, kMethodChars), "\x01 /x HTTP/1.1\r\n\r\n"));
      (void)(*s)->ReceiveSome();
    }
    return answered;
  };
  // Warm up: the fixed "other" label sets exist afterwards.
  flood(200);
  std::string before = MetricsBody(gw.port);
  int64_t rss_before = RssKiB(gw.proc->pid());
  ASSERT_GT(rss_before, 0);

  EXPECT_EQ(flood(3000), 3000);
  std::string after = MetricsBody(gw.port);
  int64_t rss_after = RssKiB(gw.proc->pid());
  std::cout << "/metrics " << before.size() << " -> " << after.size() << " bytes; VmRSS "
            << rss_before << " -> " << rss_after << " KiB\n";
  EXPECT_LT(after.size(), before.size() + 4096) << after.substr(0, 4000);
  EXPECT_LT(after.size(), 64u * 1024);
  EXPECT_LT(rss_after - rss_before, 4 * 1024) << "KiB";
  EXPECT_TRUE(absl::StrContains(after, "method=\"other\"")) << after.substr(0, 4000);
  EXPECT_TRUE(absl::StrContains(after, "route=\"other\"")) << after.substr(0, 4000);
}

TEST_F(HardeningTest, ConnectionFloodPastTheCapIsRefusedWithoutSpinning) {
  GatewayProc gw = StartGateway({"--max-connections", "20"});
  ASSERT_GT(gw.port, 0);
  pid_t pid = gw.proc->pid();
  {
    std::vector<std::unique_ptr<TestSocket>> flood = OpenMany(gw.port, 200);
    ASSERT_EQ(flood.size(), 200u);
    // 20 are served (idle, waiting for a request); every other one is refused at once.
    ASSERT_TRUE(WaitUntil([&] { return Readable(flood) >= 180; }, absl::Seconds(10)))
        << Readable(flood);
    int refused_503 = 0, closed = 0;
    for (auto& s : flood) {
      pollfd p{s->fd(), POLLIN, 0};
      if (::poll(&p, 1, 0) != 1) continue;
      auto got = s->ReceiveSome();
      if (got.ok() && absl::StartsWith(*got, "HTTP/1.1 503")) {
        EXPECT_TRUE(absl::StrContains(*got, "Retry-After: 1")) << *got;
        ++refused_503;
      } else {
        ++closed;
      }
    }
    std::cout << refused_503 << " answered 503, " << closed << " closed\n";
    EXPECT_GE(refused_503 + closed, 180);
    EXPECT_GE(refused_503, 150);  // a fresh socket's send buffer always takes the 503
    // While the flood holds its sockets open, the gateway idles.
    double share = CpuShareOver(pid, absl::Seconds(2));
    std::cout << "discoveryd CPU while flooded: " << share * 100 << " % of a core\n";
    EXPECT_LT(share, 0.10);
    // A new client is refused too, with a 503 it can read.
    auto r = Http(gw.port, "GET", "/healthz", "", {}, absl::Seconds(5));
    if (r.ok()) {
      EXPECT_EQ(r->status, 503);
    }
  }
  // The flood is gone: the service answers again.
  ASSERT_TRUE(WaitUntil([&] { return Healthy(gw.port); }, absl::Seconds(10)));
  std::string m = MetricsBody(gw.port);
  EXPECT_GE(Sample(m, "discovery_http_connections_rejected_total"), 180) << m;
  EXPECT_GE(Sample(m, "discovery_http_open_connections"), 1) << m;
  EXPECT_LE(Sample(m, "discovery_http_open_connections"), 20) << m;
}

// --max-subscribers: past the cap a subscribe gets a clean 503 + Retry-After (not a stream,
// not a dropped connection), counted in /metrics; a slot frees when a stream ends.
TEST_F(HardeningTest, SubscriberCapRefusesCleanlyAndFreesOnClose) {
  GatewayProc gw = StartGateway({"--max-subscribers", "2"});
  ASSERT_GT(gw.port, 0);
  auto a = testing::SseClient::Connect(gw.port, "/sd/v1/subscribe");
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = testing::SseClient::Connect(gw.port, "/sd/v1/subscribe?type=world");
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(
      WaitUntil([&] { return Sample(MetricsBody(gw.port), "discovery_sse_subscribers") == 2; },
                absl::Seconds(5)));
  auto r = Http(gw.port, "GET", "/sd/v1/subscribe?type=world", "", {}, absl::Seconds(5));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 503) << r->body;
  EXPECT_EQ(r->headers["retry-after"], "5");
  EXPECT_TRUE(absl::StrContains(r->body, "subscriber limit")) << r->body;
  std::string m = MetricsBody(gw.port);
  EXPECT_EQ(Sample(m, "discovery_sse_refused_total"), 1) << m;
  EXPECT_EQ(Sample(m, "discovery_sse_max_subscribers"), 2) << m;
  EXPECT_EQ(Sample(m, "discovery_sse_ring_capacity"), 8192) << m;
  // One leaves: the next one is served.
  a->reset();
  ASSERT_TRUE(
      WaitUntil([&] { return Sample(MetricsBody(gw.port), "discovery_sse_subscribers") == 1; },
                absl::Seconds(5)));
  auto c = testing::SseClient::Connect(gw.port, "/sd/v1/subscribe");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(
      WaitUntil([&] { return Sample(MetricsBody(gw.port), "discovery_sse_subscribers") == 2; },
                absl::Seconds(5)));
  EXPECT_EQ(Sample(MetricsBody(gw.port), "discovery_sse_refused_total"), 1);
}

TEST_F(HardeningTest, OutOfFileDescriptorsPausesAcceptingAndRecovers) {
  // 64 fds in all, and a cap far above that: accept() itself runs into EMFILE.
  GatewayProc gw = SpawnLimited(cluster_->EndpointsCsv(), "64:64", {"--max-connections", "1000"});
  ASSERT_GT(gw.port, 0);
  pid_t pid = gw.proc->pid();
  ASSERT_TRUE(WaitUntil([&] { return Healthy(gw.port); }, absl::Seconds(10)));
  {
    std::vector<std::unique_ptr<TestSocket>> flood = OpenMany(gw.port, 150);
    ASSERT_EQ(flood.size(), 150u);  // the listen backlog takes what accept() cannot
    ASSERT_TRUE(
        WaitUntil([&] { return absl::StrContains(gw.proc->ReadStderr(), "pausing accepts"); },
                  absl::Seconds(10)))
        << testing::TailFile(gw.proc->stderr_path());
    double share = CpuShareOver(pid, absl::Seconds(2));
    std::cout << "discoveryd CPU while out of fds: " << share * 100 << " % of a core\n";
    EXPECT_LT(share, 0.10);
    EXPECT_TRUE(gw.proc->Running());
  }
  // The clients are gone: what is left in the backlog is taken and closed, and the service
  // answers again.
  ASSERT_TRUE(WaitUntil([&] { return Healthy(gw.port); }, absl::Seconds(20)))
      << testing::TailFile(gw.proc->stderr_path());
  std::string m = MetricsBody(gw.port);
  EXPECT_GE(Sample(m, "discovery_http_accept_pauses_total"), 1) << m;
}

TEST_F(HardeningTest, RaisesTheFdSoftLimitToTheHardLimitAndSizesTheCapFromIt) {
  GatewayProc gw = SpawnLimited(cluster_->EndpointsCsv(), "256:2048", {});
  ASSERT_GT(gw.port, 0);
  std::string err = gw.proc->ReadStderr();
  EXPECT_TRUE(absl::StrContains(err, "raised RLIMIT_NOFILE from 256 to 2048")) << err;
  EXPECT_TRUE(absl::StrContains(err, "max 1920 connections")) << err;
  std::ifstream in(absl::StrCat("/proc/", gw.proc->pid(), "/limits"));
  std::string limits((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_TRUE(std::regex_search(limits, std::regex("Max open files +2048 +2048"))) << limits;
}

}  // namespace
}  // namespace discovery
