#include "discover_http.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "util/clock.h"

namespace discoveryd {

namespace util = discovery::util;

DiscoverEndpoint::DiscoverEndpoint(discovery::Watcher* watcher, std::function<std::string()> epoch,
                                   Post post_to_worker, Options options)
    : watcher_(watcher),
      epoch_(std::move(epoch)),
      post_(std::move(post_to_worker)),
      options_(options),
      cache_(DiscoverCache::Options{.max_entries = options.max_entries,
                                    .max_bytes = options.max_bytes}) {}

DiscoverEndpoint::~DiscoverEndpoint() { Stop(); }

void DiscoverEndpoint::Start() {
  auto wake = [this] {
    util::MutexLock lock(&mu_);
    changed_ = true;  // the loop re-checks every waiter against the newest snapshot
  };
  // Every change of the store (cheap here: a flag; the loop coalesces a burst into one round).
  changes_ = watcher_->Subscribe({}, [wake](const discovery::ChangeEvent&) { wake(); });
  resets_ = watcher_->OnHistoryReset([wake](const discovery::SnapshotPtr&) { wake(); });
  thread_ = std::thread([this] { Loop(); });
}

void DiscoverEndpoint::Stop() {
  {
    util::MutexLock lock(&mu_);
    if (stop_) return;
    stop_ = true;
  }
  changes_.Reset();
  resets_.Reset();
  if (thread_.joinable()) thread_.join();
}

bool DiscoverEndpoint::Changed(const Request& request, const DiscoverEntry& entry) {
  const int64_t wait_index = request.call.wait_index;
  // Past REV, or REV is not a revision of this history (ahead of us): answer now.
  return entry.index > wait_index || wait_index > entry.revision;
}

HttpResponse DiscoverEndpoint::Respond(const Request& request, const DiscoverEntry& entry) {
  HttpResponse r;
  r.status = 200;
  r.headers = {{"Cache-Control", "no-cache"},
               {"Vary", "Accept-Encoding"},
               {"X-Discovery-Index", absl::StrCat(entry.index)}};
  SharedBody gz = request.gzip ? entry.Gzip() : nullptr;
  r.headers.emplace_back("ETag", gz != nullptr ? entry.gzip_etag : entry.etag);
  if (!request.if_none_match.empty() && entry.Matches(request.if_none_match)) {
    r.status = 304;
    r.content_type.clear();
    return r;
  }
  if (gz != nullptr) {
    r.headers.emplace_back("Content-Encoding", "gzip");
    r.shared_body = std::move(gz);
  } else {
    r.shared_body = entry.body;
  }
  return r;
}

void DiscoverEndpoint::Handle(Request request, Reply reply) {
  discovery::SnapshotPtr snap = watcher_->snapshot();
  std::shared_ptr<const DiscoverEntry> hit = cache_.Find(snap, request.call.filter);
  const bool blocking = request.call.wait_index >= 0;
  if (hit != nullptr && (!request.gzip || hit->gzip_ready()) &&
      (!blocking || Changed(request, *hit))) {
    return reply(Respond(request, *hit));  // on the io thread: nothing to build
  }
  post_([this, request = std::move(request), reply = std::move(reply)]() mutable {
    Build(std::move(request), std::move(reply));
  });
}

void DiscoverEndpoint::Build(Request request, Reply reply) {
  std::shared_ptr<const DiscoverEntry> entry =
      cache_.Get(watcher_->snapshot(), epoch_(), request.call.filter);
  if (request.call.wait_index < 0 || Changed(request, *entry)) {
    return reply(Respond(request, *entry));
  }
  const absl::Duration wait = std::min(request.call.wait, kMaxBlockingWait);
  {
    util::MutexLock lock(&mu_);
    if (!stop_ && waiting_.size() + fresh_.size() + checking_ < options_.max_waiting) {
      ++stats_.blocking;
      fresh_.push_back(Waiter{std::move(request), std::move(reply), util::MonoNow() + wait});
      return;
    }
    ++stats_.refused;
  }
  HttpResponse r = ErrorResponse(
      503, "unavailable",
      absl::StrCat("blocking query limit reached (", options_.max_waiting,
                   " waiting); retry, or subscribe to /sd/v1/subscribe for a stream"));
  r.headers.emplace_back("Retry-After", "1");
  reply(std::move(r));
}

void DiscoverEndpoint::Loop() {
  for (;;) {
    std::vector<Waiter> check;  // taken out of the lists, put back when still waiting
    bool stopping = false;
    {
      util::MutexLock lock(&mu_);
      absl::Time next = absl::InfiniteFuture();
      for (const Waiter& w : waiting_) next = std::min(next, w.deadline);
      mu_.AwaitWithDeadline([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(
                                mu_) { return stop_ || changed_ || !fresh_.empty(); },
                            next);
      stopping = stop_;
      // A change re-checks every waiter; otherwise only the new ones and the expired ones.
      const absl::Time now = util::MonoNow();
      if (changed_ || stopping) {
        check = std::move(waiting_);
        waiting_.clear();
      } else {
        auto expired = std::stable_partition(waiting_.begin(), waiting_.end(),
                                             [now](const Waiter& w) { return w.deadline > now; });
        check.assign(std::make_move_iterator(expired), std::make_move_iterator(waiting_.end()));
        waiting_.erase(expired, waiting_.end());
      }
      for (Waiter& w : fresh_) check.push_back(std::move(w));
      fresh_.clear();
      changed_ = false;
      checking_ = check.size();  // still counted as waiting (cap, metrics) during the round
    }
    // One entry per filter per round (built here, off the io threads).
    discovery::SnapshotPtr snap = watcher_->snapshot();
    const std::string epoch = epoch_();
    std::map<std::string, std::shared_ptr<const DiscoverEntry>> entries;
    std::vector<Waiter> still;
    uint64_t changed = 0, timeouts = 0;
    const absl::Time now = util::MonoNow();
    for (Waiter& w : check) {
      auto& e = entries[DiscoverCache::Key(w.request.call.filter)];
      if (e == nullptr) e = cache_.Get(snap, epoch, w.request.call.filter);
      const bool ready = Changed(w.request, *e);
      if (ready || stopping || w.deadline <= now) {
        (ready ? changed : timeouts) += 1;
        w.reply(Respond(w.request, *e));
      } else {
        still.push_back(std::move(w));
      }
    }
    util::MutexLock lock(&mu_);
    stats_.changed += changed;
    stats_.timeouts += timeouts;
    for (Waiter& w : still) waiting_.push_back(std::move(w));
    checking_ = 0;
    if (stopping) return;
  }
}

DiscoverEndpoint::Stats DiscoverEndpoint::stats() const {
  util::MutexLock lock(&mu_);
  Stats s = stats_;
  s.waiting = waiting_.size() + fresh_.size() + checking_;
  return s;
}

std::string DiscoverEndpoint::RenderMetrics() const {
  const Stats s = stats();
  const DiscoverCache::Stats c = cache_.stats();
  std::string out;
  auto metric = [&out](const char* name, const char* type, const char* help, double value) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n", name, " ",
                    value, "\n");
  };
  metric("discovery_http_discover_cache_hits_total", "counter",
         "Discover answers served from the per-snapshot cache.", c.hits);
  metric("discovery_http_discover_cache_misses_total", "counter",
         "Discover answers encoded (new snapshot or new filter).", c.misses);
  metric("discovery_http_discover_cache_evictions_total", "counter",
         "Filters dropped from the discover cache by its LRU bound.", c.evictions);
  metric("discovery_http_discover_cache_too_large_total", "counter",
         "Discover answers larger than the cache's byte bound: served, not cached.", c.too_large);
  metric("discovery_http_discover_cache_max_bytes", "gauge",
         "Byte bound of the identity bodies in the discover cache.", options_.max_bytes);
  metric("discovery_http_discover_cache_entries", "gauge", "Filters in the discover cache.",
         c.entries);
  metric("discovery_http_discover_cache_bytes", "gauge",
         "Bytes of encoded discover bodies held (identity and gzip).", c.bytes);
  metric("discovery_http_discover_gzip_encoded_total", "counter",
         "Discover bodies gzip-compressed (once per cached body).", c.gzip_encoded);
  metric("discovery_http_blocking_waiting", "gauge", "Blocking discover queries waiting now.",
         s.waiting);
  metric("discovery_http_blocking_max_waiting", "gauge",
         "Blocking discover queries allowed to wait at once.", options_.max_waiting);
  metric("discovery_http_blocking_total", "counter", "Blocking discover queries that waited.",
         s.blocking);
  metric("discovery_http_blocking_changed_total", "counter",
         "Blocking queries answered because their matching set changed.", s.changed);
  metric("discovery_http_blocking_timeouts_total", "counter",
         "Blocking queries answered at their wait time, unchanged.", s.timeouts);
  metric("discovery_http_blocking_refused_total", "counter",
         "Blocking queries refused (503) over the waiting cap.", s.refused);
  return out;
}

}  // namespace discoveryd
