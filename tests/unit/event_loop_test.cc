// EventLoop as a strand: Dispatch from another thread runs inline there when the loop is idle
// (holding the strand: InLoopThread() is true, RunSync runs inline), is queued behind a running
// task, keeps one task at a time (Post, timers, RunSync and Stop wait for an
// inline task), and a task that destroys the loop from inline is safe.
#include "util/event_loop.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "harness_util.h"
#include "util/clock.h"
#include "util/sync.h"

namespace discovery {
namespace {

using testing::WaitUntil;
using util::EventLoop;

// Records the order tasks ran in, from any thread.
class Order {
 public:
  void Add(std::string s) {
    std::lock_guard lock(mu_);
    seq_.push_back(std::move(s));
  }
  std::vector<std::string> Get() {
    std::lock_guard lock(mu_);
    return seq_;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> seq_;
};

TEST(EventLoopTest, DispatchWhileIdleRunsInlineHoldingTheStrand) {
  EventLoop loop("test-loop");
  // RunSync returns when its task ran, a moment before the loop thread gives the strand back.
  ASSERT_TRUE(WaitUntil([&] { return loop.Idle(); }, absl::Seconds(5)));
  std::thread::id ran_on;
  bool in_loop = false, nested_inline = false;
  loop.Dispatch([&] {
    ran_on = std::this_thread::get_id();
    in_loop = loop.InLoopThread();
    loop.RunSync([&] { nested_inline = std::this_thread::get_id() == ran_on; });
  });
  // Ran before Dispatch returned, on this thread, as the loop.
  EXPECT_EQ(ran_on, std::this_thread::get_id());
  EXPECT_TRUE(in_loop);
  EXPECT_TRUE(nested_inline);
  EXPECT_FALSE(loop.InLoopThread());  // the strand was given back
  EXPECT_EQ(loop.inline_runs(), 1);
}

TEST(EventLoopTest, DispatchWhileBusyIsQueuedInOrder) {
  EventLoop loop("test-loop");
  Order order;
  util::Notification running, release;
  std::thread::id loop_thread;
  loop.Post([&] {
    loop_thread = std::this_thread::get_id();
    running.Notify();
    release.WaitForNotification();
    order.Add("busy");
  });
  running.WaitForNotification();
  loop.Post([&] { order.Add("posted"); });
  std::thread::id dispatched_on;
  loop.Dispatch([&] {
    dispatched_on = std::this_thread::get_id();
    order.Add("dispatched");
  });
  EXPECT_TRUE(order.Get().empty());  // not run here: the loop was busy
  release.Notify();
  ASSERT_TRUE(WaitUntil([&] { return order.Get().size() == 3; }, absl::Seconds(5)));
  EXPECT_EQ(order.Get(), (std::vector<std::string>{"busy", "posted", "dispatched"}));
  EXPECT_EQ(dispatched_on, loop_thread);
  EXPECT_EQ(loop.inline_runs(), 0);
}

TEST(EventLoopTest, TimersAndPostsWaitForAnInlineTask) {
  EventLoop loop("test-loop");
  ASSERT_TRUE(WaitUntil([&] { return loop.Idle(); }, absl::Seconds(5)));
  Order order;
  util::Notification timer_ran, posted_ran;
  std::atomic<bool> inline_done{false};
  std::atomic<bool> overlapped{false};
  // A timer due during the inline task, and a Post made from the task itself.
  loop.PostAfter(absl::Milliseconds(20), [&] {
    if (!inline_done.load()) overlapped = true;
    order.Add("timer");
    timer_ran.Notify();
  });
  loop.Dispatch([&] {
    order.Add("inline");
    loop.Post([&] {
      if (!inline_done.load()) overlapped = true;
      order.Add("posted");
      posted_ran.Notify();
    });
    // Both are due now, and neither may run while this task holds the strand.
    EXPECT_FALSE(timer_ran.WaitForNotificationWithTimeout(absl::Milliseconds(200)));
    EXPECT_FALSE(posted_ran.HasBeenNotified());
    inline_done = true;
  });
  ASSERT_TRUE(timer_ran.WaitForNotificationWithTimeout(absl::Seconds(5)));
  ASSERT_TRUE(posted_ran.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_FALSE(overlapped.load());
  // Then the loop's own order: posts before timers (Post is due since forever).
  EXPECT_EQ(order.Get(), (std::vector<std::string>{"inline", "posted", "timer"}));
}

TEST(EventLoopTest, InlineTasksAndLaterTimersDoNotWakeTheLoopThread) {
  EventLoop loop("test-loop");
  loop.PostAfter(absl::Hours(1), [] {});  // the loop thread sleeps until then
  ASSERT_TRUE(WaitUntil([&] { return loop.Idle(); }, absl::Seconds(5)));
  const int64_t before = loop.wakeups();
  int ran = 0;
  for (int i = 0; i < 1000; ++i) {
    loop.Dispatch([&] { ++ran; });  // takes and gives back the strand on this thread
    // A timer due after the loop's planned wake-up needs no wake-up either.
    loop.Cancel(loop.PostAfter(absl::Hours(2), [] {}));
  }
  EXPECT_EQ(ran, 1000);
  EXPECT_EQ(loop.inline_runs(), 1000);
  // (At most the wake-up for the first timer, had the loop thread not slept yet.)
  EXPECT_LE(loop.wakeups() - before, 1);
  // A timer due sooner than the planned wake-up, and a Post, do wake it: each is sent while
  // the loop thread sleeps. (Without waiting for that, a loop thread scheduled late on a busy
  // machine found the timer already due, ran it and took the Post before it slept again: one
  // wake-up for both, and a CI run failed "1 vs 2".)
  util::Notification timer_ran, posted_ran;
  ASSERT_TRUE(WaitUntil([&] { return loop.SleepingForTest(); }, absl::Seconds(5)));
  const int64_t before_timer = loop.wakeups();
  loop.PostAfter(absl::Milliseconds(10), [&] { timer_ran.Notify(); });
  EXPECT_TRUE(timer_ran.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_GE(loop.wakeups() - before_timer, 1);
  ASSERT_TRUE(WaitUntil([&] { return loop.SleepingForTest(); }, absl::Seconds(5)));
  const int64_t before_post = loop.wakeups();
  loop.Post([&] { posted_ran.Notify(); });
  EXPECT_TRUE(posted_ran.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_GE(loop.wakeups() - before_post, 1);
}

TEST(EventLoopTest, RunSyncAndStopFromOtherThreadsWaitForAnInlineTask) {
  auto loop = std::make_unique<EventLoop>("test-loop");
  ASSERT_TRUE(WaitUntil([&] { return loop->Idle(); }, absl::Seconds(5)));
  util::Notification inside, release;
  std::atomic<bool> task_done{false}, sync_ran{false}, stopped{false};
  std::thread inline_thread([&] {
    loop->Dispatch([&] {
      inside.Notify();
      release.WaitForNotification();
      task_done = true;
    });
  });
  inside.WaitForNotification();
  std::thread sync_thread([&] { loop->RunSync([&] { sync_ran = task_done.load(); }); });
  EXPECT_FALSE(WaitUntil([&] { return sync_ran.load(); }, absl::Milliseconds(200)));
  release.Notify();
  sync_thread.join();
  EXPECT_TRUE(sync_ran.load());  // ran after the inline task, not beside it
  inline_thread.join();

  // Stop() from another thread waits for an inline task to finish.
  util::Notification inside2, release2;
  std::thread inline2([&] {
    loop->Dispatch([&] {
      inside2.Notify();
      release2.WaitForNotification();
    });
  });
  inside2.WaitForNotification();
  std::thread stopper([&] {
    loop->Stop();
    stopped = true;
  });
  EXPECT_FALSE(WaitUntil([&] { return stopped.load(); }, absl::Milliseconds(200)));
  release2.Notify();
  stopper.join();
  inline2.join();
  bool ran = false;
  loop->Dispatch([&] { ran = true; });  // after Stop(): dropped
  EXPECT_FALSE(ran);
}

TEST(EventLoopTest, TaskRunningInlineMayDestroyTheLoop) {
  for (int i = 0; i < 50; ++i) {
    auto loop = std::make_unique<EventLoop>("test-loop");
    ASSERT_TRUE(WaitUntil([&] { return loop->Idle(); }, absl::Seconds(5)));
    EventLoop* raw = loop.get();
    std::thread::id ran_on;
    raw->PostAfter(absl::Hours(1), [] {});  // a pending timer goes with it
    raw->Dispatch([&] {
      ran_on = std::this_thread::get_id();
      loop.reset();  // joins the (idle) loop thread; Dispatch must not touch the loop after
    });
    EXPECT_EQ(ran_on, std::this_thread::get_id());
    EXPECT_EQ(loop, nullptr);
  }
  // The captures' destructor may be what destroys it, too.
  auto loop = std::make_shared<EventLoop>("test-loop");
  ASSERT_TRUE(WaitUntil([&] { return loop->Idle(); }, absl::Seconds(5)));
  EventLoop* raw = loop.get();
  raw->Dispatch([keep = std::move(loop)] {});
  SUCCEED();
}

}  // namespace
}  // namespace discovery
