// discovery-raw-redis-bench: the raw hiredis baseline of `discovery-bench --store redis://`
// (see raw_redis.h and bench/README.md "Redis").
//
//   discovery-raw-redis-bench register --url redis://127.0.0.1:6379 --n 5000 --inflight 16
//   discovery-raw-redis-bench keepalive --url ... --n 10000 --ttl 10 --seconds 30
//   discovery-raw-redis-bench watch-latency --url ... --rate 1000 --seconds 10
#include <iostream>

#include "CLI/CLI.hpp"
#include "raw_redis.h"

int main(int argc, char** argv) {
  raw_redis::Flags f;
  std::string mode;
  CLI::App app{"discovery-raw-redis-bench: raw hiredis baselines of the Redis backend"};
  app.add_option("mode", mode, "register | keepalive | watch-latency")
      ->required()
      ->check(CLI::IsMember({"register", "keepalive", "watch-latency"}));
  app.add_option("--url", f.url, "redis://host:port");
  app.add_option("--prefix", f.prefix, "key prefix (default: a unique one)");
  app.add_option("--peer-pids", f.peer_pids, "register, keepalive: name=pid,... CPU to report");
  app.add_option("--n", f.register_n, "register: registrations; keepalive: leases");
  app.add_option("--inflight", f.inflight, "register: registrations in flight (threads)")
      ->check(CLI::Range(1, 4096));
  app.add_option("--rate", f.rate, "watch-latency: puts per second");
  app.add_option("--seconds", f.latency_seconds, "watch-latency / keepalive: seconds");
  app.add_option("--writer-inflight", f.writer_inflight, "watch-latency: puts outstanding")
      ->check(CLI::Range(1, 4096));
  app.add_option("--ttl", f.ttl, "keepalive: lease TTL seconds")->check(CLI::Range(1, 3600));
  CLI11_PARSE(app, argc, argv);
  f.keepalive_n = f.register_n;
  f.keepalive_seconds = f.latency_seconds;
  raw_redis::Json out = mode == "register"    ? raw_redis::RunRegister(f)
                        : mode == "keepalive" ? raw_redis::RunKeepalive(f)
                                              : raw_redis::RunWatchLatency(f);
  std::cout << out.dump() << std::endl;
  return out.contains("error") ? 1 : 0;
}
