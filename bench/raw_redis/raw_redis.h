// discovery-raw-redis-bench: the standalone raw Redis baseline. hiredis (bench/redis_raw.h) and
// the library's Lua scripts as plain text (src/redis/scripts.cc), nothing else of the library.
// Each mode does the same Redis work as the matching `discovery-bench --store redis://`
// scenario - the same register scripts (grant + put-if-absent), the same one keepalive script
// call per tick for all N leases, the same paced writer (bench/redis_writer.h) followed by a
// bare XREAD BLOCK reader of the change log - and prints ONE JSON line with the same figure
// names.
#pragma once

#include <string>

#include "measure.h"
#include "nlohmann/json.hpp"

namespace raw_redis {

using Json = nlohmann::ordered_json;

struct Flags {
  std::string url = "redis://127.0.0.1:6379";
  std::string prefix;     // --prefix, else a unique one
  std::string peer_pids;  // name=pid,... whose CPU keepalive and register report

  int register_n = 5000;
  int inflight = 16;

  int rate = 1000;
  double latency_seconds = 10;
  int writer_inflight = 32;

  int keepalive_n = 1000;
  int ttl = 10;
  double keepalive_seconds = 30;
};

Json RunRegister(const Flags& f);
Json RunKeepalive(const Flags& f);
Json RunWatchLatency(const Flags& f);

}  // namespace raw_redis
