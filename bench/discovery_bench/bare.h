// discovery-bench: bare generated etcd stubs on their own channel (no library code), used by
// the scenarios to write load, read revisions and follow a prefix on a plain Watch stream.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "common.h"
#include "etcd/etcdserverpb/rpc.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace discovery_bench {

class Bare {
 public:
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::KV::Stub> kv;
  std::unique_ptr<pb::Lease::Stub> lease;
  std::unique_ptr<pb::Watch::Stub> watch;

  explicit Bare(const std::string& endpoint) {
    std::string target = endpoint;
    if (absl::StartsWith(target, "http://")) target = target.substr(7);
    grpc::ChannelArguments args;
    // Own TCP connection: do not share a subchannel with the library's channel.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetMaxReceiveMessageSize(64 * 1024 * 1024);
    channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
    kv = pb::KV::NewStub(channel);
    lease = pb::Lease::NewStub(channel);
    watch = pb::Watch::NewStub(channel);
  }

  static void Deadline(grpc::ClientContext* ctx, int seconds = 10) {
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  }

  grpc::Status Put(const std::string& key, const std::string& value, int64_t lease_id = 0,
                   int64_t* revision = nullptr) {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    pb::PutRequest req;
    req.set_key(key);
    req.set_value(value);
    req.set_lease(lease_id);
    pb::PutResponse resp;
    grpc::Status s = kv->Put(&ctx, req, &resp);
    if (revision != nullptr) *revision = resp.header().revision();
    return s;
  }

  grpc::Status Delete(const std::string& key) {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    pb::DeleteRangeRequest req;
    req.set_key(key);
    pb::DeleteRangeResponse resp;
    return kv->DeleteRange(&ctx, req, &resp);
  }

  absl::StatusOr<int64_t> Grant(int64_t ttl) {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    pb::LeaseGrantRequest req;
    req.set_ttl(ttl);
    pb::LeaseGrantResponse resp;
    grpc::Status s = lease->LeaseGrant(&ctx, req, &resp);
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    return resp.id();
  }

  void Revoke(int64_t id) {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    pb::LeaseRevokeRequest req;
    req.set_id(id);
    pb::LeaseRevokeResponse resp;
    (void)lease->LeaseRevoke(&ctx, req, &resp);
  }

  // Current store revision.
  absl::StatusOr<int64_t> Revision() {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    pb::RangeRequest req;
    req.set_key("/");
    req.set_count_only(true);
    pb::RangeResponse resp;
    grpc::Status s = kv->Range(&ctx, req, &resp);
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    return resp.header().revision();
  }

  absl::Status Compact(int64_t revision) {
    grpc::ClientContext ctx;
    Deadline(&ctx, 60);
    pb::CompactionRequest req;
    req.set_revision(revision);
    req.set_physical(true);
    pb::CompactionResponse resp;
    grpc::Status s = kv->Compact(&ctx, req, &resp);
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    return absl::OkStatus();
  }

  // Paged Range of [key, end) as the watcher's sync does it; returns the number of keys.
  absl::StatusOr<int64_t> RangeAll(const std::string& prefix, int64_t page) {
    std::string key = prefix;
    std::string end = PrefixEnd(prefix);
    int64_t revision = 0;
    int64_t count = 0;
    for (;;) {
      grpc::ClientContext ctx;
      Deadline(&ctx, 30);
      pb::RangeRequest req;
      req.set_key(key);
      req.set_range_end(end);
      req.set_limit(page);
      req.set_revision(revision);
      pb::RangeResponse resp;
      grpc::Status s = kv->Range(&ctx, req, &resp);
      if (!s.ok()) return absl::UnavailableError(s.error_message());
      if (revision == 0) revision = resp.header().revision();
      count += resp.kvs_size();
      if (!resp.more() || resp.kvs_size() == 0) break;
      key = resp.kvs(resp.kvs_size() - 1).key();
      key.push_back('\0');
    }
    return count;
  }
};

// A bare Watch stream (generated sync stub, reader thread) on a prefix.
class RawWatch {
 public:
  using OnEvent = std::function<void(const mvccpb::Event& ev, int64_t recv_ns)>;

  RawWatch(Bare* bare, std::string prefix, int64_t start_revision, OnEvent on_event)
      : bare_(bare),
        prefix_(std::move(prefix)),
        start_revision_(start_revision),
        on_event_(std::move(on_event)) {}
  ~RawWatch() { Stop(); }

  absl::Status Start(absl::Duration timeout = absl::Seconds(10)) {
    stream_ = bare_->watch->Watch(&ctx_);
    pb::WatchRequest req;
    auto* create = req.mutable_create_request();
    create->set_key(prefix_);
    create->set_range_end(PrefixEnd(prefix_));
    create->set_start_revision(start_revision_);
    if (!stream_->Write(req)) return absl::UnavailableError("raw watch: write failed");
    thread_ = std::thread([this] {
      pb::WatchResponse resp;
      while (stream_->Read(&resp)) {
        const int64_t now = NowNs();
        if (resp.created()) created_.store(true);
        for (const auto& ev : resp.events()) on_event_(ev, now);
        events_.fetch_add(static_cast<uint64_t>(resp.events_size()));
      }
    });
    if (!WaitFor([this] { return created_.load(); }, timeout)) {
      return absl::DeadlineExceededError("raw watch: not created");
    }
    return absl::OkStatus();
  }

  void Stop() {
    if (stopped_) return;
    stopped_ = true;
    ctx_.TryCancel();
    if (thread_.joinable()) thread_.join();
    if (stream_ != nullptr) (void)stream_->Finish();
  }

  uint64_t events() const { return events_.load(); }

 private:
  Bare* bare_;
  std::string prefix_;
  int64_t start_revision_;
  OnEvent on_event_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<pb::WatchRequest, pb::WatchResponse>> stream_;
  std::thread thread_;
  std::atomic<bool> created_{false};
  std::atomic<uint64_t> events_{0};
  bool stopped_ = false;
};

}  // namespace discovery_bench
