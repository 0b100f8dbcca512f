// The instance both benchmarks measure with: the DESIGN.md example, with a per-index id,
// group and addresses. Each benchmark adds what it needs on top (fixed timestamps and a
// lease id for the codec micro-benchmarks, the current time for values written to etcd).
#pragma once

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "discovery/instance.h"

namespace discovery_bench {

inline discovery::Instance SampleInstance(int i, const std::string& type = "world") {
  discovery::Instance in;
  in.instance_id = absl::StrFormat("01JCYFZQ7D4NB4MZ5S6Z%06d", i);
  in.type = type;
  in.group = absl::StrCat("kr-", i % 8);
  in.hostname = absl::StrCat("game-", i, ".kr.example.com");
  in.public_ip = absl::StrFormat("123.45.%d.%d", (i / 250) % 250, i % 250);
  in.private_ip = absl::StrFormat("10.0.%d.%d", (i / 250) % 250, i % 250);
  in.ports = {{"game", 8001}, {"grpc", 50051}};
  in.status = discovery::InstanceStatus::kReady;
  in.version = "1.4.2";
  in.region = "ap-northeast-2";
  in.zone = "a";
  in.weight = 100;
  in.performance = {{"tps", 1200}, {"load", (i % 100) / 100.0}};
  in.started_at = absl::FromUnixSeconds(1700000000);
  return in;
}

}  // namespace discovery_bench
