// Internal: the state of a Watcher above its source, shared by the files that implement it by
// job:
//   watcher.cc        — the public API, wiring source -> cache -> delivery;
//   watcher_cache.cc  — the cache: the source's states and changes -> snapshots + ChangeEvents
//                       (this struct is the source's WatchSink);
//   delivery.cc       — subscriptions, Poll(), history-reset listeners;
//   protection.cc     — mass-expiry protection and pickers.
// The source (watch_source.h; etcd: watch_source_etcd.cc) is the only part that knows the
// store. Everything below runs on `executor` (the client loop) unless marked otherwise.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cache_typeset.h"
#include "discovery/watcher.h"
#include "util/event_loop.h"
#include "util/logging.h"
#include "util/sync.h"
#include "watch_source.h"

namespace discovery {

struct Watcher::Impl : WatchSink, std::enable_shared_from_this<Watcher::Impl> {
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

  WatcherOptions opts;
  std::shared_ptr<Connection> connection;
  util::EventLoop* executor = nullptr;  // the client loop: the source calls us there
  std::shared_ptr<WatchSource> source;
  std::shared_ptr<spdlog::logger> logger;
  std::string watch_prefix;  // for logs
  util::EventLoop& loop() { return *executor; }

  std::atomic<std::shared_ptr<const Snapshot>> snap;

  // Loop-thread state.
  // etcd key -> instance, mod_revision; keyed by the instance's own type/instanceId
  // (cache_typeset.h: no copy of the key per cached instance).
  cache::EntryIndex current;
  cache::KeyRef KeyOf(std::string_view key) const;
  // Changes applied to `current` but not yet published (FlushPublish at the hub's batch end).
  std::set<std::string> pending_touched;
  std::vector<ChangeEvent> pending_changes;
  // type -> chunked set shared with the snapshots (cache_typeset.h); type -> ready instances
  std::map<std::string, std::shared_ptr<const Snapshot::TypeSet>, std::less<>> published;
  std::map<std::string, size_t, std::less<>> ready_count;
  int64_t revision = 0;
  uint64_t cluster_id = 0;  // the source's store_id
  uint64_t raft_term = 0;   // highest epoch seen in states of the current history
  uint64_t history = 0;     // Snapshot::history
  std::set<std::string, std::less<>> invalid_keys;
  std::vector<PickerEntry> pickers;
  std::map<std::string, Protection> protection;
  bool stopping = false;  // set when the Watcher is destroyed (protection timers stop)

  // Stats.
  std::atomic<uint64_t> events{0}, resyncs{0}, invalid_values{0}, protection_activations{0},
      history_resets{0};
  std::atomic<uint64_t> publishes{0}, publish_ns{0};  // Publish() calls and their time

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

  // ---- WatchSink (watcher_cache.cc) ----
  HeldPosition Held() const override;
  void ApplyState(SourceState& state, bool history_reset) override;
  void ApplyChanges(const std::vector<SourceChange>& changes, int64_t revision) override;
  void EndOfBatch() override;
  void SyncFailed(const absl::Status& why) override;

  // ---- watcher_cache.cc ----
  InstancePtr Decode(std::string_view key, std::string_view value);
  // Drops `key` from invalid_keys (a key whose value was invalid logs again once fixed).
  void ForgetInvalid(std::string_view key);
  void Set(cache::KeyRef key, InstancePtr next, int64_t rev, absl::Time now,
           std::vector<ChangeEvent>* out, std::set<std::string>* touched);
  void FlushPublish();
  // Patches the published chunked sets of `touched` with `changes` (applied since the last
  // publish, in order): O(changed instances), not O(instances of the type). Returns the
  // snapshot it replaced: the caller drops it after dispatching `changes`, so that freeing
  // what no snapshot holds any more (the old chunk index, replaced chunks and instances) is
  // not on the way from a change to its callbacks.
  [[nodiscard]] SnapshotPtr Publish(const std::set<std::string>& touched,
                                    const std::vector<ChangeEvent>& changes, absl::Time now);
  // ---- delivery.cc ----
  void Deliver(uint64_t id, const std::shared_ptr<Sub>& sub, const ChangeEvent& ev);
  void Dispatch(const std::vector<ChangeEvent>& changes);
  void NotifyHistoryReset(const SnapshotPtr& snapshot);

  // ---- protection.cc ----
  size_t ReadyCount(const std::string& type);
  // Returns true when the protection state of `type` changed.
  bool EvaluateProtection(const std::string& type, Protection& p, absl::Time now);
  std::vector<InstancePtr> Candidates(const PickerEntry& e);
  // The pickers of `type` (only those of `groups` and the whole-type ones when given).
  void UpdatePickers(const std::string& type, const std::set<std::string>* groups = nullptr);
};

}  // namespace discovery
