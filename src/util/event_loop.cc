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
  // Destroyed by one of its own tasks: Run() must not touch this object any more.
  if (std::this_thread::get_id() == loop_thread_id_ && destroyed_ != nullptr) *destroyed_ = true;
}

EventLoop::TimerId EventLoop::PostAt(absl::Time when, Task task) {
  MutexLock lock(&mu_);
  if (stopping_) return 0;
  TimerId id = next_id_++;
  tasks_.emplace(std::make_pair(when, id), std::move(task));
  when_.emplace(id, when);
  return id;
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
  }
  if (thread_.joinable()) {
    if (InLoopThread()) {
      thread_.detach();
    } else {
      thread_.join();
    }
  }
  MutexLock lock(&mu_);
  tasks_.clear();
  when_.clear();
}

void EventLoop::Run() {
  bool destroyed = false;
  destroyed_ = &destroyed;
  for (;;) {
    {
      Task task;
      {
        MutexLock lock(&mu_);
        for (;;) {
          if (stopping_) return;
          if (!tasks_.empty()) {
            auto it = tasks_.begin();
            absl::Time now = util::MonoNow();
            if (it->first.first <= now) {
              task = std::move(it->second);
              when_.erase(it->first.second);
              tasks_.erase(it);
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
  }
}

}  // namespace discovery::util
