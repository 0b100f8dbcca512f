// The paced, pipelined etcd Put writer of watch-latency, shared by discovery-bench (library
// side) and discovery-raw-bench (raw side) so both offer the same load: header-only, generated
// etcd stubs and gRPC only (the raw binary must not link the library). The schedule and the
// send/ack bookkeeping are bench/paced_core.h's (shared with the Redis writer); the Puts go out
// on the channel with the gRPC callback API.
#pragma once

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "etcd/etcdserverpb/rpc.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "paced_core.h"

namespace bench_writer {

// Writes `total` puts at `rate`/s over min(total, keys) keys: SeqKey(prefix, seq % keys),
// SeqValue(seq % keys, seq, full_value). Blocks until every Put completed.
inline PacedResult RunPacedWriter(const std::shared_ptr<grpc::Channel>& channel,
                                  const std::string& prefix, int rate, int total, int inflight,
                                  bool full_value = false, int keys = 1000) {
  keys = std::max(1, std::min(std::max(1, total), keys));
  auto kv = etcdserverpb::KV::NewStub(channel);
  struct Slot {
    std::unique_ptr<grpc::ClientContext> ctx;
    etcdserverpb::PutRequest req;
    etcdserverpb::PutResponse resp;
  };
  std::vector<Slot> slots(static_cast<size_t>(std::max(1, inflight)));
  return RunPaced(rate, total, inflight, [&](int s, int seq, std::function<void(bool)> done) {
    Slot& slot = slots[static_cast<size_t>(s)];
    slot.req.set_key(SeqKey(prefix, seq % keys));
    slot.req.set_value(SeqValue(seq % keys, seq, full_value));
    slot.ctx = std::make_unique<grpc::ClientContext>();
    slot.ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    kv->async()->Put(slot.ctx.get(), &slot.req, &slot.resp,
                     [done = std::move(done)](grpc::Status st) { done(st.ok()); });
  });
}

}  // namespace bench_writer
