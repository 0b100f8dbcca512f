// The watcher's cache: turns what its source hands over (full states, ordered changes, see
// watch_source.h) into immutable snapshots (copy-on-write, readers never block the writer)
// and typed ChangeEvents, then hands those to delivery (delivery.cc). It does not know which
// store the source reads.
//
// History resets. A state with history_reset (or another store_id) REPLACES the cache: values
// are compared, never revisions of the old history; Snapshot::history is bumped, the
// OnHistoryReset listeners run with the new snapshot, then the differences are delivered at
// the new revision.
#include <malloc.h>
#include <time.h>

#include <algorithm>
#include <string_view>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "cache_typeset.h"
#include "instance_internal.h"
#include "spdlog/spdlog.h"
#include "util/clock.h"
#include "watcher_impl.h"

namespace discovery {

namespace {
// Publishes of fewer changes are timed 1 in this many (WatcherStats::publish_time).
constexpr uint64_t kPublishSample = 128;
// FlushPublish keeps the events' buffer for the next batch up to this many slots.
constexpr size_t kKeptChangeSlots = 256;
// A state at least this large (raw keys + values) is followed by malloc_trim.
constexpr size_t kTrimAfterStateBytes = 8 << 20;

// CPU time of the calling thread (publish cost accounting, not a deadline: stays off MonoNow
// so that a loaded machine's preemption does not count as publish work).
int64_t ThreadCpuNs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}
}  // namespace

HeldPosition Watcher::Impl::Held() const {
  HeldPosition h;
  h.synced = history > 0;
  h.revision = revision;
  h.store_id = cluster_id;
  h.epoch = raft_term;
  return h;
}

void Watcher::Impl::SyncFailed(const absl::Status& why) {
  util::MutexLock lock(&sync_mu);
  last_error = why;
}

// Parses one key/value into an instance; nullptr (counted, logged once per key) if invalid.
InstancePtr Watcher::Impl::Decode(std::string_view key, std::string_view value) {
  absl::Status problem;
  std::string_view rest(key);
  rest.remove_prefix(opts.prefix.size());
  size_t slash = rest.find('/');
  if (slash == std::string_view::npos || slash == 0 || slash + 1 == rest.size() ||
      rest.find('/', slash + 1) != std::string_view::npos) {
    problem = absl::InvalidArgumentError("key is not <prefix><type>/<instanceId>");
  }
  // Decoded in place into the shared instance that is published (no moves of the Instance).
  std::shared_ptr<Instance> in;
  if (problem.ok()) {
    in = std::make_shared<Instance>();
    if (absl::Status decoded =
            instance_internal::DecodeInstanceInto(value, opts.max_value_bytes, in.get());
        !decoded.ok()) {
      problem = decoded;
    } else if (in->type != rest.substr(0, slash) || in->instance_id != rest.substr(slash + 1)) {
      problem = absl::InvalidArgumentError("type/instanceId in the value do not match the key");
    } else if (absl::Status type = ValidateName("type", in->type); !type.ok()) {
      problem = type;  // no registrar writes it, no tool could address it (NUL, unicode, ...)
    } else if (absl::Status id = ValidateName("instanceId", in->instance_id); !id.ok()) {
      problem = id;
    }
  }
  if (!problem.ok()) {
    invalid_values.fetch_add(1);
    if (invalid_keys.insert(std::string(key)).second) {
      // Escaped: a hostile key may hold NUL, newlines or terminal escape sequences.
      SPDLOG_LOGGER_WARN(logger, "skipping invalid value at {} ({} bytes): {}",
                         absl::CHexEscape(absl::string_view(key.data(), key.size())), value.size(),
                         std::string(problem.message()));
    }
    return nullptr;
  }
  ForgetInvalid(key);
  return in;
}

cache::KeyRef Watcher::Impl::KeyOf(std::string_view key) const {
  if (key.substr(0, opts.prefix.size()) != opts.prefix) return {};  // finds nothing
  return cache::SplitKey(key.substr(opts.prefix.size()));
}

// Sets `key` to `next` (nullptr = absent) and appends the resulting change, if any. `next`
// is `key`'s own instance (Decode checked its type and instanceId against the key).
void Watcher::Impl::Set(cache::KeyRef key, InstancePtr next, int64_t rev, absl::Time now,
                        std::vector<ChangeEvent>* out, std::set<std::string>* touched) {
  auto it = current.find(key);
  InstancePtr prev = it == current.end() ? nullptr : it->in;
  if (prev == nullptr && next == nullptr) return;
  if (prev != nullptr) {
    touched->insert(prev->type);
    if (prev->status == InstanceStatus::kReady) {
      auto rc = ready_count.find(prev->type);
      if (rc != ready_count.end() && --rc->second == 0) ready_count.erase(rc);
    }
  }
  if (next != nullptr) {
    touched->insert(next->type);
    if (next->status == InstanceStatus::kReady) ++ready_count[next->type];
    if (it != current.end()) {
      it->in = next;  // same type and instanceId: the entry's hash key does not change
      it->mod_revision = rev;
    } else {
      current.insert(cache::Entry{next, rev});
    }
  } else {
    current.erase(it);
  }
  ChangeEvent ev;
  ev.revision = rev;
  ev.instance = next != nullptr ? next : prev;
  ev.previous = prev;
  if (prev == nullptr) {
    ev.type = ChangeType::kAdded;
  } else if (next == nullptr) {
    ev.type = ChangeType::kRemoved;
    if (prev->status == InstanceStatus::kReady)
      protection[prev->type].removed.emplace_back(now, prev);
  } else if (prev->status != next->status) {
    ev.type = ChangeType::kStatusChanged;
  } else {
    ev.type = ChangeType::kUpdated;
  }
  out->push_back(std::move(ev));
}

void Watcher::Impl::ApplyChanges(const std::vector<SourceChange>& changes, int64_t reached) {
  absl::Time now = util::MonoNow();
  // Changes of one revision (a Txn, or every key of a revoked lease) share their revision.
  const int64_t applied = revision;
  for (const SourceChange& c : changes) {
    if (c.revision <= applied) continue;  // already applied (defensive: never deliver twice)
    const std::string_view key = c.key;   // (a view into the source's response: no copy)
    InstancePtr next;
    if (!c.deleted) {
      next = Decode(key, c.value);
    } else {
      ForgetInvalid(key);
    }
    Set(KeyOf(key), std::move(next), c.revision, now, &pending_changes, &pending_touched);
    revision = std::max(revision, c.revision);
    events.fetch_add(1);
  }
  revision = std::max(revision, reached);
  // Published by FlushPublish at the source's EndOfBatch, in this same loop turn.
}

void Watcher::Impl::EndOfBatch() { FlushPublish(); }

// Publishing patches the touched types' chunked sets (O(changed instances), see
// cache_typeset.h). Under a
// burst the watch hub hands the loop every response received so far in one turn; publishing
// once per such batch (not once per response) keeps ingestion linear, and a lone response is
// published and dispatched in the turn that applied it (no re-post, no timer). Subscribers get
// their events right after the snapshot that contains them is published.
void Watcher::Impl::FlushPublish() {
  if (pending_touched.empty() && pending_changes.empty()) return;
  std::set<std::string> touched = std::move(pending_touched);
  std::vector<ChangeEvent> changes;
  changes.swap(pending_changes);
  pending_touched.clear();
  SnapshotPtr replaced = Publish(touched, changes, util::MonoNow());
  Dispatch(changes);
  // The events' buffer goes back for the next batch (one allocation less per publish), unless
  // a burst grew it: then it is freed with the rest.
  changes.clear();
  if (pending_changes.empty() && changes.capacity() <= kKeptChangeSlots) {
    pending_changes.swap(changes);
  }
}

// Patches the touched types' chunked sets with `changes` (in order) and publishes a new
// snapshot; updates the pickers of the touched (type, group)s.
SnapshotPtr Watcher::Impl::Publish(const std::set<std::string>& touched,
                                   const std::vector<ChangeEvent>& changes, absl::Time now) {
  // The thread-CPU clock is a system call (~1 us here, as much as a one-event publish; two
  // per timing): a large publish is always timed, small ones 1 in kPublishSample, counted that
  // many times. (1 in 16 still cost ~0.3 us per event at 10,000 events/s: 13 % of the publish
  // in the watch thread's profile, 2026-12-03.)
  const uint64_t n = publishes.fetch_add(1);
  const uint64_t weight =
      changes.size() >= kPublishSample ? 1 : (n % kPublishSample == 0 ? kPublishSample : 0);
  const int64_t started = weight != 0 ? ThreadCpuNs() : 0;
  // Touched type -> touched groups, for the pickers (none to update without pickers).
  const bool follow_groups = !pickers.empty();
  std::map<std::string, std::set<std::string>> groups;
  std::vector<std::pair<std::string, std::shared_ptr<const Snapshot::TypeSet>>> sets;
  sets.reserve(touched.size());
  for (const std::string& type : touched) {
    auto old = published.find(type);
    cache::TypeSetBuilder set(old == published.end() ? nullptr : old->second);
    std::set<std::string>* changed_groups = follow_groups ? &groups[type] : nullptr;
    for (const ChangeEvent& ev : changes) {
      const Instance* prev =
          ev.previous != nullptr && ev.previous->type == type ? ev.previous.get() : nullptr;
      InstancePtr next =
          ev.type != ChangeType::kRemoved && ev.instance->type == type ? ev.instance : nullptr;
      if (changed_groups != nullptr) {
        if (prev != nullptr) changed_groups->insert(prev->group);
        if (next != nullptr) changed_groups->insert(next->group);
      }
      if (prev != nullptr && next != nullptr && cache::SameSortKey(*prev, *next)) {
        set.Replace(*prev, std::move(next));  // the common update: found by address
      } else {
        if (prev != nullptr) set.Erase(*prev);
        if (next != nullptr) set.Upsert(std::move(next));
      }
    }
    if (set.size() == 0) {
      published.erase(type);
      sets.emplace_back(type, nullptr);
    } else {
      sets.emplace_back(type, published[type] = set.Finish());
    }
  }
  // The new snapshot shares the type directory's untouched blocks with the one it replaces
  // (a watcher of many types does not copy every type's entry per event).
  const SnapshotPtr base = snap.load(std::memory_order_relaxed);  // (only this thread stores)
  SnapshotPtr replaced = snap.exchange(Snapshot::Patch(base.get(), revision, history, sets));
  for (auto& [type, p] : protection) {
    if (EvaluateProtection(type, p, now) && follow_groups) {
      groups[type].clear();  // every picker of the type
    }
  }
  for (const auto& [type, changed] : groups) {
    UpdatePickers(type, changed.empty() ? nullptr : &changed);
  }
  if (weight != 0) publish_ns.fetch_add(weight * static_cast<uint64_t>(ThreadCpuNs() - started));
  return replaced;
}

void Watcher::Impl::ForgetInvalid(std::string_view key) {
  if (invalid_keys.empty()) return;  // (the common case: no lookup)
  if (auto it = invalid_keys.find(key); it != invalid_keys.end()) invalid_keys.erase(it);
}

void Watcher::Impl::ApplyState(SourceState& r, bool history_reset) {
  absl::Time now = util::MonoNow();
  FlushPublish();  // events applied before the resync go out first
  const bool first = history == 0;
  const bool new_cluster = !first && r.store_id != cluster_id;
  const bool replace = !first && (history_reset || new_cluster);
  // Within one history an unchanged mod_revision means an unchanged value: skip decoding.
  // Across histories revisions mean nothing: every value is decoded and compared.
  const bool same_history = !first && !replace;
  // Keyed by views of r.kvs' keys (valid until r.kvs is released below): no key copies.
  std::unordered_map<cache::KeyRef, InstancePtr, cache::EntryHash, cache::EntryEq> fresh;
  fresh.reserve(r.kvs.size());
  size_t state_bytes = 0;
  for (auto& kv : r.kvs) {
    state_bytes += kv.key.capacity() + kv.value.capacity() + sizeof(kv);
    auto cur = current.find(KeyOf(kv.key));
    if (same_history && cur != current.end() && cur->mod_revision == kv.revision) {
      fresh.emplace(KeyOf(kv.key), cur->in);
      continue;
    }
    InstancePtr in = Decode(kv.key, kv.value);
    if (in != nullptr) fresh.emplace(KeyOf(kv.key), std::move(in));
  }
  std::vector<ChangeEvent> changes;
  std::set<std::string> touched;
  std::vector<InstancePtr> gone;  // (holds the instance: its type/id are the entry's key)
  for (const cache::Entry& e : current) {
    if (fresh.count(cache::EntryHash::KeyOf(e)) == 0) gone.push_back(e.in);
  }
  for (const InstancePtr& in : gone) {
    Set({in->type, in->instance_id}, nullptr, r.revision, now, &changes, &touched);
  }
  gone.clear();
  for (auto& [key, in] : fresh) {
    auto it = current.find(key);
    // Unchanged values keep their object (and emit nothing).
    if (it != current.end() && (it->in == in || EncodeInstance(*it->in) == EncodeInstance(*in))) {
      continue;
    }
    Set(key, in, r.revision, now, &changes, &touched);
  }
  for (const auto& kv : r.kvs) {  // every cached key now holds etcd's mod_revision
    if (auto it = current.find(KeyOf(kv.key)); it != current.end()) {
      it->mod_revision = kv.revision;
    }
  }
  // The state's raw keys and values are garbage from here on: release them now, not when the
  // source drops the state, and hand a large state's pages back to the system (a 100k-instance
  // range is ~60 MB of small strings that would otherwise stay in the process's RSS).
  fresh = {};
  std::vector<SourceState::Kv>().swap(r.kvs);
  if (state_bytes >= kTrimAfterStateBytes) {
    const absl::Time t0 = util::MonoNow();
    malloc_trim(0);
    SPDLOG_LOGGER_INFO(logger, "released the {} byte state of {} (malloc_trim: {})", state_bytes,
                       watch_prefix, absl::FormatDuration(util::MonoNow() - t0));
  }
  if (!first) resyncs.fetch_add(1);
  if (replace) {
    history_resets.fetch_add(1);
    if (new_cluster) {
      SPDLOG_LOGGER_WARN(logger,
                         "etcd cluster id changed {:x} -> {:x}: new history {}, cache of {} "
                         "replaced ({} changes at revision {})",
                         cluster_id, r.store_id, history + 1, watch_prefix, changes.size(),
                         r.revision);
    } else {
      SPDLOG_LOGGER_WARN(logger,
                         "etcd history went back (revision {} -> {}, raft term {} -> {}, cluster "
                         "{:x}): etcd was wiped or restored; new history {}, cache of {} "
                         "replaced ({} changes)",
                         revision, r.revision, raft_term, r.epoch, r.store_id, history + 1,
                         watch_prefix, changes.size());
    }
  }
  revision = r.revision;
  cluster_id = r.store_id;
  raft_term = replace ? r.epoch : std::max(raft_term, r.epoch);
  if (first || replace) ++history;
  SPDLOG_LOGGER_INFO(logger, "{} {} at revision {}: {} instances, {} changes",
                     first ? "synced" : "resynced", watch_prefix, revision, current.size(),
                     changes.size());
  SnapshotPtr replaced = Publish(touched, changes, now);
  {
    util::MutexLock lock(&sync_mu);
    synced = true;
    last_error = absl::OkStatus();
  }
  if (replace) NotifyHistoryReset(snap.load());
  Dispatch(changes);
}

}  // namespace discovery
