// Synchronisation primitives for our own code, built on std::mutex/std::condition_variable.
//
// Why not absl::Mutex: Debian's abseil is a prebuilt shared library that is not compiled with
// ThreadSanitizer, so TSan cannot see absl::Mutex lock/unlock and reports false races on data
// that absl::Mutex does protect. libstdc++'s std::mutex is a thin wrapper over pthread, which
// TSan intercepts, so every lock taken through these classes is visible to it.
//
// The shapes follow absl so call sites read the same:
//   util::Mutex mu;  int n ABSL_GUARDED_BY(mu);
//   { util::MutexLock lock(&mu); ++n; }
//   { util::MutexLock lock(&mu); mu.Await([&] { return n > 0; }); }
// Await predicates are evaluated with the lock held. As with absl::Mutex conditions, waiters
// re-evaluate their predicate whenever the mutex is released (Unlock() wakes them when any is
// registered), so state changed under the lock needs no separate signal.
//
// Thread-safety: thread-safe. Not recursive.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "util/clock.h"

#if defined(__SANITIZE_THREAD__)
#define DISCOVERY_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define DISCOVERY_TSAN 1
#endif
#endif
#ifdef DISCOVERY_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace discovery::util {

// Happens-before edges that exist but go through a library TSan cannot see: gRPC hands a
// reactor from the thread that calls StartCall/StartRead/StartWrite to the thread that runs its
// next reaction through its own (uninstrumented) completion queue. Call TsanRelease(obj) before
// handing `obj` over and TsanAcquire(obj) when a reaction begins. No-ops without TSan.
inline void TsanRelease(void* obj) {
#ifdef DISCOVERY_TSAN
  __tsan_release(obj);
#else
  (void)obj;
#endif
}
inline void TsanAcquire(void* obj) {
#ifdef DISCOVERY_TSAN
  __tsan_acquire(obj);
#else
  (void)obj;
#endif
}

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }

  void Unlock() ABSL_UNLOCK_FUNCTION() {
    // Notify while still holding the lock: a woken waiter may destroy this object (e.g. a
    // Notification on its stack) as soon as it can reacquire, so we must not touch cv_ after
    // unlocking.
    if (waiters_ > 0) cv_.notify_all();
    mu_.unlock();
  }

  // Blocks until pred() is true. The caller holds the lock; pred runs with it held.
  template <class Pred>
  void Await(Pred pred) ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    if (pred()) return;
    std::unique_lock<std::mutex> lock(mu_, std::adopt_lock);
    ++waiters_;
    while (!pred()) cv_.wait(lock);
    --waiters_;
    lock.release();  // still held; the caller unlocks
  }

  // Blocks until pred() is true or `deadline` passes; returns pred() (evaluated under the lock)
  // at the end. The caller holds the lock. InfiniteFuture waits forever.
  template <class Pred>
  bool AwaitWithDeadline(Pred pred, absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    if (pred()) return true;
    if (deadline == absl::InfiniteFuture()) {
      Await(pred);
      return true;
    }
    // `deadline` is on the monotonic clock (util/clock.h): a wall-clock step neither wakes
    // the waiter early nor keeps it asleep for minutes.
    const std::chrono::steady_clock::time_point until = ToSteady(deadline);
    std::unique_lock<std::mutex> lock(mu_, std::adopt_lock);
    ++waiters_;
    bool ok = pred();
    while (!ok) {
      const bool timed_out = cv_.wait_until(lock, until) == std::cv_status::timeout;
      ok = pred();
      if (timed_out) break;
    }
    --waiters_;
    lock.release();  // still held; the caller unlocks
    return ok;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int waiters_ = 0;  // threads inside Await*, guarded by mu_
};

// RAII lock, same shape as absl::MutexLock.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

// One-shot event, same shape as absl::Notification. The object may be destroyed as soon as
// WaitForNotification() returns, even while Notify() is still returning on another thread.
class Notification {
 public:
  Notification() = default;
  Notification(const Notification&) = delete;
  Notification& operator=(const Notification&) = delete;

  void Notify() {
    MutexLock lock(&mu_);
    notified_ = true;
  }

  bool HasBeenNotified() const {
    MutexLock lock(&mu_);
    return notified_;
  }

  void WaitForNotification() const {
    MutexLock lock(&mu_);
    mu_.Await([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return notified_; });
  }

  // True when notified within `timeout`.
  bool WaitForNotificationWithTimeout(absl::Duration timeout) const {
    MutexLock lock(&mu_);
    return mu_.AwaitWithDeadline([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return notified_; },
                                 MonoNow() + timeout);
  }

 private:
  mutable Mutex mu_;
  bool notified_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace discovery::util
