// LeaseKeeper: keeps any number of leases alive over ONE LeaseKeepAlive bidi stream
// (gRPC sync API: SyncBidiStream with a reader thread and a writer thread; the callback API
// cost 1.4x the CPU of a raw sync stream at 1,000 leases, bench/README.md "Keepalive").
//
// Schedule: leases with the same (TTL, interval) form a group that is kept alive in ONE write
// burst per interval: a lease added to an existing group is sent with the group's next burst
// (at most one interval after it was added, as before); a burst is queued on the stream at once
// and written with the buffer hint on all but its last message (one flush per burst). A burst
// due while the previous one is still being written waits for it (no backlog of duplicates). The
// client loop wakes only when something is due (a burst, a possible at-risk lease, the stall
// deadline), never walks the leases that are not due, and never arms a timer per lease.
// Answers are handed from the stream's reader thread to the loop in batches: the first answer of a
// burst schedules one loop task a few milliseconds later that handles all answers arrived by then.
// Add does not wake the loop either when it need not: the lease goes on a pending list that
// the loop merges whenever it runs (at the latest at its armed wake-up), and Add posts a task
// only when that wake-up is later than the new lease's first keepalive or possible kAtRisk,
// or when the keeper keeps no lease yet (the stream must be opened). One posted merge serves
// every Add made until it runs.
//
// The stream is reopened on the next endpoint with jittered backoff when it breaks or stalls
// (no answer to a keepalive within the stall timeout: a frozen or partitioned member keeps the
// TCP connection but never answers); a new stream sends every lease at once.
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
// Thread-safety: Add/Remove/open_streams and the counters are thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "etcd/etcdserverpb/rpc.pb.h"
#include "etcd/stream_session.h"
#include "etcd/stream_tracker.h"
#include "etcd/sync_bidi_stream.h"
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

  // Starts keeping `lease_id` alive (asynchronously: merged by the loop, which also opens the
  // stream; the first keepalive goes at most one interval after Add). `ttl` is the granted
  // TTL. Replaces an existing entry.
  void Add(int64_t lease_id, absl::Duration ttl, absl::Duration interval, Listener listener);
  // Stops keeping the lease alive (also one added but not merged yet: it gets no keepalive).
  // When called off the loop thread, the listener is not invoked after Remove returns.
  void Remove(int64_t lease_id);
  int open_streams() const { return session_.open_streams(); }
  // Streams opened to replace one that ended (broke, stalled, or was refused for auth).
  int64_t reconnects() const { return session_.reconnects(); }
  size_t lease_count();
  // For tests and stats: write bursts queued on the stream, keepalives sent, and loop wake-ups
  // of the schedule timer (one per burst in the steady state).
  int64_t bursts() const { return bursts_.load(); }
  int64_t keepalives_sent() const { return sent_.load(); }
  int64_t timer_wakeups() const { return wakeups_.load(); }
  // Loop tasks that handled keepalive answers (a few per burst, not one per answer).
  int64_t answer_batches() const { return answer_batches_.load(); }
  // Loop tasks posted by Add (not one per Add: see the schedule above), and Adds that left
  // the lease for the loop's next wake-up without a post.
  int64_t add_posts() const { return add_posts_.load(); }
  int64_t deferred_adds() const { return deferred_adds_.load(); }
  // Bursts put off because the previous one was still being written (an overloaded host).
  int64_t deferred_bursts() const { return deferred_bursts_.load(); }
  // Streams given up because a keepalive went unanswered for the stall timeout.
  int64_t stalls() const { return session_.stalls(); }
  // Cancels the stream and waits for it to finish. Called by ~Client.
  void Shutdown();

 private:
  using KeepAliveStream =
      SyncBidiStream<etcdserverpb::LeaseKeepAliveRequest, etcdserverpb::LeaseKeepAliveResponse>;
  // Leases sharing a (ttl, interval): sent together, one burst per interval.
  struct Group {
    absl::Duration ttl;
    absl::Duration interval;
    absl::Time next_burst;
    // No lease of the group (that is not already at risk) has an answer older than this: the
    // group needs a walk for kAtRisk only once now - acked_floor > 2/3 ttl.
    absl::Time acked_floor;
    std::vector<int64_t> ids;
  };
  using GroupKey = std::pair<int64_t, int64_t>;  // (ttl, interval) in microseconds
  struct Entry {
    Group* group = nullptr;
    size_t index = 0;  // in group->ids
    absl::Time last_ack;
    int64_t last_ttl = 0;
    bool at_risk = false;
    Listener listener;
  };
  // A lease given to Add, not yet merged by the loop.
  struct Pending {
    int64_t id;
    absl::Duration ttl;
    absl::Duration interval;
    absl::Time added;
    Listener listener;
  };
  struct Answer {
    uint64_t generation;
    int64_t id;
    int64_t ttl;
  };

  // Called from the stream's handlers (the reader thread).
  void OnResponse(uint64_t generation, int64_t id, int64_t ttl);

  // Loop-thread only.
  std::shared_ptr<void> OpenStream(const StreamSession::OpenContext& oc);
  void OnStreamOpened();
  void Tick();
  // Merges the pending Adds into the schedule (callers Reschedule afterwards).
  void MergePending();
  void Insert(Pending p);
  void Burst(Group& g, absl::Time now);
  // Walks a group: its exact acked_floor, kAtRisk for leases unanswered for 2/3 ttl, and the
  // burst's requests when `batch` is given.
  void Walk(Group& g, absl::Time now, std::vector<etcdserverpb::LeaseKeepAliveRequest>* batch);
  void Reschedule();
  void DrainAnswers();
  void HandleAnswer(const Answer& answer);
  void Erase(std::unordered_map<int64_t, Entry>::iterator it);
  void Dispatch(const Listener& listener, const Event& event);

  Client* client_;
  std::shared_ptr<spdlog::logger> logger_;
  util::EventLoop& loop_;

  // Loop-thread state.
  std::unordered_map<int64_t, Entry> leases_;
  std::map<GroupKey, std::unique_ptr<Group>> groups_;
  std::shared_ptr<KeepAliveStream> stream_;
  StreamSession session_;
  util::EventLoop::TimerId timer_ = 0;
  absl::Time timer_at_ = absl::InfiniteFuture();
  absl::Time oldest_unanswered_ = absl::InfiniteFuture();
  absl::Duration stall_ = absl::Seconds(3);
  bool shutdown_ = false;

  std::atomic<int64_t> bursts_{0};
  std::atomic<int64_t> sent_{0};
  std::atomic<int64_t> wakeups_{0};
  std::atomic<int64_t> answer_batches_{0};
  std::atomic<int64_t> deferred_bursts_{0};
  std::atomic<int64_t> add_posts_{0};
  std::atomic<int64_t> deferred_adds_{0};
  // Adds handed to the loop, and what Add needs to know of the loop to decide whether to wake
  // it: written by the loop (Reschedule) only when nothing is pending, so a deferred Add is
  // always merged by the loop's current task or its armed wake-up.
  util::Mutex pending_mu_;
  std::vector<Pending> pending_ ABSL_GUARDED_BY(pending_mu_);
  bool merge_posted_ ABSL_GUARDED_BY(pending_mu_) = false;
  bool keeping_ ABSL_GUARDED_BY(pending_mu_) = false;  // leases are kept (stream wanted)
  absl::Time armed_at_ ABSL_GUARDED_BY(pending_mu_) = absl::InfiniteFuture();  // the timer
  bool closed_ ABSL_GUARDED_BY(pending_mu_) = false;                           // Shutdown
  // Keepalive answers from the reader thread, handed to the loop in batches (one task per burst
  // instead of one per answer).
  util::Mutex answers_mu_;
  std::vector<Answer> answers_ ABSL_GUARDED_BY(answers_mu_);
  bool drain_posted_ ABSL_GUARDED_BY(answers_mu_) = false;
};

}  // namespace discovery::etcd
