// (Re)sync of the watcher's cache by a paged Range, then a watch from revision + 1; history
// resets; the resync rate limit.
//
// History resets. A revision means something only within one etcd history. The history is
// replaced when etcd answers with another cluster id (the watch hub's kFailedPrecondition, or
// a Range header), or when etcd went back in time with the same cluster id (wiped and
// re-bootstrapped from the same configuration, or restored from a snapshot): the hub reports
// kDataLoss when a (re)created watch's header is behind the revision we hold, and a Range
// during a resync may answer below the cache's revision or below the highest raft term seen.
// Both are only signals (a lagging member after a failover looks the same for a moment), so
// they are confirmed by a linearizable read first. A confirmed reset re-reads everything and
// REPLACES the cache (values compared, never mod_revisions of the old history), bumps
// Snapshot::history, runs the OnHistoryReset listeners with the new snapshot, then delivers
// the differences at the new revision.
//
// Rate limit. Every full resync, whatever its cause, and every watch re-creation after a false
// alarm goes through `sync_backoff`: at once, then 200 ms, 400 ms, ... 30 s (jittered). It starts
// over only when a watch stayed up kHealthyWatch, NOT when a sync succeeded (a watch refused
// right after every sync would otherwise loop at full speed). A Range that fails (etcd
// unreachable) is retried through `retry_backoff` (200 ms .. 10 s, reset by a Range that works).
// Both delays are counted in stats.resync_backoffs.
#include <algorithm>
#include <atomic>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"
#include "util/clock.h"
#include "watcher_impl.h"

namespace discovery {

namespace pb = ::etcdserverpb;

namespace {

// True when `r` (same cluster) is behind what the cache holds: etcd's history went back, or
// the member that answered lags behind.
bool Behind(const RangeResult& r, const HeldPosition& held) {
  if (!held.synced || r.cluster_id != held.cluster_id) return false;
  return r.revision < held.revision || (held.raft_term != 0 && r.raft_term < held.raft_term);
}

std::string_view CauseName(SyncCause cause) {
  switch (cause) {
    case SyncCause::kInitial:
      return "sync";
    case SyncCause::kCompacted:
      return "resync after compaction";
    case SyncCause::kClusterChanged:
      return "resync for a new cluster";
    case SyncCause::kSuspectRewind:
      return "rewind check";
    case SyncCause::kOther:
      return "resync";
  }
  return "resync";
}

}  // namespace

HeldPosition Watcher::Impl::Held() const {
  HeldPosition h;
  h.synced = history > 0;
  h.revision = revision;
  h.cluster_id = cluster_id;
  h.raft_term = raft_term;
  return h;
}

absl::StatusOr<RangeResult> Watcher::Impl::RangeAll() {
  RangeResult out;
  std::string key = watch_prefix;
  for (;;) {
    pb::RangeRequest req;
    req.set_key(key);
    req.set_range_end(watch_end);
    req.set_limit(opts.range_page_size);
    req.set_revision(out.revision);  // 0 on the first page, then pinned
    auto resp = client->Range(req);
    if (!resp.ok()) return resp.status();
    if (out.revision == 0) {
      out.revision = resp->header().revision();
      out.cluster_id = resp->header().cluster_id();
      out.raft_term = resp->header().raft_term();
    }
    for (const auto& kv : resp->kvs()) {
      out.kvs.push_back({kv.key(), kv.value(), kv.mod_revision()});
    }
    if (!resp->more() || resp->kvs_size() == 0) break;
    key = resp->kvs(resp->kvs_size() - 1).key();
    key.push_back('\0');
  }
  return out;
}

absl::StatusOr<RangeResult> Watcher::Impl::Probe() {
  pb::RangeRequest req;
  req.set_key(watch_prefix);
  req.set_range_end(watch_end);
  req.set_limit(1);
  req.set_keys_only(true);
  // serializable = false (the default): answered only after a ReadIndex round with the leader.
  auto resp = client->Range(req);
  if (!resp.ok()) return resp.status();
  RangeResult out;
  out.revision = resp->header().revision();
  out.cluster_id = resp->header().cluster_id();
  out.raft_term = resp->header().raft_term();
  return out;
}

// Background thread: read everything (after confirming a suspected rewind), then apply on the
// loop.
void Watcher::Impl::StartSync(SyncCause cause) {
  const HeldPosition held = Held();
  std::weak_ptr<Impl> weak = weak_from_this();
  client->background().Post([weak, cause, held] {
    auto self = weak.lock();
    if (self == nullptr) return;
    // A false alarm: the member we asked was behind, etcd's history is the one we hold.
    auto false_alarm = [&](std::string seen, const RangeResult& probe) {
      self->client->loop().Post([weak, cause, seen = std::move(seen), probe, held] {
        auto self = weak.lock();
        if (self == nullptr || self->stopping) return;
        self->rewind_false_alarms.fetch_add(1);
        SPDLOG_LOGGER_WARN(self->logger,
                           "{} of {}: {} below ours (revision {}, term {}), but a linearizable "
                           "read says revision {} (term {}): a lagging member, not a rewind",
                           CauseName(cause), self->watch_prefix, seen, held.revision,
                           held.raft_term, probe.revision, probe.raft_term);
        if (cause == SyncCause::kSuspectRewind) {
          self->ScheduleWatch();
        } else {
          self->ScheduleSync(cause);
        }
      });
    };
    bool reset = false;
    if (cause == SyncCause::kSuspectRewind) {
      auto probe = self->Probe();
      if (!probe.ok()) return self->RetryAfterFailure(cause, probe.status());
      if (probe->cluster_id == held.cluster_id && !Behind(*probe, held)) {
        // The hub's signal is not confirmed: the watch can resume from our revision.
        return false_alarm("the watch saw etcd", *probe);
      }
      reset = true;  // (another cluster id: ApplySync sees it in the Range header too)
    }
    auto result = self->RangeAll();
    if (!result.ok()) return self->RetryAfterFailure(cause, result.status());
    if (!reset && Behind(*result, held)) {
      auto probe = self->Probe();
      if (!probe.ok()) return self->RetryAfterFailure(cause, probe.status());
      if (!Behind(*probe, held)) {
        return false_alarm(absl::StrCat("a Range answered revision ", result->revision, " (term ",
                                        result->raft_term, ")"),
                           *probe);
      }
      reset = true;
    }
    self->client->loop().Post([weak, reset, r = *std::move(result)]() mutable {
      if (auto self = weak.lock(); self != nullptr && !self->stopping) self->ApplySync(r, reset);
    });
  });
}

void Watcher::Impl::RetryAfterFailure(SyncCause cause, const absl::Status& why) {
  {
    util::MutexLock lock(&sync_mu);
    last_error = why;
  }
  std::weak_ptr<Impl> weak = weak_from_this();
  client->loop().Post([weak, cause, why] {
    auto self = weak.lock();
    if (self == nullptr || self->stopping) return;
    absl::Duration delay = self->retry_backoff.Next();
    self->CountDelay(delay);
    SPDLOG_LOGGER_WARN(self->logger, "{} of {} failed: {}; retry in {}", CauseName(cause),
                       self->watch_prefix, std::string(why.message()), absl::FormatDuration(delay));
    self->client->loop().PostAfter(delay, [weak, cause] {
      if (auto s = weak.lock(); s != nullptr && !s->stopping) s->StartSync(cause);
    });
  });
}

absl::Duration Watcher::Impl::NextSyncDelay() {
  // A watch that stayed up long enough proves the last sync worked: start the backoff over.
  if (watch_started != absl::InfinitePast() && util::MonoNow() - watch_started >= kHealthyWatch) {
    sync_backoff.Reset();
  }
  watch_started = absl::InfinitePast();
  const bool first = sync_backoff.attempt() == 0;
  absl::Duration delay = sync_backoff.Next();
  return first ? absl::ZeroDuration() : delay;
}

void Watcher::Impl::ScheduleSync(SyncCause cause) {
  absl::Duration delay = NextSyncDelay();
  if (delay <= absl::ZeroDuration()) {
    StartSync(cause);
    return;
  }
  CountDelay(delay);
  SPDLOG_LOGGER_INFO(logger, "{} of {} in {} (resync rate limit)", CauseName(cause), watch_prefix,
                     absl::FormatDuration(delay));
  std::weak_ptr<Impl> weak = weak_from_this();
  client->loop().PostAfter(delay, [weak, cause] {
    if (auto s = weak.lock(); s != nullptr && !s->stopping) s->StartSync(cause);
  });
}

void Watcher::Impl::ScheduleWatch() {
  absl::Duration delay = NextSyncDelay();
  if (delay > absl::ZeroDuration()) CountDelay(delay);
  std::weak_ptr<Impl> weak = weak_from_this();
  client->loop().PostAfter(delay, [weak] {
    if (auto s = weak.lock(); s != nullptr && !s->stopping && s->watch_id == 0) s->StartWatch();
  });
}

void Watcher::Impl::ApplySync(RangeResult& r, bool history_reset) {
  absl::Time now = util::MonoNow();
  FlushPublish();  // events applied before the resync go out first
  const bool first = history == 0;
  const bool new_cluster = !first && r.cluster_id != cluster_id;
  const bool replace = !first && (history_reset || new_cluster);
  // Within one history an unchanged mod_revision means an unchanged value: skip decoding.
  // Across histories revisions mean nothing: every value is decoded and compared.
  const bool same_history = !first && !replace;
  std::unordered_map<std::string, InstancePtr> fresh;
  fresh.reserve(r.kvs.size());
  std::unordered_map<std::string, int64_t> fresh_revs;
  fresh_revs.reserve(r.kvs.size());
  for (auto& kv : r.kvs) {
    fresh_revs[kv.key] = kv.mod_revision;
    auto cur = current.find(kv.key);
    auto rev = mod_revisions.find(kv.key);
    if (same_history && cur != current.end() && rev != mod_revisions.end() &&
        rev->second == kv.mod_revision) {
      fresh.emplace(kv.key, cur->second);
      continue;
    }
    InstancePtr in = Decode(kv.key, kv.value);
    if (in != nullptr) fresh.emplace(kv.key, std::move(in));
  }
  std::vector<ChangeEvent> changes;
  std::set<std::string> touched;
  std::vector<std::string> gone;
  for (const auto& [key, in] : current) {
    if (fresh.count(key) == 0) gone.push_back(key);
  }
  for (const std::string& key : gone) Set(key, nullptr, r.revision, now, &changes, &touched);
  for (auto& [key, in] : fresh) {
    auto it = current.find(key);
    // Unchanged values keep their object (and emit nothing).
    if (it != current.end() &&
        (it->second == in || EncodeInstance(*it->second) == EncodeInstance(*in))) {
      continue;
    }
    Set(key, in, r.revision, now, &changes, &touched);
  }
  mod_revisions = std::move(fresh_revs);
  if (!first) resyncs.fetch_add(1);
  retry_backoff.Reset();  // (the resync rate limit, sync_backoff, is not: see NextSyncDelay)
  if (replace) {
    history_resets.fetch_add(1);
    if (new_cluster) {
      SPDLOG_LOGGER_WARN(logger,
                         "etcd cluster id changed {:x} -> {:x}: new history {}, cache of {} "
                         "replaced ({} changes at revision {})",
                         cluster_id, r.cluster_id, history + 1, watch_prefix, changes.size(),
                         r.revision);
    } else {
      SPDLOG_LOGGER_WARN(logger,
                         "etcd history went back (revision {} -> {}, raft term {} -> {}, cluster "
                         "{:x}): etcd was wiped or restored; new history {}, cache of {} "
                         "replaced ({} changes)",
                         revision, r.revision, raft_term, r.raft_term, r.cluster_id, history + 1,
                         watch_prefix, changes.size());
    }
  }
  revision = r.revision;
  cluster_id = r.cluster_id;
  raft_term = replace ? r.raft_term : std::max(raft_term, r.raft_term);
  if (first || replace) ++history;
  SPDLOG_LOGGER_INFO(logger, "{} {} at revision {}: {} instances, {} changes",
                     first ? "synced" : "resynced", watch_prefix, revision, current.size(),
                     changes.size());
  Publish(touched, now);
  {
    util::MutexLock lock(&sync_mu);
    synced = true;
    last_error = absl::OkStatus();
  }
  if (replace) NotifyHistoryReset(snap.load());
  Dispatch(changes);
  StartWatch();
}

void Watcher::Impl::StartWatch() {
  etcd::WatchHub::Spec spec;
  spec.key = watch_prefix;
  spec.range_end = watch_end;
  spec.start_revision = revision + 1;
  spec.expected_cluster_id = cluster_id;
  std::weak_ptr<Impl> weak = weak_from_this();
  etcd::WatchHub::Listener listener;
  listener.on_events = [weak](const pb::WatchResponse& resp) {
    if (auto self = weak.lock()) self->ApplyEvents(resp);
  };
  listener.on_batch_end = [weak] {
    if (auto self = weak.lock()) self->FlushPublish();
  };
  listener.on_broken = [weak](const absl::Status& why) {
    if (auto self = weak.lock()) self->OnBroken(why);
  };
  watch_started = util::MonoNow();
  // We are on the loop thread; WatchHub::Add runs inline there.
  watch_id = client->watch_hub().Add(std::move(spec), std::move(listener));
}

void Watcher::Impl::OnBroken(const absl::Status& why) {
  watch_id = 0;
  SyncCause cause = SyncCause::kOther;
  if (absl::IsOutOfRange(why)) {
    cause = SyncCause::kCompacted;
  } else if (absl::IsFailedPrecondition(why)) {
    cause = SyncCause::kClusterChanged;
  } else if (absl::IsDataLoss(why)) {
    cause = SyncCause::kSuspectRewind;
  }
  SPDLOG_LOGGER_WARN(logger, "watch of {} cannot resume ({}); {}", watch_prefix, why.ToString(),
                     cause == SyncCause::kSuspectRewind ? "checking etcd's revision" : "resyncing");
  ScheduleSync(cause);
}

}  // namespace discovery
