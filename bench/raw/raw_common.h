// discovery-raw-bench: the standalone raw baseline. Plain gRPC on the generated etcd stubs
// (target discovery_proto) and nothing of the library: no discovery code, no spdlog logger.
// Each mode does the same etcd work as the matching discovery-bench scenario with the
// fastest plain gRPC pattern for the job and prints ONE JSON line with the same figure names.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "etcd/etcdserverpb/rpc.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "measure.h"
#include "nlohmann/json.hpp"

namespace raw_bench {

namespace pb = ::etcdserverpb;
using Json = nlohmann::ordered_json;

struct Flags {
  std::string endpoint;  // first of --endpoints
  bool smoke = false;
  std::string prefix;  // --prefix, else a unique one

  // register
  int register_n = 5000;
  int inflight = 16;
  std::string op = "txn";  // txn (the library's guarded Txn) | put (plain Put, reference)
  // auto: sync for K = 1, callback for K > 1 (the fastest here; see bench/README.md), or
  // cq | sync | callback explicitly.
  std::string api = "auto";
  // Hold one idle LeaseKeepAlive stream open (callback API) during the registrations, as every
  // registrar does: shows what gRPC's poller thread costs blocking calls (bench/README.md).
  bool open_stream = false;
  std::string stream_api = "callback";

  // watch-latency
  int rate = 1000;
  double latency_seconds = 10;
  int writer_inflight = 32;  // Puts outstanding at once (bench/paced_writer.h)
  int work_ns = 0;           // watch-latency: busy CPU per event on the reader (a probe)
  int work_after_ns = 0;     // the same after the event is timestamped
  bool full_value = false;   // watch-latency: registrar-sized values (bench_writer::SeqValue)

  // keepalive
  int keepalive_n = 1000;
  int ttl = 10;
  double keepalive_seconds = 30;
};

// Clocks, CPU time, /proc fields, percentiles, rounding: bench/measure.h (shared with
// discovery-bench; standard library only).
using bench_measure::CpuSeconds;
using bench_measure::NowNs;
using bench_measure::ParallelFor;
using bench_measure::Percentile;
using bench_measure::ProcStatus;
using bench_measure::Round;
using bench_measure::Seconds;

// A channel with its own TCP connection (no subchannel shared with another channel).
std::shared_ptr<grpc::Channel> NewChannel(const std::string& endpoint);

// The ~450-byte value the library writes for discovery_bench::SampleInstance(i) (see
// bench/sample_instance.h), precomputed once: ValueHead(i) + lease id in hex + "\"}". The
// instance id has the length of a ULID, as the library's generated ids do.
std::string ValueHead(int i);
std::string ValueWithLease(const std::string& head, int64_t lease);
// The same value with a sequence number in meta (watch-latency), without a lease.
std::string ValueWithSeq(int i, int64_t seq);
std::string InstanceId(int i);

std::string PrefixEnd(std::string prefix);
std::string UniquePrefix(const std::string& mode);

Json RunRegister(const Flags& f);
Json RunWatchLatency(const Flags& f);
Json RunKeepalive(const Flags& f);

}  // namespace raw_bench
