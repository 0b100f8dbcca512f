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
  WakeIfNeededLocked();
  return id;
}

void EventLoop::WakeIfNeededLocked() {
  if (!sleeping_) return;
  // A strand holder elsewhere wakes the loop when it gives the strand back (Release).
  if (!stopping_ && (running_ || tasks_.empty() || tasks_.begin()->first.first >= sleep_until_)) {
    return;
  }
  sleeping_ = false;
  MutexLock lock(&wake_mu_);  // (its unlock wakes the loop thread)
  wake_ = true;
}

void EventLoop::Sleep(absl::Time until) {
  MutexLock lock(&wake_mu_);
  wake_mu_.AwaitWithDeadline([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(wake_mu_) { return wake_; },
                             until);
  wake_ = false;
  wakeups_.fetch_add(1, std::memory_order_relaxed);
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
      WakeIfNeededLocked();
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

bool EventLoop::SleepingForTest() {
  MutexLock lock(&mu_);
  return sleeping_;
}

bool EventLoop::Idle() {
  MutexLock lock(&mu_);
  return !stopping_ && !running_ && !DueLocked(util::MonoNow());
}

void EventLoop::Release() {
  MutexLock lock(&mu_);
  running_ = false;
  owner_.store(std::thread::id(), std::memory_order_release);
  destroyed_ = nullptr;
  WakeIfNeededLocked();  // something became due meanwhile (queued behind an inline task)
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
    WakeIfNeededLocked();
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
      bool have = false;
      absl::Time until = absl::InfiniteFuture();
      {
        MutexLock lock(&mu_);
        sleeping_ = false;
        if (stopping_) return;
        const absl::Time now = tasks_.empty() ? absl::InfinitePast() : util::MonoNow();
        if (!running_ && DueLocked(now)) {
          auto it = tasks_.begin();
          task = std::move(it->second);
          when_.erase(it->first.second);
          tasks_.erase(it);
          have = true;
          running_ = true;
          owner_.store(std::this_thread::get_id(), std::memory_order_release);
          destroyed_ = &destroyed;
        } else {
          // Sleep until the first task is due; while a task runs inline elsewhere and one is
          // due already, until that strand holder gives the strand back (Release wakes us).
          if (!tasks_.empty() && tasks_.begin()->first.first > now) {
            until = tasks_.begin()->first.first;
          }
          sleeping_ = true;
          sleep_until_ = until;
        }
      }
      if (!have) {
        Sleep(until);
        continue;
      }
      task();
    }  // the task and its captures are destroyed here: that too may destroy the loop
    if (destroyed) return;
    Release();
  }
}

}  // namespace discovery::util
