// File: discovery/watcher.h
//
// The watcher an API gateway, matchmaker or lobby embeds: a live in-memory cache of the
// instances under a prefix, fed by ONE etcd Watch stream per Connection, with typed change
// events and load-balancing pickers.
//
//   auto watcher = discovery::Watcher::Create({.etcd = discovery::EtcdOptions::FromEnv()});
//   (*watcher)->WaitForSync(absl::Seconds(5));
//   discovery::SnapshotPtr snap = (*watcher)->snapshot();        // lock-free read
//   for (const auto& in : snap->Select({.type = "world", .status =
//   discovery::InstanceStatus::kReady}))
//     ...;
//   auto sub = (*watcher)->Subscribe({.type = "world"}, [](const discovery::ChangeEvent& ev) {
//     // added / updated / status_changed / removed; runs on the library thread: don't block
//   });
//   std::shared_ptr<discovery::Picker> picker = (*watcher)->NewPicker(
//       "world", "", {.kind = discovery::PickerKind::kLeastLoad});
//   discovery::InstancePtr target = picker->Pick();
//
// Consistency: the cache starts from a (paged) Range at one revision, then applies the watch
// from revision + 1. A broken stream resumes from the last seen revision (no loss, no
// duplicates). If that revision was compacted or etcd is a different cluster (wiped and
// restarted), the watcher re-reads everything and emits only the differences. If etcd's
// history went back (wiped or restored from a snapshot with the same cluster id: its revision,
// or raft term, is below the one the cache holds, confirmed by a linearizable read), the
// re-read replaces the cache: Snapshot::history is bumped, OnHistoryReset listeners run, then
// the differences are delivered. Full re-reads are rate-limited (jittered exponential backoff
// up to ~30 s that only starts over once a watch has stayed up for a few seconds). Values that
// are not valid instances are skipped, logged once per key and counted; they never affect
// other instances. While etcd is unreachable the last snapshot stays in place.
//
// Thread-safety: Watcher is thread-safe; snapshots are immutable. Callbacks run on the
// library thread (kLibraryThread, must not block) or inside Poll() on the caller's thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "discovery/etcd.h"
#include "discovery/instance.h"
#include "discovery/picker.h"

namespace discovery {

enum class ChangeType { kAdded, kUpdated, kStatusChanged, kRemoved };
std::string_view ToString(ChangeType type);  // "added", "updated", "status_changed", "removed"

struct ChangeEvent {
  ChangeType type{};
  InstancePtr instance{};  // the new state; for kRemoved the last known state
  InstancePtr previous{};  // the state before (null for kAdded)
  int64_t revision = 0;    // etcd revision of the change (snapshot revision for initial state)
  bool initial = false;    // part of the initial state requested by Subscribe(..., true)
};

// Empty fields match everything.
struct Filter {
  std::string type{};
  std::string group{};
  std::optional<InstanceStatus> status{};
  bool Matches(const Instance& instance) const;
};

// An immutable view of the cache at one etcd revision.
class Snapshot {
 public:
  // The instances of one type sorted by (group, instanceId), in immutable chunks of at most
  // kChunkMax, gathered in immutable segments of consecutive chunks; consecutive snapshots
  // share both. Publishing a change copies the chunk it lands in, that chunk's segment (its
  // chunk pointers) and the segment index: about 3 x cbrt(n) pointers for a type of n
  // instances, never the whole type.
  static constexpr size_t kChunkMax = 256;
  struct Chunk {
    std::vector<InstancePtr> items;  // sorted, never empty once published
  };
  // An entry of an index level (a segment's chunks, a type's segments).
  template <class T>
  struct Ref {
    std::shared_ptr<const T> ptr;
    size_t end = 0;                  // instances under this entry and every one before it
    const Instance* last = nullptr;  // the last instance under it (what a search compares)
  };
  struct Segment {
    std::vector<Ref<Chunk>> chunks;  // in order, never empty once published
    size_t size() const { return chunks.empty() ? 0 : chunks.back().end; }
  };
  struct TypeSet {
    std::vector<Ref<Segment>> segments;  // in order
    size_t size() const { return segments.empty() ? 0 : segments.back().end; }
    size_t chunk_count() const;
    // Calls f(const Chunk&) for each chunk, in order.
    template <class F>
    void ForEachChunk(F&& f) const {
      for (const auto& seg : segments) {
        for (const auto& c : seg.ptr->chunks) f(*c.ptr);
      }
    }
    // A set holding `sorted` (already in (group, instanceId) order) in fresh chunks.
    static std::shared_ptr<const TypeSet> FromSorted(const std::vector<InstancePtr>& sorted);
  };

  // A read-only range over (part of) one type's instances, in (group, instanceId) order:
  // range-for, size(), empty(), operator[] (O(log n)), begin()/end() (forward iterators).
  // Valid while its Snapshot lives; copying it is cheap (no instances copied).
  class TypeView {
   public:
    class iterator {
     public:
      using iterator_category = std::forward_iterator_tag;
      using value_type = InstancePtr;
      using difference_type = std::ptrdiff_t;
      using pointer = const InstancePtr*;
      using reference = const InstancePtr&;
      iterator() = default;
      reference operator*() const { return (*items_)[pos_]; }
      pointer operator->() const { return &**this; }
      iterator& operator++() {
        if (++pos_ == items_->size()) Next();
        return *this;
      }
      iterator operator++(int) {
        iterator old = *this;
        ++*this;
        return old;
      }
      bool operator==(const iterator& o) const {
        return seg_ == o.seg_ && chunk_ == o.chunk_ && pos_ == o.pos_;
      }

     private:
      friend class TypeView;
      iterator(const TypeSet* set, size_t seg, size_t chunk, size_t pos);
      void Next();  // to the next chunk's first instance (or the end)
      const TypeSet* set_ = nullptr;
      const std::vector<InstancePtr>* items_ = nullptr;  // the current chunk's (null at end)
      size_t seg_ = 0, chunk_ = 0, pos_ = 0;
    };

    TypeView() = default;
    TypeView(const TypeSet* set, size_t first, size_t last)
        : set_(set), first_(first), last_(last) {}
    iterator begin() const { return At(first_); }
    iterator end() const { return At(last_); }
    size_t size() const { return last_ - first_; }
    bool empty() const { return first_ == last_; }
    const InstancePtr& operator[](size_t i) const { return *At(first_ + i); }
    const InstancePtr& front() const { return (*this)[0]; }
    const InstancePtr& back() const { return (*this)[size() - 1]; }
    // The instances of `group` within this view: O(log size) (the order is by group first).
    TypeView Group(std::string_view group) const;
    // A copy of the pointers (O(size)): for APIs that need a vector.
    std::vector<InstancePtr> ToVector() const;

   private:
    iterator At(size_t index) const;
    const TypeSet* set_ = nullptr;
    size_t first_ = 0, last_ = 0;
  };

  int64_t revision() const { return revision_; }
  // Which history `revision` belongs to: 0 until the first sync, then bumped each time the
  // watcher replaced its history (etcd's revision went backwards: wiped or restored with the
  // same cluster id, or another cluster). Revisions of different histories do not compare.
  uint64_t history() const { return history_; }
  size_t size() const { return size_; }
  // Every instance, sorted by (type, group, instanceId).
  std::vector<InstancePtr> All() const;
  // Instances matching `filter`, same order. With a type and group set: O(log n + matches).
  std::vector<InstancePtr> Select(const Filter& filter) const;
  // Instances of one type (empty when none), sorted by (group, instanceId): a view, no copy.
  TypeView OfType(std::string_view type) const;
  // Instances of one group of one type: O(log n).
  TypeView OfGroup(std::string_view type, std::string_view group) const;
  InstancePtr Find(std::string_view type, std::string_view instance_id) const;
  std::vector<std::string> Types() const;

  // Internal (the watcher builds snapshots).
  Snapshot(int64_t revision,
           std::map<std::string, std::shared_ptr<const TypeSet>, std::less<>> types,
           uint64_t history = 0);
  // Internal: `prev` (null: empty) with the sets of the `changed` types replaced (a null set:
  // the type is gone). Shares with `prev` every block of type names no change landed in, so a
  // publish copies the block list (types / 16 pointers) and the changed blocks, not every type.
  static std::shared_ptr<const Snapshot> Patch(
      const Snapshot* prev, int64_t revision, uint64_t history,
      const std::vector<std::pair<std::string, std::shared_ptr<const TypeSet>>>& changed);
  // Internal: the chunked set of `type` (null when none), for structure-sharing checks.
  const TypeSet* type_set(std::string_view type) const;

 private:
  // The types, sorted by name, in blocks of a few dozen that consecutive snapshots share.
  struct TypeBlock {
    std::vector<std::pair<std::string, std::shared_ptr<const TypeSet>>> entries;  // non-empty
  };
  Snapshot(int64_t revision, uint64_t history) : revision_(revision), history_(history) {}
  template <class F>
  void ForEachType(F&& f) const {
    for (const auto& block : blocks_) {
      for (const auto& [name, set] : block->entries) f(name, *set);
    }
  }

  int64_t revision_;
  uint64_t history_ = 0;
  size_t size_ = 0;
  std::vector<std::shared_ptr<const TypeBlock>> blocks_;
};
using SnapshotPtr = std::shared_ptr<const Snapshot>;

enum class Delivery {
  kLibraryThread,  // callbacks run on the library thread as events arrive (must not block)
  kPoll,           // events are queued; Watcher::Poll() runs callbacks on the caller's thread
};

struct WatcherOptions {
  EtcdOptions etcd{};                        // ignored when `connection` is set
  std::shared_ptr<Connection> connection{};  // share streams with a Registrar
  std::string prefix = "/services/";
  std::string type{};  // watch only `<prefix><type>/` when set
  Delivery delivery = Delivery::kLibraryThread;
  int64_t range_page_size = 1000;  // keys per Range page during (re)sync
  size_t max_value_bytes = kMaxInstanceBytes;
  // Mass-expiry protection: when more than `protect_threshold` of a type's ready instances
  // vanish within `protect_window`, pickers keep the last good set for up to `protect_hold`.
  double protect_threshold = 0.5;  // 0 disables
  absl::Duration protect_window = absl::Seconds(10);
  absl::Duration protect_hold = absl::Seconds(30);
  // Called on the library thread when protection starts (true) or ends (false) for a type.
  std::function<void(const std::string& type, bool active, size_t kept)> on_protection{};
  std::shared_ptr<spdlog::logger> logger{};  // "discovery.watcher"
};

struct WatcherStats {
  int64_t revision = 0;
  uint64_t events = 0;           // watch events applied
  uint64_t resyncs = 0;          // full re-reads after compaction / cluster change / rewind
  uint64_t history_resets = 0;   // of which the store's history was replaced (Snapshot::history)
  uint64_t resync_backoffs = 0;  // (re)syncs and watch re-creations delayed by the rate limit
  absl::Duration resync_delay = absl::ZeroDuration();  // the last such delay (grows to ~30 s)
  // etcd looked behind the cache (the watch hub's DataLoss, or a Range below the cache's
  // revision or raft term) but a linearizable read showed it was not (a lagging member).
  uint64_t rewind_false_alarms = 0;
  // Age of the oldest watch response received from etcd and not yet applied (zero when the
  // watcher is caught up): how far the cache is behind what etcd has sent.
  absl::Duration watch_lag = absl::ZeroDuration();
  uint64_t invalid_values = 0;  // values skipped as not valid instances
  uint64_t protection_activations = 0;
  // Snapshots published and the CPU time spent building them (cache + pickers): large
  // publishes are timed each, small ones (under 128 changes) 1 in 128 and counted 128 times.
  uint64_t publishes = 0;
  absl::Duration publish_time = absl::ZeroDuration();
  size_t instances = 0;
  bool synced = false;
};

class Watcher;

// Move-only; the destructor unsubscribes. After it returns no callback of this subscription
// runs (in kPoll mode: destroy it on the polling thread).
class Subscription {
 public:
  Subscription() = default;
  Subscription(Subscription&&) noexcept;
  Subscription& operator=(Subscription&&) noexcept;
  ~Subscription();
  void Reset();

 private:
  friend class Watcher;
  explicit Subscription(std::function<void()> cancel) : cancel_(std::move(cancel)) {}
  std::function<void()> cancel_;
};

class Watcher {
 public:
  // Starts the initial sync in the background. kInvalidArgument for bad options.
  static absl::StatusOr<std::unique_ptr<Watcher>> Create(WatcherOptions options);
  ~Watcher();

  // Waits until the first sync is done. kDeadlineExceeded (with the last etcd error) on timeout.
  absl::Status WaitForSync(absl::Duration timeout);
  bool synced() const;

  SnapshotPtr snapshot() const;
  int64_t revision() const { return snapshot()->revision(); }

  // Events for instances matching `filter` (matching before or after the change). With
  // `initial`, the current matching instances are delivered first as kAdded (initial=true).
  Subscription Subscribe(Filter filter, std::function<void(const ChangeEvent&)> callback,
                         bool initial = false);
  // Called on the library thread each time the watcher replaced its history (see
  // Snapshot::history), with the new snapshot, before the differences from the old cache
  // are delivered to subscriptions (as kAdded/kUpdated/kRemoved at the new snapshot's
  // revision). A consumer that keeps revisions (e.g. discoveryd's SSE ids) starts over here.
  Subscription OnHistoryReset(std::function<void(const SnapshotPtr&)> callback);
  // kPoll mode: runs queued callbacks on this thread, in revision order; returns how many ran.
  size_t Poll(size_t max_events = SIZE_MAX);

  // A picker over `ready` instances of `type` (and `group` when not empty) that follows the
  // cache, with mass-expiry protection. `ready_only = false` picks from every status except
  // shutting_down.
  std::shared_ptr<Picker> NewPicker(const std::string& type, const std::string& group,
                                    const PickerOptions& options, bool ready_only = true);

  WatcherStats stats() const;
  // True while mass-expiry protection holds the last good set for `type`.
  bool protecting(const std::string& type) const;
  const std::shared_ptr<Connection>& connection() const;

  struct Impl;

 private:
  explicit Watcher(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace discovery
