// discovery-raw-bench register: LeaseGrant(ttl 10) then the library's guarded Txn (or a plain
// Put with the lease, --op put), K registrations in flight.
//   --api auto:     sync for K = 1, callback for K > 1 (default; the fastest on the 2-core
//                   test machine: with one in flight a blocking call avoids a thread hop).
//   --api callback: async callback API, the Txn issued from the LeaseGrant's completion, a
//                   finished registration starts the next one (K in flight at all times).
//   --api cq:       one CompletionQueue driven by the calling thread, K in flight (the Txn
//                   started when the grant's completion is taken from the queue).
//   --api sync:     K threads doing blocking calls.
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "raw_common.h"

namespace raw_bench {
namespace {

void SetDeadline(grpc::ClientContext* ctx, int seconds = 10) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

// The library's PutIfAbsent (src/registrar.cc): create_revision(key) == 0, success: put with
// the lease, failure: range of the key.
void BuildTxn(pb::TxnRequest* txn, const std::string& key, std::string value, int64_t lease) {
  auto* cmp = txn->add_compare();
  cmp->set_key(key);
  cmp->set_target(pb::Compare::CREATE);
  cmp->set_result(pb::Compare::EQUAL);
  cmp->set_create_revision(0);
  auto* put = txn->add_success()->mutable_request_put();
  put->set_key(key);
  put->set_value(std::move(value));
  put->set_lease(lease);
  txn->add_failure()->mutable_request_range()->set_key(key);
}

// An idle LeaseKeepAlive stream on the callback API (--open-stream): nothing is sent, every
// read is re-armed. Its existence alone keeps gRPC's callback poller thread ("nexting")
// polling the process's sockets.
class IdleStream
    : public grpc::ClientBidiReactor<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse> {
 public:
  explicit IdleStream(pb::Lease::Stub* stub) {
    stub->async()->LeaseKeepAlive(&ctx_, this);
    StartRead(&resp_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (ok) StartRead(&resp_);
  }
  void OnDone(const grpc::Status&) override {
    std::lock_guard lock(mu_);
    done_ = true;
    cv_.notify_all();
  }
  void Stop() {
    ctx_.TryCancel();
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return done_; });
  }

 private:
  grpc::ClientContext ctx_;
  pb::LeaseKeepAliveResponse resp_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
};

// The same idle stream on the sync API (--stream-api sync): a thread of ours blocks in Read.
class IdleSyncStream {
 public:
  explicit IdleSyncStream(pb::Lease::Stub* stub) {
    thread_ = std::thread([this, stub] {
      auto call = stub->LeaseKeepAlive(&ctx_);
      pb::LeaseKeepAliveResponse resp;
      while (call->Read(&resp)) {
      }
      call->Finish().ok();
    });
  }
  void Stop() {
    ctx_.TryCancel();
    thread_.join();
  }

 private:
  grpc::ClientContext ctx_;
  std::thread thread_;
};

struct Run {
  const Flags& f;
  std::unique_ptr<pb::KV::Stub> kv;
  std::unique_ptr<pb::Lease::Stub> lease;
  std::vector<std::string> keys, heads;
  std::vector<int64_t> lat, leases;
  std::atomic<int> next{0}, done{0}, errors{0};
  std::mutex mu;
  std::condition_variable cv;

  explicit Run(const Flags& flags, const std::shared_ptr<grpc::Channel>& ch)
      : f(flags), kv(pb::KV::NewStub(ch)), lease(pb::Lease::NewStub(ch)) {}

  // One registration through blocking calls; true on success.
  bool Sync(int i) {
    grpc::ClientContext gctx;
    SetDeadline(&gctx);
    pb::LeaseGrantRequest greq;
    greq.set_ttl(10);
    pb::LeaseGrantResponse gresp;
    if (!lease->LeaseGrant(&gctx, greq, &gresp).ok()) return false;
    leases[i] = gresp.id();
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    if (f.op == "put") {
      pb::PutRequest put;
      put.set_key(keys[i]);
      put.set_value(ValueWithLease(heads[i], gresp.id()));
      put.set_lease(gresp.id());
      pb::PutResponse resp;
      return kv->Put(&ctx, put, &resp).ok();
    }
    pb::TxnRequest txn;
    BuildTxn(&txn, keys[i], ValueWithLease(heads[i], gresp.id()), gresp.id());
    pb::TxnResponse resp;
    return kv->Txn(&ctx, txn, &resp).ok() && resp.succeeded();
  }

  // Callback API: one in-flight registration.
  struct Op {
    Run* run;
    int i;
    int64_t start;
    grpc::ClientContext grant_ctx;
    pb::LeaseGrantRequest greq;
    pb::LeaseGrantResponse gresp;
    grpc::ClientContext write_ctx;
    pb::TxnRequest txn;
    pb::TxnResponse txn_resp;
    pb::PutRequest put;
    pb::PutResponse put_resp;
  };

  void Start(int i) {
    auto* op = new Op{.run = this, .i = i, .start = NowNs()};
    SetDeadline(&op->grant_ctx);
    SetDeadline(&op->write_ctx);
    op->greq.set_ttl(10);
    lease->async()->LeaseGrant(&op->grant_ctx, &op->greq, &op->gresp,
                               [op](grpc::Status s) { op->run->OnGrant(op, s); });
  }

  void OnGrant(Op* op, const grpc::Status& s) {
    if (!s.ok()) return Finish(op, false);
    const int64_t id = op->gresp.id();
    leases[op->i] = id;
    if (f.op == "put") {
      op->put.set_key(keys[op->i]);
      op->put.set_value(ValueWithLease(heads[op->i], id));
      op->put.set_lease(id);
      kv->async()->Put(&op->write_ctx, &op->put, &op->put_resp,
                       [op](grpc::Status st) { op->run->Finish(op, st.ok()); });
      return;
    }
    BuildTxn(&op->txn, keys[op->i], ValueWithLease(heads[op->i], id), id);
    kv->async()->Txn(&op->write_ctx, &op->txn, &op->txn_resp, [op](grpc::Status st) {
      op->run->Finish(op, st.ok() && op->txn_resp.succeeded());
    });
  }

  // CompletionQueue driven by the calling thread: no thread hop per completion.
  void RunCq(int inflight) {
    struct CqOp {
      int i = 0;
      int stage = 0;  // 0: grant pending, 1: write pending
      int64_t start = 0;
      std::unique_ptr<grpc::ClientContext> ctx;
      grpc::Status status;
      pb::LeaseGrantResponse gresp;
      pb::TxnResponse tresp;
      pb::PutResponse presp;
      std::unique_ptr<grpc::ClientAsyncResponseReader<pb::LeaseGrantResponse>> grant;
      std::unique_ptr<grpc::ClientAsyncResponseReader<pb::TxnResponse>> txn;
      std::unique_ptr<grpc::ClientAsyncResponseReader<pb::PutResponse>> put;
    };
    grpc::CompletionQueue cq;
    const int n = static_cast<int>(keys.size());
    auto fresh_ctx = [] {
      auto c = std::make_unique<grpc::ClientContext>();
      SetDeadline(c.get());
      return c;
    };
    auto start = [&](int i) {
      auto* op = new CqOp;
      op->i = i;
      op->start = NowNs();
      op->ctx = fresh_ctx();
      pb::LeaseGrantRequest req;
      req.set_ttl(10);
      op->grant = lease->AsyncLeaseGrant(op->ctx.get(), req, &cq);
      op->grant->Finish(&op->gresp, &op->status, op);
    };
    int started = std::min(inflight, n), finished = 0;
    for (int i = 0; i < started; ++i) start(i);
    void* tag = nullptr;
    bool ok = false;
    while (finished < n && cq.Next(&tag, &ok)) {
      auto* op = static_cast<CqOp*>(tag);
      bool done = false, success = false;
      if (op->stage == 0) {
        if (!ok || !op->status.ok()) {
          done = true;
        } else {
          const int64_t id = op->gresp.id();
          leases[op->i] = id;
          op->stage = 1;
          op->ctx = fresh_ctx();
          if (f.op == "put") {
            pb::PutRequest put;
            put.set_key(keys[op->i]);
            put.set_value(ValueWithLease(heads[op->i], id));
            put.set_lease(id);
            op->put = kv->AsyncPut(op->ctx.get(), put, &cq);
            op->put->Finish(&op->presp, &op->status, op);
          } else {
            pb::TxnRequest txn;
            BuildTxn(&txn, keys[op->i], ValueWithLease(heads[op->i], id), id);
            op->txn = kv->AsyncTxn(op->ctx.get(), txn, &cq);
            op->txn->Finish(&op->tresp, &op->status, op);
          }
        }
      } else {
        done = true;
        success = ok && op->status.ok() && (f.op == "put" || op->tresp.succeeded());
      }
      if (!done) continue;
      lat[op->i] = NowNs() - op->start;
      if (!success) errors.fetch_add(1);
      delete op;
      ++finished;
      if (started < n) start(started++);
    }
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
  }

  void Finish(Op* op, bool ok) {
    lat[op->i] = NowNs() - op->start;
    if (!ok) errors.fetch_add(1);
    delete op;
    const int n = static_cast<int>(keys.size());
    if (int i = next.fetch_add(1); i < n) Start(i);
    if (done.fetch_add(1) + 1 == n) {
      std::lock_guard lock(mu);
      cv.notify_all();
    }
  }
};

}  // namespace

Json RunRegister(const Flags& f) {
  const int n = f.register_n;
  const int k = std::max(1, f.inflight);
  Json out;
  out["scenario"] = "register";
  out["impl"] = "raw";
  std::string api = f.api;
  if (api == "auto") api = k == 1 ? "sync" : "callback";
  out["op"] = f.op;
  out["api"] = api;
  out["n"] = n;
  out["inflight"] = k;
  if (f.op != "txn" && f.op != "put") {
    out["error"] = "--op must be txn or put";
    return out;
  }
  if (api != "callback" && api != "sync" && api != "cq") {
    out["error"] = "--api must be cq, sync or callback";
    return out;
  }
  auto channel = NewChannel(f.endpoint);
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    out["error"] = "cannot connect to " + f.endpoint;
    return out;
  }
  Run run(f, channel);
  out["open_stream"] = f.open_stream;
  if (f.open_stream) out["stream_api"] = f.stream_api;
  std::optional<IdleStream> idle;
  std::optional<IdleSyncStream> idle_sync;
  if (f.open_stream && f.stream_api == "sync") {
    idle_sync.emplace(run.lease.get());
  } else if (f.open_stream) {
    idle.emplace(run.lease.get());
  }
  const std::string prefix = f.prefix.empty() ? UniquePrefix("register") : f.prefix;
  run.keys.resize(n);
  run.heads.resize(n);
  run.lat.assign(n, 0);
  run.leases.assign(n, 0);
  for (int i = 0; i < n; ++i) {
    run.keys[i] = absl::StrCat(prefix, "world/", InstanceId(i));
    run.heads[i] = ValueHead(i);
  }

  const int64_t t0 = NowNs();
  if (api == "sync") {
    ParallelFor(k, n, [&](int i) {
      const int64_t s = NowNs();
      if (!run.Sync(i)) run.errors.fetch_add(1);
      run.lat[i] = NowNs() - s;
    });
  } else if (api == "cq") {
    run.RunCq(k);
  } else {
    const int first = std::min(k, n);
    run.next.store(first);
    for (int i = 0; i < first; ++i) run.Start(i);
    std::unique_lock lock(run.mu);
    run.cv.wait(lock, [&] { return run.done.load() == n; });
  }
  const double secs = Seconds(NowNs() - t0);
  if (idle) idle->Stop();
  if (idle_sync) idle_sync->Stop();
  const int errors = run.errors.load();
  out["per_s"] = Round((n - errors) / secs, 1);
  out["p50_ms"] = Round(Percentile(run.lat, 50) / 1e6);
  out["p99_ms"] = Round(Percentile(run.lat, 99) / 1e6);
  out["errors"] = errors;
  out["value_bytes"] = ValueWithLease(run.heads[0], run.leases[0]).size();

  // Cleanup (not measured): revoke every lease, which deletes the keys.
  ParallelFor(16, n, [&](int i) {
    if (run.leases[i] == 0) return;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    pb::LeaseRevokeRequest req;
    req.set_id(run.leases[i]);
    pb::LeaseRevokeResponse resp;
    (void)run.lease->LeaseRevoke(&ctx, req, &resp);
  });
  return out;
}

}  // namespace raw_bench
