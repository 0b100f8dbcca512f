#include "discovery/watcher.h"

#include <atomic>
#include <deque>
#include <set>
#include <unordered_map>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "etcd/client.h"
#include "etcd/watch_hub.h"
#include "spdlog/spdlog.h"
#include "util/clock.h"
#include "util/logging.h"
#include "util/sync.h"

namespace discovery {

namespace pb = ::etcdserverpb;

std::string_view ToString(ChangeType type) {
  switch (type) {
    case ChangeType::kAdded:
      return "added";
    case ChangeType::kUpdated:
      return "updated";
    case ChangeType::kStatusChanged:
      return "status_changed";
    case ChangeType::kRemoved:
      return "removed";
  }
  return "unknown";
}

bool Filter::Matches(const Instance& in) const {
  if (!type.empty() && in.type != type) return false;
  if (!group.empty() && in.group != group) return false;
  if (status.has_value() && in.status != *status) return false;
  return true;
}

// ---- Snapshot ----

Snapshot::Snapshot(int64_t revision,
                   std::map<std::string, std::shared_ptr<const TypeSet>, std::less<>> types,
                   uint64_t history)
    : revision_(revision), history_(history), types_(std::move(types)) {
  for (const auto& [name, set] : types_) size_ += set->instances.size();
}

std::vector<InstancePtr> Snapshot::All() const {
  std::vector<InstancePtr> out;
  out.reserve(size_);
  for (const auto& [name, set] : types_) {
    out.insert(out.end(), set->instances.begin(), set->instances.end());
  }
  return out;
}

std::vector<InstancePtr> Snapshot::Select(const Filter& filter) const {
  std::vector<InstancePtr> out;
  auto visit = [&](const TypeSet& set) {
    for (const InstancePtr& in : set.instances) {
      if (filter.Matches(*in)) out.push_back(in);
    }
  };
  if (!filter.type.empty()) {
    auto it = types_.find(filter.type);
    if (it != types_.end()) visit(*it->second);
  } else {
    for (const auto& [name, set] : types_) visit(*set);
  }
  return out;
}

const std::vector<InstancePtr>& Snapshot::OfType(std::string_view type) const {
  static const std::vector<InstancePtr> kEmpty;
  auto it = types_.find(type);
  return it == types_.end() ? kEmpty : it->second->instances;
}

InstancePtr Snapshot::Find(std::string_view type, std::string_view instance_id) const {
  for (const InstancePtr& in : OfType(type)) {
    if (in->instance_id == instance_id) return in;
  }
  return nullptr;
}

std::vector<std::string> Snapshot::Types() const {
  std::vector<std::string> out;
  for (const auto& [name, set] : types_) out.push_back(name);
  return out;
}

// ---- Subscription ----

Subscription::Subscription(Subscription&& o) noexcept : cancel_(std::move(o.cancel_)) {
  o.cancel_ = nullptr;
}
Subscription& Subscription::operator=(Subscription&& o) noexcept {
  if (this != &o) {
    Reset();
    cancel_ = std::move(o.cancel_);
    o.cancel_ = nullptr;
  }
  return *this;
}
Subscription::~Subscription() { Reset(); }
void Subscription::Reset() {
  if (cancel_) {
    auto cancel = std::move(cancel_);
    cancel_ = nullptr;
    cancel();
  }
}

// ---- Watcher ----

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

std::string SortKey(const Instance& in) { return absl::StrCat(in.group, "\x1f", in.instance_id); }

struct RangeResult {
  struct Kv {
    std::string key;
    std::string value;
    int64_t mod_revision;
  };
  int64_t revision = 0;
  uint64_t cluster_id = 0;
  std::vector<Kv> kvs;
};

}  // namespace

struct Watcher::Impl : std::enable_shared_from_this<Watcher::Impl> {
  struct Sub {
    Filter filter;
    std::function<void(const ChangeEvent&)> callback;
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
  std::shared_ptr<etcd::Client> client;
  std::shared_ptr<spdlog::logger> logger;
  std::string watch_prefix;
  std::string watch_end;

  std::atomic<std::shared_ptr<const Snapshot>> snap;

  // Loop-thread state.
  std::unordered_map<std::string, InstancePtr> current;    // etcd key -> instance
  std::unordered_map<std::string, int64_t> mod_revisions;  // etcd key -> mod_revision of `current`
  // Changes applied to `current` but not yet published (see SchedulePublish).
  std::set<std::string> pending_touched;
  std::vector<ChangeEvent> pending_changes;
  bool publish_scheduled = false;
  std::map<std::string, std::map<std::string, InstancePtr>> by_type;  // type -> sortkey -> in
  std::map<std::string, std::shared_ptr<const Snapshot::TypeSet>, std::less<>> published;
  int64_t revision = 0;
  uint64_t cluster_id = 0;
  etcd::WatchHub::WatchId watch_id = 0;
  std::set<std::string> invalid_keys;
  std::vector<PickerEntry> pickers;
  std::map<std::string, Protection> protection;
  util::Backoff sync_backoff{absl::Milliseconds(200), absl::Seconds(10)};
  bool stopping = false;

  // Stats.
  std::atomic<uint64_t> events{0}, resyncs{0}, invalid_values{0}, protection_activations{0};

  // Sync state.
  mutable util::Mutex sync_mu;
  bool synced ABSL_GUARDED_BY(sync_mu) = false;
  absl::Status last_error ABSL_GUARDED_BY(sync_mu);

  // Subscriptions.
  mutable util::Mutex subs_mu;
  std::map<uint64_t, std::shared_ptr<Sub>> subs ABSL_GUARDED_BY(subs_mu);
  std::map<uint64_t, std::function<void(const SnapshotPtr&)>> reset_listeners
      ABSL_GUARDED_BY(subs_mu);
  uint64_t next_sub ABSL_GUARDED_BY(subs_mu) = 1;
  util::Mutex queue_mu;
  std::deque<std::pair<uint64_t, ChangeEvent>> queue ABSL_GUARDED_BY(queue_mu);

  // ---- sync ----
  absl::StatusOr<RangeResult> RangeAll() {
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

  // Background thread: read everything, then apply on the loop.
  void StartSync() {
    std::weak_ptr<Impl> weak = weak_from_this();
    client->background().Post([weak] {
      auto self = weak.lock();
      if (self == nullptr) return;
      auto result = self->RangeAll();
      if (!result.ok()) {
        {
          util::MutexLock lock(&self->sync_mu);
          self->last_error = result.status();
        }
        self->client->loop().Post([weak] {
          auto self = weak.lock();
          if (self == nullptr || self->stopping) return;
          absl::Duration delay = self->sync_backoff.Next();
          SPDLOG_LOGGER_WARN(
              self->logger, "sync of {} failed: {}; retry in {}", self->watch_prefix,
              [&] {
                util::MutexLock lock(&self->sync_mu);
                return std::string(self->last_error.message());
              }(),
              absl::FormatDuration(delay));
          self->client->loop().PostAfter(delay, [weak] {
            if (auto s = weak.lock(); s != nullptr && !s->stopping) s->StartSync();
          });
        });
        return;
      }
      self->client->loop().Post([weak, r = *std::move(result)]() mutable {
        if (auto self = weak.lock(); self != nullptr && !self->stopping) self->ApplySync(r);
      });
    });
  }

  // Parses one key/value into an instance; nullptr (counted, logged once per key) if invalid.
  InstancePtr Decode(const std::string& key, const std::string& value) {
    absl::Status problem;
    std::string_view rest(key);
    rest.remove_prefix(opts.prefix.size());
    size_t slash = rest.find('/');
    if (slash == std::string_view::npos || slash == 0 || slash + 1 == rest.size() ||
        rest.find('/', slash + 1) != std::string_view::npos) {
      problem = absl::InvalidArgumentError("key is not <prefix><type>/<instanceId>");
    }
    absl::StatusOr<Instance> in = absl::InvalidArgumentError("");
    if (problem.ok()) {
      in = DecodeInstance(value, opts.max_value_bytes);
      if (!in.ok()) {
        problem = in.status();
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
      if (invalid_keys.insert(key).second) {
        // Escaped: a hostile key may hold NUL, newlines or terminal escape sequences.
        SPDLOG_LOGGER_WARN(logger, "skipping invalid value at {} ({} bytes): {}",
                           absl::CHexEscape(key), value.size(), std::string(problem.message()));
      }
      return nullptr;
    }
    invalid_keys.erase(key);
    return std::make_shared<const Instance>(*std::move(in));
  }

  // Sets `key` to `next` (nullptr = absent) and appends the resulting change, if any.
  void Set(const std::string& key, InstancePtr next, int64_t rev, absl::Time now,
           std::vector<ChangeEvent>* out, std::set<std::string>* touched) {
    auto it = current.find(key);
    InstancePtr prev = it == current.end() ? nullptr : it->second;
    if (prev == nullptr && next == nullptr) return;
    if (prev != nullptr) {
      by_type[prev->type].erase(SortKey(*prev));
      if (by_type[prev->type].empty()) by_type.erase(prev->type);
      touched->insert(prev->type);
    }
    if (next != nullptr) {
      current[key] = next;
      by_type[next->type][SortKey(*next)] = next;
      touched->insert(next->type);
    } else {
      current.erase(key);
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

  void ApplySync(RangeResult& r) {
    absl::Time now = util::MonoNow();
    FlushPublish();  // events applied before the resync go out first
    std::unordered_map<std::string, InstancePtr> fresh;
    fresh.reserve(r.kvs.size());
    const bool same_cluster = cluster_id == r.cluster_id;
    std::unordered_map<std::string, int64_t> fresh_revs;
    fresh_revs.reserve(r.kvs.size());
    for (auto& kv : r.kvs) {
      fresh_revs[kv.key] = kv.mod_revision;
      // Same cluster and same mod_revision: the value is the one we hold; skip decoding.
      auto cur = current.find(kv.key);
      auto rev = mod_revisions.find(kv.key);
      if (same_cluster && cur != current.end() && rev != mod_revisions.end() &&
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
    bool first = false;
    {
      util::MutexLock lock(&sync_mu);
      first = !synced;
    }
    if (!first) resyncs.fetch_add(1);
    if (cluster_id != 0 && r.cluster_id != cluster_id) {
      SPDLOG_LOGGER_WARN(logger, "etcd cluster id changed {:x} -> {:x}: cache rebuilt", cluster_id,
                         r.cluster_id);
    }
    revision = r.revision;
    cluster_id = r.cluster_id;
    sync_backoff.Reset();
    SPDLOG_LOGGER_INFO(logger, "{} {} at revision {}: {} instances, {} changes",
                       first ? "synced" : "resynced", watch_prefix, revision, current.size(),
                       changes.size());
    Publish(touched, now);
    {
      util::MutexLock lock(&sync_mu);
      synced = true;
      last_error = absl::OkStatus();
    }
    Dispatch(changes);
    StartWatch();
  }

  void StartWatch() {
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
    listener.on_broken = [weak](const absl::Status& why) {
      if (auto self = weak.lock()) self->OnBroken(why);
    };
    // We are on the loop thread; WatchHub::Add runs inline there.
    watch_id = client->watch_hub().Add(std::move(spec), std::move(listener));
  }

  void OnBroken(const absl::Status& why) {
    watch_id = 0;
    SPDLOG_LOGGER_WARN(logger, "watch of {} cannot resume ({}); resyncing", watch_prefix,
                       why.ToString());
    if (absl::IsOutOfRange(why) || absl::IsFailedPrecondition(why)) {
      StartSync();
    } else {
      std::weak_ptr<Impl> weak = weak_from_this();
      client->loop().PostAfter(sync_backoff.Next(), [weak] {
        if (auto s = weak.lock(); s != nullptr && !s->stopping) s->StartSync();
      });
    }
  }

  void ApplyEvents(const pb::WatchResponse& resp) {
    absl::Time now = util::MonoNow();
    // Events of one revision (a Txn, or every key of a revoked lease) share mod_revision.
    const int64_t applied = revision;
    for (const auto& ev : resp.events()) {
      const std::string& key = ev.kv().key();
      int64_t rev = ev.kv().mod_revision();
      if (rev <= applied) continue;  // already applied (defensive: never deliver twice)
      InstancePtr next;
      if (ev.type() == mvccpb::Event::PUT) {
        next = Decode(key, ev.kv().value());
      } else {
        invalid_keys.erase(key);
      }
      if (next != nullptr) {
        mod_revisions[key] = rev;
      } else {
        mod_revisions.erase(key);
      }
      Set(key, std::move(next), rev, now, &pending_changes, &pending_touched);
      revision = std::max(revision, rev);
      events.fetch_add(1);
    }
    if (resp.events_size() > 0) {
      revision = std::max(revision, resp.events(resp.events_size() - 1).kv().mod_revision());
    }
    SchedulePublish();
  }

  // Publishing rebuilds the touched types' sorted vectors (O(instances of the type)). Under a
  // burst, gRPC queues many watch responses on the loop; publishing once after the responses
  // already queued (instead of once per response) keeps ingestion linear. Subscribers get their
  // events right after the snapshot that contains them is published.
  void SchedulePublish() {
    if (publish_scheduled) return;
    publish_scheduled = true;
    std::weak_ptr<Impl> weak = weak_from_this();
    client->loop().Post([weak] {
      if (auto self = weak.lock()) self->FlushPublish();
    });
  }

  void FlushPublish() {
    publish_scheduled = false;
    if (pending_touched.empty() && pending_changes.empty()) return;
    std::set<std::string> touched = std::move(pending_touched);
    std::vector<ChangeEvent> changes = std::move(pending_changes);
    pending_touched.clear();
    pending_changes.clear();
    Publish(touched, util::MonoNow());
    Dispatch(changes);
  }

  // Rebuilds the touched types and publishes a new snapshot; updates pickers.
  void Publish(const std::set<std::string>& touched, absl::Time now) {
    for (const std::string& type : touched) {
      auto it = by_type.find(type);
      if (it == by_type.end()) {
        published.erase(type);
        continue;
      }
      auto set = std::make_shared<Snapshot::TypeSet>();
      set->instances.reserve(it->second.size());
      for (const auto& [sk, in] : it->second) set->instances.push_back(in);
      published[type] = std::move(set);
    }
    snap.store(std::make_shared<const Snapshot>(revision, published));
    std::set<std::string> refresh = touched;
    for (auto& [type, p] : protection) {
      if (EvaluateProtection(type, p, now)) refresh.insert(type);
    }
    for (const std::string& type : refresh) UpdatePickers(type);
  }

  size_t ReadyCount(const std::string& type) {
    size_t n = 0;
    auto it = by_type.find(type);
    if (it == by_type.end()) return 0;
    for (const auto& [sk, in] : it->second) n += in->status == InstanceStatus::kReady;
    return n;
  }

  // Returns true when the protection state of `type` changed.
  bool EvaluateProtection(const std::string& type, Protection& p, absl::Time now) {
    while (!p.removed.empty() && now - p.removed.front().first > opts.protect_window) {
      p.removed.pop_front();
    }
    if (opts.protect_threshold <= 0) return false;
    size_t ready = ReadyCount(type);
    if (!p.active) {
      size_t gone = p.removed.size();
      size_t before = ready + gone;
      if (gone == 0 || before < 2 ||
          static_cast<double>(gone) <= opts.protect_threshold * static_cast<double>(before)) {
        return false;
      }
      p.active = true;
      p.until = now + opts.protect_hold;
      p.baseline = before;
      p.kept.clear();
      for (auto& [t, in] : p.removed) p.kept.push_back(in);
      protection_activations.fetch_add(1);
      SPDLOG_LOGGER_WARN(logger,
                         "mass expiry of type {}: {} of {} ready instances vanished within {}; "
                         "pickers keep the last good set for up to {}",
                         type, gone, before, absl::FormatDuration(opts.protect_window),
                         absl::FormatDuration(opts.protect_hold));
      if (opts.on_protection) opts.on_protection(type, true, before);
      std::weak_ptr<Impl> weak = weak_from_this();
      client->loop().PostAt(p.until + absl::Milliseconds(1), [weak, type] {
        auto self = weak.lock();
        if (self == nullptr || self->stopping) return;
        auto it = self->protection.find(type);
        if (it != self->protection.end() &&
            self->EvaluateProtection(type, it->second, util::MonoNow())) {
          self->UpdatePickers(type);
        }
      });
      return true;
    }
    bool recovered = static_cast<double>(ready) >
                     (1.0 - opts.protect_threshold) * static_cast<double>(p.baseline);
    if (now < p.until && !recovered) return false;
    p.active = false;
    p.kept.clear();
    p.removed.clear();
    SPDLOG_LOGGER_INFO(logger, "mass-expiry protection of type {} ended ({}): {} ready", type,
                       recovered ? "recovered" : "hold expired", ready);
    if (opts.on_protection) opts.on_protection(type, false, ready);
    return true;
  }

  std::vector<InstancePtr> Candidates(const PickerEntry& e) {
    std::vector<InstancePtr> out;
    auto keep = [&](const InstancePtr& in) {
      if (!e.group.empty() && in->group != e.group) return false;
      if (e.ready_only) return in->status == InstanceStatus::kReady;
      return in->status != InstanceStatus::kShuttingDown;
    };
    auto it = by_type.find(e.type);
    if (it != by_type.end()) {
      out.reserve(it->second.size());
      for (const auto& [sk, in] : it->second) {
        if (keep(in)) out.push_back(in);
      }
    }
    auto pit = protection.find(e.type);
    if (pit != protection.end() && pit->second.active) {
      // Add the vanished instances we keep, unless they are back (same id) or listed twice.
      std::set<std::string> ids;
      if (it != by_type.end()) {
        for (const auto& [sk, in] : it->second) ids.insert(in->instance_id);
      }
      for (const InstancePtr& in : pit->second.kept) {
        if (keep(in) && ids.insert(in->instance_id).second) out.push_back(in);
      }
    }
    return out;
  }

  void UpdatePickers(const std::string& type) {
    for (auto it = pickers.begin(); it != pickers.end();) {
      auto p = it->picker.lock();
      if (p == nullptr) {
        it = pickers.erase(it);
        continue;
      }
      if (it->type == type) p->Update(Candidates(*it));
      ++it;
    }
  }

  void Deliver(uint64_t id, const std::shared_ptr<Sub>& sub, const ChangeEvent& ev) {
    if (opts.delivery == Delivery::kPoll) {
      util::MutexLock lock(&queue_mu);
      queue.emplace_back(id, ev);
    } else {
      sub->callback(ev);
    }
  }

  void Dispatch(const std::vector<ChangeEvent>& changes) {
    if (changes.empty()) return;
    std::vector<std::pair<uint64_t, std::shared_ptr<Sub>>> targets;
    {
      util::MutexLock lock(&subs_mu);
      targets.assign(subs.begin(), subs.end());
    }
    for (const ChangeEvent& ev : changes) {
      for (auto& [id, sub] : targets) {
        bool match = sub->filter.Matches(*ev.instance) ||
                     (ev.previous != nullptr && sub->filter.Matches(*ev.previous));
        if (match) Deliver(id, sub, ev);
      }
    }
  }
};

absl::StatusOr<std::unique_ptr<Watcher>> Watcher::Create(WatcherOptions options) {
  if (options.prefix.empty() || options.prefix.back() != '/') {
    return absl::InvalidArgumentError("prefix must end with '/'");
  }
  if (!options.type.empty()) {
    if (absl::Status s = ValidateName("type", options.type); !s.ok()) return s;
  }
  if (options.range_page_size <= 0) {
    return absl::InvalidArgumentError("range_page_size must be positive");
  }
  auto impl = std::make_shared<Impl>();
  impl->connection = options.connection;
  if (impl->connection == nullptr) {
    auto conn = Connection::Create(options.etcd);
    if (!conn.ok()) return conn.status();
    impl->connection = *std::move(conn);
  }
  impl->client = impl->connection->client();
  impl->logger = util::ComponentLogger(options.logger, "discovery.watcher");
  impl->watch_prefix =
      options.type.empty() ? options.prefix : absl::StrCat(options.prefix, options.type, "/");
  impl->watch_end = PrefixEnd(impl->watch_prefix);
  impl->opts = std::move(options);
  impl->snap.store(std::make_shared<const Snapshot>(
      0, std::map<std::string, std::shared_ptr<const Snapshot::TypeSet>, std::less<>>()));
  impl->StartSync();
  return std::unique_ptr<Watcher>(new Watcher(std::move(impl)));
}

Watcher::Watcher(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Watcher::~Watcher() {
  auto& loop = impl_->client->loop();
  loop.RunSync([this] {
    impl_->stopping = true;
    if (impl_->watch_id != 0) impl_->client->watch_hub().Remove(impl_->watch_id);
    impl_->watch_id = 0;
  });
  // A sync may be in flight on the background loop; it holds only a weak reference.
  impl_->client->background().RunSync([] {});
  loop.RunSync([] {});
}

absl::Status Watcher::WaitForSync(absl::Duration timeout) {
  util::MutexLock lock(&impl_->sync_mu);
  Impl* impl = impl_.get();
  auto cond = [impl]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(impl->sync_mu) { return impl->synced; };
  if (impl->sync_mu.AwaitWithDeadline(cond, util::MonoNow() + timeout)) {
    return absl::OkStatus();
  }
  std::string why = impl_->last_error.ok() ? std::string("no answer yet")
                                           : std::string(impl_->last_error.message());
  return absl::DeadlineExceededError(
      absl::StrCat("watcher not synced within ", absl::FormatDuration(timeout), ": ", why));
}

bool Watcher::synced() const {
  util::MutexLock lock(&impl_->sync_mu);
  return impl_->synced;
}

SnapshotPtr Watcher::snapshot() const { return impl_->snap.load(); }

Subscription Watcher::Subscribe(Filter filter, std::function<void(const ChangeEvent&)> callback,
                                bool initial) {
  auto sub = std::make_shared<Impl::Sub>();
  sub->filter = std::move(filter);
  sub->callback = std::move(callback);
  uint64_t id = 0;
  impl_->client->loop().RunSync([&] {
    {
      util::MutexLock lock(&impl_->subs_mu);
      id = impl_->next_sub++;
      impl_->subs[id] = sub;
    }
    if (initial) {
      SnapshotPtr snap = impl_->snap.load();
      for (const InstancePtr& in : snap->Select(sub->filter)) {
        ChangeEvent ev;
        ev.type = ChangeType::kAdded;
        ev.instance = in;
        ev.revision = snap->revision();
        ev.initial = true;
        impl_->Deliver(id, sub, ev);
      }
    }
  });
  std::weak_ptr<Impl> weak = impl_;
  return Subscription([weak, id] {
    auto impl = weak.lock();
    if (impl == nullptr) return;
    {
      util::MutexLock lock(&impl->subs_mu);
      impl->subs.erase(id);
    }
    // Barrier: a callback running on the loop right now finishes before we return.
    if (impl->opts.delivery == Delivery::kLibraryThread) impl->client->loop().RunSync([] {});
  });
}

Subscription Watcher::OnHistoryReset(std::function<void(const SnapshotPtr&)> callback) {
  uint64_t id = 0;
  {
    util::MutexLock lock(&impl_->subs_mu);
    id = impl_->next_sub++;
    impl_->reset_listeners[id] = std::move(callback);
  }
  std::weak_ptr<Impl> weak = impl_;
  return Subscription([weak, id] {
    auto impl = weak.lock();
    if (impl == nullptr) return;
    {
      util::MutexLock lock(&impl->subs_mu);
      impl->reset_listeners.erase(id);
    }
    impl->client->loop().RunSync([] {});  // a listener running now finishes first
  });
}

size_t Watcher::Poll(size_t max_events) {
  size_t ran = 0;
  while (ran < max_events) {
    std::pair<uint64_t, ChangeEvent> item;
    {
      util::MutexLock lock(&impl_->queue_mu);
      if (impl_->queue.empty()) break;
      item = std::move(impl_->queue.front());
      impl_->queue.pop_front();
    }
    std::shared_ptr<Impl::Sub> sub;
    {
      util::MutexLock lock(&impl_->subs_mu);
      auto it = impl_->subs.find(item.first);
      if (it != impl_->subs.end()) sub = it->second;
    }
    if (sub == nullptr) continue;
    sub->callback(item.second);
    ++ran;
  }
  return ran;
}

std::shared_ptr<Picker> Watcher::NewPicker(const std::string& type, const std::string& group,
                                           const PickerOptions& options, bool ready_only) {
  std::shared_ptr<Picker> picker = discovery::NewPicker(options);
  impl_->client->loop().RunSync([&] {
    Impl::PickerEntry e{type, group, ready_only, picker};
    picker->Update(impl_->Candidates(e));
    impl_->pickers.push_back(std::move(e));
  });
  return picker;
}

WatcherStats Watcher::stats() const {
  WatcherStats s;
  SnapshotPtr snap = impl_->snap.load();
  s.revision = snap->revision();
  s.instances = snap->size();
  s.events = impl_->events.load();
  s.resyncs = impl_->resyncs.load();
  s.invalid_values = impl_->invalid_values.load();
  s.protection_activations = impl_->protection_activations.load();
  s.synced = synced();
  return s;
}

bool Watcher::protecting(const std::string& type) const {
  bool active = false;
  impl_->client->loop().RunSync([&] {
    auto it = impl_->protection.find(type);
    active = it != impl_->protection.end() && it->second.active;
  });
  return active;
}

const std::shared_ptr<Connection>& Watcher::connection() const { return impl_->connection; }

}  // namespace discovery
