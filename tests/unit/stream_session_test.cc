// StreamSession without etcd: the client points at closed loopback ports (channels connect
// lazily), the "stream" is whatever the test's open hook records. Reconnect with backoff and
// endpoint failover, stall detection, stale generations, not opening when not wanted.
#include "etcd/stream_session.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "etcd/client.h"
#include "harness_util.h"
#include "util/clock.h"

namespace discovery {
namespace {

using testing::WaitUntil;

class StreamSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    EtcdOptions o;
    o.endpoints = {"127.0.0.1:1", "127.0.0.1:2"};
    auto c = etcd::Client::Create(o);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = *std::move(c);
  }
  void TearDown() override {
    if (session_ != nullptr) client_->loop().RunSync([&] { session_->Shutdown(); });
    client_.reset();  // stops the loops: no reconnect timer of the session runs any more
    session_.reset();
  }
  void Make(etcd::StreamSession::Options options) {
    session_ = std::make_unique<etcd::StreamSession>(
        client_.get(), client_->loop(), std::move(options),
        etcd::StreamSession::Hooks{
            .wanted = [this] { return wanted_.load(); },
            .open =
                [this](const etcd::StreamSession::OpenContext& oc) {
                  opened_at_.push_back(util::MonoNow());
                  endpoints_.push_back(oc.endpoint_index);
                  last_generation_ = oc.generation;
                  opens_.fetch_add(1);
                  return std::shared_ptr<void>();
                },
            .cancel = [this] { cancels_.fetch_add(1); },
            .closed = [this](const etcd::StreamSession::Ended&) { closes_.fetch_add(1); }});
  }
  // Ends the current stream as gRPC would (from another thread).
  void EndCurrent(grpc::Status status, bool had_response = false) {
    uint64_t gen = 0;
    int index = 0;
    client_->loop().RunSync([&] {
      gen = last_generation_;
      index = endpoints_.back();
    });
    session_->Done(gen, index, had_response, std::move(status));
  }
  void OnLoop(std::function<void()> f) { client_->loop().RunSync(std::move(f)); }

  std::shared_ptr<etcd::Client> client_;
  std::unique_ptr<etcd::StreamSession> session_;
  std::atomic<bool> wanted_{true};
  std::atomic<int> opens_{0}, cancels_{0}, closes_{0};
  // Loop-thread only.
  std::vector<absl::Time> opened_at_;
  std::vector<int> endpoints_;
  uint64_t last_generation_ = 0;
};

TEST_F(StreamSessionTest, ReconnectsToTheNextEndpointWithGrowingBackoff) {
  Make({.name = "Test",
        .backoff_initial = absl::Milliseconds(100),
        .backoff_max = absl::Milliseconds(400),
        .immediate_first_retry = true});
  OnLoop([&] { session_->Start(); });
  EXPECT_EQ(opens_.load(), 1);
  EXPECT_EQ(session_->open_streams(), 1);
  for (int i = 1; i <= 4; ++i) {
    EndCurrent(grpc::Status(grpc::StatusCode::UNAVAILABLE, "gone"));
    ASSERT_TRUE(WaitUntil([&] { return opens_.load() == i + 1; }, absl::Seconds(3)));
  }
  EXPECT_EQ(closes_.load(), 4);
  EXPECT_EQ(session_->reconnects(), 4);
  OnLoop([&] {
    // Each failed stream moved to the other endpoint.
    for (size_t i = 1; i < endpoints_.size(); ++i) EXPECT_NE(endpoints_[i], endpoints_[i - 1]);
    // The first retry is immediate, later ones wait (jittered, growing, capped).
    EXPECT_LT(opened_at_[1] - opened_at_[0], absl::Milliseconds(90));
    EXPECT_GE(opened_at_[4] - opened_at_[3], absl::Milliseconds(40));
  });
}

TEST_F(StreamSessionTest, ResetBackoffMakesTheNextRetryImmediate) {
  Make({.name = "Test",
        .backoff_initial = absl::Milliseconds(500),
        .backoff_max = absl::Seconds(1),
        .immediate_first_retry = true});
  OnLoop([&] { session_->Start(); });
  EndCurrent(grpc::Status(grpc::StatusCode::UNAVAILABLE, "gone"));
  ASSERT_TRUE(WaitUntil([&] { return opens_.load() == 2; }, absl::Seconds(3)));
  OnLoop([&] { session_->ResetBackoff(); });  // the stream delivered
  EndCurrent(grpc::Status(grpc::StatusCode::UNAVAILABLE, "gone"), true);
  ASSERT_TRUE(WaitUntil([&] { return opens_.load() == 3; }, absl::Seconds(3)));
  OnLoop([&] { EXPECT_LT(opened_at_[2] - opened_at_[1], absl::Milliseconds(200)); });
}

TEST_F(StreamSessionTest, StallCancelsTheStreamOnce) {
  Make({.name = "Test", .stall_timeout = absl::Milliseconds(200)});
  OnLoop([&] {
    session_->Start();
    EXPECT_EQ(session_->stall_deadline(), absl::InfiniteFuture());
    const absl::Time t = util::MonoNow();
    session_->Sent(t);
    session_->Sent(t + absl::Milliseconds(100));  // the oldest unanswered request counts
    EXPECT_EQ(session_->stall_deadline(), t + absl::Milliseconds(200));
    EXPECT_FALSE(session_->CheckStall(t + absl::Milliseconds(150)));
    session_->Received(t + absl::Milliseconds(150));  // answered: no deadline
    EXPECT_EQ(session_->stall_deadline(), absl::InfiniteFuture());
    session_->Sent(t + absl::Milliseconds(300));
    EXPECT_TRUE(session_->CheckStall(t + absl::Milliseconds(600)));
    EXPECT_FALSE(session_->CheckStall(t + absl::Milliseconds(700)));  // once per stream
  });
  EXPECT_EQ(cancels_.load(), 1);
  EXPECT_EQ(session_->stalls(), 1);
}

TEST_F(StreamSessionTest, IgnoresTheEndOfAnOldStreamAndOpensOnlyWhenWanted) {
  Make({.name = "Test", .backoff_initial = absl::Milliseconds(10)});
  wanted_ = false;
  OnLoop([&] { session_->Start(); });
  EXPECT_EQ(opens_.load(), 0);
  wanted_ = true;
  OnLoop([&] { session_->Start(); });
  EXPECT_EQ(opens_.load(), 1);
  OnLoop([&] { EXPECT_TRUE(session_->IsCurrent(last_generation_)); });
  session_->Done(last_generation_ + 7, 0, true, grpc::Status::OK);  // not ours
  OnLoop([] {});
  EXPECT_EQ(closes_.load(), 0);
  EXPECT_EQ(session_->open_streams(), 1);
  // Not wanted any more when it ends: no new stream until Start().
  wanted_ = false;
  EndCurrent(grpc::Status::OK, true);
  ASSERT_TRUE(WaitUntil([&] { return closes_.load() == 1; }, absl::Seconds(2)));
  const absl::Time waited = util::MonoNow() + absl::Milliseconds(100);
  ASSERT_TRUE(WaitUntil([&] { return util::MonoNow() >= waited; }, absl::Seconds(1)));
  EXPECT_EQ(opens_.load(), 1);
  wanted_ = true;
  OnLoop([&] { session_->Start(); });
  EXPECT_EQ(opens_.load(), 2);
}

}  // namespace
}  // namespace discovery
