// The etcd WatchSource: (re)sync by a paged Range, then a watch from revision + 1 on the
// client's WatchHub; history resets; the resync rate limit.
//
// History resets. A revision means something only within one etcd history. The history is
// replaced when etcd answers with another cluster id (the watch hub's kFailedPrecondition, or
// a Range header), or when etcd went back in time with the same cluster id (wiped and
// re-bootstrapped from the same configuration, or restored from a snapshot): the hub reports
// kDataLoss when a (re)created watch's header is behind the revision we hold, and a Range
// during a resync may answer below the cache's revision or below the highest raft term seen.
// Both are only signals (a lagging member after a failover looks the same for a moment), so
// they are confirmed by a linearizable read first. A confirmed reset hands the sink a state
// with history_reset (the cache REPLACES its content, see watcher_cache.cc).
//
// Rate limit. Every full resync, whatever its cause, and every watch re-creation after a false
// alarm goes through `sync_backoff_`: at once, then 200 ms, 400 ms, ... 30 s (jittered). It
// starts over only when a watch stayed up kHealthyWatch, NOT when a sync succeeded (a watch
// refused right after every sync would otherwise loop at full speed). A Range that fails (etcd
// unreachable) is retried through `retry_backoff_` (200 ms .. 10 s, reset by a Range that
// works). Both delays are counted in stats().resync_backoffs.
//
// Latency: the hub hands every response it has received in one loop turn; their events go to
// the sink as SourceChanges (views into the response, no copies) and the hub's batch end is the
// sink's EndOfBatch.
#include "watch_source_etcd.h"

#include <algorithm>
#include <atomic>
#include <vector>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"
#include "util/clock.h"

namespace discovery {

namespace pb = ::etcdserverpb;

namespace {

std::string PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    unsigned char c = static_cast<unsigned char>(end.back());
    if (c < 0xff) {
      end.back() = static_cast<char>(c + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // whole keyspace
}

// Why a (re)sync runs.
enum class SyncCause {
  kInitial,         // first sync, or a retry of a failed Range
  kCompacted,       // the watch's start revision was compacted
  kClusterChanged,  // the watch saw another cluster id
  kSuspectRewind,   // the watch hub saw etcd behind our revision (DataLoss): confirm first
  kOther,           // the watch was cancelled by etcd (auth, ...)
};

// True when `r` (same cluster) is behind what the cache holds: etcd's history went back, or
// the member that answered lags behind.
bool Behind(const SourceState& r, const HeldPosition& held) {
  if (!held.synced || r.store_id != held.store_id) return false;
  return r.revision < held.revision || (held.epoch != 0 && r.epoch < held.epoch);
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

class EtcdWatchSource final : public WatchSource,
                              public std::enable_shared_from_this<EtcdWatchSource> {
 public:
  EtcdWatchSource(std::shared_ptr<etcd::Client> client, SourceOptions options,
                  std::shared_ptr<spdlog::logger> logger, std::weak_ptr<WatchSink> sink)
      : client_(std::move(client)),
        logger_(std::move(logger)),
        sink_(std::move(sink)),
        prefix_(std::move(options.prefix)),
        end_(PrefixEnd(prefix_)),
        page_size_(options.range_page_size) {}

  void Start() override { StartSync(SyncCause::kInitial); }

  void Stop() override {
    client_->loop().RunSync([this] {
      stopping_ = true;
      if (watch_id_ != 0) client_->watch_hub().Remove(watch_id_);
      watch_id_ = 0;
    });
    // A sync may be in flight on the background loop; it holds only a weak reference.
    client_->background().RunSync([] {});
  }

  SourceStats stats() const override {
    SourceStats s;
    s.resync_backoffs = resync_backoffs_.load();
    s.resync_delay = absl::Nanoseconds(resync_delay_ns_.load());
    s.rewind_false_alarms = rewind_false_alarms_.load();
    s.lag = client_->watch_hub().Lag();
    return s;
  }

 private:
  // A watch that stayed up this long is healthy: the next resync runs without delay and the
  // rate limit starts over. A watch broken sooner keeps the backoff growing.
  static constexpr absl::Duration kHealthyWatch = absl::Seconds(5);

  void CountDelay(absl::Duration delay) {
    resync_delay_ns_.store(absl::ToInt64Nanoseconds(delay));
    resync_backoffs_.fetch_add(1);
  }
  absl::StatusOr<SourceState> RangeAll();
  absl::StatusOr<SourceState> Probe();
  void StartSync(SyncCause cause);
  void ScheduleSync(SyncCause cause);
  void ScheduleWatch();
  absl::Duration NextSyncDelay();
  void RetryAfterFailure(SyncCause cause, const absl::Status& why);
  void Apply(SourceState& r, bool history_reset);
  void StartWatch();
  void OnEvents(const pb::WatchResponse& resp);
  void OnBroken(const absl::Status& why);

  const std::shared_ptr<etcd::Client> client_;
  const std::shared_ptr<spdlog::logger> logger_;
  const std::weak_ptr<WatchSink> sink_;
  const std::string prefix_;
  const std::string end_;
  const int64_t page_size_;

  // Loop-thread state.
  etcd::WatchHub::WatchId watch_id_ = 0;
  absl::Time watch_started_ = absl::InfinitePast();
  std::vector<SourceChange> changes_;  // reused: no allocation per response
  util::Backoff sync_backoff_{absl::Milliseconds(100), absl::Seconds(30)};
  util::Backoff retry_backoff_{absl::Milliseconds(200), absl::Seconds(10)};
  bool stopping_ = false;

  std::atomic<uint64_t> resync_backoffs_{0}, rewind_false_alarms_{0};
  std::atomic<int64_t> resync_delay_ns_{0};
};

absl::StatusOr<SourceState> EtcdWatchSource::RangeAll() {
  SourceState out;
  std::string key = prefix_;
  for (;;) {
    pb::RangeRequest req;
    req.set_key(key);
    req.set_range_end(end_);
    req.set_limit(page_size_);
    req.set_revision(out.revision);  // 0 on the first page, then pinned
    auto resp = client_->Range(req);
    if (!resp.ok()) return resp.status();
    if (out.revision == 0) {
      out.revision = resp->header().revision();
      out.store_id = resp->header().cluster_id();
      out.epoch = resp->header().raft_term();
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

absl::StatusOr<SourceState> EtcdWatchSource::Probe() {
  pb::RangeRequest req;
  req.set_key(prefix_);
  req.set_range_end(end_);
  req.set_limit(1);
  req.set_keys_only(true);
  // serializable = false (the default): answered only after a ReadIndex round with the leader.
  auto resp = client_->Range(req);
  if (!resp.ok()) return resp.status();
  SourceState out;
  out.revision = resp->header().revision();
  out.store_id = resp->header().cluster_id();
  out.epoch = resp->header().raft_term();
  return out;
}

// Background thread: read everything (after confirming a suspected rewind), then apply on the
// loop.
void EtcdWatchSource::StartSync(SyncCause cause) {
  auto sink = sink_.lock();
  if (sink == nullptr) return;
  const HeldPosition held = sink->Held();
  std::weak_ptr<EtcdWatchSource> weak = weak_from_this();
  client_->background().Post([weak, cause, held] {
    auto self = weak.lock();
    if (self == nullptr) return;
    // A false alarm: the member we asked was behind, etcd's history is the one we hold.
    auto false_alarm = [&](std::string seen, const SourceState& probe) {
      self->client_->loop().Post([weak, cause, seen = std::move(seen), probe, held] {
        auto self = weak.lock();
        if (self == nullptr || self->stopping_) return;
        self->rewind_false_alarms_.fetch_add(1);
        SPDLOG_LOGGER_WARN(self->logger_,
                           "{} of {}: {} below ours (revision {}, term {}), but a linearizable "
                           "read says revision {} (term {}): a lagging member, not a rewind",
                           CauseName(cause), self->prefix_, seen, held.revision, held.epoch,
                           probe.revision, probe.epoch);
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
      if (probe->store_id == held.store_id && !Behind(*probe, held)) {
        // The hub's signal is not confirmed: the watch can resume from our revision.
        return false_alarm("the watch saw etcd", *probe);
      }
      reset = true;  // (another cluster id: the cache sees it in the state too)
    }
    auto result = self->RangeAll();
    if (!result.ok()) return self->RetryAfterFailure(cause, result.status());
    if (!reset && Behind(*result, held)) {
      auto probe = self->Probe();
      if (!probe.ok()) return self->RetryAfterFailure(cause, probe.status());
      if (!Behind(*probe, held)) {
        return false_alarm(absl::StrCat("a Range answered revision ", result->revision, " (term ",
                                        result->epoch, ")"),
                           *probe);
      }
      reset = true;
    }
    self->client_->loop().Post([weak, reset, r = *std::move(result)]() mutable {
      if (auto self = weak.lock(); self != nullptr && !self->stopping_) self->Apply(r, reset);
    });
  });
}

void EtcdWatchSource::Apply(SourceState& r, bool history_reset) {
  auto sink = sink_.lock();
  if (sink == nullptr) return;
  sink->ApplyState(r, history_reset);
  retry_backoff_.Reset();  // (the resync rate limit, sync_backoff_, is not: see NextSyncDelay)
  StartWatch();
}

void EtcdWatchSource::RetryAfterFailure(SyncCause cause, const absl::Status& why) {
  std::weak_ptr<EtcdWatchSource> weak = weak_from_this();
  client_->loop().Post([weak, cause, why] {
    auto self = weak.lock();
    if (self == nullptr || self->stopping_) return;
    if (auto sink = self->sink_.lock()) sink->SyncFailed(why);
    absl::Duration delay = self->retry_backoff_.Next();
    self->CountDelay(delay);
    SPDLOG_LOGGER_WARN(self->logger_, "{} of {} failed: {}; retry in {}", CauseName(cause),
                       self->prefix_, std::string(why.message()), absl::FormatDuration(delay));
    self->client_->loop().PostAfter(delay, [weak, cause] {
      if (auto s = weak.lock(); s != nullptr && !s->stopping_) s->StartSync(cause);
    });
  });
}

absl::Duration EtcdWatchSource::NextSyncDelay() {
  // A watch that stayed up long enough proves the last sync worked: start the backoff over.
  if (watch_started_ != absl::InfinitePast() && util::MonoNow() - watch_started_ >= kHealthyWatch) {
    sync_backoff_.Reset();
  }
  watch_started_ = absl::InfinitePast();
  const bool first = sync_backoff_.attempt() == 0;
  absl::Duration delay = sync_backoff_.Next();
  return first ? absl::ZeroDuration() : delay;
}

void EtcdWatchSource::ScheduleSync(SyncCause cause) {
  absl::Duration delay = NextSyncDelay();
  if (delay <= absl::ZeroDuration()) {
    StartSync(cause);
    return;
  }
  CountDelay(delay);
  SPDLOG_LOGGER_INFO(logger_, "{} of {} in {} (resync rate limit)", CauseName(cause), prefix_,
                     absl::FormatDuration(delay));
  std::weak_ptr<EtcdWatchSource> weak = weak_from_this();
  client_->loop().PostAfter(delay, [weak, cause] {
    if (auto s = weak.lock(); s != nullptr && !s->stopping_) s->StartSync(cause);
  });
}

void EtcdWatchSource::ScheduleWatch() {
  absl::Duration delay = NextSyncDelay();
  if (delay > absl::ZeroDuration()) CountDelay(delay);
  std::weak_ptr<EtcdWatchSource> weak = weak_from_this();
  client_->loop().PostAfter(delay, [weak] {
    if (auto s = weak.lock(); s != nullptr && !s->stopping_ && s->watch_id_ == 0) s->StartWatch();
  });
}

void EtcdWatchSource::StartWatch() {
  auto sink = sink_.lock();
  if (sink == nullptr) return;
  const HeldPosition held = sink->Held();
  etcd::WatchHub::Spec spec;
  spec.key = prefix_;
  spec.range_end = end_;
  spec.start_revision = held.revision + 1;
  spec.expected_cluster_id = held.store_id;
  std::weak_ptr<EtcdWatchSource> weak = weak_from_this();
  etcd::WatchHub::Listener listener;
  listener.on_events = [weak](const pb::WatchResponse& resp) {
    if (auto self = weak.lock()) self->OnEvents(resp);
  };
  listener.on_batch_end = [weak] {
    auto self = weak.lock();
    if (self == nullptr) return;
    if (auto sink = self->sink_.lock()) sink->EndOfBatch();
  };
  listener.on_broken = [weak](const absl::Status& why) {
    if (auto self = weak.lock()) self->OnBroken(why);
  };
  watch_started_ = util::MonoNow();
  // We are on the loop thread; WatchHub::Add runs inline there.
  watch_id_ = client_->watch_hub().Add(std::move(spec), std::move(listener));
}

void EtcdWatchSource::OnEvents(const pb::WatchResponse& resp) {
  auto sink = sink_.lock();
  if (sink == nullptr || resp.events_size() == 0) return;
  changes_.clear();
  for (const auto& ev : resp.events()) {
    SourceChange c;
    c.key = ev.kv().key();
    c.revision = ev.kv().mod_revision();
    c.deleted = ev.type() != mvccpb::Event::PUT;
    if (!c.deleted) c.value = ev.kv().value();
    changes_.push_back(c);
  }
  sink->ApplyChanges(changes_, resp.events(resp.events_size() - 1).kv().mod_revision());
}

void EtcdWatchSource::OnBroken(const absl::Status& why) {
  watch_id_ = 0;
  SyncCause cause = SyncCause::kOther;
  if (absl::IsOutOfRange(why)) {
    cause = SyncCause::kCompacted;
  } else if (absl::IsFailedPrecondition(why)) {
    cause = SyncCause::kClusterChanged;
  } else if (absl::IsDataLoss(why)) {
    cause = SyncCause::kSuspectRewind;
  }
  SPDLOG_LOGGER_WARN(logger_, "watch of {} cannot resume ({}); {}", prefix_, why.ToString(),
                     cause == SyncCause::kSuspectRewind ? "checking etcd's revision" : "resyncing");
  ScheduleSync(cause);
}

}  // namespace

std::shared_ptr<WatchSource> NewEtcdWatchSource(std::shared_ptr<etcd::Client> client,
                                                SourceOptions options,
                                                std::shared_ptr<spdlog::logger> logger,
                                                std::weak_ptr<WatchSink> sink) {
  return std::make_shared<EtcdWatchSource>(std::move(client), std::move(options), std::move(logger),
                                           std::move(sink));
}

}  // namespace discovery
