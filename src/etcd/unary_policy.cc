#include "etcd/unary_policy.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "util/clock.h"

namespace discovery::etcd {
namespace {

bool IsAuthTokenError(const grpc::Status& s) {
  // etcd: ErrGRPCInvalidAuthToken (Unauthenticated) "etcdserver: invalid auth token",
  // and after a member restart with simple tokens the same text.
  return s.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
         absl::StrContains(s.error_message(), "invalid auth token");
}

}  // namespace

UnaryPolicy::UnaryPolicy(Client* client, const char* what, absl::Duration timeout)
    : client_(client), what_(what), timeout_(timeout) {
  if (timeout_ <= absl::ZeroDuration()) timeout_ = client_->options_.call_timeout;
  deadline_ = util::MonoNow() + timeout_;
  n_ = static_cast<int>(client_->stubs_.size());
  // One endpoint may hang (SIGSTOPped member, partition): give each attempt a share of the
  // deadline so the others still get a chance.
  attempt_budget_ =
      n_ > 1 ? std::max(timeout_ / n_, std::min(timeout_, absl::Seconds(1))) : timeout_;
  need_token_ = client_->has_auth();
  util::MutexLock lock(&client_->token_mu_);
  need_token_ = need_token_ && (client_->token_.empty() || client_->token_suspect_.exchange(false));
}

bool UnaryPolicy::Pick() {
  ++attempt_;
  stubs_ = client_->CurrentStubs(&index_);
  last_index_ = index_;
  need_token_ = need_token_ && FetchStillNeeded();
  if (need_token_) client_->token_suspect_.store(false);
  return need_token_;
}

bool UnaryPolicy::FetchStillNeeded() {
  if (used_generation_ == 0) return true;
  // A token refresh after a refused attempt: when another call fetched a new token since
  // that attempt was sent, use it instead of logging in again (64 registrations in flight
  // refused at once log in once, not 64 times one after the other).
  util::MutexLock lock(&client_->token_mu_);
  return client_->token_generation_ == used_generation_ || client_->token_.empty();
}

UnaryPolicy::Action UnaryPolicy::Retry(absl::Duration* pause) {
  *pause = absl::ZeroDuration();
  const absl::Time now = util::MonoNow();
  if (now >= deadline_) return Action::kDone;
  client_->retries_.fetch_add(1);
  if ((attempt_ + 1) % n_ == 0) {
    *pause =
        std::min(std::min(absl::Milliseconds(100 * ((attempt_ + 1) / n_)), absl::Milliseconds(500)),
                 deadline_ - now);
  }
  return Action::kRetry;
}

UnaryPolicy::Action UnaryPolicy::AfterToken(const absl::Status& s, absl::Duration* pause) {
  *pause = absl::ZeroDuration();
  if (s.ok()) {
    need_token_ = false;
    return Action::kCall;
  }
  if (absl::IsUnauthenticated(s) || absl::IsPermissionDenied(s) || absl::IsInvalidArgument(s)) {
    final_ = s;
    return Action::kDone;
  }
  // Unreachable or not answering: fail over and pause like any failed attempt, never spin on
  // Authenticate for the whole call timeout.
  client_->MarkFailed(index_);
  last_ = grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
  return Retry(pause);
}

bool UnaryPolicy::PrepareCall(grpc::ClientContext* ctx) {
  const absl::Time now = util::MonoNow();
  if (now >= deadline_) return false;
  client_->PrepareContext(ctx, std::min(deadline_, now + attempt_budget_));
  if (client_->has_auth()) {
    util::MutexLock lock(&client_->token_mu_);
    used_generation_ = client_->token_generation_;
  }
  return true;
}

UnaryPolicy::Action UnaryPolicy::AfterCall(const grpc::Status& s, absl::Duration* pause) {
  *pause = absl::ZeroDuration();
  last_ = s;
  const bool auth = client_->has_auth();
  if (auth && !token_refreshed_ && IsAuthTokenError(s)) {
    token_refreshed_ = true;
    need_token_ = true;
    return Action::kRetry;
  }
  const bool retryable = s.error_code() == grpc::StatusCode::UNAVAILABLE ||
                         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
  if (!retryable) return Action::kDone;
  if (auth && !token_refreshed_ && s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    // A simple token issued before etcd was wiped or restored from a snapshot makes etcd
    // hold the call until our deadline (it waits for its raft log to reach the index in
    // the token) instead of saying "invalid auth token": the next attempt, or the next call
    // if this one is out of time, logs in again. Costs one Authenticate per timed-out call.
    token_refreshed_ = true;
    need_token_ = true;
    client_->token_suspect_.store(true);
  } else if (auth && s.error_code() == grpc::StatusCode::UNAVAILABLE) {
    // The member is gone or restarting; if it comes back wiped or restored, our token would
    // be held (see above): the next call logs in again first (one Authenticate per outage).
    client_->token_suspect_.store(true);
  }
  client_->MarkFailed(index_);
  return Retry(pause);
}

absl::Status UnaryPolicy::Final() const {
  if (!final_.ok()) return final_;
  grpc::Status last = last_;
  if (last.ok()) {
    last = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded");
  }
  if (last.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    // Out of time because no member answered: for the caller that is "etcd unavailable".
    last = grpc::Status(
        grpc::StatusCode::UNAVAILABLE,
        absl::StrCat("no etcd endpoint answered within ", absl::FormatDuration(timeout_),
                     " (last tried ", client_->endpoints_[last_index_].url, ": ",
                     last.error_message(), ")"));
  }
  return FromGrpc(last, absl::StrCat("etcd ", what_));
}

}  // namespace discovery::etcd
