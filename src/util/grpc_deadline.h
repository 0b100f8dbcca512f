// gRPC deadlines from util::MonoNow()-based deadlines (util/clock.h).
#pragma once

#include <grpc/support/time.h>

#include <algorithm>
#include <cstdint>

#include "absl/time/time.h"
#include "util/clock.h"

namespace discovery::util {

// The same instant on gRPC's own monotonic clock: gRPC takes it as is, with no wall-clock
// conversion that a step of CLOCK_REALTIME could shift. For ClientContext::set_deadline.
inline gpr_timespec GrpcDeadline(absl::Time mono_deadline) {
  const int64_t left = std::max<int64_t>(0, absl::ToInt64Nanoseconds(mono_deadline - MonoNow()));
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_nanos(left, GPR_TIMESPAN));
}

}  // namespace discovery::util
