// The watcher's hot path (decode, apply watch events, publish snapshots, deliver events) and
// its public API. Sync and history resets: watcher_sync.cc; protection/pickers: protection.cc.
#include "discovery/watcher.h"

#include <atomic>
#include <deque>
#include <set>
#include <unordered_map>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"
#include "util/clock.h"
#include "util/logging.h"
#include "util/sync.h"
#include "watcher_impl.h"

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

std::string SortKey(const Instance& in) { return absl::StrCat(in.group, "\x1f", in.instance_id); }

}  // namespace

// Parses one key/value into an instance; nullptr (counted, logged once per key) if invalid.
InstancePtr Watcher::Impl::Decode(const std::string& key, const std::string& value) {
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
void Watcher::Impl::Set(const std::string& key, InstancePtr next, int64_t rev, absl::Time now,
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

void Watcher::Impl::ApplyEvents(const pb::WatchResponse& resp) {
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
  // Published by FlushPublish when the hub has handed out every response it has received
  // (on_batch_end), in this same loop turn.
}

// Publishing rebuilds the touched types' sorted vectors (O(instances of the type)). Under a
// burst the watch hub hands the loop every response received so far in one turn; publishing
// once per such batch (not once per response) keeps ingestion linear, and a lone response is
// published and dispatched in the turn that applied it (no re-post, no timer). Subscribers get
// their events right after the snapshot that contains them is published.
void Watcher::Impl::FlushPublish() {
  if (pending_touched.empty() && pending_changes.empty()) return;
  std::set<std::string> touched = std::move(pending_touched);
  std::vector<ChangeEvent> changes = std::move(pending_changes);
  pending_touched.clear();
  pending_changes.clear();
  Publish(touched, util::MonoNow());
  Dispatch(changes);
}

// Rebuilds the touched types and publishes a new snapshot; updates pickers.
void Watcher::Impl::Publish(const std::set<std::string>& touched, absl::Time now) {
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
  snap.store(std::make_shared<const Snapshot>(revision, published, history));
  std::set<std::string> refresh = touched;
  for (auto& [type, p] : protection) {
    if (EvaluateProtection(type, p, now)) refresh.insert(type);
  }
  for (const std::string& type : refresh) UpdatePickers(type);
}

void Watcher::Impl::Deliver(uint64_t id, const std::shared_ptr<Sub>& sub, const ChangeEvent& ev) {
  if (opts.delivery == Delivery::kPoll) {
    util::MutexLock lock(&queue_mu);
    queue.emplace_back(id, ev);
  } else {
    sub->callback(ev);
  }
}

void Watcher::Impl::Dispatch(const std::vector<ChangeEvent>& changes) {
  if (changes.empty()) return;
  std::vector<std::pair<uint64_t, std::shared_ptr<Sub>>> targets;
  {
    util::MutexLock lock(&subs_mu);
    targets.assign(subs.begin(), subs.end());
  }
  for (const ChangeEvent& ev : changes) {
    for (auto& [id, sub] : targets) {
      // A callback may have cancelled this (or another) subscription earlier in the batch.
      if (sub->cancelled.load(std::memory_order_acquire)) continue;
      bool match = sub->filter.Matches(*ev.instance) ||
                   (ev.previous != nullptr && sub->filter.Matches(*ev.previous));
      if (match) Deliver(id, sub, ev);
    }
  }
}

void Watcher::Impl::NotifyHistoryReset(const SnapshotPtr& snapshot) {
  std::vector<std::shared_ptr<ResetListener>> targets;
  {
    util::MutexLock lock(&subs_mu);
    for (auto& [id, l] : reset_listeners) targets.push_back(l);
  }
  for (auto& l : targets) {
    if (!l->cancelled.load(std::memory_order_acquire)) l->callback(snapshot);
  }
}

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
  impl->StartSync(SyncCause::kInitial);
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
  return Subscription([weak, id, sub] {
    sub->cancelled.store(true, std::memory_order_release);
    auto impl = weak.lock();
    if (impl == nullptr) return;
    {
      util::MutexLock lock(&impl->subs_mu);
      impl->subs.erase(id);
    }
    // Barrier: a callback running on the loop right now finishes before we return (inline when
    // called on the loop thread, e.g. from the subscription's own callback).
    if (impl->opts.delivery == Delivery::kLibraryThread) impl->client->loop().RunSync([] {});
  });
}

Subscription Watcher::OnHistoryReset(std::function<void(const SnapshotPtr&)> callback) {
  auto listener = std::make_shared<Impl::ResetListener>();
  listener->callback = std::move(callback);
  uint64_t id = 0;
  {
    util::MutexLock lock(&impl_->subs_mu);
    id = impl_->next_sub++;
    impl_->reset_listeners[id] = listener;
  }
  std::weak_ptr<Impl> weak = impl_;
  return Subscription([weak, id, listener] {
    listener->cancelled.store(true, std::memory_order_release);
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
    if (sub == nullptr || sub->cancelled.load(std::memory_order_acquire)) continue;
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
  s.history_resets = impl_->history_resets.load();
  s.resync_backoffs = impl_->resync_backoffs.load();
  s.resync_delay = absl::Nanoseconds(impl_->resync_delay_ns.load());
  s.rewind_false_alarms = impl_->rewind_false_alarms.load();
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
