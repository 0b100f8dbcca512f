// TcpProxy against a loopback echo server: forwards, black-holes while paused (and delivers
// afterwards), resets while cut, holds the answers only (one way) while holding replies.
#include "tcp_proxy.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "harness_util.h"

namespace discovery::testing {
namespace {

// Echoes every connection back, one thread per connection.
class EchoServer {
 public:
  EchoServer() {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    listen(fd_, 16);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] {
      while (true) {
        int c = accept(fd_, nullptr, nullptr);
        if (c < 0) return;
        conns_.emplace_back([c] {
          char buf[4096];
          ssize_t n;
          while ((n = read(c, buf, sizeof(buf))) > 0) (void)!write(c, buf, n);
          close(c);
        });
      }
    });
  }
  ~EchoServer() {
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
    for (auto& t : conns_) t.join();
  }
  int port() const { return port_; }

 private:
  int fd_;
  int port_;
  std::thread thread_;
  std::vector<std::thread> conns_;
};

int Connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Reads up to `want` bytes within `ms`; "" on timeout, "<closed>" on EOF or reset.
std::string ReadSome(int fd, size_t want, int ms) {
  std::string out;
  while (out.size() < want) {
    pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, ms) <= 0) return out;
    char buf[256];
    ssize_t n = read(fd, buf, std::min(sizeof(buf), want - out.size()));
    if (n <= 0) return "<closed>";
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

TEST(TcpProxyTest, ForwardsPausesAndCuts) {
  EchoServer echo;
  auto proxy = TcpProxy::Start(echo.port());
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  int fd = Connect((*proxy)->port());
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "ping", 4), 4);
  EXPECT_EQ(ReadSome(fd, 4, 2000), "ping");
  EXPECT_EQ((*proxy)->connections(), 1);

  // Paused: nothing comes back, and it is not lost either.
  (*proxy)->Pause();
  ASSERT_EQ(write(fd, "held", 4), 4);
  EXPECT_EQ(ReadSome(fd, 4, 300), "");
  (*proxy)->Resume();
  EXPECT_EQ(ReadSome(fd, 4, 2000), "held");

  // Cut: the open connection is reset, a new one is reset at once.
  (*proxy)->Cut();
  EXPECT_EQ(ReadSome(fd, 1, 2000), "<closed>");
  close(fd);
  fd = Connect((*proxy)->port());
  if (fd >= 0) {
    (void)!write(fd, "x", 1);
    EXPECT_EQ(ReadSome(fd, 1, 2000), "<closed>");
    close(fd);
  }
  (*proxy)->Heal();
  fd = Connect((*proxy)->port());
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "back", 4), 4);
  EXPECT_EQ(ReadSome(fd, 4, 2000), "back");
  close(fd);
}

TEST(TcpProxyTest, HoldRepliesPassesRequestsAndHoldsAnswers) {
  EchoServer echo;
  auto proxy = TcpProxy::Start(echo.port());
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  int fd = Connect((*proxy)->port());
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "ping", 4), 4);
  EXPECT_EQ(ReadSome(fd, 4, 2000), "ping");

  // The request reaches the server (its echo is read by the proxy), the answer is held.
  (*proxy)->HoldReplies();
  ASSERT_EQ(write(fd, "late", 4), 4);
  EXPECT_TRUE(WaitUntil([&] { return (*proxy)->held_bytes() >= 4; }, absl::Seconds(5)));
  EXPECT_EQ(ReadSome(fd, 4, 0), "");   // held: nothing to read although the echo is back
  ASSERT_EQ(write(fd, "more", 4), 4);  // still flows to the server
  EXPECT_TRUE(WaitUntil([&] { return (*proxy)->held_bytes() >= 8; }, absl::Seconds(5)));
  EXPECT_EQ(ReadSome(fd, 1, 0), "");
  (*proxy)->Resume();
  EXPECT_EQ(ReadSome(fd, 8, 2000), "latemore");

  // With a duration the held answers are delivered by themselves.
  (*proxy)->HoldReplies(absl::Milliseconds(300));
  ASSERT_EQ(write(fd, "timed", 5), 5);
  EXPECT_EQ(ReadSome(fd, 5, 5000), "timed");
  close(fd);
}

}  // namespace
}  // namespace discovery::testing
