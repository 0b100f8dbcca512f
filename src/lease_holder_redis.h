// Process-wide counters of the Redis lease holders (lease_holder_redis.cc), as
// redis::GetSentinelCounters() for the client: for tests, benchmarks and logs.
#pragma once

#include <cstdint>

namespace discovery {

struct RedisLeaseCounters {
  uint64_t bursts = 0;        // keepalive bursts (one per interval for all due leases)
  uint64_t calls = 0;         // keepalive script calls (a burst above 5,000 ids is chunked)
  uint64_t failed_calls = 0;  // calls that failed (Redis unreachable): retried with Backoff
  uint64_t lost = 0;          // leases the script reported gone (kLost)
};
RedisLeaseCounters GetRedisLeaseCounters();

}  // namespace discovery
