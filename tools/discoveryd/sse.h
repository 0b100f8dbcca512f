// File: tools/discoveryd/sse.h
//
// The fan-out behind `GET /sd/v1/subscribe`: one Watcher subscription over the whole prefix
// feeds every Server-Sent-Events client of this gateway.
//
// Wire format. Event ids are `<epoch>.<revision>`: the epoch every replica of one etcd agrees
// on (epoch.h), the revision is etcd's. Only the LAST frame of a revision carries `id:`, and
// `synced`; `init` and `reset` frames never do, so a client (EventSource reconnects by itself
// with the last id it saw) whose stream dropped in the middle of an init or of one revision's
// events (a Txn or lease revoke touching several keys) never resumes from an incomplete state.
//   event: init     data {"revision":N,"instance":{...}}       one per current instance
//   event: synced   data {"revision":N,"instances":K,"resumed":false}  (after a resume:
//                   {"revision":N,"resumed":true})
//   event: update   data {"type":"added|updated|status_changed","revision":N,"instance":{...}}
//   event: remove   data {"type":"removed","revision":N,"instance":{last known state}}
//   event: reset    data {"epoch":E,"revision":N}  etcd's history was replaced (wiped or
//                   restored, or another replica saw it first): forget everything; a fresh
//                   init + synced follows.
//
// Never an unsynced cache: until the watcher's first sync, and after a history reset until
// the epoch is settled, clients are held (kept connected, nothing sent but `retry`) and get
// their init as soon as the cache is synced. Held clients count against the same limits as
// live ones (the HTTP server's connection cap, the backlog bound).
//
// Resume: the hub keeps a bounded ring of the most recent complete revisions. A client
// reconnecting with `Last-Event-ID: E.L` gets every event with revision > L from the ring
// (then `synced` with "resumed":true) when E is the current epoch and the ring covers L;
// anything else (another epoch, an id from before epochs, garbage, L out of range) gets a
// fresh init.
//
// Revision boundaries: the watcher dispatches the events of one revision consecutively, in
// one batch on its loop thread. The hub buffers the open revision's frames and sends them
// (id on the last) when an event of a later revision arrives or when a task it posted on the
// watcher's loop runs, i.e. right after the batch that carried them.
//
// Consistency: a client's init is the watcher snapshot at revision R, taken and encoded
// OUTSIDE the hub's lock (once per snapshot and filter, shared by every client attaching to
// it: a reconnect storm encodes each group's init once). Under the lock the client is
// registered and handed over: the ring's events with revision > R follow its `synced` (the
// ring must reach back to R, else the snapshot is retaken), events of later revisions reach
// it live, and events with revision <= R that arrive afterwards are already reflected and
// skipped. Live subscribers wait for the lock only as long as that registration takes.
//
// Thread-safety: thread-safe. The watcher callback only formats and queues (never blocks);
// slow clients are disconnected by the HTTP layer (bounded backlog).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "discovery/watcher.h"
#include "epoch.h"
#include "fanout.h"
#include "http_server.h"
#include "util/sync.h"

namespace spdlog {
class logger;
}

namespace discoveryd {

// Encoded inits stay cached this long after their last attach (EventHub::TrimInits).
inline constexpr absl::Duration kInitKeep = absl::Seconds(1);

class EventHub {
 public:
  struct Options {
    size_t ring_capacity = 8192;        // events kept for Last-Event-ID resume
    std::string prefix = "/services/";  // the epoch lives at EpochKey(prefix)
    std::shared_ptr<spdlog::logger> logger{};
  };
  struct Stats {
    std::string epoch;              // empty until known
    bool ready = false;             // synced and epoch settled: clients get their init
    size_t held = 0;                // clients waiting for it
    uint64_t history_resets = 0;    // local history resets seen
    uint64_t epoch_changes = 0;     // resets sent to subscribers (local or another replica's)
    EpochKeeper::Stats keeper{};    // etcd failures of the epoch key (retried with backoff)
    uint64_t match_checks = 0;      // subscribers visited to route events (only matching ones)
    uint64_t frames_encoded = 0;    // event frames serialised (once each, shared by clients)
    uint64_t frames_sent = 0;       // frame deliveries to clients (sharing one buffer each)
    uint64_t inits_encoded = 0;     // init bursts encoded (once per snapshot and filter)
    size_t inits_cached_bytes = 0;  // encoded inits kept for the next attach (kInitKeep)
    uint64_t attach_retries = 0;    // attaches whose snapshot did not fit the ring: retaken
    size_t ring_events = 0;         // events held for resume (<= Options::ring_capacity)
  };
  // `epoch_store` holds the epoch record (EpochKey(options.prefix), store_ops.h).
  EventHub(discovery::Watcher* watcher, std::unique_ptr<EpochStore> epoch_store, Options options);
  ~EventHub();

  // Subscribes to the watcher, starts the epoch keeper. Call once, before Attach.
  void Start();
  // Unsubscribes and closes every client stream.
  void Stop();

  // A fresh client id (to build the stream's on_close before Attach).
  uint64_t NextId();
  // Sends the client its init (or resume) and adds it to the fan-out; holds it while the hub
  // is not ready. `last_revision` < 0 means no (usable) Last-Event-ID.
  void Attach(uint64_t id, std::shared_ptr<EventStream> stream, StreamFilter filter,
              const std::string& last_epoch, int64_t last_revision);
  void Detach(uint64_t id);

  size_t subscribers() const;  // live and held
  Stats stats() const;
  // The epoch in force (empty until known): stats().epoch without visiting every client.
  std::string epoch() const;

 private:
  using Entry = FanoutEntry;
  struct Client {
    std::shared_ptr<EventStream> stream;
    StreamFilter filter;
    int64_t skip_through = 0;  // events with revision <= this are already reflected
    bool held = false;         // waiting for the hub to be ready
    bool owes_reset = false;   // was live before a reset: gets `event: reset` first
    // Nothing sent yet (held since it attached): its first Send is the whole init burst, which
    // the HTTP server takes whole and allows on top of the backlog (http_server.h).
    bool fresh = false;
  };

  void OnChange(const discovery::ChangeEvent& event);
  void OnEpoch(const std::string& epoch, EpochKeeper::Why why);
  void CheckSynced();
  // Posts `task` on the watcher's loop; it does not run once the hub is stopped.
  void Post(std::function<void()> task, absl::Duration delay = absl::ZeroDuration());
  bool ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return synced_ && !epoch_.empty() && !resetting_;
  }
  // The local watcher's history was replaced: hold every client until the epoch is settled.
  void BeginReset(const char* why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Every held client gets (reset +) init + synced from the current snapshot.
  void ReleaseHeld() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sends the open revision's frames, id on each client's last one, and rings them.
  void CloseRevision() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The init frames (no ids) of `filter` in `snap`: encoded once per (snapshot, filter) and
  // shared by every client attaching to it. Takes only init_mu_ (callable with or without mu_).
  struct InitFrames {
    SharedBytes frames;
    size_t count = 0;
  };
  struct InitSlot {
    std::once_flag once;
    InitFrames value;
    std::atomic<bool> done{false};  // value set (stats() reads only finished slots)
  };
  InitFrames InitFor(const StreamFilter& filter, const discovery::SnapshotPtr& snap)
      ABSL_LOCKS_EXCLUDED(init_mu_);
  // Drops the cached inits once no attach used them for kInitKeep (an attach storm shares
  // them; an idle hub does not keep one encoded copy of every group per subscriber filter).
  void TrimInits() ABSL_LOCKS_EXCLUDED(init_mu_);
  // Bytes of the finished encodings in inits_.
  size_t CachedInitBytesLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(init_mu_);
  std::string SyncedFrame(int64_t revision, size_t count) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The ring's frames after `after` that match `filter`, with ids on revisions' last frames.
  std::string Replay(const StreamFilter& filter, int64_t after) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool CanResume(const std::string& last_epoch, int64_t last_revision) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Registers the client (held, resumed, or with `init` of `snap` + the ring's events after
  // it). False: `snap`/`init` do not fit (another history, older than the ring, or missing):
  // retry with a fresh snapshot; with `last_try` it encodes under the lock instead.
  bool AttachLocked(uint64_t id, const std::shared_ptr<EventStream>& stream,
                    const StreamFilter& filter, const std::string& last_epoch,
                    int64_t last_revision, discovery::SnapshotPtr snap, const InitFrames* init,
                    bool last_try) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string EventId(int64_t revision) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static bool Matches(const StreamFilter& f, const Entry& e);
  // Removes a client from clients_ and the index.
  void Forget(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  discovery::Watcher* watcher_;
  Options options_;
  std::shared_ptr<spdlog::logger> logger_;
  discovery::Subscription subscription_;
  discovery::Subscription reset_subscription_;
  std::unique_ptr<EpochStore> epoch_store_;  // moved to keeper_ at Start()
  std::unique_ptr<EpochKeeper> keeper_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // reset by Stop()
  const std::weak_ptr<int> weak_alive_;                    // what posted tasks hold

  mutable discovery::util::Mutex mu_;
  std::deque<Entry> ring_ ABSL_GUARDED_BY(mu_);  // complete revisions only
  // Every event with revision > floor_ is in ring_.
  int64_t floor_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t last_revision_ ABSL_GUARDED_BY(mu_) = 0;  // the last complete revision
  std::vector<Entry> open_ ABSL_GUARDED_BY(mu_);    // the revision being dispatched
  bool flush_posted_ ABSL_GUARDED_BY(mu_) = false;
  std::map<uint64_t, Client> clients_ ABSL_GUARDED_BY(mu_);
  SubscriberIndex index_ ABSL_GUARDED_BY(mu_);  // clients_ by filter: what an event visits
  uint64_t frames_encoded_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t frames_sent_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t attach_retries_ ABSL_GUARDED_BY(mu_) = 0;

  // Inits of the newest snapshot seen, by filter (InitFor).
  mutable discovery::util::Mutex init_mu_ ABSL_ACQUIRED_AFTER(mu_);
  uint64_t init_history_ ABSL_GUARDED_BY(init_mu_) = 0;
  int64_t init_revision_ ABSL_GUARDED_BY(init_mu_) = -1;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<InitSlot>> inits_
      ABSL_GUARDED_BY(init_mu_);
  absl::Time init_last_use_ ABSL_GUARDED_BY(init_mu_);  // util::MonoNow()
  bool init_trim_posted_ ABSL_GUARDED_BY(init_mu_) = false;
  std::atomic<uint64_t> inits_encoded_{0};
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  bool synced_ ABSL_GUARDED_BY(mu_) = false;
  bool resetting_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t history_ ABSL_GUARDED_BY(mu_) = 0;  // Snapshot::history the state belongs to
  std::string epoch_ ABSL_GUARDED_BY(mu_);
  uint64_t history_resets_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t epoch_changes_ ABSL_GUARDED_BY(mu_) = 0;
};

// "[id: <id>\n]event: <name>\ndata: <json>\n\n" (no id line when `id` is empty).
std::string SseFrame(absl::string_view id, absl::string_view event, absl::string_view data);

}  // namespace discoveryd
