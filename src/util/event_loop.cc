#include "util/event_loop.h"

#include <pthread.h>

#include "util/sync.h"

namespace discovery::util {

EventLoop::EventLoop(std::string name) : name_(std::move(name)) {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), name_.substr(0, 15).c_str());
    Run();
  });
  loop_thread_id_ = thread_.get_id();
}

EventLoop::~EventLoop() {
  Stop();
  // Destroyed by a task of its own (on the loop thread or inline in Dispatch): the strand holder
  // must not touch this object any more.
  if (InLoopThread() && destroyed_ != nullptr) *destroyed_ = true;
}

EventLoop::TimerId EventLoop::PostAt(absl::Time when, Task task) {
  MutexLock lock(&mu_);
  if (stopping_) return 0;
  TimerId id = next_id_++;
  tasks_.emplace(std::make_pair(when, id), std::move(task));
  when_.emplace(id, when);
  return id;
}

bool EventLoop::DueLocked(absl::Time now) const {
  return !tasks_.empty() && tasks_.begin()->first.first <= now;
}

void EventLoop::Dispatch(Task task) {
  bool destroyed = false;
  {
    MutexLock lock(&mu_);
    if (stopping_) return;
    // Busy (a task runs, here or elsewhere) or something is due first: queue, in order.
    if (running_ || DueLocked(util::MonoNow())) {
      TimerId id = next_id_++;
      tasks_.emplace(std::make_pair(absl::InfinitePast(), id), std::move(task));
      when_.emplace(id, absl::InfinitePast());
      return;
    }
    // Idle: take the strand. (The mutex orders everything the previous holder did before this.)
    running_ = true;
    owner_.store(std::this_thread::get_id(), std::memory_order_release);
    destroyed_ = &destroyed;
  }
  inline_runs_.fetch_add(1, std::memory_order_relaxed);
  {
    Task run = std::move(task);
    run();
  }  // the task and its captures are destroyed here: that too may destroy the loop
  if (destroyed) return;
  Release();
}

bool EventLoop::Idle() {
  MutexLock lock(&mu_);
  return !stopping_ && !running_ && !DueLocked(util::MonoNow());
}

void EventLoop::Release() {
  MutexLock lock(&mu_);  // unlocking wakes the loop thread if something became due meanwhile
  running_ = false;
  owner_.store(std::thread::id(), std::memory_order_release);
  destroyed_ = nullptr;
}

bool EventLoop::Cancel(TimerId id) {
  MutexLock lock(&mu_);
  auto it = when_.find(id);
  if (it == when_.end()) return false;
  tasks_.erase({it->second, id});
  when_.erase(it);
  return true;
}

void EventLoop::RunSync(Task task) {
  if (InLoopThread()) {
    task();
    return;
  }
  Notification done;
  {
    MutexLock lock(&mu_);
    if (stopping_) return;
  }
  Post([&] {
    task();
    done.Notify();
  });
  done.WaitForNotification();
}

void EventLoop::Stop() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    // A task running inline on another thread finishes first ("no task runs after Stop()").
    if (!InLoopThread()) {
      mu_.Await([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !running_; });
    }
  }
  if (thread_.joinable()) {
    if (std::this_thread::get_id() == thread_.get_id()) {
      thread_.detach();
    } else {
      thread_.join();  // (idle, or this thread holds the strand inline: it leaves Run() at once)
    }
  }
  MutexLock lock(&mu_);
  tasks_.clear();
  when_.clear();
}

void EventLoop::Run() {
  for (;;) {
    bool destroyed = false;
    {
      Task task;
      {
        MutexLock lock(&mu_);
        for (;;) {
          if (stopping_) return;
          if (running_) {
            // A task runs inline elsewhere (Dispatch): wait until it gave the strand back.
            mu_.Await([this]()
                          ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !running_; });
            continue;
          }
          if (!tasks_.empty()) {
            auto it = tasks_.begin();
            absl::Time now = util::MonoNow();
            if (it->first.first <= now) {
              task = std::move(it->second);
              when_.erase(it->first.second);
              tasks_.erase(it);
              running_ = true;
              owner_.store(std::this_thread::get_id(), std::memory_order_release);
              destroyed_ = &destroyed;
              break;
            }
            // Wake up at the due time, or earlier when an earlier task is posted.
            wait_until_ = it->first.first;
            mu_.AwaitWithDeadline(
                [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
                  return stopping_ || tasks_.empty() || tasks_.begin()->first.first < wait_until_;
                },
                wait_until_);
          } else {
            mu_.Await([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
              return stopping_ || !tasks_.empty();
            });
          }
        }
      }
      task();
    }  // the task and its captures are destroyed here: that too may destroy the loop
    if (destroyed) return;
    Release();
  }
}

}  // namespace discovery::util
