// LeaseKeeper: keeps any number of leases alive over ONE LeaseKeepAlive bidi stream
// (gRPC callback API). A timer on the client loop sends a keepalive for each lease every
// `interval`; responses are matched by lease id. The stream is reopened on the next endpoint
// with jittered backoff when it breaks or stalls (no answer to a keepalive within the stall
// timeout: a frozen or partitioned member keeps the TCP connection but never answers).
//
// Auth: etcd 3.4 does not check the token on LeaseKeepAlive at all (an expired, unknown or
// missing simple token still gets answers). Should a member refuse the stream for auth
// (UNAUTHENTICATED / PERMISSION_DENIED), the keeper fetches a fresh token before it opens the
// next stream; reconnects back off (util::Backoff, reset only by a keepalive answer).
//
// Events for a lease go to its listener on the client loop thread; listeners must not block:
//  - kAtRisk: no keepalive answer for 2/3 of the TTL (fired once until it recovers);
//  - kAlive:  answers again after kAtRisk;
//  - kLost:   etcd answered TTL <= 0 (lease expired, revoked or etcd lost its data). The
//             lease is no longer tracked after kLost.
//
// Thread-safety: Add/Remove/open_streams are thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "absl/time/time.h"
#include "etcd/bidi_stream.h"
#include "etcd/etcdserverpb/rpc.pb.h"
#include "util/event_loop.h"
#include "util/logging.h"
#include "util/sync.h"

namespace discovery::etcd {

class Client;

class LeaseKeeper {
 public:
  enum class EventType { kAlive, kAtRisk, kLost };
  struct Event {
    EventType type;
    int64_t lease_id;
    int64_t ttl_seconds;  // last TTL etcd reported (0 for kLost)
  };
  using Listener = std::function<void(const Event&)>;

  explicit LeaseKeeper(Client* client);
  ~LeaseKeeper();

  // Starts keeping `lease_id` alive (asynchronously: posted to the loop, which also opens the
  // stream). `ttl` is the granted TTL. Replaces an existing entry.
  void Add(int64_t lease_id, absl::Duration ttl, absl::Duration interval, Listener listener);
  // Stops keeping the lease alive. When called off the loop thread, the listener is not
  // invoked after Remove returns.
  void Remove(int64_t lease_id);
  int open_streams() const { return open_streams_.load(); }
  // Streams opened to replace one that ended (broke, stalled, or was refused for auth).
  int64_t reconnects() const { return reconnects_.load(); }
  size_t lease_count();
  // Cancels the stream and waits for it to finish. Called by ~Client.
  void Shutdown();

 private:
  // Called from the stream's handlers (gRPC threads).
  void OnResponse(uint64_t generation, int64_t id, int64_t ttl);
  void OnStreamDone(uint64_t generation, int endpoint_index, bool had_response,
                    grpc::Status status);
  struct Entry {
    absl::Duration ttl;
    absl::Duration interval;
    absl::Time next_send;
    absl::Time last_ack;
    int64_t last_ttl = 0;
    bool at_risk = false;
    Listener listener;
  };

  struct Answer {
    uint64_t generation;
    int64_t id;
    int64_t ttl;
  };

  // Loop-thread only.
  void Tick();
  void DrainAnswers();
  void HandleAnswer(const Answer& answer);
  void EnsureTicking();
  void Connect();
  void ScheduleReconnect();
  void Dispatch(const Listener& listener, const Event& event);

  Client* client_;
  std::shared_ptr<spdlog::logger> logger_;
  util::EventLoop& loop_;

  // Loop-thread state.
  std::map<int64_t, Entry> leases_;
  using KeepAliveStream =
      BidiStream<etcdserverpb::LeaseKeepAliveRequest, etcdserverpb::LeaseKeepAliveResponse>;
  std::shared_ptr<KeepAliveStream> stream_;
  uint64_t generation_ = 0;
  bool connecting_ = false;
  bool refresh_token_ = false;  // the last stream was refused for auth: new token first
  util::EventLoop::TimerId tick_timer_ = 0;
  // A quarter of the shortest keepalive interval (50 ms .. 500 ms): sends are due at most that
  // late, and 10,000 leases on a 10 s TTL are walked twice a second, not ten times.
  absl::Duration tick_ = absl::Milliseconds(100);
  absl::Time oldest_unanswered_ = absl::InfiniteFuture();
  util::Backoff backoff_{absl::Milliseconds(100), absl::Seconds(2)};
  bool shutdown_ = false;

  std::atomic<int> open_streams_{0};
  std::atomic<int64_t> reconnects_{0};
  // Keepalive answers from gRPC threads, handed to the loop in batches (one task per burst
  // instead of one per answer).
  util::Mutex answers_mu_;
  std::vector<Answer> answers_ ABSL_GUARDED_BY(answers_mu_);
  bool drain_posted_ ABSL_GUARDED_BY(answers_mu_) = false;
  StreamTracker streams_;
};

}  // namespace discovery::etcd
