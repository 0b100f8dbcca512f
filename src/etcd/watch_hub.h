// WatchHub: multiplexes any number of etcd watches over ONE Watch bidi stream, with resume
// after a broken stream.
//
// Latency path: the stream is read by its own thread with gRPC's sync API (SyncBidiStream, no
// hop through gRPC's callback thread). The reader appends each response to an inbox and, when
// the inbox was empty, has the client loop drain it with EventLoop::Dispatch: when the loop is
// idle the reader thread itself takes the loop's strand and drains at once (no thread hop);
// when the loop is busy the drain is its next task. When the reader is behind (64 Reads in a row
// returned at once: a backlog; see OnResponse), the drain is posted to the loop thread instead,
// so that this thread keeps reading while the loop handles the backlog in batches. A drain
// takes every response received so far in one turn, hands their events to the listeners (on_events,
// in order) and then calls on_batch_end once per listener that got events. So a quiet stream costs
// no thread hop, and a burst is handled in batches whose size follows the backlog.
//
// Each watch remembers the next revision it needs (last event's mod_revision + 1). When the
// stream breaks or stalls it is reopened on the next endpoint with jittered backoff and every
// watch is re-created from its next revision, so no event is lost and none is delivered twice.
// Watch creation is serialised (etcd answers creates in order), and the stream carries the
// `hasleader` metadata so a member that lost its leader cancels it instead of going silent.
// Liveness: a progress request every few seconds must be answered, or the stream is replaced.
//
// Auth: the token is metadata of the stream, checked by etcd at each watch *create* only (an
// established watch keeps delivering after its token expired). etcd 3.4 refuses a create sent
// with an expired or unknown simple token (token TTL, member restart) with a cancelled
// "created" answer whose cancel_reason reads "rpc error: code = Unauthenticated desc =
// etcdserver: invalid auth token". Such a refusal makes the hub fetch a fresh token and open a
// NEW stream, re-creating every watch from its next revision. A create refused on a stream
// opened with a token fetched just for it is a real refusal (RBAC): that watch gets
// on_broken(kPermissionDenied). Reconnects back off (util::Backoff), and the backoff is reset
// only by a stream that delivered (a created watch or events), never by one whose creates were
// all refused; and a new watch on a range just denied waits (growing pauses) before its create
// is sent, so an owner that re-adds a denied watch at once cannot make the hub spin.
//
// When a watch cannot resume, its listener gets `on_broken` and the watch is removed:
//  - kOutOfRange: its start revision was compacted (resync with a Range, then Add again);
//  - kFailedPrecondition: the responding cluster is not the expected one (etcd was wiped or
//    the endpoints point at another cluster): resync;
//  - kDataLoss: etcd's history went back while the cluster id stayed (etcd wiped and
//    re-created with the same cluster token, or restored from a snapshot): the created answer
//    says the store is at a revision below the one this watch already holds
//    (header.revision < next_revision - 1; etcd would otherwise wait silently for that
//    "future" revision), or its raft term is lower than the highest this watch has seen. A
//    member lagging behind (e.g. right after a failover) looks the same, so this is a signal
//    to confirm with a linearizable read and resync. Limit: when the new history has already
//    passed our revision and its term is not lower, nothing on the wire tells;
//  - kPermissionDenied: etcd refused the watch with a fresh token (or without credentials);
//  - anything else: etcd cancelled it.
// Listeners run as the client loop (holding its strand: on the loop thread, or inline on the
// stream's reader thread) and must not block. A listener may destroy the client (Shutdown then
// detaches the reader thread it runs on instead of waiting for it).
//
// The connect / token / reconnect / stall / stream-done state machine is StreamSession's (the
// same one LeaseKeeper runs on); the hub supplies the stream and the rules above.
//
// Thread-safety: Add/Remove/open_streams and the counters are thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "etcd/etcdserverpb/rpc.pb.h"
#include "etcd/stream_session.h"
#include "etcd/stream_tracker.h"
#include "etcd/sync_bidi_stream.h"
#include "util/event_loop.h"
#include "util/logging.h"
#include "util/sync.h"

namespace spdlog {
class logger;
}

namespace discovery::etcd {

class Client;

class WatchHub {
 public:
  struct Spec {
    std::string key;
    std::string range_end;
    int64_t start_revision = 0;        // required: the first revision to deliver
    uint64_t expected_cluster_id = 0;  // 0 = accept any (then pinned to the first seen)
    bool prev_kv = false;
  };
  struct Listener {
    // Events in revision order. `header_revision` is the store revision of the response.
    std::function<void(const etcdserverpb::WatchResponse& response)> on_events;
    // After the responses received so far were handed out (once per batch, only to a listener
    // whose on_events ran in it, also when the watch ended meanwhile): publish now.
    std::function<void()> on_batch_end;
    std::function<void(const absl::Status& why)> on_broken;
  };
  using WatchId = uint64_t;

  explicit WatchHub(Client* client);
  ~WatchHub();

  WatchId Add(Spec spec, Listener listener);
  // After Remove returns (off the loop thread), no listener call for this watch runs.
  void Remove(WatchId id);
  int open_streams() const { return session_.open_streams(); }
  // Streams opened to replace one that ended (broke, stalled, or was dropped for auth).
  int64_t reconnects() const { return session_.reconnects(); }
  // Streams replaced because a progress request went unanswered.
  int64_t stalls() const { return session_.stalls(); }
  // Watch creates etcd refused for auth (stale token or RBAC).
  int64_t auth_refusals() const { return auth_refusals_.load(); }
  // Watches ended with kDataLoss (etcd's history went back).
  int64_t history_rewinds() const { return history_rewinds_.load(); }
  // Age of the oldest response received and not yet handled by the loop (zero when none):
  // the watchers' lag behind what etcd has sent. Any thread.
  absl::Duration Lag() const;
  // Test hook: cancels the current stream as if it broke.
  void BreakStreamForTest();
  // Test hook: while paused the stream is closed and not reopened (a stalled watcher).
  void SetPausedForTest(bool paused);
  void Shutdown();

 private:
  // Called from the stream's reader thread.
  void OnResponse(uint64_t generation, etcdserverpb::WatchResponse& response);
  struct Watch {
    Spec spec;
    Listener listener;
    int64_t next_revision = 0;
    int64_t server_id = -1;  // -1: not created on the current stream
    uint64_t raft_term = 0;  // highest raft term seen in answers for this watch
    bool postponed = false;  // its range was just denied: not created until a timer says so
  };
  struct PendingCreate {
    WatchId id;        // 0 = a create whose watch was removed meanwhile
    bool fresh_token;  // sent on a stream opened with a token fetched just for it
  };

  // Loop-thread only.
  // Handles every response in the inbox, then the listeners' on_batch_end.
  void DrainResponses();
  // The batch ends of the watches a drain delivered to (copies: a listener may remove its
  // watch in one); inline for the usual one or two watches of a client (no allocation).
  using BatchEnds = absl::InlinedVector<std::pair<WatchId, std::function<void()>>, 2>;
  void HandleResponse(uint64_t generation, const etcdserverpb::WatchResponse& resp,
                      BatchEnds* batch_ends);
  // StreamSession hooks: open the Watch stream and (re-)create every watch on it; drop it.
  std::shared_ptr<void> OpenStream(const StreamSession::OpenContext& oc);
  void OnStreamClosed();
  // Sends the create now when a stream is open, else has the session open one.
  void CreateOrConnect(WatchId id);
  void SendCreate(WatchId id);
  void CheckLiveness();
  void Break(WatchId id, const absl::Status& why);
  void HandleCreated(const etcdserverpb::WatchResponse& resp);
  void CancelOnServer(int64_t server_id);
  static std::string RangeKey(const Spec& spec);

  Client* client_;
  std::shared_ptr<spdlog::logger> logger_;
  util::EventLoop& loop_;

  std::map<WatchId, Watch> watches_;
  std::map<int64_t, WatchId> by_server_id_;
  std::deque<PendingCreate> pending_creates_;
  WatchId next_id_ = 1;
  using WatchStream = SyncBidiStream<etcdserverpb::WatchRequest, etcdserverpb::WatchResponse>;
  std::shared_ptr<WatchStream> stream_;
  // The current stream's initial creates carry a token fetched just for it.
  bool stream_fresh_token_ = false;
  // When the current stream ends, the backoff is reset only if it delivered (a created watch
  // or events) and no create on it was refused for auth (a denied watch that its owner keeps
  // re-adding must not make a stream whose other watches deliver reconnect at once).
  bool stream_delivered_ = false;
  bool stream_auth_refused_ = false;
  util::EventLoop::TimerId liveness_timer_ = 0;
  // Ranges RBAC denied (with a fresh token), until when a new watch on them waits; the pause
  // grows while denials keep coming, so an owner that re-adds at once cannot spin.
  std::map<std::string, absl::Time> denied_until_;
  util::Backoff deny_backoff_{absl::Milliseconds(200), absl::Seconds(10)};
  bool shutdown_ = false;
  bool paused_ = false;

  // Responses read but not yet handled on the loop (generation, response).
  mutable util::Mutex inbox_mu_;
  std::vector<std::pair<uint64_t, etcdserverpb::WatchResponse>> inbox_ ABSL_GUARDED_BY(inbox_mu_);
  // Arrival (util::MonoNow) of the first response in inbox_ / of the batch being handled;
  // InfiniteFuture when none (Lag()).
  absl::Time inbox_first_at_ ABSL_GUARDED_BY(inbox_mu_) = absl::InfiniteFuture();
  absl::Time draining_first_at_ ABSL_GUARDED_BY(inbox_mu_) = absl::InfiniteFuture();
  std::vector<std::pair<uint64_t, etcdserverpb::WatchResponse>> draining_;  // loop only

  std::atomic<int64_t> auth_refusals_{0};
  std::atomic<int64_t> history_rewinds_{0};
  // Connect / token / reconnect with backoff / liveness / stream done (shared with LeaseKeeper).
  StreamSession session_;
};

}  // namespace discovery::etcd
