// The rules of one unary etcd call (deadline, per-attempt budget, endpoint failover, auth token
// fetch and refresh, which failures are retried, the final error), shared by the blocking
// driver (Client::Unary, client.cc) and the async one (client_async.cc): one implementation of
// the semantics, two ways of waiting.
//
// A driver loops:
//   if (p.Pick())  -> fetch a token on p.index(), then p.AfterToken(status)
//   p.PrepareCall(ctx) (false: out of time -> p.Final())
//   call, then p.AfterCall(status)
// where kRetry comes with the pause to wait before the next Pick (zero: go on at once).
//
// Thread-compatible: one driver at a time.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "etcd/client.h"

namespace discovery::etcd {

class UnaryPolicy {
 public:
  enum class Action { kCall, kRetry, kDone };

  UnaryPolicy(Client* client, const char* what, absl::Duration timeout);

  // Chooses the endpoint of the next attempt. True when a token must be fetched first
  // (Client::RefreshToken(index())).
  bool Pick();
  // False when the token this call was refused with has been replaced meanwhile (by another
  // call's fetch): use that one instead of logging in again. Checked again right before the
  // fetch (fetches queued behind each other then collapse into one).
  bool FetchStillNeeded();
  // After the token fetch: kCall (go on with the call), kRetry (after *pause) or kDone
  // (Final() says why).
  Action AfterToken(const absl::Status& s, absl::Duration* pause);
  // Deadline and token for this attempt. False when the call is out of time (then Final()).
  bool PrepareCall(grpc::ClientContext* ctx);
  // After a failed call (an OK status is the caller's success): kRetry after *pause, or kDone.
  Action AfterCall(const grpc::Status& s, absl::Duration* pause);
  // The error the call ends with.
  absl::Status Final() const;

  Stubs& stubs() { return *stubs_; }
  int index() const { return index_; }
  const char* what() const { return what_; }

 private:
  // After a failed attempt: kDone when out of time, else kRetry with the pause (a growing
  // pause after each full round over the endpoints).
  Action Retry(absl::Duration* pause);

  Client* client_;
  const char* what_;
  absl::Duration timeout_;
  absl::Time deadline_;
  absl::Duration attempt_budget_;
  int n_;
  int attempt_ = -1;
  bool token_refreshed_ = false;
  bool need_token_ = false;
  grpc::Status last_;
  absl::Status final_;  // set when an auth failure ends the call
  int last_index_ = 0;
  uint64_t used_generation_ = 0;  // Client::token_generation_ of the last attempt's token
  int index_ = 0;
  std::shared_ptr<Stubs> stubs_;
};

}  // namespace discovery::etcd
