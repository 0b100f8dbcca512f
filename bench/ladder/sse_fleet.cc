// discovery-ladder: SSE subscribers, many non-blocking connections per epoll thread. Each
// sends `GET /sd/v1/subscribe?type=world&group=g<k>`, reads the raw event stream (discoveryd
// answers `Connection: close`, no chunking), counts init frames, notes when `synced` arrives
// and, while recording, stamps every update/remove frame with CLOCK_MONOTONIC and its revision.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <deque>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "ladder.h"

namespace ladder {

namespace {

enum class State { kIdle, kConnecting, kHeaders, kStreaming, kClosed };

struct Conn {
  int sub = 0;
  int port = 0;
  int fd = -1;
  State state = State::kIdle;
  bool synced = false;
  std::string request;
  size_t sent = 0;
  std::string buf;
  int64_t start_ns = 0;
};

int64_t RevisionOf(std::string_view data) {
  // Top-level "revision" follows "instance" (keys are sorted): take the last one.
  size_t at = data.rfind("\"revision\":");
  if (at == std::string_view::npos) return -1;
  at += 11;
  int64_t v = 0;
  bool any = false;
  for (; at < data.size() && data[at] >= '0' && data[at] <= '9'; ++at) {
    v = v * 10 + (data[at] - '0');
    any = true;
  }
  return any ? v : -1;
}

}  // namespace

struct SseFleet::Loop {
  int epfd = -1;
  pid_t tid = 0;
  std::vector<Conn> conns;   // this loop's subscribers
  std::deque<size_t> queue;  // conns to connect, in order
  int pending = 0;           // connecting, not yet synced
  int max_pending = 1;
  std::mutex req_mu;
  std::vector<SseFleet::ReconnectRequest> requests;  // guarded by req_mu
  std::mutex rec_mu;
  std::vector<Record> records;
};

SseFleet::SseFleet(std::vector<SubSpec> subs, int threads, int connect_inflight)
    : subs_(std::move(subs)), connect_inflight_(connect_inflight), attach_ns_(subs_.size()) {
  threads = std::max(1, threads);
  for (int t = 0; t < threads; ++t) loops_.push_back(std::make_unique<Loop>());
  for (size_t s = 0; s < subs_.size(); ++s) {
    Loop& l = *loops_[s % loops_.size()];
    Conn c;
    c.sub = static_cast<int>(s);
    c.port = subs_[s].port;
    c.request = absl::StrCat("GET /sd/v1/subscribe?type=world&group=g", subs_[s].group,
                             " HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n");
    l.queue.push_back(l.conns.size());
    l.conns.push_back(std::move(c));
  }
  for (auto& l : loops_) {
    l->max_pending = std::max(1, connect_inflight_ / threads);
  }
}

SseFleet::~SseFleet() { Stop(); }

void SseFleet::Start() {
  start_ns_ = NowNs();
  for (auto& l : loops_) {
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    threads_.emplace_back([this, lp = l.get()] { Run(lp); });
  }
}

void SseFleet::Stop() {
  stop_.store(true);
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
  for (auto& l : loops_) {
    for (Conn& c : l->conns) {
      if (c.fd >= 0) close(c.fd);
      c.fd = -1;
    }
    if (l->epfd >= 0) close(l->epfd);
    l->epfd = -1;
  }
}

std::vector<int64_t> SseFleet::AttachNs() const {
  std::vector<int64_t> v;
  v.reserve(attach_ns_.size());
  for (const auto& a : attach_ns_) v.push_back(a.load());
  return v;
}

void SseFleet::SetRecording(bool on) { recording_.store(on); }

void SseFleet::Reconnect(int replica, int port, int inflight) {
  for (auto& l : loops_) {
    std::lock_guard<std::mutex> lock(l->req_mu);
    l->requests.push_back({replica, port, std::max(1, inflight / static_cast<int>(loops_.size()))});
  }
}

std::vector<SseFleet::Record> SseFleet::TakeRecords() {
  std::vector<Record> all;
  for (auto& l : loops_) {
    std::lock_guard<std::mutex> lock(l->rec_mu);
    all.insert(all.end(), l->records.begin(), l->records.end());
    l->records.clear();
  }
  return all;
}

std::string SseFleet::first_error() const {
  std::lock_guard<std::mutex> lock(err_mu_);
  return first_error_;
}

std::vector<pid_t> SseFleet::thread_ids() const {
  std::vector<pid_t> v;
  for (const auto& l : loops_) v.push_back(l->tid);
  return v;
}

void SseFleet::Run(Loop* l) {
  l->tid = static_cast<pid_t>(syscall(SYS_gettid));
  auto fail = [&](Conn& c, const std::string& why) {
    if (c.fd >= 0) {
      epoll_ctl(l->epfd, EPOLL_CTL_DEL, c.fd, nullptr);
      close(c.fd);
      c.fd = -1;
    }
    if (c.state == State::kClosed) return;
    const bool was_synced = c.synced;
    c.state = State::kClosed;
    if (was_synced) {
      disconnected_.fetch_add(1);
    } else {
      failed_.fetch_add(1);
      --l->pending;
    }
    std::lock_guard<std::mutex> lock(err_mu_);
    if (first_error_.empty()) {
      first_error_ = absl::StrCat("subscriber ", c.sub, ": ", why);
    }
  };
  // Reconnect(): every subscriber of the replica (closed by now, or closed here and counted)
  // starts over against the new port.
  auto take_requests = [&] {
    std::vector<ReconnectRequest> reqs;
    {
      std::lock_guard<std::mutex> lock(l->req_mu);
      reqs.swap(l->requests);
    }
    for (const ReconnectRequest& r : reqs) {
      l->max_pending = r.inflight;
      for (size_t i = 0; i < l->conns.size(); ++i) {
        Conn& c = l->conns[i];
        if (subs_[static_cast<size_t>(c.sub)].replica != r.replica) continue;
        if (c.state != State::kClosed && c.state != State::kIdle) fail(c, "reconnect");
        c.state = State::kIdle;
        c.synced = false;
        c.sent = 0;
        c.buf.clear();
        c.port = r.port;
        l->queue.push_back(i);
      }
    }
  };
  auto connect_next = [&] {
    while (l->pending < l->max_pending && !l->queue.empty()) {
      const uint64_t idx = l->queue.front();
      l->queue.pop_front();
      Conn& c = l->conns[idx];
      c.start_ns = NowNs();
      c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      ++l->pending;
      if (c.fd < 0) {
        fail(c, absl::StrCat("socket: ", strerror(errno)));
        continue;
      }
      int one = 1;
      setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(static_cast<uint16_t>(c.port));
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      int rc = connect(c.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
      if (rc != 0 && errno != EINPROGRESS) {
        fail(c, absl::StrCat("connect: ", strerror(errno)));
        continue;
      }
      c.state = State::kConnecting;
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP;
      ev.data.u64 = idx;
      epoll_ctl(l->epfd, EPOLL_CTL_ADD, c.fd, &ev);
    }
  };
  // Parses complete frames out of c.buf; returns false when the stream must close.
  auto parse = [&](Conn& c, int64_t now) {
    size_t pos = 0;
    if (c.state == State::kHeaders) {
      size_t end = c.buf.find("\r\n\r\n");
      if (end == std::string::npos) return true;
      if (c.buf.compare(0, 12, "HTTP/1.1 200") != 0) {
        fail(c, absl::StrCat("answer: ", c.buf.substr(0, std::min<size_t>(end, 200))));
        return false;
      }
      c.state = State::kStreaming;
      pos = end + 4;
    }
    const bool rec = recording_.load(std::memory_order_relaxed);
    std::vector<Record> batch;
    for (;;) {
      size_t end = c.buf.find("\n\n", pos);
      if (end == std::string::npos) break;
      std::string_view frame(c.buf.data() + pos, end - pos);
      pos = end + 2;
      std::string_view event, data;
      size_t lp = 0;
      while (lp <= frame.size()) {
        size_t le = frame.find('\n', lp);
        if (le == std::string_view::npos) le = frame.size();
        std::string_view line = frame.substr(lp, le - lp);
        if (line.substr(0, 7) == "event: ") event = line.substr(7);
        if (line.substr(0, 6) == "data: ") data = line.substr(6);
        lp = le + 1;
      }
      if (event == "init") {
        init_frames_.fetch_add(1, std::memory_order_relaxed);
      } else if (event == "synced") {
        if (!c.synced) {
          c.synced = true;
          attach_ns_[static_cast<size_t>(c.sub)].store(now - c.start_ns);
          synced_.fetch_add(1);
          --l->pending;
        }
      } else if (event == "update" || event == "remove") {
        if (rec) batch.push_back({c.sub, RevisionOf(data), now});
      } else if (event == "reset") {
        resets_.fetch_add(1);
      }
    }
    c.buf.erase(0, pos);
    if (!batch.empty()) {
      delivered_.fetch_add(static_cast<int64_t>(batch.size()), std::memory_order_relaxed);
      std::lock_guard<std::mutex> lock(l->rec_mu);
      l->records.insert(l->records.end(), batch.begin(), batch.end());
    }
    return true;
  };

  std::vector<epoll_event> events(1024);
  char tmp[1 << 16];
  while (!stop_.load() && !g_abort.load()) {
    take_requests();
    connect_next();
    int n = epoll_wait(l->epfd, events.data(), static_cast<int>(events.size()), 50);
    if (n < 0 && errno != EINTR) break;
    for (int e = 0; e < n; ++e) {
      Conn& c = l->conns[events[e].data.u64];
      if (c.fd < 0) continue;
      const uint32_t what = events[e].events;
      if (c.state == State::kConnecting) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          fail(c, absl::StrCat("connect: ", strerror(err)));
          continue;
        }
        if ((what & EPOLLOUT) == 0) continue;
        c.state = State::kHeaders;
      }
      if (c.sent < c.request.size()) {
        ssize_t w = send(c.fd, c.request.data() + c.sent, c.request.size() - c.sent, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN) {
          fail(c, absl::StrCat("send: ", strerror(errno)));
          continue;
        }
        if (w > 0) c.sent += static_cast<size_t>(w);
        if (c.sent == c.request.size()) {
          epoll_event ev{};
          ev.events = EPOLLIN | EPOLLRDHUP;
          ev.data.u64 = events[e].data.u64;
          epoll_ctl(l->epfd, EPOLL_CTL_MOD, c.fd, &ev);
        }
      }
      if ((what & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) == 0) continue;
      bool closed = false;
      for (;;) {
        ssize_t r = recv(c.fd, tmp, sizeof tmp, 0);
        if (r > 0) {
          c.buf.append(tmp, static_cast<size_t>(r));
          if (static_cast<size_t>(r) < sizeof tmp) break;
          continue;
        }
        if (r == 0 || (errno != EAGAIN && errno != EINTR)) closed = true;
        break;
      }
      const int64_t now = NowNs();
      if (!parse(c, now)) continue;
      if (closed) fail(c, "stream closed by the server");
    }
  }
}

}  // namespace ladder
