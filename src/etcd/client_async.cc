// Async unary calls of etcd::Client (gRPC callback API) driven by the same UnaryPolicy as the
// blocking ones.
#include <limits>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "etcd/client.h"
#include "etcd/unary_policy.h"
#include "grpcpp/support/client_callback.h"
#include "util/sync.h"

namespace discovery::etcd {

// One async unary call: attempts (with failover and token refresh) until it succeeds or
// UnaryPolicy gives up, then `done`. Owned by whatever is pending for it (the gRPC callback,
// a loop task); counted in Client::async_calls_ from construction to destruction.
template <typename Req, typename Resp>
class AsyncUnary : public std::enable_shared_from_this<AsyncUnary<Req, Resp>> {
 public:
  using Start = void (*)(Stubs&, grpc::ClientContext*, const Req*, Resp*,
                         grpc::ClientUnaryReactor*);

  AsyncUnary(Client* client, const char* what, absl::Duration timeout, Req req, Start start,
             Client::Callback<Resp> done)
      : client_(client),
        policy_(client, what, timeout),
        req_(std::move(req)),
        start_(start),
        done_(std::move(done)) {
    client_->AsyncBegin();
  }
  ~AsyncUnary() {
    ctx_.reset();
    client_->AsyncEnd();
  }

  // `in_caller`: runs on the thread that started the call (done must then be posted).
  void Step(bool in_caller, bool picked = false) {
    auto self = this->shared_from_this();
    if (!picked && policy_.Pick()) {
      // Authenticate blocks: fetch the token on the background loop.
      client_->background().Post([self] {
        absl::Duration pause;
        UnaryPolicy::Action a = self->policy_.AfterToken(
            self->policy_.FetchStillNeeded() ? self->client_->RefreshToken(self->policy_.index())
                                             : absl::OkStatus(),
            &pause);
        self->Continue(a, pause);
      });
      return;
    }
    ctx_ = std::make_unique<grpc::ClientContext>();
    if (!policy_.PrepareCall(ctx_.get())) {
      Finish(policy_.Final(), in_caller);
      return;
    }
    resp_ = Resp();
    auto* attempt = new Attempt(std::move(self));
    start_(policy_.stubs(), ctx_.get(), &req_, &resp_, attempt);
    util::TsanRelease(attempt);  // everything above is visible to OnDone
    attempt->StartCall();
  }

 private:
  // One call of the retry sequence. A reactor rather than a std::function callback: gRPC runs
  // OnDone on its own thread after handing the call over through libgrpc's (uninstrumented)
  // completion queue, and a reactor can tell TSan so (TsanAcquire on `this`, which gRPC passes)
  // before reading anything, where a lambda would first read its captures.
  class Attempt final : public grpc::ClientUnaryReactor {
   public:
    explicit Attempt(std::shared_ptr<AsyncUnary> owner) : owner_(std::move(owner)) {}
    void OnDone(const grpc::Status& status) override {
      util::TsanAcquire(this);
      std::shared_ptr<AsyncUnary> owner = std::move(owner_);
      delete this;
      owner->OnCall(status);
    }

   private:
    std::shared_ptr<AsyncUnary> owner_;
  };

  void OnCall(grpc::Status s) {
    if (s.ok()) {
      Finish(std::move(resp_), false);
      return;
    }
    absl::Duration pause;
    UnaryPolicy::Action a = policy_.AfterCall(s, &pause);
    Continue(a, pause);
  }

  void Continue(UnaryPolicy::Action a, absl::Duration pause) {
    switch (a) {
      case UnaryPolicy::Action::kDone:
        Finish(policy_.Final(), false);
        return;
      case UnaryPolicy::Action::kCall:
        Step(false, /*picked=*/true);
        return;
      case UnaryPolicy::Action::kRetry:
        if (pause <= absl::ZeroDuration()) {
          Step(false);
        } else {
          client_->loop().PostAfter(pause,
                                    [self = this->shared_from_this()] { self->Step(false); });
        }
        return;
    }
  }

  void Finish(absl::StatusOr<Resp> result, bool in_caller) {
    Client::Callback<Resp> done = std::move(done_);
    if (in_caller) {
      client_->background().Post(
          [self = this->shared_from_this(), done = std::move(done),
           result = std::move(result)]() mutable { done(std::move(result)); });
      return;
    }
    done(std::move(result));
  }

  Client* client_;
  UnaryPolicy policy_;
  Req req_;
  Resp resp_;
  std::unique_ptr<grpc::ClientContext> ctx_;
  Start start_;
  Client::Callback<Resp> done_;
};

void Client::AsyncBegin() {
  std::lock_guard lock(async_mu_);
  ++async_calls_;
}

void Client::AsyncEnd() {
  std::lock_guard lock(async_mu_);
  if (--async_calls_ == 0) async_cv_.notify_all();
}

int Client::async_in_flight() {
  std::lock_guard lock(async_mu_);
  return async_calls_;
}

#define DISCOVERY_ASYNC_UNARY(Name, Service, Req, Resp)                                    \
  void Client::Name##Async(pb::Req req, Callback<pb::Resp> done, absl::Duration timeout) { \
    auto call = std::make_shared<AsyncUnary<pb::Req, pb::Resp>>(                           \
        this, #Name, timeout, std::move(req),                                              \
        [](Stubs& s, grpc::ClientContext* ctx, const pb::Req* rq, pb::Resp* rs,            \
           grpc::ClientUnaryReactor* r) { s.Service->async()->Name(ctx, rq, rs, r); },     \
        std::move(done));                                                                  \
    call->Step(/*in_caller=*/true);                                                        \
  }

DISCOVERY_ASYNC_UNARY(Txn, kv, TxnRequest, TxnResponse)
DISCOVERY_ASYNC_UNARY(LeaseGrant, lease, LeaseGrantRequest, LeaseGrantResponse)
DISCOVERY_ASYNC_UNARY(LeaseRevoke, lease, LeaseRevokeRequest, LeaseRevokeResponse)
DISCOVERY_ASYNC_UNARY(LeaseTimeToLive, lease, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse)
#undef DISCOVERY_ASYNC_UNARY

void Client::GrantOwnLeaseAsync(int64_t ttl_seconds, Callback<pb::LeaseGrantResponse> done) {
  thread_local absl::BitGen gen;
  pb::LeaseGrantRequest grant;
  grant.set_ttl(ttl_seconds);
  const int64_t id =
      absl::Uniform<int64_t>(absl::IntervalClosed, gen, 1, std::numeric_limits<int64_t>::max());
  grant.set_id(id);
  // See GrantOwnLease: "lease already exists" after a retried grant means the first attempt
  // was applied, and that lease is ours.
  LeaseGrantAsync(
      grant, [this, id, done = std::move(done)](absl::StatusOr<pb::LeaseGrantResponse> r) mutable {
        if (r.ok() || !absl::StrContains(r.status().message(), "lease already exists")) {
          done(std::move(r));
          return;
        }
        pb::LeaseTimeToLiveRequest q;
        q.set_id(id);
        LeaseTimeToLiveAsync(
            q, [id, done = std::move(done)](absl::StatusOr<pb::LeaseTimeToLiveResponse> t) mutable {
              if (!t.ok()) return done(t.status());
              if (t->ttl() <= 0) {
                return done(absl::UnavailableError("the lease granted for this call is gone"));
              }
              pb::LeaseGrantResponse out;
              out.set_id(id);
              out.set_ttl(t->grantedttl());
              done(std::move(out));
            });
      });
}

}  // namespace discovery::etcd
