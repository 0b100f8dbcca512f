// discovery-raw-bench: the standalone raw gRPC baseline for discovery-bench (see raw_common.h).
//
//   discovery-raw-bench register --endpoints 127.0.0.1:2379 --n 5000 --inflight 16 --op txn
//   discovery-raw-bench watch-latency --endpoints 127.0.0.1:2379 --rate 1000 --seconds 10
//   discovery-raw-bench keepalive --endpoints 127.0.0.1:2379 --n 1000 --ttl 10 --seconds 30
//   discovery-raw-bench register --endpoints ... --smoke   # tiny sizes (explicit ones win)
//
// Needs a running etcd (bench/compare.sh starts one). Prints one JSON line on stdout; exit 1
// when the run reported an error.
#include <iostream>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_split.h"
#include "raw_common.h"

int main(int argc, char** argv) {
  raw_bench::Flags f;
  std::string endpoints;
  CLI::App app{"discovery-raw-bench: plain gRPC baseline on the etcd protos"};
  app.require_subcommand(1);
  auto common = [&](CLI::App* sub) {
    sub->add_option("--endpoints", endpoints, "etcd endpoint(s), comma list; the first is used")
        ->required();
    sub->add_flag("--smoke", f.smoke, "Tiny sizes (options given explicitly still win)");
    sub->add_option("--prefix", f.prefix, "Key prefix (ends with '/'); default: a unique one");
  };
  CLI::App* reg = app.add_subcommand("register", "LeaseGrant + guarded Txn (or Put), K in flight");
  common(reg);
  reg->add_option("--n", f.register_n, "registrations")->check(CLI::Range(1, 10000000));
  reg->add_option("--inflight", f.inflight, "registrations in flight")->check(CLI::Range(1, 4096));
  reg->add_option("--op", f.op, "txn (the library's guarded Txn) or put (plain Put, reference)")
      ->check(CLI::IsMember({"txn", "put"}));
  reg->add_option("--api", f.api,
                  "auto (sync for K = 1, else callback), cq (one CompletionQueue on this "
                  "thread, K in flight), sync (K threads) or callback (callback API, K in flight)")
      ->check(CLI::IsMember({"auto", "cq", "sync", "callback"}));
  reg->add_flag("--open-stream", f.open_stream,
                "hold one idle LeaseKeepAlive stream open meanwhile, as a registrar does");
  reg->add_option("--stream-api", f.stream_api,
                  "API of the --open-stream stream: callback, or sync (a thread blocked in Read)")
      ->check(CLI::IsMember({"callback", "sync"}));
  CLI::App* lat = app.add_subcommand("watch-latency", "paced puts -> bare Watch stream latency");
  common(lat);
  lat->add_option("--rate", f.rate, "puts per second")->check(CLI::Range(1, 1000000));
  lat->add_option("--seconds", f.latency_seconds, "seconds")->check(CLI::Range(0.01, 3600.0));
  lat->add_option("--work-ns", f.work_ns,
                  "busy CPU (ns) the reader spends per event before timestamping it: shows how "
                  "the tail follows a client's per-event CPU on a saturated host (default 0)")
      ->check(CLI::Range(0, 1000000));
  lat->add_option("--work-after-ns", f.work_after_ns,
                  "busy CPU (ns) the reader spends per event after timestamping it (work a "
                  "client does after its callback: is it the CPU or its place that counts?)")
      ->check(CLI::Range(0, 1000000));
  lat->add_flag("--full-value", f.full_value,
                "writer: put the instance as a registrar writes it (~470 B) instead of the "
                "minimal one (~100 B)");
  lat->add_option("--inflight", f.writer_inflight, "writer: Puts outstanding at once")
      ->check(CLI::Range(1, 4096));
  CLI::App* ka = app.add_subcommand("keepalive", "N leases on one LeaseKeepAlive stream");
  common(ka);
  ka->add_option("--n", f.keepalive_n, "leases")->check(CLI::Range(0, 1000000));
  ka->add_option("--ttl", f.ttl, "lease TTL seconds")->check(CLI::Range(1, 3600));
  ka->add_option("--seconds", f.keepalive_seconds, "measured seconds")
      ->check(CLI::Range(0.1, 3600.0));
  CLI11_PARSE(app, argc, argv);

  std::vector<std::string> eps = absl::StrSplit(endpoints, ',', absl::SkipWhitespace());
  if (eps.empty()) {
    std::cerr << "--endpoints: no endpoint given\n";
    return 2;
  }
  f.endpoint = eps[0];
  if (!f.prefix.empty() && f.prefix.back() != '/') f.prefix.push_back('/');
  if (f.smoke) {
    // Same smoke sizes as discovery-bench --smoke.
    if (reg->count("--n") == 0) f.register_n = 200;
    if (reg->count("--inflight") == 0) f.inflight = 8;
    if (lat->count("--rate") == 0) f.rate = 200;
    if (lat->count("--seconds") == 0) f.latency_seconds = 1;
    if (ka->count("--n") == 0) f.keepalive_n = 200;
    if (ka->count("--ttl") == 0) f.ttl = 2;
    if (ka->count("--seconds") == 0) f.keepalive_seconds = 3;
  }
  raw_bench::Json out;
  const int64_t t0 = raw_bench::NowNs();
  if (reg->parsed()) out = raw_bench::RunRegister(f);
  if (lat->parsed()) out = raw_bench::RunWatchLatency(f);
  if (ka->parsed()) out = raw_bench::RunKeepalive(f);
  out["wall_s"] = raw_bench::Round(raw_bench::Seconds(raw_bench::NowNs() - t0), 1);
  std::cout << out.dump() << std::endl;
  return out.contains("error") ? 1 : 0;
}
