// discovery-bench scenario "gateway" (discoveryd): discover requests/s, SSE fan-out p99.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "bare.h"
#include "child_process.h"
#include "common.h"
#include "discovery/picker.h"
#include "discovery/registrar.h"
#include "discovery/watcher.h"
#include "etcd_harness.h"
#include "harness_util.h"

namespace discovery_bench {

// ---------------------------------------------------------------------------------------------
// gateway (discoveryd): discover requests/s over keep-alive connections, SSE fan-out p99.

namespace {

int ConnectLoopback(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t w = send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (w <= 0) return false;
    off += static_cast<size_t>(w);
  }
  return true;
}

// Reads one HTTP/1.1 response (Content-Length or chunked) from a keep-alive connection.
// `buf` carries bytes past the response to the next call. Returns the status or -1.
int ReadResponse(int fd, std::string& buf) {
  auto fill = [&]() {
    char tmp[65536];
    ssize_t r = recv(fd, tmp, sizeof(tmp), 0);
    if (r <= 0) return false;
    buf.append(tmp, static_cast<size_t>(r));
    return true;
  };
  size_t hdr_end;
  while ((hdr_end = buf.find("\r\n\r\n")) == std::string::npos) {
    if (!fill()) return -1;
  }
  std::string head = absl::AsciiStrToLower(buf.substr(0, hdr_end));
  int status = -1;
  if (head.size() > 12) (void)absl::SimpleAtoi(head.substr(9, 3), &status);
  size_t pos = hdr_end + 4;
  if (size_t cl = head.find("content-length:"); cl != std::string::npos) {
    size_t len = 0;
    size_t eol = head.find("\r\n", cl);
    std::string v(absl::StripAsciiWhitespace(head.substr(cl + 15, eol - cl - 15)));
    (void)absl::SimpleAtoi(v, &len);
    while (buf.size() < pos + len) {
      if (!fill()) return -1;
    }
    buf.erase(0, pos + len);
    return status;
  }
  if (absl::StrContains(head, "chunked")) {
    for (;;) {
      size_t eol;
      while ((eol = buf.find("\r\n", pos)) == std::string::npos) {
        if (!fill()) return -1;
      }
      size_t len = std::stoul(buf.substr(pos, eol - pos), nullptr, 16);
      while (buf.size() < eol + 2 + len + 2) {
        if (!fill()) return -1;
      }
      pos = eol + 2 + len + 2;
      if (len == 0) break;
    }
    buf.erase(0, pos);
    return status;
  }
  buf.erase(0, pos);
  return status;
}

}  // namespace

Json RunGateway(const Context& cx) {
  const Flags& f = *cx.flags;
  Json out;
  out["scenario"] = "gateway";
  if (f.discoveryd.empty()) {
    out["skipped"] = "no --discoveryd PATH given (discoveryd is built in tools/discoveryd)";
    return out;
  }
  const int port = discovery::testing::PickFreePort();
  std::string args = absl::StrReplaceAll(
      f.discoveryd_args,
      {{"{port}", absl::StrCat(port)}, {"{endpoints}", absl::StrJoin(cx.endpoints, ",")}});
  std::vector<std::string> argv = {f.discoveryd};
  for (absl::string_view a : absl::StrSplit(args, ' ', absl::SkipWhitespace())) {
    argv.emplace_back(a);
  }
  auto child = discovery::testing::ChildProcess::Spawn(
      {.argv = argv,
       .env = {{"ETCD_ENDPOINTS", absl::StrJoin(cx.endpoints, ",")},
               {"DISCOVERY_API_TOKEN", f.discoveryd_token}}});
  if (!child.ok()) {
    out["skipped"] = absl::StrCat("discoveryd did not start: ", child.status().ToString());
    return out;
  }
  const bool healthy = WaitFor(
      [&] {
        auto r = discovery::testing::HttpGet(port, "/healthz", absl::Seconds(1));
        return r.ok() && r->status == 200;
      },
      absl::Seconds(10), absl::Milliseconds(100));
  if (!healthy) {
    out["skipped"] =
        absl::StrCat("discoveryd not healthy on /healthz: ", (*child)->ReadStderr().substr(0, 300));
    return out;
  }
  // Data: 100 instances of type world.
  const std::string prefix = "/services/";
  Bare bare(cx.endpoints[0]);
  BulkPut(bare, prefix, 100, 8);
  absl::SleepFor(absl::Milliseconds(500));

  // 1. Discover: keep-alive connections, each a closed loop of GETs for gateway_seconds.
  const std::string request =
      absl::StrCat("GET /sd/v1/instances?type=world HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Token: ",
                   f.discoveryd_token, "\r\n\r\n");
  std::atomic<int64_t> ok{0}, bad{0};
  const int64_t end = NowNs() + static_cast<int64_t>(f.gateway_seconds * 1e9);
  const int64_t d0 = NowNs();
  {
    std::vector<std::thread> conns;
    for (int c = 0; c < f.gateway_connections; ++c) {
      conns.emplace_back([&] {
        int fd = ConnectLoopback(port);
        if (fd < 0) return;
        std::string buf;
        for (int i = 0; i < 1000000 && NowNs() < end; ++i) {
          if (!SendAll(fd, request)) break;
          int st = ReadResponse(fd, buf);
          if (st == 200) {
            ok.fetch_add(1);
          } else {
            bad.fetch_add(1);
            if (st < 0) break;
          }
        }
        close(fd);
      });
    }
    for (auto& t : conns) t.join();
  }
  const double secs = Seconds(NowNs() - d0);
  out["discover_per_s"] = Round(ok.load() / secs, 1);
  out["discover_errors"] = bad.load();

  // Baseline: the same concurrency doing a bare Range of the type's prefix per request.
  {
    std::atomic<int64_t> rok{0};
    const int64_t rend = NowNs() + static_cast<int64_t>(f.gateway_seconds * 1e9);
    const int64_t r0 = NowNs();
    std::vector<std::thread> conns;
    for (int c = 0; c < f.gateway_connections; ++c) {
      conns.emplace_back([&] {
        while (NowNs() < rend) {
          if (bare.RangeAll(prefix + "world/", 1000).ok()) rok.fetch_add(1);
        }
      });
    }
    for (auto& t : conns) t.join();
    out["baseline_range_per_s"] = Round(rok.load() / Seconds(NowNs() - r0), 1);
  }

  // 2. SSE fan-out: sse_subscribers connections on /sd/v1/subscribe; 20 paced puts; put ack ->
  // event line received on each connection.
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  const std::string sub_req = absl::StrCat(
      "GET /sd/v1/subscribe?type=world HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: "
      "text/event-stream\r\nX-API-Token: ",
      f.discoveryd_token, "\r\n\r\n");
  std::vector<int> fds;
  for (int i = 0; i < f.sse_subscribers; ++i) {
    int fd = ConnectLoopback(port);
    if (fd < 0 || !SendAll(fd, sub_req)) {
      if (fd >= 0) close(fd);
      break;
    }
    fds.push_back(fd);
  }
  out["sse_connected"] = static_cast<int>(fds.size());
  constexpr int kPuts = 20;
  std::vector<std::atomic<int64_t>> ack(kPuts);
  for (auto& a : ack) a = 0;
  std::mutex rmu;
  std::vector<std::pair<int, int64_t>> received;  // seq, recv time
  std::atomic<bool> stop{false};
  int ep = epoll_create1(EPOLL_CLOEXEC);
  std::vector<std::string> bufs(fds.size());
  for (size_t i = 0; i < fds.size(); ++i) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = i;
    epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
  }
  std::thread reader([&] {
    epoll_event evs[256];
    char tmp[65536];
    while (!stop.load()) {
      int k = epoll_wait(ep, evs, 256, 50);
      const int64_t now = NowNs();
      for (int e = 0; e < k; ++e) {
        size_t i = evs[e].data.u64;
        ssize_t r = recv(fds[i], tmp, sizeof(tmp), MSG_DONTWAIT);
        if (r <= 0) {
          epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], nullptr);
          continue;
        }
        std::string& b = bufs[i];
        b.append(tmp, static_cast<size_t>(r));
        size_t nl;
        while ((nl = b.find('\n')) != std::string::npos) {
          std::string line = b.substr(0, nl);
          b.erase(0, nl + 1);
          size_t at = line.find("\"seq\":\"");
          int64_t seq = -1;
          if (!absl::StartsWith(line, "data:") || at == std::string::npos) continue;
          at += 7;
          if (absl::SimpleAtoi(line.substr(at, line.find('"', at) - at), &seq) && seq >= 0 &&
              seq < kPuts) {
            std::lock_guard lock(rmu);
            received.emplace_back(static_cast<int>(seq), now);
          }
        }
      }
    }
  });
  absl::SleepFor(absl::Seconds(1));
  for (int seq = 0; seq < kPuts; ++seq) {
    Instance in = MakeInstance(seq);
    in.meta["seq"] = absl::StrCat(seq);
    if (bare.Put(KeyOf(prefix, in), discovery::EncodeInstance(in)).ok()) ack[seq] = NowNs();
    absl::SleepFor(absl::Milliseconds(100));
  }
  absl::SleepFor(absl::Seconds(2));
  stop.store(true);
  reader.join();
  close(ep);
  for (int fd : fds) close(fd);
  std::vector<int64_t> lat;
  for (auto& [seq, t] : received) {
    if (ack[seq].load() != 0) lat.push_back(std::max<int64_t>(0, t - ack[seq].load()));
  }
  out["sse_events_received"] = static_cast<int64_t>(received.size());
  out["sse_events_expected"] = static_cast<int64_t>(fds.size()) * kPuts;
  out["sse_p50_ms"] = Round(Percentile(lat, 50) / 1e6);
  out["sse_p99_ms"] = Round(Percentile(lat, 99) / 1e6);
  out["target"] = Target("report only", !lat.empty());
  return out;
}

}  // namespace discovery_bench
