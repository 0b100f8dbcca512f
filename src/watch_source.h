// The watcher's seam to its store. A *source* reads one key range of a store: a full state
// (initial sync, resyncs), then ordered changes; it decides when a resync is needed (history
// compacted, store replaced or rewound, watch refused) and rate-limits it. The *sink* (the
// watcher's cache, watcher_cache.cc) turns what it hands over into immutable snapshots and
// typed ChangeEvents; delivery (delivery.cc, protection.cc) sits above the cache. Nothing above
// this header knows which store it is: etcd today (watch_source_etcd.cc); a gateway SSE source
// and a Redis source are planned. Sources are made by a StoreBackend (store_backend.h).
//
// Threading: a source calls its sink on the sink's executor (`loop` given at creation), one
// call at a time, and never after Stop() returned.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace discovery {

// A full read of the range at one revision. `store_id` names the store's history owner (etcd:
// the cluster id), `epoch` grows within one history (etcd: the raft term); a state whose
// store_id differs, or whose revision/epoch is below what the cache holds, is another history.
struct SourceState {
  struct Kv {
    std::string key;
    std::string value;
    int64_t revision;  // the key's last modification
  };
  int64_t revision = 0;
  uint64_t store_id = 0;
  uint64_t epoch = 0;
  std::vector<Kv> kvs;
};

// What the cache held when a sync was started: a fresh state is compared with it.
struct HeldPosition {
  bool synced = false;
  int64_t revision = 0;
  uint64_t store_id = 0;
  uint64_t epoch = 0;  // highest epoch seen in states of this history
};

// One change, valid for the duration of the ApplyChanges call.
struct SourceChange {
  std::string_view key;
  std::string_view value;  // empty when deleted
  int64_t revision = 0;
  bool deleted = false;
};

class WatchSink {
 public:
  virtual ~WatchSink() = default;
  virtual HeldPosition Held() const = 0;
  // The cache becomes `state` and emits the differences. `history_reset`: the store's history
  // was replaced (compare values, never revisions of the old history; Snapshot::history++).
  virtual void ApplyState(SourceState& state, bool history_reset) = 0;
  // Changes after the state, in revision order; `revision`: the store revision they reach.
  virtual void ApplyChanges(const std::vector<SourceChange>& changes, int64_t revision) = 0;
  // Every change received so far was applied: publish and deliver now.
  virtual void EndOfBatch() = 0;
  // A state read failed (shown by WaitForSync); the source retries by itself.
  virtual void SyncFailed(const absl::Status& why) = 0;
};

// What a source reads.
struct SourceOptions {
  std::string prefix;              // the watched range: every key starting with it
  int64_t range_page_size = 1000;  // entries per read of a full state
};

struct SourceStats {
  uint64_t resync_backoffs = 0;  // resyncs/retries that waited for a rate limit
  absl::Duration resync_delay;   // the last such wait
  uint64_t rewind_false_alarms = 0;
  // Age of the oldest change received from the store and not yet handed to the sink (zero
  // when none waits): how far the watcher's applied state is behind what the store has sent.
  absl::Duration lag = absl::ZeroDuration();
};

class WatchSource {
 public:
  virtual ~WatchSource() = default;
  // Reads the state, then follows the changes; on the sink's executor or any thread.
  virtual void Start() = 0;
  // Off the sink's executor: no sink call runs or starts after it returns.
  virtual void Stop() = 0;
  virtual SourceStats stats() const = 0;
};

}  // namespace discovery
