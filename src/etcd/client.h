// Internal etcd v3 client: one gRPC channel per endpoint, failover to the next endpoint on
// UNAVAILABLE (or an attempt deadline), per-call deadlines, TLS, user/password auth with the
// token attached to every call and refreshed when etcd says it is invalid.
//
// It also owns the process-wide shared streams (LeaseKeeper: one LeaseKeepAlive stream;
// WatchHub: one Watch stream) and the event loop that drives them.
//
// Thread-safety: all public methods are thread-safe. Unary calls block the caller up to the
// call deadline; background components use `background()` so they never block the loop.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "discovery/etcd.h"
#include "etcd/etcdserverpb/rpc.grpc.pb.h"
#include "util/clock.h"
#include "util/event_loop.h"
#include "util/grpc_deadline.h"
#include "util/sync.h"

namespace spdlog {
class logger;
}

namespace discovery::etcd {

namespace pb = ::etcdserverpb;

class LeaseKeeper;
class WatchHub;
class UnaryPolicy;
template <typename Req, typename Resp>
class AsyncUnary;

struct Endpoint {
  std::string url;     // as configured, for logs
  std::string target;  // host:port for gRPC
  bool tls = false;
};

// Parses "http://h:p", "https://h:p" or "h:p". kInvalidArgument otherwise.
absl::StatusOr<Endpoint> ParseEndpoint(const std::string& url);

// Converts a gRPC status from etcd into an absl::Status with codes chosen by what the caller
// does next (auth failures -> kUnauthenticated, lease not found -> kNotFound, compacted ->
// kOutOfRange). `what` prefixes the message.
absl::Status FromGrpc(const grpc::Status& status, const std::string& what);

// True when etcd refused a request for lack of (valid) credentials or permission, as a gRPC
// status (UNAUTHENTICATED / PERMISSION_DENIED) or as the text of a watch create's
// cancel_reason. etcd 3.4 cancels a watch create sent with an expired or unknown simple token
// with "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token", one without a
// token with "... user name is empty", and one RBAC does not allow with "etcdserver: permission
// denied". Only a fresh token tells a stale token from a real refusal.
bool IsAuthRefusal(grpc::StatusCode code, const std::string& message);

// The stubs of one endpoint.
struct Stubs {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::KV::Stub> kv;
  std::unique_ptr<pb::Lease::Stub> lease;
  std::unique_ptr<pb::Watch::Stub> watch;
  std::unique_ptr<pb::Maintenance::Stub> maintenance;
  std::unique_ptr<pb::Auth::Stub> auth;
};

class Client : public std::enable_shared_from_this<Client> {
 public:
  static absl::StatusOr<std::shared_ptr<Client>> Create(const EtcdOptions& options);
  ~Client();

  // ---- unary calls (blocking, bounded by options.call_timeout unless `timeout` given) ----
  absl::StatusOr<pb::RangeResponse> Range(const pb::RangeRequest& req,
                                          absl::Duration timeout = absl::ZeroDuration());
  absl::StatusOr<pb::PutResponse> Put(const pb::PutRequest& req,
                                      absl::Duration timeout = absl::ZeroDuration());
  absl::StatusOr<pb::DeleteRangeResponse> DeleteRange(
      const pb::DeleteRangeRequest& req, absl::Duration timeout = absl::ZeroDuration());
  absl::StatusOr<pb::TxnResponse> Txn(const pb::TxnRequest& req,
                                      absl::Duration timeout = absl::ZeroDuration());
  absl::StatusOr<pb::CompactionResponse> Compact(const pb::CompactionRequest& req,
                                                 absl::Duration timeout = absl::ZeroDuration());
  absl::StatusOr<pb::LeaseGrantResponse> LeaseGrant(const pb::LeaseGrantRequest& req,
                                                    absl::Duration timeout = absl::ZeroDuration());
  // LeaseGrant with an id chosen here (etcd's LeaseGrantRequest.ID), for registrations: the
  // client retries a grant whose answer did not come back in time (attempt deadline,
  // failover); when the first attempt was applied, etcd answers "lease already exists" and
  // that lease is ours: one lease, not a second one leaked until its TTL runs out. A random
  // 63-bit id colliding with another lease is as unlikely as a ULID clash.
  absl::StatusOr<pb::LeaseGrantResponse> GrantOwnLease(int64_t ttl_seconds);
  // kNotFound when the lease does not exist (any more).
  absl::StatusOr<pb::LeaseRevokeResponse> LeaseRevoke(
      const pb::LeaseRevokeRequest& req, absl::Duration timeout = absl::ZeroDuration());
  absl::StatusOr<pb::LeaseTimeToLiveResponse> LeaseTimeToLive(
      const pb::LeaseTimeToLiveRequest& req, absl::Duration timeout = absl::ZeroDuration());
  absl::StatusOr<pb::LeaseLeasesResponse> LeaseLeases(
      absl::Duration timeout = absl::ZeroDuration());
  // One keepalive round trip on a short-lived stream (for stateless gateways). Returns the new
  // TTL in seconds; kNotFound when the lease is gone.
  absl::StatusOr<int64_t> LeaseKeepAliveOnce(int64_t lease_id,
                                             absl::Duration timeout = absl::ZeroDuration());
  // ---- async unary calls ----
  // The same deadline, token, retry-on-auth and endpoint-failover rules as the blocking calls
  // (one implementation: UnaryPolicy), on the gRPC callback API. `done` runs exactly once,
  // never inline in the caller: on the gRPC callback thread that completed the last attempt,
  // or on the client's loop (after a retry pause) or background thread (after a token fetch).
  // It must not block. ~Client waits for calls in flight.
  template <typename Resp>
  using Callback = std::function<void(absl::StatusOr<Resp>)>;
  void TxnAsync(pb::TxnRequest req, Callback<pb::TxnResponse> done,
                absl::Duration timeout = absl::ZeroDuration());
  void LeaseGrantAsync(pb::LeaseGrantRequest req, Callback<pb::LeaseGrantResponse> done,
                       absl::Duration timeout = absl::ZeroDuration());
  void LeaseRevokeAsync(pb::LeaseRevokeRequest req, Callback<pb::LeaseRevokeResponse> done,
                        absl::Duration timeout = absl::ZeroDuration());
  void LeaseTimeToLiveAsync(pb::LeaseTimeToLiveRequest req,
                            Callback<pb::LeaseTimeToLiveResponse> done,
                            absl::Duration timeout = absl::ZeroDuration());
  // GrantOwnLease, async.
  void GrantOwnLeaseAsync(int64_t ttl_seconds, Callback<pb::LeaseGrantResponse> done);
  // Async calls in flight (started, `done` not yet returned).
  int async_in_flight();

  // Status of the member at endpoint index `endpoint` (-1 = whichever answers).
  absl::StatusOr<pb::StatusResponse> MemberStatus(int endpoint = -1,
                                                  absl::Duration timeout = absl::ZeroDuration());

  // ---- shared streams ----
  LeaseKeeper& keeper() { return *keeper_; }
  WatchHub& watch_hub() { return *watch_hub_; }
  // Loop that owns stream state (keepalive schedule, watch dispatch). Never block on it.
  util::EventLoop& loop() { return *loop_; }
  // Loop for blocking calls made in the background (re-registration, coalesced writes).
  util::EventLoop& background() { return *background_; }

  // For stream owners: the stubs of the endpoint currently preferred, and its index.
  std::shared_ptr<Stubs> CurrentStubs(int* index);
  // Reports that endpoint `index` failed; the next call or stream uses the next endpoint.
  void MarkFailed(int index);
  // Prepares a context: deadline (util::MonoNow()-based; InfiniteFuture = none) and the auth
  // token.
  void PrepareContext(grpc::ClientContext* ctx, absl::Time deadline);
  // Fetches a new auth token (no-op without credentials). Called when etcd says the token is
  // invalid (unary calls), or refuses a stream's request for auth (watch creates).
  absl::Status RefreshToken(int endpoint_index);
  // Authenticate calls that got a token / that failed, since Create.
  int64_t token_refreshes() const { return token_refreshes_.load(); }
  int64_t token_refresh_failures() const { return token_refresh_failures_.load(); }
  // Unary attempts retried (failover, etcd unavailable, token refresh), since Create.
  int64_t unary_retries() const { return retries_.load(); }
  bool has_auth() const { return !options_.user.empty(); }
  bool has_token() {
    util::MutexLock lock(&token_mu_);
    return !token_.empty();
  }
  void ClearToken() {
    util::MutexLock lock(&token_mu_);
    token_.clear();
  }

  const EtcdOptions& options() const { return options_; }
  const std::vector<Endpoint>& endpoints() const { return endpoints_; }
  const std::shared_ptr<spdlog::logger>& logger() const { return logger_; }

 private:
  friend class UnaryPolicy;
  template <typename Req, typename Resp>
  friend class AsyncUnary;
  explicit Client(const EtcdOptions& options);
  absl::Status Init();
  std::shared_ptr<Stubs> MakeStubs(const Endpoint& endpoint);

  // Runs `call` against endpoints with failover until it succeeds, fails with a
  // non-retryable status, or the deadline passes.
  template <typename Resp>
  absl::StatusOr<Resp> Unary(
      const char* what, absl::Duration timeout,
      const std::function<grpc::Status(Stubs&, grpc::ClientContext*, Resp*)>& call);

  EtcdOptions options_;
  std::shared_ptr<spdlog::logger> logger_;
  std::vector<Endpoint> endpoints_;
  std::shared_ptr<grpc::ChannelCredentials> credentials_;
  std::vector<std::shared_ptr<Stubs>> stubs_;
  std::atomic<int> current_{0};

  util::Mutex token_mu_;
  // Set when a call with a token timed out: the next call logs in again first (see Unary).
  std::atomic<bool> token_suspect_{false};
  std::string token_ ABSL_GUARDED_BY(token_mu_);
  uint64_t token_generation_ ABSL_GUARDED_BY(token_mu_) = 0;  // +1 per fetched token
  std::atomic<int64_t> token_refreshes_{0};
  std::atomic<int64_t> token_refresh_failures_{0};
  std::atomic<int64_t> retries_{0};

  // Async calls in flight; ~Client waits for none.
  void AsyncBegin();
  void AsyncEnd();
  std::mutex async_mu_;
  std::condition_variable async_cv_;
  int async_calls_ = 0;  // guarded by async_mu_

  std::unique_ptr<util::EventLoop> loop_;
  std::unique_ptr<util::EventLoop> background_;
  std::unique_ptr<LeaseKeeper> keeper_;
  std::unique_ptr<WatchHub> watch_hub_;
};

}  // namespace discovery::etcd
