// Internal: the state of a Watcher, shared by the files that implement it by job:
//   watcher.cc       — decoding, applying watch events, publishing, delivery, the public API;
//   watcher_sync.cc  — (re)sync by Range, history resets (rewind / new cluster), the resync
//                      rate limit, watch (re)creation;
//   protection.cc    — mass-expiry protection and pickers.
// Everything below runs on the client loop thread unless marked otherwise.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "discovery/watcher.h"
#include "etcd/client.h"
#include "etcd/watch_hub.h"
#include "util/logging.h"
#include "util/sync.h"

namespace discovery {

struct RangeResult {
  struct Kv {
    std::string key;
    std::string value;
    int64_t mod_revision;
  };
  int64_t revision = 0;
  uint64_t cluster_id = 0;
  uint64_t raft_term = 0;
  std::vector<Kv> kvs;
};

// What the cache held when a sync was started: a fresh Range is compared with it.
struct HeldPosition {
  bool synced = false;
  int64_t revision = 0;
  uint64_t cluster_id = 0;
  uint64_t raft_term = 0;  // highest raft_term seen in Range headers of this history
};

// Why a (re)sync runs.
enum class SyncCause {
  kInitial,         // first sync, or a retry of a failed Range
  kCompacted,       // the watch's start revision was compacted
  kClusterChanged,  // the watch saw another cluster id
  kSuspectRewind,   // the watch hub saw etcd behind our revision (DataLoss): confirm first
  kOther,           // the watch was cancelled by etcd (auth, ...)
};

struct Watcher::Impl : std::enable_shared_from_this<Watcher::Impl> {
  struct Sub {
    Filter filter;
    std::function<void(const ChangeEvent&)> callback;
    // Set by the subscription's cancel function: no delivery after it, also not the rest of a
    // batch being dispatched right now (the callback may destroy its own subscription).
    std::atomic<bool> cancelled{false};
  };
  struct ResetListener {
    std::function<void(const SnapshotPtr&)> callback;
    std::atomic<bool> cancelled{false};
  };
  struct PickerEntry {
    std::string type;
    std::string group;
    bool ready_only;
    std::weak_ptr<Picker> picker;
  };
  struct Protection {
    std::deque<std::pair<absl::Time, InstancePtr>> removed;  // ready instances that vanished
    bool active = false;
    absl::Time until;
    size_t baseline = 0;
    std::vector<InstancePtr> kept;
  };

  // A watch that stayed up this long is healthy: the next resync runs without delay and the
  // rate limit starts over. A watch broken sooner keeps the backoff growing (a watch refused
  // right after every sync must not turn into a resync loop).
  static constexpr absl::Duration kHealthyWatch = absl::Seconds(5);

  WatcherOptions opts;
  std::shared_ptr<Connection> connection;
  std::shared_ptr<etcd::Client> client;
  std::shared_ptr<spdlog::logger> logger;
  std::string watch_prefix;
  std::string watch_end;

  std::atomic<std::shared_ptr<const Snapshot>> snap;

  // Loop-thread state.
  std::unordered_map<std::string, InstancePtr> current;    // etcd key -> instance
  std::unordered_map<std::string, int64_t> mod_revisions;  // etcd key -> mod_revision of `current`
  // Changes applied to `current` but not yet published (FlushPublish at the hub's batch end).
  std::set<std::string> pending_touched;
  std::vector<ChangeEvent> pending_changes;
  std::map<std::string, std::map<std::string, InstancePtr>> by_type;  // type -> sortkey -> in
  std::map<std::string, std::shared_ptr<const Snapshot::TypeSet>, std::less<>> published;
  int64_t revision = 0;
  uint64_t cluster_id = 0;
  uint64_t raft_term = 0;  // highest raft_term seen in Range headers of the current history
  uint64_t history = 0;    // Snapshot::history
  etcd::WatchHub::WatchId watch_id = 0;
  absl::Time watch_started = absl::InfinitePast();
  std::set<std::string> invalid_keys;
  std::vector<PickerEntry> pickers;
  std::map<std::string, Protection> protection;
  // Rate limit of full resyncs (and of watch re-creation after a false rewind alarm): the first
  // attempt runs at once, then 200 ms, 400 ms, ... 30 s (jittered).
  util::Backoff sync_backoff{absl::Milliseconds(100), absl::Seconds(30)};
  // Retries of a failed Range (etcd unreachable): consecutive failures only, reset by a Range
  // that worked, so a watcher notices etcd is back within 10 s.
  util::Backoff retry_backoff{absl::Milliseconds(200), absl::Seconds(10)};
  bool stopping = false;

  // Stats.
  std::atomic<uint64_t> events{0}, resyncs{0}, invalid_values{0}, protection_activations{0},
      history_resets{0}, resync_backoffs{0}, rewind_false_alarms{0};
  std::atomic<int64_t> resync_delay_ns{0};
  void CountDelay(absl::Duration delay) {
    resync_delay_ns.store(absl::ToInt64Nanoseconds(delay));
    resync_backoffs.fetch_add(1);
  }

  // Sync state.
  mutable util::Mutex sync_mu;
  bool synced ABSL_GUARDED_BY(sync_mu) = false;
  absl::Status last_error ABSL_GUARDED_BY(sync_mu);

  // Subscriptions.
  mutable util::Mutex subs_mu;
  std::map<uint64_t, std::shared_ptr<Sub>> subs ABSL_GUARDED_BY(subs_mu);
  std::map<uint64_t, std::shared_ptr<ResetListener>> reset_listeners ABSL_GUARDED_BY(subs_mu);
  uint64_t next_sub ABSL_GUARDED_BY(subs_mu) = 1;
  util::Mutex queue_mu;
  std::deque<std::pair<uint64_t, ChangeEvent>> queue ABSL_GUARDED_BY(queue_mu);

  // ---- watcher_sync.cc ----
  // Background thread: a paged Range of the prefix at one revision.
  absl::StatusOr<RangeResult> RangeAll();
  // Background thread: a linearizable one-key read of the prefix (its header is what counts).
  absl::StatusOr<RangeResult> Probe();
  // Starts a (re)sync now (background Range, then ApplySync on the loop).
  void StartSync(SyncCause cause);
  // Starts a (re)sync through the rate limit: the first one after a healthy watch runs now,
  // the following ones wait for the growing backoff (counted in resync_backoffs).
  void ScheduleSync(SyncCause cause);
  // Re-creates the watch through the same rate limit (a rewind alarm that was not confirmed).
  void ScheduleWatch();
  absl::Duration NextSyncDelay();
  void RetryAfterFailure(SyncCause cause, const absl::Status& why);
  void ApplySync(RangeResult& r, bool history_reset);
  void StartWatch();
  void OnBroken(const absl::Status& why);
  HeldPosition Held() const;

  // ---- watcher.cc ----
  InstancePtr Decode(const std::string& key, const std::string& value);
  void Set(const std::string& key, InstancePtr next, int64_t rev, absl::Time now,
           std::vector<ChangeEvent>* out, std::set<std::string>* touched);
  void ApplyEvents(const etcdserverpb::WatchResponse& resp);
  void FlushPublish();
  void Publish(const std::set<std::string>& touched, absl::Time now);
  void Deliver(uint64_t id, const std::shared_ptr<Sub>& sub, const ChangeEvent& ev);
  void Dispatch(const std::vector<ChangeEvent>& changes);
  void NotifyHistoryReset(const SnapshotPtr& snapshot);

  // ---- protection.cc ----
  size_t ReadyCount(const std::string& type);
  // Returns true when the protection state of `type` changed.
  bool EvaluateProtection(const std::string& type, Protection& p, absl::Time now);
  std::vector<InstancePtr> Candidates(const PickerEntry& e);
  void UpdatePickers(const std::string& type);
};

}  // namespace discovery
