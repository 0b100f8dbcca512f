// HttpServer on its own (label unit, no etcd): the SSE backlog rule of http_server.h (a huge
// init is taken once, a client that has not drained it by the next Send is cut, a drained
// buffer is released) and the metrics label sets.
#include "http_server.h"

#include <gtest/gtest.h>
#include <malloc.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "harness_util.h"
#include "http_test_client.h"
#include "metrics.h"
#include "util/sync.h"

namespace discoveryd {
namespace {

using discovery::testing::TestSocket;
using discovery::testing::WaitUntil;

// Bytes malloc has handed out and not got back (heap + mmapped chunks).
size_t HeapInUse() {
  struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
}

// A server whose every request becomes an event stream, kept for the test to Send() on.
class StreamServer {
 public:
  explicit StreamServer(size_t backlog) {
    HttpServer::Options o;
    o.port = 0;
    o.max_stream_backlog_bytes = backlog;
    o.write_timeout = absl::Seconds(30);
    auto s = HttpServer::Create(o, [this](HttpRequest, std::shared_ptr<Exchange> ex) {
      auto stream = ex->StartEventStream({}, [] {});
      discovery::util::MutexLock lock(&mu_);
      streams_.push_back(std::move(stream));
    });
    EXPECT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    server_->Start();
  }
  ~StreamServer() { server_->Stop(); }

  // Connects and waits for the server's side of the stream.
  std::pair<std::unique_ptr<TestSocket>, std::shared_ptr<EventStream>> Open() {
    size_t before = count();
    auto sock = TestSocket::Connect(server_->port(), absl::Seconds(30));
    EXPECT_TRUE(sock.ok()) << sock.status();
    if (!sock.ok()) return {};
    EXPECT_TRUE((*sock)->SendAll("GET /s HTTP/1.1\r\nHost: x\r\n\r\n").ok());
    EXPECT_TRUE(WaitUntil([&] { return count() > before; }, absl::Seconds(5)));
    discovery::util::MutexLock lock(&mu_);
    return {*std::move(sock), streams_.back()};
  }
  size_t count() {
    discovery::util::MutexLock lock(&mu_);
    return streams_.size();
  }
  HttpServer& server() { return *server_; }

 private:
  std::unique_ptr<HttpServer> server_;
  discovery::util::Mutex mu_;
  std::vector<std::shared_ptr<EventStream>> streams_;
};

// Reads from `sock` until `total` bytes came (or EOF / error).
size_t Drain(TestSocket& sock, size_t total) {
  size_t got = 0;
  while (got < total) {
    auto chunk = sock.ReceiveSome(1 << 20);
    if (!chunk.ok() || chunk->empty()) break;
    got += chunk->size();
  }
  return got;
}

TEST(StreamBacklogTest, HugeInitIsTakenOnceAndAClientThatDoesNotReadIsCutOnceBMoreQueued) {
  StreamServer srv(64 * 1024);
  auto [sock, stream] = srv.Open();
  ASSERT_NE(stream, nullptr);
  // More than any loopback socket buffers take: the client reads nothing.
  EXPECT_TRUE(stream->Send(std::string(48 << 20, 'x')));
  // The unread rest of the init is allowed, plus the 64 KiB backlog on top of it, no more.
  const std::string event(1024, 'e');
  int taken = 0;
  while (taken < 1000 && stream->Send(event)) ++taken;
  EXPECT_GE(taken, 60);
  EXPECT_LE(taken, 64);
  EXPECT_TRUE(WaitUntil([&] { return stream->closed(); }, absl::Seconds(5)));
  EXPECT_EQ(srv.server().stats().slow_streams_closed, 1u);
}

TEST(StreamBacklogTest, AStreamThatDrainedItsInitCarriesOn) {
  StreamServer srv(64 * 1024);
  auto [sock, stream] = srv.Open();
  ASSERT_NE(stream, nullptr);
  ASSERT_TRUE(stream->Send(std::string(4 << 20, 'x')));
  EXPECT_GE(Drain(*sock, 4 << 20), size_t{4 << 20});
  // The write completed when its last bytes went into the socket buffer, before the client
  // could read them: the queue is empty again and the next event is taken.
  EXPECT_TRUE(stream->Send(std::string(100, 'y')));
  EXPECT_GE(Drain(*sock, 100), 100u);
  EXPECT_FALSE(stream->closed());
  EXPECT_EQ(srv.server().stats().slow_streams_closed, 0u);
}

// A drained init of megabytes must not stay allocated for the life of the stream (with
// thousands of dashboard clients that would be gigabytes).
TEST(StreamBacklogTest, DrainedInitBuffersAreReleased) {
  constexpr size_t kInit = 8 << 20;
  constexpr int kClients = 10;
  StreamServer srv(64 * 1024);
  std::vector<std::pair<std::unique_ptr<TestSocket>, std::shared_ptr<EventStream>>> clients;
  size_t before = HeapInUse();
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(srv.Open());
    ASSERT_NE(clients.back().second, nullptr);
    ASSERT_TRUE(clients.back().second->Send(std::string(kInit, 'x')));
    ASSERT_GE(Drain(*clients.back().first, kInit), kInit);
  }
  // The last write's completion handler runs just after the client has the bytes.
  bool released = WaitUntil([&] { return HeapInUse() < before + kInit * 2; }, absl::Seconds(5));
  size_t after = HeapInUse();
  std::cout << "heap in use " << before << " -> " << after << " bytes with " << kClients
            << " open streams that each drained " << kInit << " bytes\n";
  EXPECT_TRUE(released);
  for (auto& [sock, stream] : clients) EXPECT_FALSE(stream->closed());
}

// A burst of frames queued while a write is in flight goes out as one gather write, not one
// write per frame; the shared frame buffers arrive intact and in order.
TEST(StreamBacklogTest, ABurstOfFramesCoalescesIntoFewWrites) {
  StreamServer srv(16 << 20);
  auto [sock, stream] = srv.Open();
  ASSERT_NE(stream, nullptr);
  // Head + a first write the client does not read yet: everything after it queues.
  ASSERT_TRUE(stream->Send(std::string(8 << 20, 'x')));
  const uint64_t writes_before = srv.server().stats().stream_writes;
  constexpr int kFrames = 2000;
  const SharedBytes frame = MakeShared("event: update\ndata: {}\n\n");
  for (int i = 0; i < kFrames; ++i) ASSERT_TRUE(stream->SendFrames({frame}));
  const size_t total = (8 << 20) + kFrames * frame->size();
  size_t got = 0;
  std::string tail;
  while (got < total) {
    auto chunk = sock->ReceiveSome(1 << 20);
    ASSERT_TRUE(chunk.ok() && !chunk->empty());
    got += chunk->size();
    tail = (tail + *chunk)
               .substr(tail.size() + chunk->size() > 64 ? tail.size() + chunk->size() - 64 : 0);
  }
  EXPECT_TRUE(absl::EndsWith(tail, *frame));
  const uint64_t writes = srv.server().stats().stream_writes - writes_before;
  std::cout << kFrames << " frames queued behind an unread write went out in " << writes
            << " writes\n";
  // One write per frame was the old behaviour's worst case; gather writes of up to 512.
  EXPECT_LE(writes, uint64_t{kFrames / 100});
  EXPECT_FALSE(stream->closed());
}

TEST(MetricsLabelsTest, OnlyFixedLabelValues) {
  EXPECT_EQ(Metrics::MethodLabel("GET"), "GET");
  EXPECT_EQ(Metrics::MethodLabel("OPTIONS"), "OPTIONS");
  EXPECT_EQ(Metrics::MethodLabel("get"), "other");
  EXPECT_EQ(Metrics::MethodLabel("FOOBAR"), "other");
  EXPECT_EQ(Metrics::MethodLabel(""), "other");
  EXPECT_EQ(Metrics::RouteLabel("/sd/v1/instances/{id}"), "/sd/v1/instances/{id}");
  EXPECT_EQ(Metrics::RouteLabel("/sd/v1/instances/abc"), "other");
  EXPECT_EQ(Metrics::RouteLabel("other"), "other");
  EXPECT_EQ(Metrics::CodeLabel(404), "404");
  EXPECT_EQ(Metrics::CodeLabel(99), "other");
  EXPECT_EQ(Metrics::CodeLabel(1000), "other");
}

}  // namespace
}  // namespace discoveryd
