// A single-threaded executor with timers, usable as a strand. The etcd client owns one for
// stream bookkeeping (keepalive schedule, watch dispatch) and one for blocking calls issued in
// the background, so that a slow etcd never delays a keepalive tick.
//
// Thread-safety: Post/PostAfter/Dispatch/Cancel are thread-safe. Tasks run one at a time, in
// time order (FIFO for equal times): "running as the loop" means holding the strand, which is
// the loop's own thread while it runs a task, or a thread inside Dispatch() that found the loop
// idle. InLoopThread() is true exactly there (so RunSync from a task runs inline, wherever the
// task runs). Stop() runs no further task, waits for a task running elsewhere and joins.
//
// Dispatch(task): when the loop is idle (no task running, none due) the task runs at once on
// the calling thread, holding the strand (no thread hop: the watch stream's reader uses it);
// otherwise it is queued like Post. Post never runs inline (callers may hold locks the task
// takes). Everything posted while a task runs inline waits for it, timers included.
//
// Wake-ups: the loop thread sleeps on its own wake mutex (wake_mu_), not on mu_, and is woken
// only when it has to act sooner than it planned: a task posted due before its sleep ends, a
// strand holder that gives the strand back while a task is due, Stop(). Taking or giving back
// the strand inline (Dispatch on an idle loop), a timer posted after the next wake-up, Cancel
// and Idle() do not wake it (util::Mutex wakes every waiter at each unlock: a loop thread
// waiting on mu_ itself was woken twice per inline task, two context switches on the watch
// path).
//
// A task may destroy the loop that runs it (e.g. it drops the last reference to the object that
// owns the loop): Stop() then detaches the loop thread (when the task runs there) or joins it
// (when it runs inline elsewhere), and the strand holder leaves Run() / Dispatch() as soon as
// that task (and its captures) are gone, without touching the freed loop.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "util/clock.h"
#include "util/sync.h"

namespace discovery::util {

class EventLoop {
 public:
  using Task = std::function<void()>;
  using TimerId = uint64_t;

  explicit EventLoop(std::string name);
  ~EventLoop();  // Stop()
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  void Post(Task task) { PostAt(absl::InfinitePast(), std::move(task)); }
  TimerId PostAfter(absl::Duration delay, Task task) {
    return PostAt(util::MonoNow() + delay, std::move(task));
  }
  TimerId PostAt(absl::Time when, Task task);
  // Runs `task` here and now when the loop is idle (see above), else queues it. Inline from a
  // task (already holding the strand). After Stop() the task is dropped.
  void Dispatch(Task task);
  // True when the timer was still pending (it will not run).
  bool Cancel(TimerId id);
  // Runs `task` on the loop and waits for it (inline when called while holding the strand).
  void RunSync(Task task);
  // True while the calling thread holds the strand (runs a task of this loop).
  bool InLoopThread() const {
    return owner_.load(std::memory_order_acquire) == std::this_thread::get_id();
  }
  void Stop();
  // No task runs and none is due: a Dispatch now would run inline (a moment's answer; tests).
  bool Idle();
  // Tasks run inline by Dispatch (for stats and tests).
  int64_t inline_runs() const { return inline_runs_.load(std::memory_order_relaxed); }
  // Times the loop thread woke from a sleep (another thread woke it, or its deadline came).
  int64_t wakeups() const { return wakeups_.load(std::memory_order_relaxed); }
  // The loop thread has nothing to run and sleeps (or is about to: anything posted from now
  // on has to wake it). For tests.
  bool SleepingForTest();

 private:
  void Run();
  // Whether a queued task is due now (the strand must serve it before any inline task).
  bool DueLocked(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Gives the strand back (after the task and its captures are gone).
  void Release();
  // Wakes the sleeping loop thread when it must act before its planned wake-up (see above).
  void WakeIfNeededLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Loop thread: sleeps until woken or `until` (mu_ not held).
  void Sleep(absl::Time until) ABSL_LOCKS_EXCLUDED(mu_);

  Mutex mu_;
  // Keyed by (time, sequence) so equal times run in post order.
  std::map<std::pair<absl::Time, TimerId>, Task> tasks_ ABSL_GUARDED_BY(mu_);
  std::map<TimerId, absl::Time> when_ ABSL_GUARDED_BY(mu_);
  TimerId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool running_ ABSL_GUARDED_BY(mu_) = false;  // the strand is held
  // The loop thread sleeps (or is about to) until sleep_until_ unless woken (wake_).
  bool sleeping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time sleep_until_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  // Only the loop thread waits on wake_mu_ and only a thread that must wake it takes it
  // (inside mu_: lock order mu_ -> wake_mu_), so no unlock of mu_ wakes the loop thread.
  Mutex wake_mu_ ABSL_ACQUIRED_AFTER(mu_);
  bool wake_ ABSL_GUARDED_BY(wake_mu_) = false;
  std::string name_;
  std::thread thread_;
  // The strand holder's thread (default id when nobody holds it). Written under mu_.
  std::atomic<std::thread::id> owner_{};
  // Points at a flag on the strand holder's stack (Run() or Dispatch()); set by the destructor
  // when it runs in the strand holder, so that the holder returns without touching `this`.
  // Strand holder only.
  bool* destroyed_ = nullptr;
  std::thread::id loop_thread_id_;  // stays valid after Stop() detached or joined thread_
  std::atomic<int64_t> inline_runs_{0};
  std::atomic<int64_t> wakeups_{0};
};

}  // namespace discovery::util
