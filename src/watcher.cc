// The watcher's public API: creation (source, cache, delivery wired together), sync state,
// snapshot, stats. The source: watch_source.h (etcd: watch_source_etcd.cc); the cache:
// watcher_cache.cc; delivery: delivery.cc and protection.cc.
#include "discovery/watcher.h"

#include "absl/strings/str_cat.h"
#include "store_backend.h"
#include "util/clock.h"
#include "util/logging.h"
#include "util/sync.h"
#include "watcher_impl.h"

namespace discovery {

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
  StoreBackend& backend = *impl->connection->backend();
  impl->executor = &backend.loop();
  impl->logger = util::ComponentLogger(options.logger, "discovery.watcher");
  impl->watch_prefix =
      options.type.empty() ? options.prefix : absl::StrCat(options.prefix, options.type, "/");
  impl->opts = std::move(options);
  impl->snap.store(std::make_shared<const Snapshot>(
      0, std::map<std::string, std::shared_ptr<const Snapshot::TypeSet>, std::less<>>()));
  impl->source = backend.NewWatchSource(
      {.prefix = impl->watch_prefix, .range_page_size = impl->opts.range_page_size}, impl->logger,
      impl);
  impl->source->Start();
  return std::unique_ptr<Watcher>(new Watcher(std::move(impl)));
}

Watcher::Watcher(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Watcher::~Watcher() {
  impl_->source->Stop();  // no call into the cache after this
  impl_->loop().RunSync([this] { impl_->stopping = true; });
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
  s.publishes = impl_->publishes.load();
  s.publish_time = absl::Nanoseconds(impl_->publish_ns.load());
  const SourceStats source = impl_->source->stats();
  s.resync_backoffs = source.resync_backoffs;
  s.resync_delay = source.resync_delay;
  s.rewind_false_alarms = source.rewind_false_alarms;
  s.watch_lag = source.lag;
  s.synced = synced();
  return s;
}

bool Watcher::protecting(const std::string& type) const {
  bool active = false;
  impl_->loop().RunSync([&] {
    auto it = impl_->protection.find(type);
    active = it != impl_->protection.end() && it->second.active;
  });
  return active;
}

const std::shared_ptr<Connection>& Watcher::connection() const { return impl_->connection; }

}  // namespace discovery
