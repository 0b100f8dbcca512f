#include "tcp_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "util/clock.h"

namespace discovery::testing {
namespace {

// Held answers per connection: enough for any etcd answer a test provokes, bounded so a
// forgotten HoldReplies() cannot grow without limit (reading just stops).
constexpr size_t kMaxHeldBytes = 4 << 20;

void SetNonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

// Small writes (keepalives) must not wait for Nagle + delayed ACK (~40 ms): the proxied
// paths would otherwise be slower than direct ones and shift the timings under test.
void SetNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// Closes with RST instead of FIN: the peer sees "connection reset", like a cut link.
void Reset(int fd) {
  struct linger l = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  close(fd);
}

// Loopback connects complete (or are refused) at once, also to a SIGSTOPped member whose
// kernel still completes handshakes into its backlog; only a full backlog makes one wait, so
// the wait is bounded (the serving thread must stay responsive).
int ConnectUpstream(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    pollfd p = {fd, POLLOUT, 0};
    socklen_t len = sizeof(err);
    if (err != EINPROGRESS || poll(&p, 1, 1000) != 1 ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
      close(fd);
      return -1;
    }
  }
  SetNoDelay(fd);
  return fd;
}

// One proxied connection: side 0 is the client, side 1 the upstream member.
struct Conn {
  std::array<int, 2> fd = {-1, -1};
  std::array<std::string, 2> pending;  // read from fd[i], to be written to fd[1 - i]
  std::array<bool, 2> read_eof = {false, false};
  std::array<bool, 2> shut = {false, false};  // fd[1 - i] got SHUT_WR after side i's EOF
  std::array<size_t, 2> pfd = {0, 0};         // index of fd[i] in this round's pollfds
  bool dead = false;                          // an error: close both sides with RST
  bool done = false;                          // both directions finished cleanly
};

// Whether to read from side `side` now: one buffer at a time, except the member's answers
// while they are held (accumulated up to kMaxHeldBytes).
bool CanRead(const Conn& c, int side, bool hold) {
  if (c.read_eof[side]) return false;
  if (hold && side == 1) return c.pending[1].size() < kMaxHeldBytes;
  return c.pending[side].empty();
}

}  // namespace

absl::StatusOr<std::unique_ptr<TcpProxy>> TcpProxy::Start(int target_port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd, 128) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::string err = strerror(errno);
    close(fd);
    return absl::InternalError(absl::StrCat("proxy listen: ", err));
  }
  SetNonBlocking(fd);
  return std::unique_ptr<TcpProxy>(new TcpProxy(fd, ntohs(addr.sin_port), target_port));
}

TcpProxy::TcpProxy(int listen_fd, int port, int target_port)
    : listen_fd_(listen_fd), port_(port), target_port_(target_port) {
  if (pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) wake_[0] = wake_[1] = -1;
  thread_ = std::thread([this] { Run(); });
}

TcpProxy::~TcpProxy() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  if (wake_[1] >= 0) (void)!write(wake_[1], "x", 1);
  thread_.join();
  close(listen_fd_);
  if (wake_[0] >= 0) close(wake_[0]);
  if (wake_[1] >= 0) close(wake_[1]);
}

std::string TcpProxy::endpoint() const { return absl::StrCat("http://127.0.0.1:", port_); }

void TcpProxy::Pause() { SetMode(Mode::kPaused); }
void TcpProxy::HoldReplies(absl::Duration duration) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    hold_until_ =
        duration == absl::InfiniteDuration() ? absl::InfiniteFuture() : util::MonoNow() + duration;
  }
  held_bytes_ = 0;
  SetMode(Mode::kHoldReplies);
}
void TcpProxy::Resume() { SetMode(Mode::kForward); }
void TcpProxy::Cut() { SetMode(Mode::kCut); }
void TcpProxy::Heal() { SetMode(Mode::kForward); }

void TcpProxy::SetMode(Mode mode) {
  std::unique_lock<std::mutex> lock(mu_);
  mode_ = mode;
  uint64_t want = ++requested_;
  if (wake_[1] >= 0) (void)!write(wake_[1], "x", 1);
  applied_cv_.wait(lock, [&] { return applied_ >= want || failed_; });
}

void TcpProxy::Run() {
  std::vector<Conn> conns;
  std::vector<char> buf(64 * 1024);
  auto close_all = [&](bool reset) {
    for (Conn& c : conns) {
      for (int fd : c.fd) reset ? Reset(fd) : (void)close(fd);
    }
    conns.clear();
    connections_ = 0;
  };
  while (true) {
    Mode mode;
    int timeout_ms = 200;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) break;
      if (mode_ == Mode::kHoldReplies) {
        absl::Duration left = hold_until_ - util::MonoNow();
        if (left <= absl::ZeroDuration()) {
          mode_ = Mode::kForward;  // the hold is over: deliver
        } else if (left < absl::Milliseconds(200)) {
          timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(left)) + 1;
        }
      }
      mode = mode_;
      if (mode == Mode::kCut) close_all(true);
      applied_ = requested_;
    }
    applied_cv_.notify_all();

    std::vector<pollfd> pfds;
    pfds.push_back({wake_[0], POLLIN, 0});
    if (mode != Mode::kPaused) pfds.push_back({listen_fd_, POLLIN, 0});
    // kHoldReplies: like kForward, but side 1's bytes (member -> client) are read and kept.
    const bool hold = mode == Mode::kHoldReplies;
    const bool moving = mode == Mode::kForward || hold;
    if (moving) {
      for (Conn& c : conns) {
        for (int side = 0; side < 2; ++side) {
          short events = 0;
          if (CanRead(c, side, hold)) events |= POLLIN;
          if (!c.pending[1 - side].empty() && !(hold && side == 0)) events |= POLLOUT;
          c.pfd[side] = pfds.size();
          pfds.push_back({c.fd[side], events, 0});
        }
      }
    }
    if (poll(pfds.data(), pfds.size(), timeout_ms) < 0 && errno != EINTR) {
      std::lock_guard<std::mutex> lock(mu_);
      failed_ = true;  // SetMode must not wait for a thread that is gone
      applied_cv_.notify_all();
      break;
    }
    if (pfds[0].revents != 0) {
      char drain[64];
      while (read(wake_[0], drain, sizeof(drain)) > 0) {
      }
      continue;  // re-read the mode before moving a byte
    }
    if (mode != Mode::kPaused && (pfds[1].revents & POLLIN) != 0) {
      while (true) {
        int cfd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (cfd < 0) break;
        ++accepted_;
        if (mode == Mode::kCut) {
          Reset(cfd);
          continue;
        }
        int ufd = ConnectUpstream(target_port_);
        if (ufd < 0) {
          Reset(cfd);  // member down: the client sees a reset, as without the proxy
          continue;
        }
        SetNoDelay(cfd);
        Conn c;
        c.fd = {cfd, ufd};
        conns.push_back(std::move(c));
        ++connections_;
      }
    }
    if (!moving) continue;
    for (Conn& c : conns) {
      // An error or hang-up with nothing left to read: poll would report it on every round
      // (it cannot be masked), so the connection is over.
      for (int side = 0; side < 2; ++side) {
        short re = pfds[c.pfd[side]].revents;
        if ((re & (POLLERR | POLLNVAL)) != 0 || ((re & POLLHUP) != 0 && (re & POLLIN) == 0)) {
          c.dead = true;
        }
      }
      for (int side = 0; side < 2; ++side) {
        if (c.dead || !CanRead(c, side, hold)) continue;
        ssize_t n = read(c.fd[side], buf.data(), buf.size());
        if (n > 0) {
          c.pending[side].append(buf.data(), static_cast<size_t>(n));
          if (hold && side == 1) held_bytes_ += n;
        } else if (n == 0) {
          c.read_eof[side] = true;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          c.dead = true;
        }
      }
      for (int side = 0; side < 2 && !c.dead; ++side) {
        if (hold && side == 1) continue;  // held: neither sent nor shut down
        std::string& p = c.pending[side];
        if (!p.empty()) {
          ssize_t n = send(c.fd[1 - side], p.data(), p.size(), MSG_NOSIGNAL);
          if (n > 0) {
            p.erase(0, static_cast<size_t>(n));
          } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            c.dead = true;
          }
        }
        if (!c.dead && c.read_eof[side] && p.empty() && !c.shut[side]) {
          shutdown(c.fd[1 - side], SHUT_WR);
          c.shut[side] = true;
        }
      }
      if (c.shut[0] && c.shut[1]) c.done = true;
    }
    for (size_t i = 0; i < conns.size();) {
      if (conns[i].dead || conns[i].done) {
        for (int fd : conns[i].fd) conns[i].dead ? Reset(fd) : (void)close(fd);
        conns[i] = std::move(conns.back());
        conns.pop_back();
        --connections_;
      } else {
        ++i;
      }
    }
  }
  close_all(false);
}

}  // namespace discovery::testing
