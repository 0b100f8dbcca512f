// StreamSession: the connect / token / reconnect-with-backoff / stall / stream-done state
// machine around ONE long-lived etcd stream; LeaseKeeper's LeaseKeepAlive stream and
// WatchHub's Watch stream (both SyncBidiStream: gRPC sync API, their own reader thread) both
// run on it. It knows nothing of the stream's type: the owner opens the stream in `hooks.open`
// (SyncBidiStream<Req, Resp>::Start on tracker()) and
// keeps the typed pointer; the session decides when to open, when to give up on a stream and
// how long to wait before the next one.
//
//   owner work appears ............ Start()                (opens unless open/connecting)
//   stream handlers (reader thread) Done(gen, idx, had_response, status)   -> posted to loop
//   on the loop ...................  IsCurrent(gen) before using an answer; Received(now) /
//                                    Sent(now) for stall detection; ResetBackoff() when the
//                                    owner's rule says the stream delivered;
//                                    CheckStall(now) from the owner's timer (stall_deadline());
//                                    RequestFreshToken() when etcd refused a request for auth.
//
// Connect: with credentials but no token (or after RequestFreshToken) a token is fetched on
// the client's background loop first; OpenContext::fresh_token says the stream carries a token
// fetched just for it (WatchHub's "refused with a fresh token = RBAC" rule). The stream is
// opened on Client::CurrentStubs(); when it ends the endpoint is marked failed if the stream
// never answered or ended with an error (not when it was refused for auth, or cancelled by us
// for a refused token: the member is fine), then `hooks.closed` runs (the owner drops its
// stream and per-stream state, and may ResetBackoff()), then a reconnect is scheduled after
// util::Backoff (jittered, ceiling `backoff_max`; the first retry is immediate when
// `immediate_first_retry`). Reconnects are counted (reconnects()).
//
// LeaseKeeper: immediate_first_retry, backoff 100 ms .. 2 s reset by any answer, stall timeout
// = the shortest keepalive interval (1 s .. 3 s), the keepalives themselves are the probes.
// WatchHub: wanted = watches and not paused; open = its OpenStream (stream_fresh_token_ =
// oc.fresh_token, per-stream state reset, creates, liveness timer); closed = drop the stream,
// ResetBackoff() if stream_delivered_ && !stream_auth_refused_; options {backoff 100 ms .. 5 s,
// stall_timeout = kProbeTimeout, fresh_token_after_stall and _after_error}; OnResponse:
// IsCurrent + Received; CheckLiveness: CheckStall, else a progress request (then Sent) when
// !outstanding() and last_message() is kProbeEvery old; a create refused for a stale token:
// RequestFreshToken() + cancel (Done then skips MarkFailed).
//
// A stream that ends while the owner no longer wants one is not replaced: the owner's next
// Start() (a new lease / watch, unpause) opens one at once.
//
// Thread-safety: open_streams(), reconnects(), stalls() and Done() are thread-safe; the rest is
// for the loop thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "etcd/stream_tracker.h"
#include "grpcpp/grpcpp.h"
#include "util/event_loop.h"
#include "util/logging.h"

namespace spdlog {
class logger;
}

namespace discovery::etcd {

class Client;
struct Stubs;

class StreamSession {
 public:
  struct Options {
    std::string name;  // for logs: "LeaseKeepAlive", "Watch"
    absl::Duration backoff_initial = absl::Milliseconds(100);
    absl::Duration backoff_max = absl::Seconds(2);
    // The first reconnect after a reset backoff goes out at once (LeaseKeeper: a lease's TTL
    // is running); otherwise every reconnect waits (WatchHub).
    bool immediate_first_retry = false;
    // A request must be answered within this (Sent/Received); 0 = no stall detection.
    absl::Duration stall_timeout = absl::ZeroDuration();
    // With credentials, a stalled stream / a stream that ended with an error is replaced with
    // one carrying a fresh token (a member wiped or restored holds requests with an old token).
    bool fresh_token_after_stall = false;
    bool fresh_token_after_error = false;
  };
  struct OpenContext {
    uint64_t generation;  // pass to Done(); IsCurrent() tells answers of this stream
    int endpoint_index;
    std::shared_ptr<Stubs> stubs;
    bool fresh_token;  // carries a token fetched just for this stream
  };
  struct Ended {
    bool had_response;
    grpc::Status status;
    bool auth_refused;  // the stream itself was refused for auth
  };
  struct Hooks {
    // Whether the owner needs a stream now (has leases / watches, not paused).
    std::function<bool()> wanted;
    // Opens the stream (on the loop thread) and returns it (kept by the owner too); the
    // stream's on_done must call Done(oc.generation, oc.endpoint_index, ...).
    std::function<std::shared_ptr<void>(const OpenContext& oc)> open;
    // Cancels the stream `open` returned (stall).
    std::function<void()> cancel;
    // The current stream ended (loop thread), before the reconnect is scheduled.
    std::function<void(const Ended& ended)> closed;
  };

  StreamSession(Client* client, util::EventLoop& loop, Options options, Hooks hooks);
  StreamSession(const StreamSession&) = delete;
  StreamSession& operator=(const StreamSession&) = delete;

  // ---- loop thread ----
  // Opens a stream when wanted and none is open or being opened.
  void Start();
  bool open() const { return open_; }
  bool connecting() const { return connecting_; }
  uint64_t generation() const { return generation_; }
  bool IsCurrent(uint64_t generation) const { return !shutdown_ && generation == generation_; }
  // Stall detection: a request that expects an answer was sent / any message arrived.
  void Sent(absl::Time now);
  void Received(absl::Time now);
  bool outstanding() const { return oldest_unanswered_ != absl::InfiniteFuture(); }
  absl::Time last_message() const { return last_message_; }
  // When CheckStall would give up on the stream (InfiniteFuture: nothing outstanding).
  absl::Time stall_deadline() const;
  // Past the deadline: logs, cancels the stream (Done follows) and returns true.
  bool CheckStall(absl::Time now);
  void ResetBackoff() { backoff_.Reset(); }
  void set_stall_timeout(absl::Duration timeout) { stall_timeout_ = timeout; }
  // The next stream is opened with a freshly fetched token.
  void RequestFreshToken() { refresh_token_ = true; }
  bool fresh_token_requested() const { return refresh_token_; }
  // No stream is opened any more; the owner cancels its stream and awaits tracker().
  void Shutdown() { shutdown_ = true; }

  // ---- any thread ----
  // From the stream's on_done (the reader thread): handled on the loop.
  void Done(uint64_t generation, int endpoint_index, bool had_response, grpc::Status status);
  StreamTracker* tracker() { return &tracker_; }
  int open_streams() const { return open_streams_.load(); }
  int64_t reconnects() const { return reconnects_.load(); }
  int64_t stalls() const { return stalls_.load(); }

 private:
  void Connect();
  void ScheduleReconnect();
  void HandleDone(uint64_t generation, int endpoint_index, bool had_response,
                  const grpc::Status& status);

  Client* client_;
  std::shared_ptr<spdlog::logger> logger_;
  util::EventLoop& loop_;
  const Options options_;
  const Hooks hooks_;

  bool open_ = false;
  bool connecting_ = false;
  bool refresh_token_ = false;  // the next stream needs a new token first
  bool token_fetched_ = false;  // a token was just fetched for the stream about to open
  bool shutdown_ = false;
  uint64_t generation_ = 0;
  absl::Time oldest_unanswered_ = absl::InfiniteFuture();
  absl::Time last_message_ = absl::InfinitePast();
  util::Backoff backoff_;
  absl::Duration stall_timeout_;

  std::atomic<int> open_streams_{0};
  std::atomic<int64_t> reconnects_{0};
  std::atomic<int64_t> stalls_{0};
  StreamTracker tracker_;
};

}  // namespace discovery::etcd
