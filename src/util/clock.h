// The one clock for durations, timers and deadlines.
//
// Wall-clock time (absl::Now(), CLOCK_REALTIME) steps when NTP corrects it or a VM resumes
// from a pause: a timer computed from it fires minutes early or late, a keepalive schedule
// stalls, a liveness check declares a healthy stream dead. Every interval, deadline and
// timer in this project is therefore computed from MonoNow(): CLOCK_MONOTONIC expressed as an
// absl::Time (so the usual absl::Duration arithmetic works). Such values are only compared
// with other MonoNow() values; they are not dates. absl::Now() is only for timestamps that
// people read (`updatedAt`, `startedAt`, table ages in discoveryctl).
//
// Everything that takes an absl::Time deadline in src/ (EventLoop::PostAt, util::Mutex::
// AwaitWithDeadline, etcd::Client::PrepareContext) expects a MonoNow()-based value.
#pragma once

#include <chrono>

#include "absl/time/time.h"

namespace discovery::util {

// CLOCK_MONOTONIC as an absl::Time (epoch = boot, not 1970).
inline absl::Time MonoNow() {
  return absl::UnixEpoch() + absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
}

// The steady_clock time point of a MonoNow()-based deadline (saturating far deadlines).
inline std::chrono::steady_clock::time_point ToSteady(absl::Time mono_deadline) {
  const absl::Duration left = mono_deadline - MonoNow();
  const absl::Duration cap = absl::Hours(24 * 365);
  return std::chrono::steady_clock::now() +
         absl::ToChronoNanoseconds(std::min(std::max(left, absl::ZeroDuration()), cap));
}

}  // namespace discovery::util
