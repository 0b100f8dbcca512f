// A single-threaded executor with timers. The etcd client owns one for stream bookkeeping
// (keepalive schedule, watch dispatch) and one for blocking calls issued in the background,
// so that a slow etcd never delays a keepalive tick.
//
// Thread-safety: Post/PostAfter/Cancel are thread-safe. Tasks run one at a time on the loop's
// thread, in time order (FIFO for equal times). Stop() runs no further task and joins.
//
// A task may destroy the loop that runs it (e.g. it drops the last reference to the object that
// owns the loop): Stop() then detaches the thread instead of joining it, and the thread leaves
// Run() as soon as that task (and its captures) are gone, without touching the freed loop.
#pragma once

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
  // True when the timer was still pending (it will not run).
  bool Cancel(TimerId id);
  // Runs `task` on the loop and waits for it (must not be called from the loop thread).
  void RunSync(Task task);
  bool InLoopThread() const { return std::this_thread::get_id() == thread_.get_id(); }
  void Stop();

 private:
  void Run();

  Mutex mu_;
  // Keyed by (time, sequence) so equal times run in post order.
  std::map<std::pair<absl::Time, TimerId>, Task> tasks_ ABSL_GUARDED_BY(mu_);
  std::map<TimerId, absl::Time> when_ ABSL_GUARDED_BY(mu_);
  TimerId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time wait_until_ ABSL_GUARDED_BY(mu_);
  std::string name_;
  std::thread thread_;
  // Points at a flag on Run()'s stack; set by the destructor when it runs on the loop thread,
  // so that Run() returns without touching `this` again. Loop-thread only.
  bool* destroyed_ = nullptr;
  std::thread::id loop_thread_id_;  // stays valid after Stop() detached or joined thread_
};

}  // namespace discovery::util
